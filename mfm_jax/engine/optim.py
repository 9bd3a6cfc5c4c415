"""Optimizer from config: adamw / lion / adafactor / sgd, warmup + cosine/constant/linear schedule,
global-norm clipping, a weight-decay mask, a trainable mask and an optional EMA of the params.

``config.optimizer`` fields (all have defaults in :func:`default_config`)::

  name: adamw | lion | adafactor | sgd     lr: peak learning rate
  schedule: cosine | constant | linear     warmup_steps, end_lr_factor
  b1, b2, eps, weight_decay                 clip_norm (0 = off)
  decay_mask: "ndim>=2" (kernels only) | "all" | "none"
  ema_decay (0 = no EMA params)
"""
from __future__ import annotations

from typing import Any, Callable

import jax
import jax.numpy as jnp
import ml_collections
import optax


def default_config() -> ml_collections.ConfigDict:
  return ml_collections.ConfigDict(dict(
      name="adamw", lr=1e-3, schedule="cosine", warmup_steps=100, end_lr_factor=0.0,
      b1=0.9, b2=0.999, eps=1e-8, weight_decay=0.0, clip_norm=1.0, decay_mask="ndim>=2",
      ema_decay=0.0, momentum=0.9))


def make_schedule(cfg, total_steps: int) -> optax.Schedule:
  warmup = int(min(cfg.warmup_steps, max(total_steps - 1, 0)))
  decay_steps = max(total_steps - warmup, 1)
  end = cfg.lr * cfg.end_lr_factor
  if cfg.schedule == "cosine":
    main = optax.cosine_decay_schedule(cfg.lr, decay_steps, alpha=cfg.end_lr_factor)
  elif cfg.schedule == "linear":
    main = optax.linear_schedule(cfg.lr, end, decay_steps)
  elif cfg.schedule == "constant":
    main = optax.constant_schedule(cfg.lr)
  else:
    raise ValueError(f"config.optimizer.schedule={cfg.schedule!r}: use cosine, linear or constant")
  if warmup == 0:
    return main
  return optax.join_schedules([optax.linear_schedule(0.0, cfg.lr, warmup), main], [warmup])


def decay_mask(kind: str) -> Callable[[Any], Any] | None:
  if kind == "all":
    return None
  if kind == "none":
    return lambda params: jax.tree.map(lambda _: False, params)
  if kind == "ndim>=2":
    return lambda params: jax.tree.map(lambda p: p.ndim >= 2, params)
  raise ValueError(f"config.optimizer.decay_mask={kind!r}: use 'ndim>=2', 'all' or 'none'")


def make_optimizer(cfg, total_steps: int, trainable_mask: Any = None
                   ) -> tuple[optax.GradientTransformation, optax.Schedule]:
  """Returns ``(tx, lr_schedule)``. ``trainable_mask``: bool tree; False leaves get zero updates."""
  sched = make_schedule(cfg, total_steps)
  mask = decay_mask(cfg.decay_mask)
  if cfg.name == "adamw":
    opt = optax.adamw(sched, b1=cfg.b1, b2=cfg.b2, eps=cfg.eps, weight_decay=cfg.weight_decay,
                      mask=mask)
  elif cfg.name == "lion":
    opt = optax.lion(sched, b1=cfg.b1, b2=cfg.b2, weight_decay=cfg.weight_decay, mask=mask)
  elif cfg.name == "adafactor":
    opt = optax.adafactor(sched, weight_decay_rate=cfg.weight_decay or None,
                          weight_decay_mask=mask)
  elif cfg.name == "sgd":
    opt = optax.chain(optax.add_decayed_weights(cfg.weight_decay, mask),
                      optax.sgd(sched, momentum=cfg.momentum or None))
  else:
    raise ValueError(f"config.optimizer.name={cfg.name!r}: use adamw, lion, adafactor or sgd")
  parts = []
  if cfg.clip_norm and cfg.clip_norm > 0:
    parts.append(optax.clip_by_global_norm(cfg.clip_norm))
  parts.append(opt)
  tx = optax.chain(*parts)
  if trainable_mask is not None:
    labels = jax.tree.map(lambda m: "train" if m else "freeze", trainable_mask)
    tx = optax.multi_transform({"train": tx, "freeze": optax.set_to_zero()}, labels)
  return tx, sched


def ema_update(ema: Any, params: Any, decay: float) -> Any:
  return jax.tree.map(lambda e, p: (decay * e + (1.0 - decay) * p).astype(e.dtype), ema, params)


def global_norm(tree: Any) -> jax.Array:
  return optax.tree.norm(tree)


def count_params(tree: Any, mask: Any = None) -> int:
  leaves = jax.tree.leaves(tree)
  if mask is None:
    return int(sum(x.size for x in leaves))
  return int(sum(x.size for x, m in zip(leaves, jax.tree.leaves(mask)) if m))


def all_finite(tree: Any) -> jax.Array:
  leaves = [jnp.all(jnp.isfinite(x)) for x in jax.tree.leaves(tree)
            if jnp.issubdtype(x.dtype, jnp.inexact)]
  return jnp.all(jnp.stack(leaves)) if leaves else jnp.array(True)
