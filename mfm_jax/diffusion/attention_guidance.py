"""Trajectory control without training (Mojito, directional motion control).

Given per-frame boxes for a subject text token, the latent is pushed, during the first ``k``
sampling steps, down the gradient of an energy on the cross-attention maps of the denoiser:

  E = sum_{t'} (1 - sum_{in box} A_t' / sum A_t')^2

where ``A_t'`` [H', W'] is the cross-attention probability of the subject token over the video
tokens of token-frame t', averaged over heads and over the chosen layers. Each of the first ``k``
steps takes ``n_inner`` updates ``x <- x - eta * dE/dx`` (through the model forward at the step's
timestep, maps sown via ``mutable=["intermediates"]``), then the sampler's normal step (with
classifier-free guidance, which lives in ``model_fn``).

Conventions.

* Boxes: [T, 4] ``(x0, y0, x1, y1)`` in normalised image coordinates (x right, y down, [0, 1]),
  one per video frame (the frames the model generates, not the stored clip's).
* Token grid: the DiT's tubelets are (pt, ph, pw), so its tokens form a grid (T', H', W') =
  (T/pt, H/ph, W/pw). Token (t', i, j) covers frames [t'*pt, (t'+1)*pt) and the image cell
  x in [j/W', (j+1)/W'], y in [i/H', (i+1)/H']. Its in-box weight is the fraction of the cell's
  area inside the box, averaged over the pt frames of its tubelet (``token_box_weights``): a
  temporal patch sees the union of its frames' motion, and the weight is the share of that
  tubelet which lies inside the subject's boxes. The energy sums over the T' token-frames.
* ``layers``: indices of the DiT blocks whose ``cross_attn`` maps are averaged
  (``intermediates/block_{i}/cross_attn/attn_maps`` or, with ``scan_blocks``, the stacked
  ``intermediates/blocks/cross_attn/attn_maps``).

``guided_sample`` runs any sampler of ``samplers`` (it resolves the same ``Plan`` and repeats its
scan, adding the guidance before the model call); with ``eta = 0`` it returns what
``samplers.sample`` returns.
"""
from __future__ import annotations

from typing import Any, Callable, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from mfm_jax.diffusion import samplers

EnergyFn = Callable[[jax.Array, jax.Array], jax.Array]


def centers_to_boxes(centers, size) -> np.ndarray | jax.Array:
  """A trajectory of centres -> boxes of a fixed size around them, clipped to the image.

  Args:
    centers: [..., T, 2] normalised (x, y).
    size: box (width, height) in normalised units, or one number for a square.

  Returns:
    [..., T, 4] ``(x0, y0, x1, y1)``.
  """
  xp = jnp if isinstance(centers, jax.Array) else np
  w, h = (size, size) if np.ndim(size) == 0 else size
  half = xp.asarray([w / 2, h / 2], xp.float32)
  c = xp.asarray(centers, xp.float32)
  return xp.clip(xp.concatenate([c - half, c + half], -1), 0.0, 1.0)


def token_box_weights(boxes, grid: Sequence[int], temporal_patch: int):
  """In-box weight of every video token (module docstring): [..., T, 4] -> [..., T', H'*W'].

  Args:
    boxes: [..., T, 4] per-frame boxes (x0, y0, x1, y1), normalised; T = T' * temporal_patch.
    grid: the DiT's token grid (T', H', W').
    temporal_patch: pt, frames per token-frame.
  """
  xp = jnp if isinstance(boxes, jax.Array) else np
  tp, hp, wp = (int(g) for g in grid)
  boxes = xp.asarray(boxes, xp.float32)
  if boxes.shape[-1] != 4 or boxes.shape[-2] != tp * temporal_patch:
    raise ValueError(f"boxes must be [..., T={tp * temporal_patch}, 4] for grid {tuple(grid)} "
                     f"and temporal_patch {temporal_patch}, got {boxes.shape}")

  def overlap(lo, hi, n):  # [..., T] box interval vs the n cells of [0, 1] -> [..., T, n]
    edges = np.arange(n + 1, dtype=np.float32) / n
    a = xp.maximum(lo[..., None], edges[:-1])
    b = xp.minimum(hi[..., None], edges[1:])
    return xp.clip(b - a, 0.0, None) * n   # fraction of the cell's length
  fx = overlap(boxes[..., 0], boxes[..., 2], wp)   # [..., T, W']
  fy = overlap(boxes[..., 1], boxes[..., 3], hp)   # [..., T, H']
  cover = fy[..., :, None] * fx[..., None, :]       # [..., T, H', W']
  lead = cover.shape[:-3]
  cover = cover.reshape(*lead, tp, temporal_patch, hp * wp).mean(-2)
  return cover


def attention_energy(maps, weights, eps: float = 1e-12):
  """E = sum_t' (1 - sum_in A / sum A)^2 per example.

  Args:
    maps: [B, T', P] attention of the subject token over the P = H'*W' tokens of each
      token-frame (non-negative).
    weights: [B, T', P] in-box weights in [0, 1] (``token_box_weights``).
    eps: guards a frame with no attention mass (its ratio is then 0, its energy 1).

  Returns:
    [B] energies, each in [0, T'].
  """
  xp = jnp if isinstance(maps, jax.Array) or isinstance(weights, jax.Array) else np
  inside = (maps * weights).sum(-1) / (maps.sum(-1) + eps)
  return xp.square(1.0 - inside).sum(-1)


def cross_attention_maps(intermediates: dict, layers: Sequence[int]) -> list[jax.Array]:
  """The sown cross-attention probabilities of the chosen DiT blocks, each [B, N, Lq, Lk]."""
  out = []
  if "blocks" in intermediates:   # scan_blocks: maps stacked on a leading depth axis
    stacked = intermediates["blocks"]["cross_attn"]["attn_maps"][0]
    return [stacked[i] for i in layers]
  for i in layers:
    try:
      out.append(intermediates[f"block_{i}"]["cross_attn"]["attn_maps"][0])
    except KeyError:
      raise KeyError(f"guidance layer {i}: no intermediates/block_{i}/cross_attn/attn_maps "
                     f"(blocks sown: {sorted(intermediates)})") from None
  return out


def subject_maps(maps: Sequence[jax.Array], token, grid: Sequence[int]) -> jax.Array:
  """Head- and layer-averaged attention of one text token per example.

  Args:
    maps: list of [B, N, Lq, Lk] probabilities (Lq = T'*H'*W' video tokens).
    token: [B] int (or an int), the subject's index among the Lk text tokens.
    grid: (T', H', W').

  Returns:
    [B, T', H'*W'].
  """
  if not maps:
    raise ValueError("subject_maps: no layers chosen (config guidance.layers is empty)")
  a = jnp.mean(jnp.stack([m.mean(1) for m in maps]), 0)     # [B, Lq, Lk]
  b = a.shape[0]
  token = jnp.broadcast_to(jnp.asarray(token, jnp.int32), (b,))
  a = jnp.take_along_axis(a, token[:, None, None], axis=-1)[..., 0]   # [B, Lq]
  tp, hp, wp = grid
  return a.reshape(b, tp, hp * wp)


def guided_sample(model_fn: samplers.ModelFn, energy_fn: EnergyFn, x_T: jax.Array, *,
                  eta: float | jax.Array, guidance_steps: int, n_inner: int = 1,
                  name: str, rng: jax.Array | None = None, **settings: Any) -> jax.Array:
  """A ``samplers`` loop with attention-energy guidance in its first ``guidance_steps`` steps.

  Args:
    model_fn: the sampler's ``model_fn(x, t)`` (CFG included), as for ``samplers.sample``.
    energy_fn: ``energy_fn(x_in, t) -> [B]`` energies at the scaled model input ``x_in`` and
      timestep ``t`` [B] (the conditional branch's maps; see the module docstring).
    x_T: [B, ...] standard-normal noise.
    eta: step size (scalar; may be traced). 0 gives the unguided sampler.
    guidance_steps: k, the number of leading sampling steps that are guided.
    n_inner: gradient steps per guided sampling step.
    name, rng, **settings: as ``samplers.sample``.

  Returns:
    x_0: [B, ...] with x_T's dtype.
  """
  plan = samplers.make_plan(name, **settings)
  if plan.stochastic and rng is None:
    raise ValueError(f"sampler {name!r} with these settings is stochastic: pass rng")
  if guidance_steps < 0 or n_inner < 0:
    raise ValueError(f"guidance_steps ({guidance_steps}) and n_inner ({n_inner}) must be >= 0")
  x_T = jnp.asarray(x_T)
  dtype, batch = x_T.dtype, x_T.shape[0]
  eta = jnp.asarray(eta, jnp.float32)

  def guide(x32, row):
    t = jnp.broadcast_to(row["t"], (batch,))
    grad = jax.grad(lambda z: jnp.sum(
        energy_fn(samplers.scale_model_input(plan, z, row).astype(dtype), t)))

    def inner(_, z):
      return z - eta * grad(z).astype(jnp.float32)
    return jax.lax.fori_loop(0, n_inner, inner, x32)

  def pre_step(x32, row):
    return jax.lax.cond(row["i"] < guidance_steps, guide, lambda z, r: z, x32, row)

  return samplers._loop(model_fn, x_T, rng, plan, pre_step)  # pylint: disable=protected-access
