"""Pinhole cameras in the OpenCV convention, in NumPy.

Camera frame: +x right, +y down, +z forward (the viewing direction).
Pixel coordinates (u, v): u to the right, v down, the centre of pixel
(row i, column j) at (u, v) = (j, i), so the image spans [-0.5, W - 0.5].
Normalised image coordinates, used for object centres everywhere in mfm_jax,
are ((u + 0.5) / W, (v + 0.5) / H): (0, 0) is the top-left corner of the
image and (1, 1) the bottom-right one.

The world frame is the one of sim.py: z up, ground plane z = 0.

Calibration as stored in world records (world_multiview, world_qa, export):
  intrinsics K [3, 3] = [[fx, 0, cx], [0, fy, cy], [0, 0, 1]] in pixels, with
    cx = (W - 1) / 2, cy = (H - 1) / 2 (pixel centres at integers);
  world_to_camera [4, 4] = [[R, t], [0, 0, 0, 1]]: x_cam = R x_world + t; the
    rows of R are the camera's right, down and forward axes in world
    coordinates, and the camera centre is -R^T t;
  a world point X projects to u = fx x / z + cx, v = fy y / z + cy with
    (x, y, z) = R X + t, and depth maps store z (not the ray length).
Multi-view: `orbit_cameras` (view 0 is the v1 camera; the others rotate it
about the vertical axis through the target). Ego-centric: `ego_cameras` gives
one Camera per frame (a translating, non-rotating camera).
"""
from __future__ import annotations

import dataclasses

import numpy as np


def look_at(eye, target, up=(0.0, 0.0, 1.0)) -> np.ndarray:
  """World-to-camera transform of a camera at `eye` looking at `target`.

  Args:
    eye: [3] camera centre in world coordinates.
    target: [3] point the optical axis passes through.
    up: [3] world direction that appears up in the image.

  Returns:
    [4, 4] float64 world-to-camera matrix (rows of R: right, down, forward).
  """
  eye = np.asarray(eye, np.float64)
  forward = np.asarray(target, np.float64) - eye
  forward /= np.linalg.norm(forward)
  right = np.cross(forward, np.asarray(up, np.float64))
  norm = np.linalg.norm(right)
  if norm < 1e-8:
    raise ValueError(f"look_at: up={up} is parallel to the viewing direction")
  right /= norm
  down = np.cross(forward, right)
  rot = np.stack([right, down, forward])
  w2c = np.eye(4)
  w2c[:3, :3] = rot
  w2c[:3, 3] = -rot @ eye
  return w2c


@dataclasses.dataclass(frozen=True, eq=False)
class Camera:
  """A pinhole camera: intrinsics fx, fy, cx, cy (pixels) and world_to_camera."""
  fx: float
  fy: float
  cx: float
  cy: float
  width: int
  height: int
  world_to_camera: np.ndarray  # [4, 4]

  @classmethod
  def from_fov(cls, fov_deg: float, width: int, height: int,
               world_to_camera: np.ndarray) -> Camera:
    """Camera with horizontal field of view `fov_deg`, square pixels."""
    fx = 0.5 * width / np.tan(np.deg2rad(fov_deg) / 2)
    return cls(fx=float(fx), fy=float(fx), cx=(width - 1) / 2,
               cy=(height - 1) / 2, width=width, height=height,
               world_to_camera=np.asarray(world_to_camera, np.float64))

  @property
  def intrinsics(self) -> np.ndarray:
    """[3, 3] the matrix K."""
    return np.array([[self.fx, 0.0, self.cx], [0.0, self.fy, self.cy],
                     [0.0, 0.0, 1.0]])

  @property
  def rotation(self) -> np.ndarray:
    """[3, 3] world-to-camera rotation."""
    return self.world_to_camera[:3, :3]

  @property
  def position(self) -> np.ndarray:
    """[3] camera centre in world coordinates."""
    return -self.rotation.T @ self.world_to_camera[:3, 3]

  def to_camera(self, points: np.ndarray) -> np.ndarray:
    """World points [..., 3] -> camera-frame points [..., 3]."""
    points = np.asarray(points, np.float64)
    # einsum, not matmul: tiny BLAS calls oversubscribe threads in workers.
    return (np.einsum("...j,ij->...i", points, self.rotation)
            + self.world_to_camera[:3, 3])

  def project(self, points: np.ndarray) -> np.ndarray:
    """World points [..., 3] -> pixel coordinates (u, v) [..., 2].

    Points behind the camera (z <= 0) give non-finite or meaningless values;
    check `depth(points) > 0` when that can happen.
    """
    pc = self.to_camera(points)
    z = pc[..., 2]
    with np.errstate(divide="ignore", invalid="ignore"):
      u = self.fx * pc[..., 0] / z + self.cx
      v = self.fy * pc[..., 1] / z + self.cy
    return np.stack([u, v], -1)

  def depth(self, points: np.ndarray) -> np.ndarray:
    """World points [..., 3] -> camera-frame z [...]."""
    return self.to_camera(points)[..., 2]

  def normalize(self, pixels: np.ndarray) -> np.ndarray:
    """Pixel coordinates [..., 2] -> normalised image coordinates [..., 2]."""
    return (np.asarray(pixels) + 0.5) / np.array([self.width, self.height])

  def pixel_rays(self) -> tuple[np.ndarray, np.ndarray]:
    """Rays through the pixel centres, in world coordinates.

    Returns:
      origin: [3] the camera centre.
      directions: [H, W, 3] unit vectors.
    """
    v, u = np.meshgrid(np.arange(self.height), np.arange(self.width),
                       indexing="ij")
    d_cam = np.stack([(u - self.cx) / self.fx, (v - self.cy) / self.fy,
                      np.ones(u.shape)], -1)
    d = np.einsum("...i,ij->...j", d_cam, self.rotation)  # R^T d_cam
    d /= np.linalg.norm(d, axis=-1, keepdims=True)
    return self.position, d


def world_camera(spec) -> Camera:
  """The fixed oblique camera of world v1 for a `sim.WorldSpec`."""
  return Camera.from_fov(spec.fov_deg, spec.width, spec.height,
                         look_at(spec.camera_eye, spec.camera_target))


def orbit_cameras(spec, num_views: int) -> list[Camera]:
  """`num_views` calibrated cameras on a circle around the arena.

  View 0 is the world v1 camera (spec.camera_eye); view k is its eye rotated
  by 360 * k / num_views degrees about the world z axis through
  spec.camera_target, looking at the target. All share the intrinsics.
  """
  if num_views < 1:
    raise ValueError(f"orbit_cameras: num_views={num_views} must be >= 1")
  target = np.asarray(spec.camera_target, np.float64)
  eye0 = np.asarray(spec.camera_eye, np.float64) - target
  cams = [world_camera(spec)]
  for k in range(1, num_views):
    a = 2 * np.pi * k / num_views
    rot = np.array([[np.cos(a), -np.sin(a), 0.0], [np.sin(a), np.cos(a), 0.0],
                    [0.0, 0.0, 1.0]])
    cams.append(Camera.from_fov(spec.fov_deg, spec.width, spec.height,
                                look_at(target + rot @ eye0, target)))
  return cams


# Ego motions: unit direction of the camera's translation in its own frame
# (camera x right, camera forward projected on the ground).
EGO_MOTIONS = ("forward", "backward", "left", "right")


def ego_cameras(spec, motion: str, speed: float = 1.0,
                eye=(0.0, -5.5, 2.6), target=(0.0, 0.0, 0.4)
                ) -> list[Camera]:
  """A moving (ego-centric) camera: one Camera per frame.

  The camera starts at `eye` looking at `target` (a low, first-person view)
  and translates without rotating at `speed` units / s, in the direction
  `motion` of its own ground-plane axes: "forward" (its viewing direction
  projected on the ground), "backward", "left" or "right" (its x axis).

  Returns:
    spec.num_frames cameras; camera t is the pose at time t / spec.fps.
  """
  if motion not in EGO_MOTIONS:
    raise ValueError(f"ego_cameras: unknown motion {motion!r}; known: "
                     f"{EGO_MOTIONS}")
  w2c = look_at(eye, target)
  rot = w2c[:3, :3]
  fwd = rot[2] * np.array([1.0, 1.0, 0.0])
  fwd /= np.linalg.norm(fwd)
  step = {"forward": fwd, "backward": -fwd, "left": -rot[0],
          "right": rot[0]}[motion]
  cams = []
  for t in range(spec.num_frames):
    e = np.asarray(eye, np.float64) + step * speed * t / spec.fps
    m = w2c.copy()
    m[:3, 3] = -rot @ e
    cams.append(Camera.from_fov(spec.fov_deg, spec.width, spec.height, m))
  return cams


def ground_axes(cam: Camera) -> tuple[np.ndarray, np.ndarray]:
  """The camera's right and forward directions on the ground plane.

  Returns:
    (right [2], forward [2]) unit world (x, y) vectors: image-right and
    away-from-the-camera, used for "left / right / towards / away".
  """
  right = cam.rotation[0, :2] / np.linalg.norm(cam.rotation[0, :2])
  fwd = cam.rotation[2, :2] / np.linalg.norm(cam.rotation[2, :2])
  return right, fwd
