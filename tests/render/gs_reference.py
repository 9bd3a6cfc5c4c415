"""A slow, obviously-correct NumPy Gaussian splatting renderer (float64) and a test scene.

No tiles, no candidate lists: every pixel loops over all Gaussians sorted by
camera depth and applies the rules of the reference 3DGS rasteriser literally
(skip power > 0, alpha = min(0.99, o exp(power)), skip alpha < 1/255, stop
before T would fall below 1e-4).
"""
from __future__ import annotations

import jax.numpy as jnp
import numpy as np

from mfm_jax.render import cameras

W, H = 32, 24


def quat_to_rotmat(q):
  """[4] (w, x, y, z) -> [3, 3]."""
  w, x, y, z = np.asarray(q, np.float64) / np.linalg.norm(q)
  return np.array([
      [1 - 2 * (y * y + z * z), 2 * (x * y - w * z), 2 * (x * z + w * y)],
      [2 * (x * y + w * z), 1 - 2 * (x * x + z * z), 2 * (y * z - w * x)],
      [2 * (x * z - w * y), 2 * (y * z + w * x), 1 - 2 * (x * x + y * y)],
  ])


def project_one(mean, scale, quat, fx, fy, cx, cy, w2c, width, height):
  """One Gaussian -> (uv [2], dilated 2D covariance [2, 2], undilated one, z)."""
  rot, trans = np.asarray(w2c)[:3, :3], np.asarray(w2c)[:3, 3]
  t = rot @ np.asarray(mean, np.float64) + trans
  r = quat_to_rotmat(quat)
  sigma = r @ np.diag(np.asarray(scale, np.float64) ** 2) @ r.T
  # The Jacobian at t, with t_x / t_z clamped to 1.3x the image half-extent.
  limx = (-1.3 * (cx + 0.5) / fx, 1.3 * (width - 0.5 - cx) / fx)
  limy = (-1.3 * (cy + 0.5) / fy, 1.3 * (height - 0.5 - cy) / fy)
  x = min(max(t[0] / t[2], limx[0]), limx[1]) * t[2]
  y = min(max(t[1] / t[2], limy[0]), limy[1]) * t[2]
  jac = np.array([[fx / t[2], 0.0, -fx * x / t[2] ** 2],
                  [0.0, fy / t[2], -fy * y / t[2] ** 2]])
  cov = jac @ rot @ sigma @ rot.T @ jac.T
  uv = np.array([fx * t[0] / t[2] + cx, fy * t[1] / t[2] + cy])
  return uv, cov + 0.3 * np.eye(2), cov, t[2]


def render(means, scales, quats, opacities, colors, camera, width, height,
           background=(0.0, 0.0, 0.0), features=None, alive=None, near=0.2,
           antialiased=False):
  """Same interface as gaussians.render; returns float64 NumPy arrays."""
  fx, fy, cx, cy = (float(getattr(camera, k)) for k in ("fx", "fy", "cx", "cy"))
  w2c = np.asarray(camera.world_to_camera, np.float64)
  n = len(means)
  feats = np.zeros((n, 0)) if features is None else np.asarray(features, np.float64)
  splats = []
  for i in range(n):
    if alive is not None and not alive[i]:
      continue
    uv, cov, cov_raw, z = project_one(means[i], scales[i], quats[i], fx, fy, cx, cy, w2c,
                                      width, height)
    if z <= near:
      continue
    o = float(opacities[i])
    if antialiased:
      o *= np.sqrt(max(np.linalg.det(cov_raw), 0.0) / np.linalg.det(cov))
    splats.append((z, i, uv, np.linalg.inv(cov), o))
  splats.sort(key=lambda s: (s[0], s[1]))
  rgb = np.zeros((height, width, 3))
  depth = np.zeros((height, width))
  alpha = np.zeros((height, width))
  feat = np.zeros((height, width, feats.shape[1]))
  for v in range(height):
    for u in range(width):
      t = 1.0
      for z, i, uv, conic, o in splats:
        d = np.array([u, v], np.float64) - uv
        power = -0.5 * d @ conic @ d
        if power > 0:
          continue
        a = min(0.99, o * np.exp(power))
        if a < 1.0 / 255.0:
          continue
        if t * (1 - a) < 1e-4:
          break
        rgb[v, u] += a * t * np.asarray(colors[i], np.float64)
        depth[v, u] += a * t * z
        feat[v, u] += a * t * feats[i]
        t *= 1 - a
      rgb[v, u] += t * np.asarray(background, np.float64)
      alpha[v, u] = 1 - t
  out = dict(rgb=rgb, depth=depth, alpha=alpha)
  if features is not None:
    out["features"] = feat
  return out


def make_scene(n=20, seed=0, num_features=5):
  """Random Gaussians around the origin, seen by a camera at distance ~4."""
  rng = np.random.default_rng(seed)
  scene = dict(
      means=rng.normal(size=(n, 3)) * np.array([0.8, 0.8, 0.5]),
      scales=np.exp(rng.normal(size=(n, 3)) * 0.4) * 0.15,
      quats=rng.normal(size=(n, 4)),
      opacities=rng.uniform(0.3, 1.0, size=n),
      colors=rng.uniform(size=(n, 3)),
      features=rng.normal(size=(n, num_features)),
  )
  scene["opacities"][0] = 1.0  # clamped at 0.99
  scene["opacities"][1] = 0.002  # below 1/255: never visible
  scene["means"][2] = [0.0, -5.0, 0.5]  # behind the camera
  scene["means"][3] = [0.0, -3.9, 0.47]  # in front of the near plane (z < 0.2)
  scene["means"][4] = [6.0, 0.0, 0.0]  # off screen, large, still reaches in
  scene["scales"][4] = [2.0, 0.5, 0.5]
  # Two big opaque ones in the middle: compositing stops (T < 1e-4) behind them.
  scene["means"][5], scene["means"][6] = [0.1, -1.0, 0.3], [0.0, -0.8, 0.2]
  scene["scales"][5] = scene["scales"][6] = [0.5, 0.5, 0.5]
  scene["opacities"][5] = scene["opacities"][6] = 1.0
  cam = cameras.from_fov(60.0, W, H, cameras.look_at(jnp.asarray([0.3, -4.0, 0.6]),
                                                      jnp.zeros(3)))
  return {k: np.asarray(v, np.float32) for k, v in scene.items()}, cam
