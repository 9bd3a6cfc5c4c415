"""Metrics of controllable video generation on the world (Mojito).

* ``spearman``: Spearman rank correlation (average ranks for ties, as ``scipy.stats.spearmanr``).
* ``video_motion``: the measured motion of a (generated) world video: object centres found by
  colour (``trajectory.find_centers``), mean displacement between consecutive frames over the
  (frame pair, object) pairs where the object is found in both frames; normalised image units per
  frame, the unit of ``data.motion.centers_motion``.
* ``intensity_adherence``: Spearman correlation between requested levels and measured motion.
* ``subject_trajectory_error``: distance between the subject object's detected centre and the
  target boxes' centres, averaged over frames (a missed detection counts at (0.5, 0.5), as in
  ``trajectory``).

NumPy on the host, no JAX.
"""
from __future__ import annotations

import numpy as np

from mfm_jax.eval import trajectory


def _ranks(a: np.ndarray) -> np.ndarray:
  """1-based ranks with ties given their average rank."""
  order = np.argsort(a, kind="mergesort")
  s = a[order]
  ranks = np.empty(len(a), np.float64)
  start = 0
  for end in range(1, len(a) + 1):
    if end == len(a) or s[end] != s[start]:
      ranks[order[start:end]] = (start + end + 1) / 2.0
      start = end
  return ranks


def spearman(a, b) -> float:
  """Spearman's rho of two 1-D samples (nan when either is constant)."""
  a, b = np.asarray(a, np.float64).ravel(), np.asarray(b, np.float64).ravel()
  if a.shape != b.shape or len(a) < 2:
    raise ValueError(f"spearman: need two samples of equal length >= 2, got {a.shape}, {b.shape}")
  ra, rb = _ranks(a) - (len(a) + 1) / 2.0, _ranks(b) - (len(b) + 1) / 2.0
  den = np.sqrt((ra ** 2).sum() * (rb ** 2).sum())
  return float((ra * rb).sum() / den) if den > 0 else float("nan")


def video_motion(video, colors, obj_mask, **kwargs) -> float:
  """Mean per-frame displacement of the objects found by colour in ``video`` [T, H, W, 3]."""
  centers, found = trajectory.find_centers(video, colors, obj_mask, **kwargs)
  both = found[1:] & found[:-1]                                   # [T-1, K]
  step = np.linalg.norm(centers[1:] - centers[:-1], axis=-1)
  return float(step[both].mean()) if both.any() else 0.0


def intensity_adherence(levels, motions) -> dict:
  """Rank correlation of requested levels and measured motions, and the mean motion per level."""
  levels, motions = np.asarray(levels), np.asarray(motions, np.float64)
  per_level = {int(l): float(motions[levels == l].mean()) for l in np.unique(levels)}
  return {"spearman": spearman(levels, motions), "motion_per_level": per_level}


def subject_trajectory_error(videos, target_centers, colors, obj_mask, subject) -> np.ndarray:
  """Per-video mean distance of the subject's detected centre to the target centres.

  Args:
    videos: [B, T, H, W, 3] uint8 or float in [-1, 1].
    target_centers: [B, T, 2] normalised target centres (e.g. the target boxes' centres).
    colors: [B, K, 3] uint8; obj_mask: [B, K] bool; subject: [B] int object index.

  Returns:
    [B] float32 errors (normalised units).
  """
  out = []
  for v, tc, c, m, k in zip(videos, target_centers, colors, obj_mask, subject):
    centers, _ = trajectory.find_centers(v, c, m)
    out.append(np.linalg.norm(centers[:, int(k)] - np.asarray(tc, np.float32), axis=-1).mean())
  return np.asarray(out, np.float32)
