"""Per-camera rendering and 2D annotations of a simulated scene.

A *view* is one camera per frame: a fixed camera repeated (exo-centric, the
orbit views of world_multiview) or a moving one (ego-centric, see
`camera.ego_cameras`). For each view this module renders rgb / depth /
instance ids and derives, from the projection and the instance ids:

  centers [T, K, 2]   projected 3D centres, normalised image (x, y) (camera.py)
  boxes [T, K, 4]     tight boxes of the visible pixels of each object,
                      (x0, y0, x1, y1) normalised, pixel edges; 0 if unseen
  visible [T, K]      the object covers at least one pixel
  in_view [T, K]      its projected centre lies in the image, in front
  image_velocity [T, K, 2]  finite differences of `centers`, units / s
  events              "enter" / "exit" sim.Events from `in_view` changes

and the clip's motion intensity: the mean image-space speed of the objects
(normalised units / s, over frame pairs where the object is in view) and its
bucketed level 0..len(MOTION_BUCKETS).
"""
from __future__ import annotations

import numpy as np

from mfm_jax.data.world import camera as camera_lib
from mfm_jax.data.world import render
from mfm_jax.data.world import sim

# Thresholds of the motion-intensity levels (normalised image units / s):
# level = number of thresholds below the mean speed, 0..len(MOTION_BUCKETS).
MOTION_BUCKETS = (0.04, 0.1, 0.2, 0.35)
NUM_MOTION_LEVELS = len(MOTION_BUCKETS) + 1


def as_track(cams, num_frames: int) -> list[camera_lib.Camera]:
  """One Camera per frame from a Camera or a list of T Cameras."""
  if isinstance(cams, camera_lib.Camera):
    return [cams] * num_frames
  cams = list(cams)
  if len(cams) != num_frames:
    raise ValueError(f"a camera track needs {num_frames} cameras (one per "
                     f"frame), got {len(cams)}")
  return cams


def is_fixed(track: list[camera_lib.Camera]) -> bool:
  return all(c is track[0] for c in track)


def render_view(scene: sim.Scene, track: list[camera_lib.Camera]
                ) -> dict[str, np.ndarray]:
  """rgb [T, H, W, 3] uint8, depth [T, H, W] f32, instance [T, H, W] u8."""
  if is_fixed(track):
    return render.render(scene, track[0])
  parts = []
  for t, cam in enumerate(track):
    sub = sim.Scene(seed=scene.seed, spec=scene.spec, objects=scene.objects,
                    positions=scene.positions[t:t + 1],
                    velocities=scene.velocities[t:t + 1], events=(),
                    yaws=scene.yaws[t:t + 1], spins=scene.spins[t:t + 1])
    parts.append(render.render(sub, cam))
  return {k: np.concatenate([p[k] for p in parts]) for k in parts[0]}


def project_track(track, points: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
  """Normalised image points [T, K, 2] and depths [T, K] of points [T, K, 3]."""
  uv = np.stack([c.normalize(c.project(p)) for c, p in zip(track, points)])
  z = np.stack([c.depth(p) for c, p in zip(track, points)])
  return uv, z


def boxes_from_instances(instance: np.ndarray, k: int
                         ) -> tuple[np.ndarray, np.ndarray]:
  """Tight normalised boxes of instance ids 1..k.

  Args:
    instance: [T, H, W] uint8 (0 background, i + 1 object i).
    k: capacity K.

  Returns:
    boxes [T, K, 4] float32 (x0, y0, x1, y1), visible [T, K] bool.
  """
  t, h, w = instance.shape
  ids = np.arange(1, k + 1, dtype=instance.dtype)[None, :, None, None]
  hit = instance[:, None] == ids                            # [T, K, H, W]
  rows, cols = hit.any(-1), hit.any(-2)                     # [T, K, H/W]
  visible = rows.any(-1)
  y0 = np.argmax(rows, -1)
  y1 = h - np.argmax(rows[..., ::-1], -1)
  x0 = np.argmax(cols, -1)
  x1 = w - np.argmax(cols[..., ::-1], -1)
  boxes = np.stack([x0 / w, y0 / h, x1 / w, y1 / h], -1)
  return np.where(visible[..., None], boxes, 0.0).astype(np.float32), visible


def view_events(in_view: np.ndarray, mask: np.ndarray, fps: float
                ) -> list[sim.Event]:
  """'enter' / 'exit' events from in_view [T, K] changes, frame order."""
  events = []
  for t in range(1, in_view.shape[0]):
    for i in np.flatnonzero(mask & (in_view[t] != in_view[t - 1])):
      kind = "enter" if in_view[t, i] else "exit"
      events.append(sim.Event(kind, t, t / fps, int(i)))
  return events


def motion_intensity(centers: np.ndarray, in_view: np.ndarray, fps: float,
                     buckets=MOTION_BUCKETS) -> tuple[float, int]:
  """Mean image-space speed (normalised units / s) and its level.

  Args:
    centers: [T, K, 2] normalised image centres.
    in_view: [T, K] bool; a frame pair counts when both ends are in view.
    fps: frames per second.
    buckets: increasing thresholds; level = #thresholds <= speed.

  Returns:
    (speed, level in 0..len(buckets)).
  """
  if centers.shape[0] < 2:
    return 0.0, 0
  step = np.linalg.norm(np.diff(centers, axis=0), axis=-1) * fps  # [T-1, K]
  both = in_view[1:] & in_view[:-1]
  speed = float(step[both].mean()) if both.any() else 0.0
  return speed, int(np.searchsorted(np.asarray(buckets), speed, "right"))


def annotate_view(scene: sim.Scene, track: list[camera_lib.Camera],
                  frames: dict[str, np.ndarray]) -> dict:
  """2D ground truth of one view (see the module docstring)."""
  mask = scene.mask
  centers, z = project_track(track, scene.positions)
  inside = np.all((centers >= 0) & (centers <= 1), -1) & (z > 0)
  in_view = inside & mask[None]
  centers = np.where(mask[None, :, None], centers, 0.0).astype(np.float32)
  vel = np.zeros_like(centers)
  if centers.shape[0] > 1:
    vel[:-1] = np.diff(centers, axis=0) * scene.spec.fps
    vel[-1] = vel[-2]
  boxes, visible = boxes_from_instances(frames["instance"], mask.shape[0])
  speed, level = motion_intensity(centers, in_view, scene.spec.fps)
  return {
      "centers": centers, "center_depth": np.where(mask, z, 0.0).astype(
          np.float32),
      "boxes": boxes, "visible": visible, "in_view": in_view,
      "image_velocity": vel.astype(np.float32),
      "events": view_events(in_view, mask, scene.spec.fps),
      "motion_speed": speed, "motion_level": level,
  }
