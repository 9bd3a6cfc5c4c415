"""Differentiable 3D Gaussian splatting in pure JAX with static shapes.

Written here (no kept library fits): the public JAX 3DGS port is a CUDA custom
call; this one is plain `jax.numpy`, so it jits, differentiates, shards and runs
on CPU, GPU and TPU alike. It follows the reference rasteriser of Kerbl et al.
2023 (graphdeco-inria diff-gaussian-rasterization) except where noted (*).

Per Gaussian (vectorised over the fixed capacity N):
  Σ = R S S^T R^T (R from the normalised quaternion (w, x, y, z), S = diag(scales));
  camera-frame mean t = W m + b ([W | b]: the top rows of world_to_camera,
  OpenCV convention, see cameras.py); culled when
  t_z <= near (default 0.2, the reference's), when `alive` is False, or when the
  opacity cannot reach the 1/255 alpha threshold;
  EWA: Σ' = J W Σ W^T J^T with J the Jacobian of the perspective projection at
  t, whose t_x / t_z and t_y / t_z are clamped to 1.3x the image half-extent
  like the reference (limits Gaussians far outside the frustum);
  dilation: Σ' += 0.3 I (a ~0.55-pixel-std low-pass filter, so every splat is
  at least about one pixel wide). By default the opacity is *not* compensated
  for the dilation (as in the reference 3DGS; small splats get bigger but keep
  their peak opacity). `antialiased=True` multiplies the opacity by
  sqrt(det Σ'_raw / det Σ'_dilated) (the Mip-Splatting / gsplat "antialiased"
  mode), which keeps a splat's integrated opacity unchanged.
Per pixel p, front to back in camera depth t_z (the Gaussian's centre depth):
  power = -1/2 d^T Σ'^{-1} d with d = p - mean2d (pixel centres at integer
  coordinates), skipped when power > 0; α = min(0.99, o exp(power)), skipped
  when α < 1/255; compositing stops before the Gaussian that would bring the
  transmittance T below 1e-4 (all three as in the reference);
  C = Σ_i c_i α_i T_i + T_final background; features likewise (no background);
  alpha = 1 - T_final; depth = Σ_i t_z,i α_i T_i, *not* normalised by alpha
  (the reference's convention; depth / alpha is the expected depth of the
  covered part; the background contributes 0).

Tiling with static shapes (raster.py): the image is cut into `tile_size`² tiles
(16 px; padded to a multiple and cropped) and each tile into `subtile_size`²
sub-tiles (4 px). A Gaussian is listed for a (sub-)tile when the bounding box of
its ellipse {d : α(d) >= 1/255} touches the (sub-)tile's pixel centres. (*) The
reference uses a 3σ square instead, which drops contributions with α >= 1/255
beyond 3σ when o > 0.35; with the exact ellipse the tiled image equals the
per-pixel loop over all Gaussians (tests/render/gs_reference.py). Each tile
keeps the K_t = `max_per_tile` (1024) nearest-in-depth listed Gaussians, and
each of its sub-tiles the K_s = `max_per_subtile` (128) nearest of those that
touch it; every pixel composites its sub-tile's K_s candidates.
Approximation: when more than K_t Gaussians touch a tile, or more than K_s of
the tile's list touch a sub-tile, the farthest (in the depth order) are dropped
for the whole (sub-)tile. They would have been composited after all the kept
ones, so the error at a pixel is at most the transmittance left there after the
kept candidates: nothing where compositing stopped at T < 1e-4 (opaque
surfaces), more where many faint or tiny splats lie behind each other.
`tile_overflow` counts the (sub-)tiles that overflow; raise K_s / K_t or shrink
the tiles then. (tools/render_bench.py's random cloud is such a worst case.)
The compositing of one sub-tile is a [P, K_s] computation (P = subtile_size²)
with a hand-written backward pass that recomputes the per-pixel terms (the
effect of `jax.checkpoint`), so only the gathered [T, S, K_s] parameters are
kept between the passes; `tile_batch` tiles are processed per `lax.map` step
(bounded memory, better cache use on CPU) or all at once with `vmap`.

Differentiable w.r.t. means, scales, quats, opacities, colors, features (and
the camera); the tile lists, the depth order and the thresholds are piecewise
constant (no gradient), like the reference. The inputs may be sharded over N
(logical axis `gaussians`): GSPMD partitions the per-Gaussian work and gathers
what the global depth sort needs; the result equals the unsharded one.
"""
from __future__ import annotations

import functools
from typing import Any, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from mfm_jax.render import cameras, raster
from mfm_jax.render.raster import ALPHA_MAX, ALPHA_MIN, T_MIN  # noqa: F401 (re-exported)

Array = Any
Camera = cameras.Camera

DILATION = 0.3          # screen-space covariance dilation, pixels^2
JACOBIAN_CLAMP = 1.3    # |t_x / t_z| <= 1.3 x half-extent in the EWA Jacobian


def quat_to_rotmat(quats: Array) -> Array:
  """Quaternions [..., 4] (w, x, y, z), normalised here -> rotations [..., 3, 3]."""
  q = quats / jnp.linalg.norm(quats, axis=-1, keepdims=True)
  w, x, y, z = q[..., 0], q[..., 1], q[..., 2], q[..., 3]
  return jnp.stack([
      jnp.stack([1 - 2 * (y * y + z * z), 2 * (x * y - w * z), 2 * (x * z + w * y)], -1),
      jnp.stack([2 * (x * y + w * z), 1 - 2 * (x * x + z * z), 2 * (y * z - w * x)], -1),
      jnp.stack([2 * (x * z - w * y), 2 * (y * z + w * x), 1 - 2 * (x * x + y * y)], -1),
  ], -2)


def project_gaussians(means: Array, scales: Array, quats: Array, opacities: Array,
                      camera: Camera, *, width: int, height: int, near: float = 0.2,
                      alive: Array | None = None, antialiased: bool = False) -> dict:
  """Projects 3D Gaussians to screen-space ellipses (the EWA step).

  Args:
    means: [N, 3]; scales: [N, 3] standard deviations; quats: [N, 4] (w, x, y, z);
    opacities: [N]; camera: a `Camera`; width, height: image size in pixels.
    near: Gaussians with camera z <= near are culled.
    alive: optional [N] bool; False culls the Gaussian.
    antialiased: compensate the opacity for the 0.3-pixel² dilation.

  Returns:
    dict with mean2d [N, 2] (u, v), conic [N, 3] (a, b, c) of Σ'^{-1} =
    [[a, b], [b, c]], cov2d [N, 3] (dilated, same layout), depth [N] (camera z),
    opacity [N] (after compensation), valid [N] bool, extent [N, 2] (half-sizes
    in pixels of the bounding box of the α >= 1/255 ellipse).
  """
  dtype = means.dtype
  rot_w2c = jnp.asarray(camera.rotation, dtype)
  pc = means @ rot_w2c.T + jnp.asarray(camera.translation, dtype)  # [N, 3]
  z = pc[:, 2]
  valid = z > near
  if alive is not None:
    valid &= alive.astype(bool)
  zs = jnp.where(valid, z, 1.0)  # safe divisor: no NaN/inf gradients from culled ones
  fx, fy, cx, cy = (jnp.asarray(v, dtype) for v in (camera.fx, camera.fy, camera.cx, camera.cy))
  mean2d = jnp.stack([fx * pc[:, 0] / zs + cx, fy * pc[:, 1] / zs + cy], -1)

  # Σ_cam = (W R S)(W R S)^T.
  m = jnp.einsum("ij,njk->nik", rot_w2c, quat_to_rotmat(quats)) * scales[:, None, :]
  tx = jnp.clip(pc[:, 0] / zs, -JACOBIAN_CLAMP * (cx + 0.5) / fx,
                JACOBIAN_CLAMP * (width - 0.5 - cx) / fx) * zs
  ty = jnp.clip(pc[:, 1] / zs, -JACOBIAN_CLAMP * (cy + 0.5) / fy,
                JACOBIAN_CLAMP * (height - 0.5 - cy) / fy) * zs
  zero = jnp.zeros_like(zs)
  jac = jnp.stack([jnp.stack([fx / zs, zero, -fx * tx / zs**2], -1),
                   jnp.stack([zero, fy / zs, -fy * ty / zs**2], -1)], -2)  # [N, 2, 3]
  jm = jac @ m  # [N, 2, 3]
  cov = jm @ jnp.swapaxes(jm, -1, -2)  # [N, 2, 2]
  a, b, c = cov[:, 0, 0], cov[:, 0, 1], cov[:, 1, 1]
  det_raw = a * c - b * b
  a, c = a + DILATION, c + DILATION
  det = a * c - b * b  # >= 0.09 > 0 since the undilated cov is PSD
  opacity = opacities.astype(dtype)
  if antialiased:
    opacity = opacity * jnp.sqrt(jnp.maximum(det_raw, 0.0) / det)
  conic = jnp.stack([c / det, -b / det, a / det], -1)
  valid &= opacity > ALPHA_MIN
  # α >= 1/255  <=>  d^T Σ'^{-1} d <= 2 log(255 o): that ellipse's bounding box.
  m2 = 2.0 * jnp.log(jnp.maximum(opacity, ALPHA_MIN) / ALPHA_MIN) * 1.001 + 1e-6
  extent = jnp.sqrt(m2[:, None] * jnp.stack([a, c], -1))
  return dict(mean2d=mean2d, conic=conic, cov2d=jnp.stack([a, b, c], -1), depth=z,
              opacity=opacity, valid=valid, extent=jax.lax.stop_gradient(extent))


def _check_shapes(means, scales, quats, opacities, colors, features, alive, camera,
                  width, height, background, tile_size, max_per_tile, subtile_size,
                  max_per_subtile):
  """Static checks; errors name the offending argument."""
  def shape(name, x):
    if not hasattr(x, "shape"):
      raise TypeError(f"render: {name} must be an array, got {type(x).__name__}")
    return tuple(x.shape)
  s = shape("means", means)
  if len(s) != 2 or s[1] != 3:
    raise ValueError(f"render: means must have shape [N, 3], got {s}")
  n = s[0]
  for name, x, want in (("scales", scales, (n, 3)), ("quats", quats, (n, 4)),
                        ("opacities", opacities, (n,)), ("colors", colors, (n, 3))):
    if shape(name, x) != want:
      raise ValueError(f"render: {name} must have shape {list(want)} (N={n} from means), "
                       f"got {shape(name, x)}")
  if features is not None:
    f = shape("features", features)
    if len(f) != 2 or f[0] != n:
      raise ValueError(f"render: features must have shape [N, F] (N={n} from means), got {f}")
  if alive is not None and shape("alive", alive) != (n,):
    raise ValueError(f"render: alive must have shape [{n}] (N from means), "
                     f"got {shape('alive', alive)}")
  if not isinstance(camera, Camera):
    raise TypeError(f"render: camera must be a gaussians.Camera, got {type(camera).__name__}")
  if jnp.shape(camera.world_to_camera) != (4, 4):
    raise ValueError(f"render: camera.world_to_camera must have shape [4, 4], got "
                     f"{jnp.shape(camera.world_to_camera)}")
  for k in ("fx", "fy", "cx", "cy"):
    if jnp.shape(getattr(camera, k)) != ():
      raise ValueError(f"render: camera.{k} must be a scalar, got shape "
                       f"{jnp.shape(getattr(camera, k))}")
  for name, v in (("width", width), ("height", height), ("tile_size", tile_size),
                  ("subtile_size", subtile_size), ("max_per_tile", max_per_tile),
                  ("max_per_subtile", max_per_subtile)):
    if not isinstance(v, (int, np.integer)) or v <= 0:
      raise ValueError(f"render: {name} must be a positive int, got {v!r}")
  if tile_size % subtile_size:
    raise ValueError(f"render: subtile_size={subtile_size} must divide tile_size={tile_size}")
  if np.shape(background) != (3,):
    raise ValueError(f"render: background must have 3 values, got shape {np.shape(background)}")


def check_values(means, scales, quats, opacities, camera) -> None:
  """Value checks on concrete inputs (skipped for traced ones); errors name the item."""
  items = dict(means=means, scales=scales, quats=quats, opacities=opacities,
               **{f"camera.{k}": getattr(camera, k) for k in Camera._fields})
  if any(isinstance(v, jax.core.Tracer) for v in items.values()):
    return
  vals = {k: np.asarray(v) for k, v in items.items()}
  for k, v in vals.items():
    bad = np.argwhere(~np.isfinite(v))
    if bad.size:
      first = tuple(int(i) for i in bad[0])
      raise ValueError(f"render: {k} has non-finite values, first at index {first}")
  if (vals["scales"] <= 0).any():
    i = int(np.argwhere(vals["scales"] <= 0)[0, 0])
    raise ValueError(f"render: scales must be > 0; Gaussian {i} has {vals['scales'][i]}")
  norms = np.linalg.norm(vals["quats"], axis=-1)
  if (norms < 1e-12).any():
    raise ValueError(f"render: quats of zero norm (Gaussian {int(np.argmin(norms))})")
  o = vals["opacities"]
  if ((o < 0) | (o > 1)).any():
    i = int(np.argwhere((o < 0) | (o > 1))[0, 0])
    raise ValueError(f"render: opacities must lie in [0, 1]; Gaussian {i} has {o[i]}")
  if vals["camera.fx"] <= 0 or vals["camera.fy"] <= 0:
    raise ValueError(f"render: camera focal lengths must be > 0, got fx={vals['camera.fx']}, "
                     f"fy={vals['camera.fy']}")


def render(means: Array, scales: Array, quats: Array, opacities: Array, colors: Array,
           camera: Camera, *, width: int, height: int,
           background: Sequence[float] = (0.0, 0.0, 0.0), features: Array | None = None,
           alive: Array | None = None, near: float = 0.2, tile_size: int = 16,
           max_per_tile: int = 1024, subtile_size: int = 4, max_per_subtile: int = 128,
           tile_batch: int | str | None = "auto", antialiased: bool = False) -> dict:
  """Renders N 3D Gaussians into one image (see the module docstring).

  Args:
    means: [N, 3] centres in world space.
    scales: [N, 3] standard deviations along the local axes (not log).
    quats: [N, 4] rotations (w, x, y, z), normalised here.
    opacities: [N] in [0, 1].
    colors: [N, 3].
    camera: `Camera(fx, fy, cx, cy, world_to_camera [4, 4])`, OpenCV convention.
    width, height: image size W, H (static).
    background: [3] colour behind the Gaussians.
    features: optional [N, F] per-Gaussian features, composited like colour.
    alive: optional [N] bool mask of the fixed capacity; dead ones never render.
    near: near plane (camera z); Gaussians at or in front of it are culled.
    tile_size: tile side in pixels (static).
    max_per_tile: K_t, the nearest Gaussians listed per tile (static).
    subtile_size: sub-tile side in pixels; divides tile_size (static).
    max_per_subtile: K_s, candidates per sub-tile, i.e. per pixel (static).
    tile_batch: tiles per `lax.map` step; None renders all tiles at once (vmap);
      "auto": 8 on CPU (2-5x faster there than all at once: the per-pixel terms
      stay in cache), None on GPU / TPU.
    antialiased: compensate the opacity for the 0.3-pixel² dilation.

  Returns:
    dict(rgb [H, W, 3], depth [H, W] (Σ z α T, not normalised), alpha [H, W],
    features [H, W, F] when given).
  """
  _check_shapes(means, scales, quats, opacities, colors, features, alive, camera,
                width, height, background, tile_size, max_per_tile, subtile_size,
                max_per_subtile)
  check_values(means, scales, quats, opacities, camera)
  dtype = jnp.result_type(means, scales, quats, opacities, colors, float)
  args = [jnp.asarray(x, dtype) for x in (means, scales, quats, opacities, colors)]
  feats = None if features is None else jnp.asarray(features, dtype)
  if tile_batch == "auto":
    tile_batch = 8 if jax.default_backend() == "cpu" else None
  return _render(*args, camera, jnp.asarray(background, dtype), feats, alive, width=width,
                 height=height, near=near, tiling=(tile_size, max_per_tile, subtile_size,
                                                   max_per_subtile),
                 tile_batch=tile_batch, antialiased=antialiased)


@functools.partial(jax.jit, static_argnames=("width", "height", "near", "tiling", "tile_batch",
                                             "antialiased"))
def _render(means, scales, quats, opacities, colors, camera, background, features, alive, *,
            width, height, near, tiling, tile_batch, antialiased):
  """`render` after the checks (jitted; inlined when called under an outer jit)."""
  dtype = means.dtype
  proj = project_gaussians(means, scales, quats, opacities, camera, width=width,
                           height=height, near=near, alive=alive, antialiased=antialiased)
  parts = [colors, proj["depth"][:, None]]
  if features is not None:
    parts.append(features)
  values = jnp.concatenate(parts, -1)  # [N, C]

  tile_size, _, subtile_size, _ = tiling
  lists = _lists(proj, width, height, tiling)
  ids, ok = lists["ids"], lists["ok"]  # [T, S, K_s]
  pix = jnp.asarray(raster.pixel_grid(width, height, tile_size, subtile_size), dtype)
  # One gather (and one scatter-add in the backward pass) for all per-Gaussian inputs.
  packed = jnp.concatenate([proj["mean2d"], proj["conic"], proj["opacity"][:, None], values],
                           -1)[ids]  # [T, S, K_s, 6 + C]
  out, t_final = raster.rasterize(pix, packed[..., :2], packed[..., 2:5], packed[..., 5], ok,
                                  packed[..., 6:], tile_batch)
  out, t_final = (raster.untile(x, width, height, tile_size, subtile_size)
                  for x in (out, t_final))
  result = dict(rgb=out[..., :3] + t_final[..., None] * background, depth=out[..., 3],
                alpha=1.0 - t_final)
  if features is not None:
    result["features"] = out[..., 4:]
  return result


def _lists(proj: dict, width: int, height: int, tiling: tuple) -> dict:
  """Candidate lists (raster.candidate_lists) for projected Gaussians."""
  tile_size, max_per_tile, subtile_size, max_per_subtile = tiling
  key = jnp.where(proj["valid"], jax.lax.stop_gradient(proj["depth"]), jnp.inf)
  order = jnp.argsort(key, stable=True)
  return raster.candidate_lists(proj["mean2d"], proj["extent"], proj["valid"], order,
                                width=width, height=height, tile_size=tile_size,
                                max_per_tile=max_per_tile, subtile_size=subtile_size,
                                max_per_subtile=max_per_subtile)


@functools.partial(jax.jit, static_argnames=("width", "height", "near", "tile_size",
                                             "max_per_tile", "subtile_size", "max_per_subtile"))
def tile_overflow(means: Array, scales: Array, quats: Array, opacities: Array,
                  camera: Camera, *, width: int, height: int, alive: Array | None = None,
                  near: float = 0.2, tile_size: int = 16, max_per_tile: int = 1024,
                  subtile_size: int = 4, max_per_subtile: int = 128) -> dict:
  """How many tiles and sub-tiles list more Gaussians than they keep (the dropped ones).

  Returns:
    dict(tile_counts [T], subtile_counts [T, S] (within the truncated tile lists),
    overflow_tiles [], overflow_subtiles [], max_tile_count [], max_subtile_count []).
  """
  proj = project_gaussians(means, scales, quats, opacities, camera, width=width, height=height,
                           near=near, alive=alive)
  lists = _lists(proj, width, height, (tile_size, max_per_tile, subtile_size, max_per_subtile))
  tc, sc = lists["tile_counts"], lists["subtile_counts"]
  return dict(tile_counts=tc, subtile_counts=sc, overflow_tiles=jnp.sum(tc > max_per_tile),
              overflow_subtiles=jnp.sum(sc > max_per_subtile), max_tile_count=jnp.max(tc),
              max_subtile_count=jnp.max(sc))
