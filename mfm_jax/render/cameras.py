"""Pinhole cameras in JAX, in the OpenCV convention of the procedural world.

The convention is the one of `mfm_jax/data/world/camera.py` (NumPy, used to
render the world and stored in its records); this module mirrors it in JAX so
that cameras can be traced, batched (`jax.vmap` over a stacked `Camera`) and
differentiated, and `render/` does not import `data/`:

  camera frame: +x right, +y down, +z forward (the viewing direction);
  world_to_camera [4, 4] = [[R, t], [0, 0, 0, 1]], x_cam = R x_world + t, the
    rows of R are the camera's right, down and forward axes in world
    coordinates and the camera centre is -R^T t;
  pixels: u = fx x / z + cx, v = fy y / z + cy; the centre of pixel (row i,
    column j) is (u, v) = (j, i), so `from_fov` puts cx = (W - 1) / 2,
    cy = (H - 1) / 2;
  depth is camera-frame z (not the ray length); the world is z-up.

`from_world(cam)` converts a world camera (anything with fx, fy, cx, cy and
world_to_camera attributes) into a `Camera`.
"""
from __future__ import annotations

from typing import Any, NamedTuple, Sequence

import jax.numpy as jnp
import numpy as np

Array = Any


class Camera(NamedTuple):
  """A pinhole camera (a pytree; every field may carry leading batch axes).

  Attributes:
    fx, fy: focal lengths in pixels, scalars [].
    cx, cy: principal point in pixels, scalars [].
    world_to_camera: [4, 4] extrinsics, OpenCV convention (see module doc).
  """
  fx: Array
  fy: Array
  cx: Array
  cy: Array
  world_to_camera: Array

  @property
  def rotation(self) -> Array:
    """[3, 3] world-to-camera rotation R."""
    return jnp.asarray(self.world_to_camera)[..., :3, :3]

  @property
  def translation(self) -> Array:
    """[3] world-to-camera translation t."""
    return jnp.asarray(self.world_to_camera)[..., :3, 3]

  @property
  def position(self) -> Array:
    """[3] camera centre in world coordinates, -R^T t."""
    return -jnp.einsum("...ji,...j->...i", self.rotation, self.translation)

  @property
  def intrinsics(self) -> Array:
    """[3, 3] the matrix K."""
    return intrinsics(self.fx, self.fy, self.cx, self.cy)


def intrinsics(fx, fy, cx, cy) -> Array:
  """K = [[fx, 0, cx], [0, fy, cy], [0, 0, 1]] as a [3, 3] array."""
  fx, fy, cx, cy = (jnp.asarray(a, jnp.result_type(float)) for a in (fx, fy, cx, cy))
  zero, one = jnp.zeros_like(fx), jnp.ones_like(fx)
  return jnp.stack([jnp.stack([fx, zero, cx], -1), jnp.stack([zero, fy, cy], -1),
                    jnp.stack([zero, zero, one], -1)], -2)


def focal_from_fov(fov_deg, width: int) -> Array:
  """Focal length in pixels for a horizontal field of view `fov_deg`."""
  return 0.5 * width / jnp.tan(jnp.deg2rad(jnp.asarray(fov_deg, jnp.result_type(float))) / 2)


def from_fov(fov_deg, width: int, height: int, world_to_camera: Array) -> Camera:
  """Camera with horizontal field of view `fov_deg`, square pixels, centred.

  Same intrinsics as `mfm_jax.data.world.camera.Camera.from_fov`.
  """
  f = focal_from_fov(fov_deg, width)
  return Camera(fx=f, fy=f, cx=jnp.asarray((width - 1) / 2, f.dtype),
                cy=jnp.asarray((height - 1) / 2, f.dtype),
                world_to_camera=jnp.asarray(world_to_camera, f.dtype))


def from_world(cam: Any) -> Camera:
  """A `Camera` from a world camera (`mfm_jax.data.world.camera.Camera`).

  Args:
    cam: any object with fx, fy, cx, cy and world_to_camera [4, 4].
  """
  dtype = jnp.result_type(float)
  return Camera(*(jnp.asarray(getattr(cam, k), dtype)
                  for k in ("fx", "fy", "cx", "cy", "world_to_camera")))


def look_at(eye: Array, target: Array, up: Sequence[float] = (0.0, 0.0, 1.0)) -> Array:
  """World-to-camera transform of a camera at `eye` looking at `target`.

  Mirrors `mfm_jax.data.world.camera.look_at` (rows of R: right = forward x up,
  down = forward x right, forward). Batched over leading axes of eye/target.
  An `up` parallel to the viewing direction gives NaNs under `jit`; with
  concrete inputs it raises.

  Args:
    eye: [..., 3] camera centre in world coordinates.
    target: [..., 3] point the optical axis passes through.
    up: [3] world direction that appears up in the image.

  Returns:
    [..., 4, 4] world-to-camera matrix.
  """
  dtype = jnp.result_type(float)
  eye, target = jnp.asarray(eye, dtype), jnp.asarray(target, dtype)
  up = jnp.broadcast_to(jnp.asarray(up, dtype), jnp.broadcast_shapes(eye.shape, target.shape))
  forward = target - eye
  forward = forward / jnp.linalg.norm(forward, axis=-1, keepdims=True)
  right = jnp.cross(forward, up)
  norm = jnp.linalg.norm(right, axis=-1, keepdims=True)
  if _is_concrete(norm) and np.any(np.asarray(norm) < 1e-8):
    raise ValueError(f"look_at: up={tuple(np.asarray(up).reshape(-1, 3)[0])} is parallel "
                     "to the viewing direction")
  right = right / norm
  down = jnp.cross(forward, right)
  rot = jnp.stack([right, down, forward], -2)
  trans = -jnp.einsum("...ij,...j->...i", rot, eye)
  top = jnp.concatenate([rot, trans[..., None]], -1)
  bottom = jnp.broadcast_to(jnp.asarray([0.0, 0.0, 0.0, 1.0], dtype), top.shape[:-2] + (1, 4))
  return jnp.concatenate([top, bottom], -2)


def orbit(target: Array, distance, azimuth_deg, elevation_deg,
          up: Sequence[float] = (0.0, 0.0, 1.0)) -> Array:
  """World-to-camera matrices on a sphere around `target` (z-up world).

  The eye is at target + distance * (cos(el) cos(az), cos(el) sin(az), sin(el));
  the camera looks at `target`. Azimuth / elevation broadcast, so a turntable is
  `orbit(target, d, jnp.linspace(0, 360, n, endpoint=False), 30.0)`.

  Args:
    target: [3] centre of the orbit.
    distance, azimuth_deg, elevation_deg: scalars or broadcastable arrays [...].
    up: [3] world up (elevation is measured against the world xy plane).

  Returns:
    [..., 4, 4] world-to-camera matrices.
  """
  dtype = jnp.result_type(float)
  az = jnp.deg2rad(jnp.asarray(azimuth_deg, dtype))
  el = jnp.deg2rad(jnp.asarray(elevation_deg, dtype))
  distance = jnp.asarray(distance, dtype)
  az, el, distance = jnp.broadcast_arrays(az, el, distance)
  offset = jnp.stack([jnp.cos(el) * jnp.cos(az), jnp.cos(el) * jnp.sin(az), jnp.sin(el)], -1)
  target = jnp.asarray(target, dtype)
  return look_at(target + distance[..., None] * offset,
                 jnp.broadcast_to(target, offset.shape), up)


def rotate_about_z(world_to_camera: Array, target: Array, angle_deg) -> Array:
  """Rotates a camera's pose by `angle_deg` about the vertical axis through `target`.

  The JAX form of the world's `orbit_cameras` (view k of n is view 0 rotated
  by 360 k / n degrees, looking at the target): the camera keeps looking at the
  same point relative to the rotated frame.

  Args:
    world_to_camera: [4, 4] pose of view 0.
    target: [3] point on the rotation axis.
    angle_deg: scalar or [...] angles.

  Returns:
    [..., 4, 4] world-to-camera matrices.
  """
  dtype = jnp.result_type(float)
  a = jnp.deg2rad(jnp.asarray(angle_deg, dtype))
  c, s, z, o = jnp.cos(a), jnp.sin(a), jnp.zeros_like(a), jnp.ones_like(a)
  rz = jnp.stack([jnp.stack([c, -s, z], -1), jnp.stack([s, c, z], -1),
                  jnp.stack([z, z, o], -1)], -2)  # [..., 3, 3] world rotation
  target = jnp.asarray(target, dtype)
  w2c = jnp.asarray(world_to_camera, dtype)
  rot, trans = w2c[:3, :3], w2c[:3, 3]
  # x_cam = R Rz^T (x - target) + R target + t.
  new_rot = jnp.einsum("ij,...kj->...ik", rot, rz)
  new_trans = jnp.einsum("...ij,j->...i", -new_rot, target) + rot @ target + trans
  top = jnp.concatenate([new_rot, new_trans[..., None]], -1)
  bottom = jnp.broadcast_to(jnp.asarray([0.0, 0.0, 0.0, 1.0], dtype), top.shape[:-2] + (1, 4))
  return jnp.concatenate([top, bottom], -2)


def to_camera(points: Array, camera: Camera) -> Array:
  """World points [..., 3] -> camera-frame points [..., 3] (x_cam = R x + t)."""
  return jnp.einsum("...j,ij->...i", points, camera.rotation) + camera.translation


def project(points: Array, camera: Camera) -> tuple[Array, Array]:
  """World points -> pixel coordinates and depth.

  Args:
    points: [..., 3] world coordinates.
    camera: a `Camera` (unbatched).

  Returns:
    uv: [..., 2] pixel coordinates (u right, v down; meaningless where z <= 0).
    z: [...] camera-frame depth.
  """
  pc = to_camera(points, camera)
  z = pc[..., 2]
  u = camera.fx * pc[..., 0] / z + camera.cx
  v = camera.fy * pc[..., 1] / z + camera.cy
  return jnp.stack([u, v], -1), z


def _is_concrete(x) -> bool:
  try:
    np.asarray(x)
    return True
  except Exception:  # a tracer  # noqa: BLE001
    return False


def check_cameras(fx, fy, cx, cy, world_to_camera, names: Sequence[str] | None = None) -> None:
  """Host-side checks of M cameras (fx, fy, cx, cy [M], world_to_camera [M, 4, 4]) before a
  jitted render (which does not check values): finite intrinsics and matrices, positive focal
  lengths, a last row (0, 0, 0, 1) and a rotation block with det ~ +1. Errors name the camera
  (``names[m]``, default "camera m") and the bad entry."""
  w2c = np.asarray(world_to_camera, np.float64)
  k = np.stack([np.asarray(v, np.float64).reshape(-1) for v in (fx, fy, cx, cy)], -1)
  if w2c.ndim != 3 or w2c.shape[1:] != (4, 4) or k.shape[0] != w2c.shape[0]:
    raise ValueError(f"check_cameras: world_to_camera must be [M, 4, 4] with M intrinsics, got "
                     f"{w2c.shape} and {k.shape[0]}")
  name = lambda m: names[m] if names is not None else f"camera {m}"  # noqa: E731
  for m in range(w2c.shape[0]):
    bad = np.argwhere(~np.isfinite(w2c[m]))
    if bad.size:
      raise ValueError(f"{name(m)}: world_to_camera has a non-finite value at "
                       f"{tuple(int(i) for i in bad[0])}: {w2c[m][tuple(bad[0])]}")
    if not np.all(np.isfinite(k[m])) or k[m, 0] <= 0 or k[m, 1] <= 0:
      raise ValueError(f"{name(m)}: intrinsics (fx, fy, cx, cy) = {tuple(k[m])} must be finite "
                       "with fx, fy > 0")
    if not np.allclose(w2c[m, 3], (0, 0, 0, 1), atol=1e-5):
      raise ValueError(f"{name(m)}: world_to_camera's last row is {w2c[m, 3]}, expected (0, 0, "
                       "0, 1)")
    det = np.linalg.det(w2c[m, :3, :3])
    if abs(det - 1.0) > 1e-2:
      raise ValueError(f"{name(m)}: world_to_camera's rotation block has det {det:.4g}, "
                       "expected 1 (a rotation)")
