"""The Gaussian scene as a fixed-capacity state: init, activation, densify and prune in place.

Written here (no kept library fits: the 3DGS reference densifies by concatenating tensors, which
changes shapes). N Gaussians live in fixed arrays; `alive` (float 0/1, so gradients and optax
never meet a bool) says which slots are in use. Everything is a pure function of arrays, so the
scene is an ordinary pytree of a train state: orbax saves and restores it, jit sees static shapes.

Stored parameters (`gaussians`, each [N, ...]) are the unconstrained values divided by a per-group
learning-rate multiplier `lr_scale[key]` (the value used is stored * lr_scale): with one optimizer
learning rate lr, group `key` moves at about lr * lr_scale[key] per Adam step, which gives the
per-group rates of 3DGS (positions slow, opacities fast) without per-group optimizers.

  means [N, 3]           world positions (canonical, i.e. at t = 0 for the fits here)
  log_scales [N, 3]      log standard deviations
  quats [N, 4]           rotations (w, x, y, z), normalised when used
  opacity_logits [N]     opacity = sigmoid
  colors [N, 3]          colour logits, colour = sigmoid
  features [N, F]        the feature field (rasterised like colour)

`stats` (not trained): alive [N], grad_accum [N] (sum of |dL/d means| over steps where the
Gaussian got a gradient), grad_count [N].

Densify and prune (`densify_and_prune`, every M steps; 3DGS's adaptive density control):
candidates are alive Gaussians whose mean positional gradient norm exceeds `grad_threshold`. The
strongest candidates are paired with the dead slots (as many pairs as both allow): a candidate
whose largest scale is <= `percent_dense` * extent is **cloned** (the copy goes to its dead slot),
a larger one is **split** (two samples from its Gaussian, scales / 1.6: one replaces the parent,
one goes to the dead slot). Then Gaussians with opacity < `min_opacity` (or largest scale above
`max_scale` * extent) are pruned (alive = 0), and the statistics are reset. Only paired dead slots
and split parents are written; the returned `copy_from` [N] lets the caller give each new
Gaussian its source's optimizer moments (zeroed moments with Adam's global bias correction would
make the first hundred steps of a new Gaussian about 5x larger than its neighbours').
"""
from __future__ import annotations

from typing import Any, Mapping

import jax
import jax.numpy as jnp
import numpy as np

from mfm_jax.models import deformation

Array = Any
KEYS = ("means", "log_scales", "quats", "opacity_logits", "colors", "features")
SPLIT_SHRINK = 1.6


def init_gaussians(points: np.ndarray, colors: np.ndarray, point_scales: np.ndarray,
                   capacity: int, feature_dim: int, lr_scale: Mapping[str, float],
                   init_opacity: float = 0.5, seed: int = 0) -> tuple[dict, dict]:
  """Gaussians at given points (NumPy, deterministic), padded with dead slots.

  Args:
    points: [M, 3] world positions; colors: [M, 3] in [0, 1]; point_scales: [M] isotropic std.
    capacity: N; when M > N a random subset of N points is used.
    feature_dim: F.
    lr_scale: per-key learning-rate multipliers (module docstring).
    init_opacity: opacity of the initial Gaussians.
    seed: for the subset and the small random feature init.

  Returns:
    (gaussians {key: [N, ...] float32 stored values}, stats {alive, grad_accum, grad_count}).
  """
  rng = np.random.default_rng(seed)
  m = points.shape[0]
  if m > capacity:
    keep = np.sort(rng.choice(m, capacity, replace=False))
    points, colors, point_scales = points[keep], colors[keep], point_scales[keep]
    m = capacity
  n = capacity
  pad = lambda x, fill: np.concatenate(  # noqa: E731
      [x, np.full((n - m,) + x.shape[1:], fill, np.float32)]).astype(np.float32)
  c = np.clip(colors, 0.02, 0.98)
  raw = dict(
      means=pad(points, 0.0),
      log_scales=pad(np.repeat(np.log(np.maximum(point_scales, 1e-6))[:, None], 3, 1), -5.0),
      quats=pad(np.tile([1.0, 0.0, 0.0, 0.0], (m, 1)), 0.0),
      opacity_logits=pad(np.full(m, np.log(init_opacity / (1 - init_opacity))), -10.0),
      colors=pad(np.log(c / (1 - c)), 0.0),
      features=pad(0.01 * rng.standard_normal((m, feature_dim)), 0.0))
  raw["quats"][m:, 0] = 1.0
  gaussians = {k: jnp.asarray(raw[k] / lr_scale.get(k, 1.0)) for k in KEYS}
  stats = dict(alive=jnp.asarray(np.arange(n) < m, jnp.float32),
               grad_accum=jnp.zeros(n, jnp.float32), grad_count=jnp.zeros(n, jnp.float32))
  return gaussians, stats


def unconstrained(gaussians: Mapping[str, Array], lr_scale: Mapping[str, float]) -> dict:
  """Stored values -> unconstrained values (stored * lr_scale)."""
  return {k: gaussians[k] * lr_scale.get(k, 1.0) for k in KEYS}


def stored(values: Mapping[str, Array], lr_scale: Mapping[str, float]) -> dict:
  """Unconstrained values -> stored values."""
  return {k: values[k] / lr_scale.get(k, 1.0) for k in KEYS}


def activate(gaussians: Mapping[str, Array], lr_scale: Mapping[str, float]) -> dict:
  """Renderer inputs: means [N, 3], log_scales [N, 3], quats [N, 4], opacities [N],
  colors [N, 3] in (0, 1), features [N, F]."""
  u = unconstrained(gaussians, lr_scale)
  return dict(means=u["means"], log_scales=u["log_scales"], quats=u["quats"],
              opacities=jax.nn.sigmoid(u["opacity_logits"]), colors=jax.nn.sigmoid(u["colors"]),
              features=u["features"])


def accumulate(stats: Mapping[str, Array], mean_grads: Array) -> dict:
  """Adds one step's positional gradient norms ([N, 3] d loss / d stored means)."""
  norm = jnp.linalg.norm(mean_grads, axis=-1)
  seen = (norm > 0).astype(norm.dtype) * stats["alive"]
  return dict(stats, grad_accum=stats["grad_accum"] + norm * seen,
              grad_count=stats["grad_count"] + seen)


def densify_and_prune(gaussians: Mapping[str, Array], stats: Mapping[str, Array], rng: Array, *,
                      lr_scale: Mapping[str, float], extent: float, grad_threshold: float,
                      percent_dense: float = 0.01, min_opacity: float = 0.005,
                      max_scale: float = 0.0, densify: bool | Array = True
                      ) -> tuple[dict, dict, Array]:
  """One round of adaptive density control inside the capacity (module docstring).

  Args:
    gaussians: stored values {key: [N, ...]}; stats: {alive, grad_accum, grad_count} [N].
    rng: key for the split samples.
    lr_scale: per-key multipliers; extent: scene radius (world units).
    grad_threshold: mean |dL/d stored means| above which a Gaussian is densified.
    percent_dense: clone when max scale <= percent_dense * extent, else split.
    min_opacity: prune below this opacity.
    max_scale: prune when max scale > max_scale * extent (0: off).
    densify: False skips clone / split (prune only); may be traced.

  Returns:
    (gaussians, stats with statistics reset, copy_from [N] int32: the row each slot's
    optimizer state should come from: its source for a filled dead slot, itself otherwise).
  """
  n = stats["alive"].shape[0]
  alive = stats["alive"] > 0.5
  u = unconstrained(gaussians, lr_scale)
  avg = stats["grad_accum"] / jnp.maximum(stats["grad_count"], 1.0)
  cand = alive & (stats["grad_count"] > 0) & (avg > grad_threshold) & jnp.asarray(densify)
  src = jnp.argsort(-jnp.where(cand, avg, -1.0), stable=True)  # candidates first, strongest first
  dst = jnp.argsort(alive.astype(jnp.int32), stable=True)      # dead slots first
  pairs = jnp.minimum(jnp.sum(cand), jnp.sum(~alive))
  ok = jnp.arange(n) < pairs
  big = jnp.max(u["log_scales"], -1) > jnp.log(percent_dense * extent)
  split = ok & big[src]

  # Children of each paired source row, in pair order [N, ...]: stored values are copied as
  # they are (a clone is bit-exact); only split rows get new means / log-scales.
  par = {k: v[src] for k, v in gaussians.items()}
  pu = {k: u[k][src] for k in ("means", "log_scales", "quats")}
  std = jnp.exp(pu["log_scales"])
  eps = jax.random.normal(rng, (2, n, 3), std.dtype)
  samples = pu["means"][None] + deformation.quat_rotate(
      deformation.quat_normalize(pu["quats"])[None], eps * std[None])
  halves = dict(means=samples / lr_scale.get("means", 1.0),
                log_scales=jnp.broadcast_to(pu["log_scales"] - jnp.log(SPLIT_SHRINK), (2, n, 3))
                / lr_scale.get("log_scales", 1.0))
  splitc = split[:, None]
  child = dict(par, **{k: jnp.where(splitc, h[0], par[k]) for k, h in halves.items()})
  parent = dict(par, **{k: h[1] for k, h in halves.items()})

  none = n  # out-of-range index: dropped by the scatter
  to_dst = jnp.where(ok, dst, none)
  to_src = jnp.where(split, src, none)
  new = {}
  for k, v in gaussians.items():
    v = v.at[to_dst].set(child[k], mode="drop")
    new[k] = v.at[to_src].set(parent[k], mode="drop")
  alive_new = alive.at[to_dst].set(True, mode="drop")
  copy_from = jnp.arange(n).at[to_dst].set(src, mode="drop")
  nu = unconstrained(new, lr_scale)

  prune = jax.nn.sigmoid(nu["opacity_logits"]) < min_opacity
  if max_scale:
    prune |= jnp.max(nu["log_scales"], -1) > jnp.log(max_scale * extent)
  alive_new &= ~prune
  zeros = jnp.zeros(n, jnp.float32)
  new_stats = dict(stats, alive=alive_new.astype(jnp.float32), grad_accum=zeros, grad_count=zeros)
  return new, new_stats, copy_from


def voxel_downsample(points: np.ndarray, colors: np.ndarray, voxel: float
                     ) -> tuple[np.ndarray, np.ndarray]:
  """Mean point and colour per occupied voxel of side `voxel` (evens out the density of clouds
  merged from several views, whose near fields are much denser than their far fields)."""
  if voxel <= 0:
    return points, colors
  keys = np.floor(points / voxel).astype(np.int64)
  _, inv, counts = np.unique(keys, axis=0, return_inverse=True, return_counts=True)
  inv = inv.reshape(-1)
  mean = lambda x: np.stack([np.bincount(inv, x[:, j]) for j in range(x.shape[1])], -1  # noqa: E731
                            ) / counts[:, None]
  return mean(points).astype(np.float32), mean(colors).astype(np.float32)


def knn_scale(points: np.ndarray, k: int = 3) -> np.ndarray:
  """[M] mean distance of each point [M, 3] to its k nearest neighbours (3DGS's initial scale)."""
  from scipy.spatial import cKDTree  # pylint: disable=g-import-not-at-top
  dist, _ = cKDTree(points).query(points, k=k + 1)
  return np.maximum(dist[:, 1:].mean(-1), 1e-6).astype(np.float32)


def backproject(depth: np.ndarray, rgb: np.ndarray, fx: float, fy: float, cx: float, cy: float,
                world_to_camera: np.ndarray, stride: int = 1) -> tuple[np.ndarray, ...]:
  """Pixels with depth > 0 -> world points (OpenCV camera; depth is camera z).

  Args:
    depth: [H, W]; rgb: [H, W, 3] in [0, 1]; fx, fy, cx, cy: intrinsics in pixels;
    world_to_camera: [4, 4]; stride: take every stride-th pixel along both axes.

  Returns:
    (points [M, 3], colors [M, 3], footprints [M]: the pixel size at that depth, z / fx).
  """
  h, w = depth.shape
  v, u = np.mgrid[0:h:stride, 0:w:stride]
  z = depth[v, u]
  keep = z > 0
  u, v, z = u[keep], v[keep], z[keep]
  cam = np.stack([(u - cx) / fx * z, (v - cy) / fy * z, z], -1)
  rot, trans = world_to_camera[:3, :3], world_to_camera[:3, 3]
  pts = (cam - trans) @ rot  # R^T (x - t)
  return pts.astype(np.float32), rgb[v, u].astype(np.float32), (z / fx).astype(np.float32)


def check_gaussians(gaussians: Mapping[str, Array], stats: Mapping[str, Array],
                    lr_scale: Mapping[str, float]) -> None:
  """Host-side value checks of a stored scene (not for jitted code; the jitted fit and render
  do not check): every alive slot has finite values, a quaternion of non-zero norm and finite
  positive scales. Errors name the key and the slot index."""
  alive = np.asarray(stats["alive"]) > 0.5
  for k in KEYS:
    v = np.asarray(gaussians[k])
    if v.shape[0] != alive.shape[0]:
      raise ValueError(f"scene: gaussians[{k!r}] has {v.shape[0]} rows, the alive mask "
                       f"{alive.shape[0]}")
    bad = ~np.isfinite(v.reshape(v.shape[0], -1)).all(-1) & alive
    if bad.any():
      raise ValueError(f"scene: gaussians[{k!r}] of Gaussian {int(np.argmax(bad))} is not finite")
  u = unconstrained({k: np.asarray(gaussians[k]) for k in KEYS}, lr_scale)
  norms = np.linalg.norm(u["quats"], axis=-1)
  bad = (norms < 1e-12) & alive
  if bad.any():
    raise ValueError(f"scene: the quaternion of Gaussian {int(np.argmax(bad))} has zero norm")
  scales = np.exp(u["log_scales"])
  bad = ~(scales > 0).all(-1) & alive
  if bad.any():
    raise ValueError(f"scene: Gaussian {int(np.argmax(bad))} has scale "
                     f"{scales[int(np.argmax(bad))]} (must be > 0)")


def insert(gaussians: Mapping[str, Array], stats: Mapping[str, Array],
           new: Mapping[str, np.ndarray], lr_scale: Mapping[str, float]) -> tuple[dict, dict]:
  """Writes M new Gaussians into dead slots (host side; shapes unchanged).

  Args:
    gaussians, stats: the stored scene ([N, ...] each).
    new: activated values of the M new Gaussians: means [M, 3], scales [M, 3] (> 0), quats
      [M, 4] (non-zero), opacities [M] in (0, 1), colors [M, 3] in (0, 1), features [M, F].
    lr_scale: the per-key multipliers of the stored values.

  Returns:
    (gaussians, stats) with the new Gaussians alive in the lowest dead slots.

  Raises:
    ValueError naming the item: more new Gaussians than dead slots (N over the capacity), a
    scale <= 0, a zero quaternion, an opacity or colour outside (0, 1), a wrong shape.
  """
  alive = np.asarray(stats["alive"]) > 0.5
  cap = alive.shape[0]
  m = int(np.asarray(new["means"]).shape[0])
  dead = np.flatnonzero(~alive)
  if m > len(dead):
    raise ValueError(f"scene: inserting {m} Gaussians exceeds the capacity: {len(dead)} of "
                     f"{cap} slots are free ({cap - len(dead)} alive)")
  feat_dim = np.asarray(gaussians["features"]).shape[1]
  want = dict(means=(m, 3), scales=(m, 3), quats=(m, 4), opacities=(m,), colors=(m, 3),
              features=(m, feat_dim))
  for k, shape in want.items():
    if k not in new or tuple(np.shape(new[k])) != shape:
      raise ValueError(f"scene.insert: new[{k!r}] must have shape {list(shape)}, got "
                       f"{np.shape(new[k]) if k in new else 'nothing'}")
  nv = {k: np.asarray(new[k], np.float64) for k in want}
  for k, v in nv.items():
    bad = ~np.isfinite(v.reshape(m, -1)).all(-1)
    if bad.any():
      raise ValueError(f"scene.insert: new Gaussian {int(np.argmax(bad))}: {k} is not finite")
  checks = (("scales", ~(nv["scales"] > 0).all(-1), "must be > 0"),
            ("quats", np.linalg.norm(nv["quats"], axis=-1) < 1e-12, "has zero norm"),
            ("opacities", ~((nv["opacities"] > 0) & (nv["opacities"] < 1)), "must lie in (0, 1)"),
            ("colors", ~((nv["colors"] > 0) & (nv["colors"] < 1)).all(-1), "must lie in (0, 1)"))
  for k, bad, what in checks:
    if bad.any():
      i = int(np.argmax(bad))
      raise ValueError(f"scene.insert: new Gaussian {i}: {k} {nv[k][i]} {what}")
  logit = lambda p: np.log(p / (1 - p))  # noqa: E731
  values = dict(means=nv["means"], log_scales=np.log(nv["scales"]), quats=nv["quats"],
                opacity_logits=logit(nv["opacities"]), colors=logit(nv["colors"]),
                features=nv["features"])
  slots = dead[:m]
  out = {}
  for k in KEYS:
    v = np.array(gaussians[k], copy=True)
    v[slots] = values[k] / lr_scale.get(k, 1.0)
    out[k] = jnp.asarray(v, jnp.asarray(gaussians[k]).dtype)
  new_alive = np.asarray(stats["alive"], np.float32).copy()
  new_alive[slots] = 1.0
  return out, dict(stats, alive=jnp.asarray(new_alive))
