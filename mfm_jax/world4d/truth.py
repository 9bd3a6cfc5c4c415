"""Ground truth of a world clip for measuring edits of its 4D fit (the world is procedural, so
the truth is known exactly).

``world_episode(data_config)`` re-creates the clip a fit4d config names (the recipe of
`data.captures.world_clip`: same seed, spec, orbit cameras), without twins.

``render_without(ep, i)``: the *frozen-trajectory* twin of the clip with object i (or several)
taken out: the
other objects keep exactly their simulated trajectories (the removed object's mask slot is
cleared, nothing is re-simulated), rendered from the same cameras, returned view-major like a
Capture (image m = v T + f). This is what a Gaussian deletion can at best produce: the
deletion does not change the others' motion, whereas the physics twin of
`data/world/twins.py` ("remove") re-simulates and changes the others' trajectories whenever the
removed object touched them. Note: its shadow goes too (the world renders hard shadows), which
a deletion of the object's Gaussians cannot undo (the shadow is baked into floor Gaussians).

``render_moved(ep, i, shift)``: the same frozen twin with object i pushed along ``shift`` (the
truth of a redirect edit).

``gaussian_labels(means, ep, frame)``: the true instance of each Gaussian (0 = background,
i + 1 = object i) from its position at one frame: inside object i's solid (sphere radius r,
cube half-side r with its yaw, cylinder radius r and half-height r) grown by ``margin`` * r,
and above the floor (z > ``floor`` * r, so floor Gaussians next to the contact point stay
background).
"""
from __future__ import annotations

import dataclasses

import numpy as np

from mfm_jax.data.world import sim


def world_episode(d):
  """The episode (`data.world.episode.Episode`) of a fit4d ``config.data`` with source 'world'."""
  # pylint: disable=g-import-not-at-top
  from mfm_jax.data.world import builder_v2, episode, generate
  if d.source != "world":
    raise ValueError(f"world truth needs config.data.source='world', got {d.source!r}")
  builder = builder_v2.get_builder(d.name, d.builder_config, d.data_dir, num_workers=1)
  cfg = builder.builder_config
  seed = generate.clip_seed(cfg.base_seed, d.split, int(d.index))
  return episode.generate_episode(seed, cfg.spec, num_views=cfg.num_views,
                                  ego_motion=episode.clip_camera(seed, cfg.ego_fraction),
                                  with_twins=False)


def render_without(ep, objects) -> dict:
  """Frozen-trajectory twin without the given object index (or indices): rgb [V T, H, W, 3]
  float in [0, 1], instance [V T, H, W] int32 (module docstring)."""
  from mfm_jax.data.world import annotate  # pylint: disable=g-import-not-at-top
  obj = ep.scene.objects
  mask = obj.mask.copy()
  for i in np.atleast_1d(objects):
    if not 0 <= i < obj.mask.shape[0] or not obj.mask[i]:
      raise ValueError(f"render_without: object {i} is not in the scene (objects "
                       f"{np.flatnonzero(obj.mask).tolist()})")
    mask[i] = False
  scene = dataclasses.replace(ep.scene, objects=dataclasses.replace(obj, mask=mask))
  views = [annotate.render_view(scene, tr) for tr in ep.tracks]
  rgb = np.concatenate([v["rgb"] for v in views]).astype(np.float32) / 255.0
  return dict(rgb=rgb, instance=np.concatenate([v["instance"] for v in views]).astype(np.int32))


def render_moved(ep, objects, shift) -> dict:
  """Frozen-trajectory twin with the given object(s) displaced by ``s * shift`` at clip-time
  fraction s = f / (T - 1) (the redirect of `world4d.edits`: a straight push from frame 0 added
  to the simulated trajectory; the others and the cameras unchanged; nothing re-simulated, so
  objects may overlap) -> rgb [V T, H, W, 3] in [0, 1], instance [V T, H, W] int32, view-major.
  ``shift``: [3] world-frame displacement at the last frame."""
  from mfm_jax.data.world import annotate  # pylint: disable=g-import-not-at-top
  sc = ep.scene
  shift = np.asarray(shift, np.float32)
  if shift.shape != (3,) or not np.isfinite(shift).all():
    raise ValueError(f"render_moved: shift must be 3 finite floats, got {shift.tolist()}")
  pos = sc.positions.copy()
  frac = np.arange(pos.shape[0], dtype=np.float32) / max(pos.shape[0] - 1, 1)
  for i in np.atleast_1d(objects):
    if not 0 <= i < sc.objects.mask.shape[0] or not sc.objects.mask[i]:
      raise ValueError(f"render_moved: object {i} is not in the scene (objects "
                       f"{np.flatnonzero(sc.objects.mask).tolist()})")
    pos[:, i] += frac[:, None] * shift
  scene = dataclasses.replace(sc, positions=pos)
  views = [annotate.render_view(scene, tr) for tr in ep.tracks]
  rgb = np.concatenate([v["rgb"] for v in views]).astype(np.float32) / 255.0
  return dict(rgb=rgb, instance=np.concatenate([v["instance"] for v in views]).astype(np.int32))


def mask_iou(a: np.ndarray, b: np.ndarray) -> float:
  """Intersection over union of two boolean masks (nan when both are empty)."""
  union = int(np.sum(a | b))
  return float(np.sum(a & b)) / union if union else float("nan")


def centroids(mask: np.ndarray) -> np.ndarray:
  """[M, 2] (row, column) centroid of each [M, H, W] boolean mask; nan where empty."""
  m = mask.astype(np.float64)
  area = m.sum((1, 2))
  rows = np.arange(mask.shape[1], dtype=np.float64)
  cols = np.arange(mask.shape[2], dtype=np.float64)
  with np.errstate(invalid="ignore", divide="ignore"):
    return np.stack([(m.sum(2) * rows).sum(1) / area, (m.sum(1) * cols).sum(1) / area], -1)


def solid_distance(means: np.ndarray, ep, i: int, frame: int = 0) -> np.ndarray:
  """[N] distance of points [N, 3] from object i's centre at ``frame`` in the norm of its solid,
  in units of its radius (<= 1: inside; sphere: Euclidean, cube: yawed max-norm, cylinder:
  max(radial, |dz|))."""
  sc = ep.scene
  obj = sc.objects
  r = float(obj.radius[i])
  d = means - sc.positions[frame, i]
  if obj.shape[i] == sim.CUBE:
    c, s = np.cos(sc.yaws[frame, i]), np.sin(sc.yaws[frame, i])
    local = np.stack([c * d[:, 0] + s * d[:, 1], c * d[:, 1] - s * d[:, 0], d[:, 2]], -1)
    return np.abs(local).max(-1) / r
  if obj.shape[i] == sim.CYLINDER:
    return np.maximum(np.linalg.norm(d[:, :2], axis=-1), np.abs(d[:, 2])) / r
  return np.linalg.norm(d, axis=-1) / r


def gaussian_labels(means: np.ndarray, ep, frame: int = 0, margin: float = 0.15,
                    floor: float = 0.1) -> np.ndarray:
  """[N] true instance ids of Gaussians at world positions ``means`` [N, 3] at ``frame``."""
  sc = ep.scene
  obj = sc.objects
  labels = np.zeros(len(means), np.int32)
  best = np.full(len(means), np.inf)
  for i in np.flatnonzero(obj.mask):
    r = float(obj.radius[i])
    dist = solid_distance(means, ep, i, frame)
    inside = (dist <= 1.0 + margin) & (means[:, 2] > floor * r) & (dist < best)
    labels[inside] = i + 1
    best = np.where(inside, dist, best)
  return labels


def psnr(a: np.ndarray, b: np.ndarray, mask: np.ndarray | None = None) -> float:
  """PSNR (dB) of [..., H, W, 3] images in [0, 1] over the pixels where ``mask`` [..., H, W]."""
  a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
  if mask is not None:
    a, b = a[mask], b[mask]
  if a.size == 0:
    return float("nan")
  mse = float(np.mean((a - b) ** 2))
  return float("inf") if mse == 0 else -10.0 * np.log10(mse)


def precision_recall(selected: np.ndarray, truth: np.ndarray) -> dict:
  """Selection [N] bool against true membership [N] bool."""
  tp = int(np.sum(selected & truth))
  return dict(selected=int(selected.sum()), true=int(truth.sum()), true_positive=tp,
              precision=tp / max(int(selected.sum()), 1), recall=tp / max(int(truth.sum()), 1))
