"""Tiles, fixed-size candidate lists and front-to-back compositing (for gaussians.py).

Two levels of tiles, all shapes static:
  tiles (`tile_size`, 16 px): each lists the K_t = `max_per_tile` nearest-in-depth
    Gaussians whose α >= 1/255 bounding box touches it, chosen from all N;
  sub-tiles (`subtile_size`, 4 px) of each tile: each lists the K_s =
    `max_per_subtile` nearest of its tile's list that touch it; pixels composite
    exactly these K_s candidates.
The coarse level keeps the selection cheap (T_t x N / 32 words instead of
T_s x N), the fine level keeps the per-pixel work at K_s (a tile's list is
shared by few of its pixels when splats are small).

Selection of the first K hits of a boolean [R, M] mask (M in depth order): pack
the mask into 32-bit words, cumulative popcount over the M / 32 words, binary
search for the word of the k-th hit and a 5-step select of the bit in the word
(no sort, 32x less scan work than a cumsum over M).
"""
from __future__ import annotations

import math
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

Array = Any

ALPHA_MAX = 0.99         # alpha clamp
ALPHA_MIN = 1.0 / 255.0  # contributions below this are skipped
T_MIN = 1e-4             # compositing stops before T would drop below this
_HI = jax.lax.Precision.HIGHEST


def tile_bounds(width: int, height: int, tile_size: int):
  """Pixel-centre bounds of the tiles, row-major: (ny, nx, x0, x1, y0, y1), each [T] NumPy."""
  nx, ny = -(-width // tile_size), -(-height // tile_size)
  gx, gy = np.meshgrid(np.arange(nx) * tile_size, np.arange(ny) * tile_size)
  x0, y0 = gx.reshape(-1), gy.reshape(-1)
  x1, y1 = np.minimum(x0 + tile_size, width) - 1, np.minimum(y0 + tile_size, height) - 1
  return ny, nx, x0, x1, y0, y1


def pixel_grid(width: int, height: int, tile_size: int, subtile_size: int) -> np.ndarray:
  """Pixel centres (u, v) [T, S, P, 2] by tile, sub-tile (row-major) and pixel (row-major)."""
  _, _, x0, _, y0, _ = tile_bounds(width, height, tile_size)
  s = tile_size // subtile_size
  sy, sx = np.divmod(np.arange(s * s), s)
  py, px = np.divmod(np.arange(subtile_size ** 2), subtile_size)
  u = x0[:, None, None] + sx[None, :, None] * subtile_size + px[None, None, :]
  v = y0[:, None, None] + sy[None, :, None] * subtile_size + py[None, None, :]
  return np.stack([u, v], -1).astype(np.float32)


def untile(x: Array, width: int, height: int, tile_size: int, subtile_size: int) -> Array:
  """[T, S, P, ...] in `pixel_grid` order -> [H, W, ...]."""
  ny, nx = -(-height // tile_size), -(-width // tile_size)
  s, f = tile_size // subtile_size, subtile_size
  rest = x.shape[3:]
  x = x.reshape((ny, nx, s, s, f, f) + rest)
  x = jnp.transpose(x, (0, 2, 4, 1, 3, 5) + tuple(range(6, 6 + len(rest))))
  return x.reshape((ny * tile_size, nx * tile_size) + rest)[:height, :width]


def pack_bits(mask: Array) -> Array:
  """[..., M] bool -> [..., ceil(M / 32)] uint32, bit j of word w = mask[32 w + j]."""
  m = mask.shape[-1]
  num_words = -(-m // 32)
  mask = jnp.pad(mask, [(0, 0)] * (mask.ndim - 1) + [(0, num_words * 32 - m)])
  bits = mask.reshape(mask.shape[:-1] + (num_words, 32)).astype(jnp.uint32)
  return jnp.sum(bits << jnp.arange(32, dtype=jnp.uint32), -1, dtype=jnp.uint32)


def first_hits(words: Array, m: int, k: int) -> tuple[Array, Array]:
  """Positions of the first k set bits of each row of a packed mask.

  Args:
    words: [R, Nw] uint32 from `pack_bits` of an [R, m] mask.
    m: the mask's length (returned for missing entries).
    k: how many to find (static).

  Returns:
    slot: [R, k] int32 positions in increasing order; m where a row has fewer.
    counts: [R] number of set bits per row.
  """
  num_words = words.shape[-1]
  per_word = jax.lax.population_count(words).astype(jnp.int32)
  cum = jnp.cumsum(per_word, axis=-1)  # [R, Nw]
  ranks = jnp.arange(1, k + 1, dtype=jnp.int32)
  word = jax.vmap(lambda c: jnp.searchsorted(c, ranks, side="left", method="scan"))(cum)
  found = word < num_words
  word = jnp.minimum(word, num_words - 1)  # [R, k]
  rank = ranks[None] - jnp.take_along_axis(cum - per_word, word, axis=1)  # 1-based, in word
  w = jnp.take_along_axis(words, word, axis=1)
  pos = jnp.zeros_like(w)
  for half in (16, 8, 4, 2, 1):  # the rank-th set bit of w
    low = jax.lax.population_count((w >> pos) & jnp.uint32((1 << half) - 1)).astype(jnp.int32)
    up = rank > low
    pos = pos + jnp.where(up, jnp.uint32(half), jnp.uint32(0))
    rank = rank - jnp.where(up, low, 0)
  return jnp.where(found, word * 32 + pos.astype(jnp.int32), m), cum[:, -1]


def candidate_lists(mean2d: Array, extent: Array, valid: Array, order: Array, *, width: int,
                    height: int, tile_size: int, max_per_tile: int, subtile_size: int,
                    max_per_subtile: int) -> dict:
  """Per-sub-tile lists of Gaussian ids, nearest first.

  A box touches a tile iff it overlaps the tile's column span and its row span,
  so the packed [tiles, N] mask is the AND of packed per-column and per-row
  masks ([nx + ny, N] comparisons, not [nx ny, N]); likewise for sub-tiles.

  Args:
    mean2d: [N, 2]; extent: [N, 2] half-sizes of the α >= 1/255 boxes; valid: [N];
    order: [N] Gaussian ids sorted by depth (invalid ones anywhere).

  Returns:
    dict(ids [T, S, K_s] Gaussian ids, ok [T, S, K_s] real entries,
    tile_counts [T] and subtile_counts [T, S]: how many were listed before truncation
    (sub-tile counts are taken within their tile's truncated list)).
  """
  n = order.shape[0]
  sg = jax.lax.stop_gradient
  lo, hi = sg(mean2d - extent)[order], sg(mean2d + extent)[order]  # [N, 2], depth order
  dt = lo.dtype
  ny, nx, x0, x1, y0, y1 = tile_bounds(width, height, tile_size)

  def span(axis, a0, a1, pos=None):  # boxes overlapping [a0, a1] along one axis, packed
    l, h = (lo[:, axis], hi[:, axis]) if pos is None else (lo[pos, axis], hi[pos, axis])
    return pack_bits((h >= jnp.asarray(a0, dt)[..., None]) & (l <= jnp.asarray(a1, dt)[..., None]))

  cols = span(0, x0[:nx], x1[:nx]) & pack_bits(valid[order])[None]  # [nx, N / 32]
  rows = span(1, y0[::nx], y1[::nx])  # [ny, N / 32]
  words = (rows[:, None] & cols[None]).reshape(ny * nx, -1)  # [T, N / 32], row-major tiles
  slot, tile_counts = first_hits(words, n, max_per_tile)  # [T, K_t]
  tile_ok = slot < n
  tile_pos = jnp.minimum(slot, n - 1)  # positions in `order`

  s = tile_size // subtile_size
  off = np.arange(s) * subtile_size
  sx0, sy0 = x0[:, None] + off, y0[:, None] + off  # [T, s] sub-tile column / row starts
  sx1, sy1 = np.minimum(sx0 + subtile_size, width) - 1, np.minimum(sy0 + subtile_size, height) - 1
  pos = tile_pos[:, None, :]  # [T, 1, K_t]
  sub_cols = span(0, sx0, sx1, pos) & pack_bits(tile_ok)[:, None]  # [T, s, K_t / 32]
  sub_rows = span(1, sy0, sy1, pos)
  sub_words = (sub_rows[:, :, None] & sub_cols[:, None, :]).reshape(ny * nx * s * s, -1)
  sub_slot, sub_counts = first_hits(sub_words, max_per_tile, max_per_subtile)
  sub_slot = sub_slot.reshape(ny * nx, s * s, max_per_subtile)
  ok = sub_slot < max_per_tile
  pos = jnp.take_along_axis(pos, jnp.minimum(sub_slot, max_per_tile - 1), axis=2)
  return dict(ids=order[pos], ok=ok, tile_counts=tile_counts,
              subtile_counts=sub_counts.reshape(ny * nx, s * s))


def cumsum(x: Array, block: int = 16) -> Array:
  """Inclusive cumulative sum over the last axis, blocked: [..., K] -> [..., K].

  A [block, block] triangular matmul inside blocks plus a short cumsum over block
  totals: on CPU several times faster than `jnp.cumsum` (an associative scan) for
  K = 64..512, and MXU work on TPU (at full float32 precision).
  """
  k = x.shape[-1]
  pad = -k % block
  y = jnp.pad(x, [(0, 0)] * (x.ndim - 1) + [(0, pad)]) if pad else x
  y = y.reshape(y.shape[:-1] + (y.shape[-1] // block, block))
  y = jnp.matmul(y, jnp.triu(jnp.ones((block, block), x.dtype)), precision=_HI)
  totals = y[..., -1]
  y = y + (jnp.cumsum(totals, axis=-1) - totals)[..., None]
  return y.reshape(y.shape[:-2] + (-1,))[..., :k]


def tile_forward(pix, mean2d, conic, opacity, ok, values):
  """The per-pixel terms of one sub-tile; shapes as in `composite`."""
  d = pix[:, None, :] - mean2d[None]  # [P, K, 2]
  dx, dy = d[..., 0], d[..., 1]
  power = (-0.5 * (conic[None, :, 0] * dx * dx + conic[None, :, 2] * dy * dy)
           - conic[None, :, 1] * dx * dy)
  gauss = jnp.exp(jnp.minimum(power, 0.0))  # [P, K]
  raw = opacity[None] * gauss
  keep = ok[None] & (power <= 0) & (raw >= ALPHA_MIN)
  alpha = jnp.where(keep, jnp.minimum(ALPHA_MAX, raw), 0.0)
  log_t = jnp.log1p(-alpha)  # α <= 0.99: finite
  cum = cumsum(log_t)  # log of the inclusive transmittance
  # Stop before the Gaussian that takes T below T_MIN, and after it too (T only falls):
  # `live` is a prefix, so the exclusive transmittance of live ones is exp(cum - log_t)
  # and the transmittance left is that after the last live one.
  live = cum >= math.log(T_MIN)
  t_excl = jnp.exp(cum - log_t)
  weights = jnp.where(live, alpha * t_excl, 0.0)  # α_i T_i
  t_final = jnp.exp(jnp.min(jnp.where(live, cum, 0.0), axis=-1))
  out = jnp.matmul(weights, values, precision=_HI)
  return out, t_final, dict(dx=dx, dy=dy, gauss=gauss, raw=raw, keep=keep, alpha=alpha,
                            live=live, t_excl=t_excl, weights=weights)


@jax.custom_vjp
def composite(pix: Array, mean2d: Array, conic: Array, opacity: Array, ok: Array,
              values: Array):
  """Front-to-back compositing of K depth-sorted candidates over P pixels.

  The backward pass is written by hand (as in the reference rasteriser): it
  recomputes the per-pixel terms from the inputs (the effect of `jax.checkpoint`),
  so nothing of size [P, K] is kept between the passes.

  Args:
    pix: [P, 2] pixel centres; mean2d: [K, 2]; conic: [K, 3] (a, b, c) of Σ'^{-1};
    opacity: [K]; ok: [K] bool (a real candidate); values: [K, C] what is composited.

  Returns:
    out: [P, C] Σ_i values_i α_i T_i; t_final: [P] transmittance left.
  """
  out, t_final, _ = tile_forward(pix, mean2d, conic, opacity, ok, values)
  return out, t_final


def _composite_fwd(pix, mean2d, conic, opacity, ok, values):
  out, t_final, _ = tile_forward(pix, mean2d, conic, opacity, ok, values)
  return (out, t_final), (pix, mean2d, conic, opacity, ok, values)


def _composite_bwd(res, cts):
  pix, mean2d, conic, opacity, ok, values = res
  g_out, g_t = cts  # [P, C], [P]
  _, t_final, r = tile_forward(pix, mean2d, conic, opacity, ok, values)
  gv = jnp.matmul(g_out, values.T, precision=_HI)  # [P, K] g·v_i
  contrib = r["weights"] * gv
  after = jnp.sum(contrib, -1, keepdims=True) - cumsum(contrib)  # Σ_{j>i} w_j g·v_j
  # out = Σ α_i T_i v_i and T_final = Π (1 - α_j) over the live prefix:
  # ∂/∂α_i = T_i g·v_i - (Σ_{j>i} w_j g·v_j + g_T T_final) / (1 - α_i).
  d_alpha = jnp.where(r["live"], r["t_excl"] * gv
                      - (after + (g_t * t_final)[:, None]) / (1.0 - r["alpha"]), 0.0)
  d_raw = jnp.where(r["keep"] & (r["raw"] < ALPHA_MAX), d_alpha, 0.0)
  d_opacity = jnp.sum(d_raw * r["gauss"], 0)
  d_power = d_raw * r["raw"]  # power <= 0 wherever d_raw != 0
  dx, dy = r["dx"], r["dy"]
  a, b, c = conic[:, 0], conic[:, 1], conic[:, 2]
  d_conic = jnp.stack([jnp.sum(d_power * dx * dx, 0) * -0.5, -jnp.sum(d_power * dx * dy, 0),
                       jnp.sum(d_power * dy * dy, 0) * -0.5], -1)
  d_mean = jnp.stack([jnp.sum(d_power * (a * dx + b * dy), 0),
                      jnp.sum(d_power * (b * dx + c * dy), 0)], -1)
  d_values = jnp.matmul(r["weights"].T, g_out, precision=_HI)
  return None, d_mean, d_conic, d_opacity, None, d_values


composite.defvjp(_composite_fwd, _composite_bwd)


def rasterize(pix: Array, mean2d: Array, conic: Array, opacity: Array, ok: Array,
              values: Array, tile_batch: int | None) -> tuple[Array, Array]:
  """`composite` over all sub-tiles.

  Args:
    pix: [T, S, P, 2]; mean2d: [T, S, K, 2]; conic: [T, S, K, 3]; opacity: [T, S, K];
    ok: [T, S, K]; values: [T, S, K, C].
    tile_batch: tiles per `lax.map` step, or None for all at once (`vmap`).

  Returns:
    out: [T, S, P, C]; t_final: [T, S, P].
  """
  per_tile = jax.vmap(composite)  # over the sub-tiles of a tile
  args = (pix, mean2d, conic, opacity, ok, values)
  if tile_batch is None:
    return jax.vmap(per_tile)(*args)
  return jax.lax.map(lambda a: per_tile(*a), args, batch_size=tile_batch)
