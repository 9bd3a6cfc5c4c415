"""Classifier-free guidance (CFG), guidance rescale and condition dropout.

Batch convention for one-call CFG (diffusers' pipelines): the doubled batch is
``[uncond; cond]`` along axis 0, i.e. rows [0, B) use the null conditioning and rows [B, 2B) the
real one. ``concat_for_cfg(cond, null)`` builds such conditioning trees; a task's
``model_fn_batched(x2, t2)`` closes over them and runs the model once on 2B rows;
``cfg_model_fn`` turns it into an ordinary ``model_fn(x, t)`` for the samplers.
"""
from __future__ import annotations

from typing import Any, Callable

import jax
import jax.numpy as jnp

ModelFn = Callable[[jax.Array, jax.Array], jax.Array]


def _per_example(v: jax.Array, ndim: int) -> jax.Array:
  v = jnp.asarray(v, jnp.float32)
  if v.ndim == 0:
    return v
  if v.ndim != 1:
    raise ValueError(f"scale / rescale must be a scalar or [B], got shape {v.shape}")
  return v.reshape(v.shape + (1,) * (ndim - 1))


def rescale_noise_cfg(guided: jax.Array, cond_out: jax.Array,
                      guidance_rescale: float | jax.Array) -> jax.Array:
  """Guidance rescale (Lin et al. 2023, sec. 3.4; diffusers' ``rescale_noise_cfg``).

  Args:
    guided: [B, ...] the CFG output.
    cond_out: [B, ...] the conditional output.
    guidance_rescale: phi, scalar or [B]; 0 returns ``guided``.

  Returns:
    phi * guided * std(cond) / std(guided) + (1 - phi) * guided, with the (unbiased, as torch)
    std over all non-batch axes.
  """
  axes = tuple(range(1, guided.ndim))
  std_cond = jnp.std(cond_out, axis=axes, keepdims=True, ddof=1)
  std_cfg = jnp.std(guided, axis=axes, keepdims=True, ddof=1)
  phi = _per_example(guidance_rescale, guided.ndim)
  return phi * (guided * (std_cond / std_cfg)) + (1 - phi) * guided


def cfg(cond_out: jax.Array, uncond_out: jax.Array, scale: float | jax.Array,
        rescale: float | jax.Array = 0.0) -> jax.Array:
  """Classifier-free guidance: uncond + scale * (cond - uncond), optionally rescaled.

  Args:
    cond_out: [B, ...] model output with the condition.
    uncond_out: [B, ...] model output with the null condition.
    scale: guidance scale w, scalar or [B] (1 gives ``cond_out``; 0 gives ``uncond_out``).
    rescale: guidance rescale phi in [0, 1], scalar or [B]; a Python 0 skips it.

  Returns:
    guided: [B, ...].
  """
  if cond_out.shape != uncond_out.shape:
    raise ValueError(
        f"cond_out shape {cond_out.shape} != uncond_out shape {uncond_out.shape}")
  w = _per_example(scale, cond_out.ndim)
  guided = uncond_out + w * (cond_out - uncond_out)
  if isinstance(rescale, (int, float)) and rescale == 0:
    return guided
  return rescale_noise_cfg(guided, cond_out, rescale)


def cfg_model_fn(model_fn_batched: ModelFn, scale: float | jax.Array,
                 rescale: float | jax.Array = 0.0) -> ModelFn:
  """Wraps a doubled-batch model into a guided ``model_fn(x, t)`` (one model call per step).

  Args:
    model_fn_batched: ``f(x2, t2) -> out2`` on 2B rows ordered ``[uncond; cond]`` (see module
      docstring); it holds the matching doubled conditioning.
    scale: guidance scale, scalar or [B].
    rescale: guidance rescale, scalar or [B].

  Returns:
    ``model_fn(x, t)``: x [B, ...], t [B] -> guided output [B, ...].
  """
  def model_fn(x, t):
    b = x.shape[0]
    out = model_fn_batched(jnp.concatenate([x, x], axis=0), jnp.concatenate([t, t], axis=0))
    if out.shape[0] != 2 * b:
      raise ValueError(f"model_fn_batched returned {out.shape[0]} rows, expected {2 * b}")
    return cfg(out[b:], out[:b], scale, rescale)
  return model_fn


def concat_for_cfg(cond_tree: Any, null_tree: Any) -> Any:
  """Doubled conditioning ``[null; cond]`` per leaf; null leaves broadcast to the cond leaves."""
  def cat(c, n):
    c = jnp.asarray(c)
    return jnp.concatenate([jnp.broadcast_to(jnp.asarray(n, c.dtype), c.shape), c], axis=0)
  return jax.tree.map(cat, cond_tree, null_tree)


def drop_condition(rng: jax.Array, cond_tree: Any, null_tree: Any, p: float, *,
                   return_mask: bool = False) -> Any:
  """Replaces each example's conditioning by the null conditioning with probability p.

  One Bernoulli(p) draw per example (leading axis) is shared by all leaves, so an example loses
  all of its conditions together; call once per condition for independent dropout.

  Args:
    rng: PRNG key.
    cond_tree: pytree of [B, ...] arrays.
    null_tree: pytree of the same structure; each leaf broadcastable to the matching cond leaf
      (e.g. a learned null embedding [L, D] or [1, L, D] for cond [B, L, D]).
    p: drop probability in [0, 1].
    return_mask: also return the [B] bool mask of dropped examples.

  Returns:
    The conditioning with dropped examples replaced (and the mask if ``return_mask``).
  """
  if not 0.0 <= float(p) <= 1.0:
    raise ValueError(f"p must be in [0, 1], got {p!r}")
  leaves = jax.tree.leaves(cond_tree)
  if not leaves:
    raise ValueError("cond_tree has no leaves")
  batch = jnp.shape(leaves[0])[0] if jnp.ndim(leaves[0]) else None
  for leaf in leaves:
    if jnp.ndim(leaf) < 1 or jnp.shape(leaf)[0] != batch:
      raise ValueError(f"every cond_tree leaf needs the leading batch axis {batch}, "
                       f"got shape {jnp.shape(leaf)}")
  drop = jax.random.bernoulli(rng, p, (batch,))

  def pick(c, n):
    c = jnp.asarray(c)
    keep = drop.reshape((batch,) + (1,) * (c.ndim - 1))
    return jnp.where(keep, jnp.broadcast_to(jnp.asarray(n, c.dtype), c.shape), c)

  out = jax.tree.map(pick, cond_tree, null_tree)
  return (out, drop) if return_mask else out
