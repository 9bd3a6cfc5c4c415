"""Loads a trained task and its parameters from a run's checkpoint, for the evaluation CLI.

``load(path, expect_task)`` accepts a run's workdir (``W`` with ``W/checkpoints``), its
``checkpoints`` folder, or one step's folder (``W/checkpoints/<step>``). The config is the one
the run saved with the checkpoint (the step's ``config`` item), else ``W/config.json``; the
task is rebuilt from it (``tasks.get(config.task)``) and the newest step's parameters are read
as host numpy arrays (the EMA parameters when the run kept them, as the trainer's evaluation
does), then checked leaf by leaf against the task's ``init`` shapes (a mismatch names the leaf).
"""
from __future__ import annotations

import dataclasses
import json
import os
from typing import Any

import jax
import ml_collections
from flax import linen as nn


@dataclasses.dataclass
class Loaded:
  task: Any               # the Task instance
  params: Any             # host numpy params tree
  config: ml_collections.ConfigDict
  step: int
  path: str               # the step folder read


def _step_dir(path: str) -> str:
  path = os.path.abspath(os.fspath(path))
  if not os.path.exists(path):
    raise FileNotFoundError(f"checkpoint {path} does not exist")
  if os.path.isdir(os.path.join(path, "state")):
    return path
  if os.path.isdir(os.path.join(path, "checkpoints")):
    path = os.path.join(path, "checkpoints")
  steps = [int(s) for s in os.listdir(path) if s.isdigit()
           and os.path.isdir(os.path.join(path, s, "state"))]
  if not steps:
    raise FileNotFoundError(f"no checkpoint steps in {path} (expected <step>/state folders)")
  return os.path.join(path, str(max(steps)))


def _read_config(step_dir: str) -> dict:
  cdir = os.path.join(step_dir, "config")
  candidates = []
  if os.path.isdir(cdir):
    candidates += [os.path.join(cdir, f) for f in sorted(os.listdir(cdir))]
  run_dir = os.path.dirname(os.path.dirname(step_dir))
  candidates.append(os.path.join(run_dir, "config.json"))
  for f in candidates:
    if not os.path.isfile(f):
      continue
    try:
      with open(f, encoding="utf-8") as fh:
        cfg = json.load(fh)
    except (ValueError, UnicodeDecodeError):
      continue
    if isinstance(cfg, dict) and "task" in cfg:
      return cfg
  raise FileNotFoundError(f"no run config (with a 'task' key) in {cdir} or "
                          f"{os.path.join(run_dir, 'config.json')}")


def _lists_to_tuples(x):
  if isinstance(x, dict):
    return {k: _lists_to_tuples(v) for k, v in x.items()}
  if isinstance(x, list):
    return tuple(_lists_to_tuples(v) for v in x)
  return x


def load(path: str, expect_task: str | tuple[str, ...] | None = None,
         overrides: dict | None = None) -> Loaded:
  """The task and parameters of a checkpoint (module docstring).

  Args:
    path: workdir, checkpoints folder or step folder.
    expect_task: the task name(s) the caller can evaluate; another raises naming both.
    overrides: {dotted key: value} applied to the run's config before the task is built
      (e.g. {"data.data_dir": ...}); an unknown key raises naming it.
  """
  from mfm_jax import tasks  # pylint: disable=g-import-not-at-top
  from mfm_jax.convert import common  # pylint: disable=g-import-not-at-top
  from mfm_jax.engine import checkpoint as ckpt_lib  # pylint: disable=g-import-not-at-top
  step_dir = _step_dir(path)
  config = ml_collections.ConfigDict(_lists_to_tuples(_read_config(step_dir)))
  want = (expect_task,) if isinstance(expect_task, str) else expect_task
  if want and config.task not in want:
    raise ValueError(f"checkpoint {step_dir} is a {config.task!r} run; expected "
                     f"{' or '.join(repr(w) for w in want)}")
  for key, value in (overrides or {}).items():
    node, *parents = config, *key.split(".")[:-1]
    for p in parents:
      if p not in node:
        raise KeyError(f"override {key}: unknown key {p!r} in the run config")
      node = node[p]
    leaf = key.split(".")[-1]
    if leaf not in node:
      raise KeyError(f"override {key}: unknown key {leaf!r} in the run config")
    with node.ignore_type():
      node[leaf] = value
  task = tasks.get(config.task)(config)
  state = ckpt_lib.read_item(os.path.join(step_dir, "state"))
  if isinstance(state, dict) and "params" in state and "opt_state" in state:
    params = state.get("ema_params") or state["params"]
  else:
    params = state
  abstract = jax.eval_shape(lambda: nn.meta.unbox(task.init(jax.random.key(0))))
  common.check_params(params, abstract, f"{step_dir} ({config.task!r} model)")
  flat_src = {jax.tree_util.keystr(k): v for k, v in jax.tree_util.tree_leaves_with_path(params)}
  flat_dst = {jax.tree_util.keystr(k): v
              for k, v in jax.tree_util.tree_leaves_with_path(abstract)}
  params = jax.tree.unflatten(jax.tree.structure(abstract),
                              [flat_src[k].astype(a.dtype) for k, a in flat_dst.items()])
  return Loaded(task, params, config, int(os.path.basename(step_dir)), step_dir)
