"""Config helpers shared by ``configs/*.py``: the engine's base fields and ``arg`` parsing.

``get_config(arg)`` in a config file receives the text after ``:`` in ``--config file.py:arg``;
:func:`parse_arg` turns ``"smoke"`` or ``"variant=B/2,res=64,smoke"`` into a ConfigDict of
typed values (a bare word is a True flag). Unknown words are errors that name them.
"""
from __future__ import annotations

import importlib.util
import os
from typing import Any

import ml_collections

from mfm_jax.engine import mesh as mesh_lib
from mfm_jax.engine import optim


def sibling_config(config_file: str, name: str):
  """The config module ``name`` (e.g. ``"video_gen"``) from the folder of ``config_file`` (a
  config's ``__file__``), loaded by path: config files are not a package, and a family that
  extends another (``video_control`` extends ``video_gen``) needs its ``get_config``."""
  path = os.path.join(os.path.dirname(os.path.abspath(config_file)), f"{name}.py")
  if not os.path.isfile(path):
    raise FileNotFoundError(f"sibling_config: no config {path}")
  spec = importlib.util.spec_from_file_location(f"_mfm_jax_config_{name}", path)
  mod = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(mod)
  return mod


def parse_arg(arg: str | None, **defaults: Any) -> ml_collections.ConfigDict:
  """Parses ``"k=v,flag"`` with types taken from ``defaults``; unknown keys raise KeyError."""
  out = ml_collections.ConfigDict(defaults)
  if not arg:
    return out
  for item in arg.split(","):
    item = item.strip()
    if not item:
      continue
    key, _, value = item.partition("=")
    if key not in defaults:
      raise KeyError(f"config arg {key!r} is unknown; known: {sorted(defaults)}")
    default = defaults[key]
    if not _:
      value = True
    elif isinstance(default, bool):
      value = value.lower() in ("1", "true", "yes", "on")
    elif isinstance(default, int):
      value = int(value)
    elif isinstance(default, float):
      value = float(value)
    out[key] = value
  return out


def base_config() -> ml_collections.ConfigDict:
  """Fields every training config has; config files override what they need."""
  c = ml_collections.ConfigDict()
  c.task = ""
  c.seed = 0
  c.total_steps = 1000
  c.batch_size = 32                  # global batch, divided among processes
  c.log_every = 50
  c.eval_every = 0                   # 0: no evaluation; N: every N steps and at the end
  c.eval_batches = 0                 # validation batches for eval/ losses (0: none)
  c.nonfinite_policy = "stop"        # 'stop' (error naming step and parameter) | 'skip' (count)
  c.peak_flops_per_device = 0.0      # 0: datasheet table, else a measured matmul rate
  c.resume_from = ""                 # another run's checkpoints/ folder (full state + data)
  c.init_from = ""                   # a checkpoint to take params from
  c.init_from_ema = False            # ... its EMA params instead (a generator samples with them)
  c.checkpoint = ml_collections.ConfigDict(dict(every=500, max_to_keep=3, async_save=True))
  c.mesh = ml_collections.ConfigDict(dict(
      axes=dict(data=-1, fsdp=1, context=1, tensor=1),
      rules=[list(r) if not isinstance(r[1], tuple) else [r[0], list(r[1])]
             for r in mesh_lib.DEFAULT_RULES]))
  c.optimizer = optim.default_config()
  c.model = ml_collections.ConfigDict()
  c.data = ml_collections.ConfigDict()
  return c
