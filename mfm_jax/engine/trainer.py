"""The train/eval loop: ``train(config, task, workdir)``.

Builds the mesh, the data iterator (from the task), the optimizer and the checkpointer; restores
(own workdir -> ``config.resume_from`` -> ``config.init_from``) or initialises the sharded state;
then runs one jitted, state-donating ``train_step`` with explicit shardings, logging, periodic
checkpoints and evaluations. SIGTERM/SIGINT save a checkpoint at the current step and return.
"""
from __future__ import annotations

import contextlib
import logging
import os
import signal
import time
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax

from mfm_jax.engine import checkpoint as ckpt_lib
from mfm_jax.engine import flops as flops_lib
from mfm_jax.engine import mesh as mesh_lib
from mfm_jax.engine import optim
from mfm_jax.engine import state as state_lib
from mfm_jax.engine import writer as writer_lib
from mfm_jax.engine.task import Task

log = logging.getLogger(__name__)


class NonFiniteError(FloatingPointError):
  pass


class _Signals:
  """Turns SIGTERM/SIGINT into a flag checked at step boundaries."""

  def __init__(self):
    self.received: int | None = None
    self._old = {}

  def __enter__(self):
    for sig in (signal.SIGTERM, signal.SIGINT):
      try:
        self._old[sig] = signal.signal(sig, self._handle)
      except ValueError:  # not the main thread
        pass
    return self

  def _handle(self, signum, frame):
    del frame
    self.received = signum

  def __exit__(self, *exc):
    for sig, old in self._old.items():
      signal.signal(sig, old)

  def should_stop(self) -> bool:
    flag = self.received is not None
    if jax.process_count() > 1:  # every process must stop at the same step
      from jax.experimental import multihost_utils  # pylint: disable=g-import-not-at-top
      flag = bool(np.any(multihost_utils.process_allgather(np.array(flag))))
    return flag


def make_train_step(task: Task, tx, schedule, train_rng, cfg):
  ema_decay = float(cfg.optimizer.get("ema_decay", 0.0))
  track_leaves = cfg.get("nonfinite_policy", "stop") == "stop"

  def train_step(state: state_lib.TrainState, batch):
    rng = jax.random.fold_in(train_rng, state.step)
    (loss, metrics), grads = jax.value_and_grad(
        lambda p: task.loss(p, batch, rng), has_aux=True)(state.params)
    gnorm = optax.tree.norm(grads)
    finite = jnp.isfinite(loss) & jnp.isfinite(gnorm)
    updates, opt_state = tx.update(grads, state.opt_state, state.params)
    params = optax.apply_updates(state.params, updates)
    if type(task).after_update is not Task.after_update:
      params, opt_state = task.after_update(params, opt_state, grads, state.step + 1,
                                            jax.random.fold_in(rng, 1), tx)
    ema = state.ema_params
    if ema is not None:
      ema = optim.ema_update(ema, params, ema_decay)
    good = state.replace(step=state.step + 1, params=params, opt_state=opt_state, ema_params=ema)
    bad = state.replace(step=state.step + 1, nonfinite_count=state.nonfinite_count + 1)
    new_state = jax.tree.map(lambda g, b: jnp.where(finite, g, b), good, bad)
    out = dict(metrics)
    out.update({"train/loss": loss, "train/grad_norm": gnorm, "train/lr": schedule(state.step),
                "train/nonfinite": (~finite).astype(jnp.int32),
                "train/nonfinite_total": new_state.nonfinite_count,
                "train/batch_checksum": sum(jnp.sum(v.astype(jnp.float32))
                                            for v in jax.tree.leaves(batch))})
    if track_leaves:
      out["nonfinite_leaves"] = jnp.stack([jnp.sum(~jnp.isfinite(g)) for g in jax.tree.leaves(grads)])
    return new_state, out

  return train_step


def make_optimizer_for(config, task: Task, init_rng):
  """``(tx, schedule, abstract params, trainable mask)`` for ``task``; allocates nothing."""
  abstract_params = state_lib.unbox_abstract(jax.eval_shape(task.init, init_rng))
  trainable = task.trainable_mask(abstract_params)
  tx, schedule = optim.make_optimizer(config.optimizer, int(config.total_steps), trainable)
  return tx, schedule, abstract_params, trainable


def jit_train_step(step_fn, shardings, batch_shardings, mesh):
  """The jitted, state-donating train step with explicit in/out shardings."""
  return jax.jit(step_fn, in_shardings=(shardings, batch_shardings),
                 out_shardings=(shardings, mesh_lib.replicated(mesh)), donate_argnums=(0,))


def build_train_step(config, task: Task, mesh, rules, batch_shardings):
  """The step :func:`train` runs, built without data, checkpoints or allocation (AOT compiles).

  Call under ``jax.set_mesh(mesh)`` and ``nn.logical_axis_rules(rules)``, as :func:`train` does.
  Returns ``(jitted train_step, abstract state carrying its shardings, state shardings)``.
  """
  init_rng, train_rng = jax.random.split(jax.random.key(config.seed))
  tx, schedule, _, _ = make_optimizer_for(config, task, init_rng)
  ema = float(config.optimizer.get("ema_decay", 0.0)) > 0
  abstract, shardings = state_lib.abstract_state(task.init, tx, init_rng, mesh, rules, ema)
  step_fn = make_train_step(task, tx, schedule, train_rng, config)
  return jit_train_step(step_fn, shardings, batch_shardings, mesh), abstract, shardings


def _nonfinite_message(step: int, metrics: dict, param_names: list[str]) -> str:
  counts = np.asarray(metrics.get("nonfinite_leaves", []))
  loss = float(metrics["train/loss"])
  msg = f"non-finite values at step {step}: loss={loss}, grad_norm={float(metrics['train/grad_norm'])}"
  if counts.size and counts.max() > 0:
    worst = int(np.argmax(counts))
    msg += (f"; worst parameter {param_names[worst]} has {int(counts[worst])} non-finite gradient "
            f"entries ({int((counts > 0).sum())} parameters affected)")
  return msg + ". The update was not applied and nothing was saved (nonfinite_policy='stop')."


def restore_or_init(config, task, tx, rng, mesh, rules, ckpt, data_iter):
  """Own checkpoints, else ``config.resume_from``, else ``config.init_from`` (params), else init."""
  ema = float(config.optimizer.get("ema_decay", 0.0)) > 0
  target, shardings = state_lib.abstract_state(task.init, tx, rng, mesh, rules, ema)
  restored = ckpt.restore(target, data_iter)
  if restored is not None:
    log.info("restored step %d from %s", restored[1], ckpt.directory)
    return restored[0], shardings, "workdir"
  if config.get("resume_from"):
    other = ckpt_lib.Checkpointer(config.resume_from, read_only=True, async_save=False)
    restored = other.restore(target, data_iter)
    if restored is None:
      raise FileNotFoundError(f"config.resume_from={config.resume_from}: no checkpoint found")
    log.info("resumed step %d from %s", restored[1], config.resume_from)
    return restored[0], shardings, "resume_from"
  state = state_lib.create_sharded(task.init, tx, rng, shardings, ema)
  if config.get("init_from"):
    abstract_params = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype), state.params)
    params = ckpt_lib.load_params(config.init_from, abstract_params, shardings.params,
                                  fresh=task.init_from_fresh(abstract_params),
                                  fallback=state.params,
                                  ema=bool(config.get("init_from_ema", False)))
    if type(task).after_init_from is not Task.after_init_from:
      params = jax.jit(task.after_init_from, out_shardings=shardings.params)(params)
    state = state.replace(params=params, ema_params=params if ema else None)
    log.info("initialised params from %s", config.init_from)
    return state, shardings, "init_from"
  return state, shardings, "init"


def evaluate(task: Task, state, step: int, workdir: str, eval_step, mesh, rules, config) -> dict:
  params = state.ema_params if state.ema_params is not None else state.params
  results: dict[str, Any] = {}
  n = int(config.get("eval_batches", 0))
  if n:
    it = task.make_iterator("validation", mesh_lib.batch_size_per_process(config.batch_size),
                            config.seed, jax.process_index(), jax.process_count())
    sums: dict[str, float] = {}
    count = 0
    for i, local in enumerate(it):
      if i >= n:
        break
      batch = mesh_lib.global_batch(local, mesh, rules)
      m = jax.device_get(eval_step(params, batch, jax.random.key(i)))
      for k, v in m.items():
        sums[k] = sums.get(k, 0.0) + float(v)
      count += 1
    results.update({f"eval/{k.split('/')[-1]}": v / max(count, 1) for k, v in sums.items()})
  results.update(task.evaluate(params, step, workdir))
  return results


def train(config: ml_collections.ConfigDict, task: Task, workdir: str) -> dict[str, Any]:
  """Runs training; returns a summary dict (final step, last metrics, eval results)."""
  os.makedirs(workdir, exist_ok=True)
  mesh = mesh_lib.make_mesh(config.mesh.axes)
  rules = mesh_lib.rules_from_config(config.mesh.get("rules"))
  total = int(config.total_steps)
  local_bs = mesh_lib.batch_size_per_process(config.batch_size)
  writer = writer_lib.MetricWriter(workdir)
  writer.write_config(config)
  rng = jax.random.key(config.seed)
  init_rng, train_rng = jax.random.split(rng)
  summary: dict[str, Any] = {"evals": []}

  peak, peak_src = flops_lib.peak_flops_per_device(config.get("peak_flops_per_device"))
  with jax.set_mesh(mesh), nn.logical_axis_rules(rules), _Signals() as signals, \
      contextlib.ExitStack() as cleanup:
    cleanup.callback(writer.close)   # also on errors: pending async saves finish, files flush
    tx, schedule, abstract_params, trainable = make_optimizer_for(config, task, init_rng)
    n_params = optim.count_params(abstract_params)
    n_train = optim.count_params(abstract_params, trainable) if trainable is not None else n_params
    log.info("params: %s total, %s trainable", f"{n_params:,}", f"{n_train:,}")
    param_names = [jax.tree_util.keystr(k) for k, _ in
                   jax.tree_util.tree_leaves_with_path(abstract_params)]

    ckpt = ckpt_lib.Checkpointer(os.path.join(workdir, "checkpoints"),
                                 max_to_keep=config.checkpoint.get("max_to_keep", 3),
                                 async_save=config.checkpoint.get("async_save", True))
    cleanup.callback(ckpt.close)
    data_iter = task.make_iterator("train", local_bs, config.seed, jax.process_index(),
                                   jax.process_count())
    state, shardings, origin = restore_or_init(config, task, tx, init_rng, mesh, rules, ckpt,
                                               data_iter)
    step = int(jax.device_get(state.step))
    summary.update(start_step=step, origin=origin, params=n_params, trainable_params=n_train)
    writer.write_scalars(step, {"params/total": n_params, "params/trainable": n_train})

    step_fn = make_train_step(task, tx, schedule, train_rng, config)
    rep = mesh_lib.replicated(mesh)
    p_train_step = None
    p_eval_step = jax.jit(task.eval_step, in_shardings=(shardings.params, None, rep))

    fpe = task.flops_per_example()
    progress = writer_lib.Progress(total, step, config.batch_size,
                                   3 * fpe * config.batch_size if fpe else None, peak)
    log.info("peak %.2f TFLOP/s per device (%s); %s", peak / 1e12, peak_src,
             f"train step {3 * fpe * config.batch_size / 1e9:.2f} GFLOP" if fpe else "no FLOP count")
    policy = config.get("nonfinite_policy", "stop")
    if policy not in ("stop", "skip"):
      raise ValueError(f"config.nonfinite_policy={policy!r}: use 'stop' or 'skip'")
    log_every, ckpt_every = int(config.log_every), int(config.checkpoint.every)
    eval_every = int(config.get("eval_every", 0))
    metrics = pending = None
    t_compile = None

    def check_finite(at_step, step_metrics):
      if int(jax.device_get(step_metrics["train/nonfinite"])):
        raise NonFiniteError(_nonfinite_message(at_step, jax.device_get(step_metrics), param_names))

    def save(at_step):
      progress.pause()
      finite = bool(jax.device_get(optim.all_finite(state.params)))
      ckpt.save(at_step, state, data_iter, config, state_is_finite=finite)
      progress.resume()

    while step < total:
      if signals.should_stop():
        log.warning("signal %s received: saving step %d and stopping", signals.received, step)
        save(step)
        summary["preempted"] = True
        break
      local = next(data_iter)
      batch = mesh_lib.global_batch(local, mesh, rules)
      if p_train_step is None:
        batch_sh = jax.tree.map(lambda x: x.sharding, batch)
        p_train_step = jit_train_step(step_fn, shardings, batch_sh, mesh)
        t = time.perf_counter()
      state, metrics = p_train_step(state, batch)
      step += 1
      if t_compile is None:
        jax.block_until_ready(state.step)
        t_compile = time.perf_counter() - t
        summary["first_step_sec"] = t_compile
        log.info("first step (compile + run) took %.1f s", t_compile)
        progress.start(step)
      # 'stop': check the previous step's flag now that the next step is queued (no stall), and
      # this step's before anything is logged, saved or evaluated.
      if policy == "stop" and pending is not None:
        check_finite(*pending)
      pending = (step, metrics)
      boundary = (step % log_every == 0 or step % ckpt_every == 0 or step == total
                  or (eval_every and step % eval_every == 0))
      if policy == "stop" and boundary:
        check_finite(*pending)
        pending = None
      if step % log_every == 0 or step == total:
        m = {k: v for k, v in jax.device_get(metrics).items() if k != "nonfinite_leaves"}
        rates = progress.rates(step)
        writer.write_scalars(step, {**m, **rates})
        if jax.process_index() == 0:
          print(progress.line(step, float(m["train/loss"]), rates), flush=True)
        summary["last_metrics"] = {k: float(np.asarray(v)) for k, v in {**m, **rates}.items()}
      if step % ckpt_every == 0 or step == total:
        save(step)
      if eval_every and (step % eval_every == 0 or step == total):
        progress.pause()
        t = time.perf_counter()
        res = evaluate(task, state, step, workdir, p_eval_step, mesh, rules, config)
        res["eval/seconds"] = time.perf_counter() - t
        writer.write_scalars(step, res)
        summary["evals"].append({"step": step, **res})
        if jax.process_index() == 0:
          writer_lib.append_eval_json(workdir, {"step": step, **res})
          print(f"eval @ {step}: " + ", ".join(f"{k}={v:.4g}" for k, v in res.items()
                                               if isinstance(v, (int, float))), flush=True)
        progress.resume()
  summary["final_step"] = step
  if jax.process_index() == 0:
    writer_lib.plot_curves(workdir, keys=("train/loss",), out_name="loss.png")
  return summary
