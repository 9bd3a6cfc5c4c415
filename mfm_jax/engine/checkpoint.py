"""Checkpoints: an orbax ``CheckpointManager`` (async, keep-N) of three items per step:

* ``state``  -- the TrainState (params, optimizer state, step, EMA), restored into an abstract
  sharded target, so a checkpoint written on one mesh restores on another;
* ``data``   -- the grain iterator state (one JSON per process), so a resumed run sees the same data;
* ``config`` -- the run's config as JSON.

Writes are atomic (orbax writes to a temporary folder and renames it when complete), a state with
non-finite values is refused, and restore walks back from the newest step when one is unreadable.
Restore order in :func:`restore_or_init` (engine): own workdir, then ``config.resume_from`` (a
checkpoint folder of another run), then ``config.init_from`` (params only).
"""
from __future__ import annotations

import json
import logging
import os
from typing import Any

import grain
import jax
import numpy as np
import orbax.checkpoint as ocp

log = logging.getLogger(__name__)

ITEMS = ("state", "data", "config")


class NonFiniteStateError(RuntimeError):
  pass


def _has_iterator_state(it: Any) -> bool:
  return it is not None and hasattr(it, "get_state") and hasattr(it, "set_state")


class Checkpointer:
  """Thin wrapper over ``ocp.CheckpointManager`` for the three items above."""

  def __init__(self, directory: str, max_to_keep: int = 3, async_save: bool = True,
               read_only: bool = False):
    self.directory = os.path.abspath(directory)
    options = ocp.CheckpointManagerOptions(
        max_to_keep=max_to_keep, create=not read_only, read_only=read_only,
        enable_async_checkpointing=async_save, cleanup_tmp_directories=not read_only)
    self.manager = ocp.CheckpointManager(
        self.directory, options=options, item_names=ITEMS,
        item_handlers={"state": ocp.StandardCheckpointHandler(),
                       "data": grain.checkpoint.CheckpointHandler(),
                       "config": ocp.JsonCheckpointHandler()})

  def all_steps(self) -> list[int]:
    return sorted(self.manager.all_steps())

  def latest_step(self) -> int | None:
    return self.manager.latest_step()

  def save(self, step: int, state: Any, data_iter: Any = None, config: Any = None,
           state_is_finite: bool | None = None) -> bool:
    """Saves (asynchronously) unless a checkpoint of ``step`` exists. Refuses non-finite state."""
    if state_is_finite is False:
      raise NonFiniteStateError(f"refusing to save a non-finite train state at step {step}")
    if step in self.manager.all_steps():
      return False
    args = {"state": ocp.args.StandardSave(state)}
    if _has_iterator_state(data_iter):
      args["data"] = grain.checkpoint.CheckpointSave(data_iter)
    if config is not None:
      cfg = json.loads(config.to_json_best_effort()) if hasattr(config, "to_json_best_effort") else config
      args["config"] = ocp.args.JsonSave(cfg)
    return self.manager.save(step, args=ocp.args.Composite(**args), force=True)

  def wait(self) -> None:
    self.manager.wait_until_finished()

  def close(self) -> None:
    self.manager.wait_until_finished()
    self.manager.close()

  def restore(self, target_state: Any, data_iter: Any = None, step: int | None = None
              ) -> tuple[Any, int] | None:
    """Restores ``(state, step)`` into ``target_state`` (ShapeDtypeStructs with shardings).

    Tries ``step`` (default: newest) and walks back over older steps when a checkpoint is
    unreadable, warning for each one skipped. Returns None when there is no checkpoint.
    """
    steps = [step] if step is not None else self.all_steps()[::-1]
    last_error = ""
    for s in steps:
      try:
        args = {"state": ocp.args.StandardRestore(target_state)}
        item_dir = os.path.join(self.directory, str(s), "data")
        if _has_iterator_state(data_iter) and os.path.isdir(item_dir):
          args["data"] = grain.checkpoint.CheckpointRestore(data_iter)
        restored = self.manager.restore(s, args=ocp.args.Composite(**args))
      except Exception as e:  # noqa: BLE001 -- any unreadable checkpoint falls back
        if step is not None:
          raise
        last_error = f"{type(e).__name__}: {str(e).splitlines()[0][:300]}"
        log.warning("checkpoint %s/%d is unreadable (%s: %s); falling back to an older step",
                    self.directory, s, type(e).__name__, str(e).splitlines()[0][:300])
        continue
      if _has_iterator_state(data_iter) and "data" not in args:
        log.warning("checkpoint %s/%d has no data-iterator state; data restarts from the beginning",
                    self.directory, s)
      return restored["state"], s
    if steps:
      raise RuntimeError(
          f"no readable checkpoint in {self.directory} (tried steps {steps}; last error: "
          f"{last_error}). Nothing was overwritten: use another --workdir to start afresh.")
    return None


def read_item(item: str) -> Any:
  """A saved pytree item (e.g. ``<dir>/<step>/state``) as host numpy arrays, in its stored layout."""
  ckptr = ocp.PyTreeCheckpointer()
  meta = ckptr.metadata(item).item_metadata.tree
  restore_args = jax.tree.map(lambda _: ocp.RestoreArgs(restore_type=np.ndarray), meta)
  return ckptr.restore(item, args=ocp.args.PyTreeRestore(restore_args=restore_args))


def read_latest_state(directory: str) -> tuple[int, Any]:
  """(newest step, its ``state`` item as numpy) of a checkpoint folder, for tests and tools."""
  steps = [int(s) for s in os.listdir(directory) if s.isdigit()]
  if not steps:
    raise FileNotFoundError(f"no checkpoint steps in {directory}")
  step = max(steps)
  return step, read_item(os.path.join(directory, str(step), "state"))


def load_params(path: str, abstract_params: Any, shardings: Any, fresh: Any = None,
                fallback: Any = None, ema: bool = False) -> Any:
  """Loads only ``params`` from a checkpoint (``config.init_from``) and shards them.

  ``path``: a checkpoint folder (newest step is taken) or one step's folder. The stored tree is
  either a TrainState (``state/params``) or a bare params tree (``state`` is the params, as written by
  ``tools/convert_checkpoint.py``). Every leaf is checked against ``abstract_params``; missing,
  extra or mis-shaped leaves fail naming them. ``fresh`` (a bool tree like ``abstract_params``,
  from ``Task.init_from_fresh``) marks leaves the checkpoint may lack (a new head, adapters):
  those take their value from ``fallback`` (the initialised params) when absent. ``ema``: take
  the TrainState's ``ema_params`` instead (``config.init_from_ema``; an error if it has none).
  """
  path = os.path.abspath(path)
  item = os.path.join(path, "state")
  if not os.path.isdir(item):
    mngr = ocp.CheckpointManager(path, options=ocp.CheckpointManagerOptions(read_only=True))
    step = mngr.latest_step()
    if step is None:
      raise FileNotFoundError(f"config.init_from={path}: no checkpoint found")
    item = os.path.join(path, str(step), "state")
  tree = read_item(item)
  is_state = isinstance(tree, dict) and "params" in tree and "opt_state" in tree
  if ema:
    if not is_state or tree.get("ema_params") is None:
      raise ValueError(f"config.init_from_ema: {item} holds no EMA params (a run without "
                       f"config.optimizer.ema_decay, or a bare params tree)")
    params = tree["ema_params"]
  else:
    params = tree["params"] if is_state else tree
  return match_and_shard(params, abstract_params, shardings, source=item, fresh=fresh,
                         fallback=fallback)


def _flat(tree: Any) -> dict[str, Any]:
  return {jax.tree_util.keystr(k): v for k, v in jax.tree_util.tree_leaves_with_path(tree)}


def match_and_shard(params: Any, abstract_params: Any, shardings: Any, source: str,
                    fresh: Any = None, fallback: Any = None) -> Any:
  """Checks ``params`` leaf by leaf against ``abstract_params`` and places them on ``shardings``.

  Leaves marked in ``fresh`` that ``params`` lacks are taken from ``fallback`` as they are.
  """
  flat_src = _flat(params)
  flat_dst = _flat(abstract_params)
  if fresh is not None:
    if fallback is None:
      raise ValueError("match_and_shard: fresh leaves need the fallback (initialised) params")
    keep = {k: v for (k, f), v in zip(_flat(fresh).items(), _flat(fallback).values())
            if f and k not in flat_src}
    if keep:
      log.info("%s: %d fresh leaves keep their initial values (e.g. %s)", source, len(keep),
               next(iter(keep)))
  else:
    keep = {}
  missing = sorted(set(flat_dst) - set(flat_src) - set(keep))
  extra = sorted(set(flat_src) - set(flat_dst))
  if missing or extra:
    raise ValueError(f"{source}: params do not match the model; missing {missing[:10]}"
                     f"{'...' if len(missing) > 10 else ''}, unexpected {extra[:10]}"
                     f"{'...' if len(extra) > 10 else ''}")
  for k, a in flat_dst.items():
    if k not in keep and tuple(flat_src[k].shape) != tuple(a.shape):
      raise ValueError(f"{source}: param {k} has shape {tuple(flat_src[k].shape)}, "
                       f"the model expects {tuple(a.shape)}")

  def place(a, k, s):
    if k in keep:
      return keep[k]
    v = flat_src[k]
    return jax.make_array_from_callback(a.shape, s, lambda idx: np.asarray(v, a.dtype)[idx])

  treedef = jax.tree.structure(abstract_params)
  return jax.tree.unflatten(treedef, [
      place(a, k, s) for (k, a), s in zip(flat_dst.items(), jax.tree.leaves(shardings))])
