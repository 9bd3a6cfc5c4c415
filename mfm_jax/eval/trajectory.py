"""Trajectory error of a (generated) world video against ground-truth centres.

Objects of the procedural world have unique, saturated palette colours on a
neutral gray ground, so an object is found in a frame as the pixels whose
colour matches its palette colour, and its centre as their centroid:

  * a pixel is a candidate if its HSV saturation >= `min_saturation` and its
    value >= `min_value` (gray ground, sky, shadows and dark noise are not);
  * hue is invariant to the world's shading (a scalar brightness factor), so a
    candidate goes to the object whose palette hue is nearest, if that hue
    distance is <= `max_hue_deg` (nearest palette colour wins);
  * an object is found in a frame if it has >= `min_pixels` pixels; its centre
    is their centroid in normalised image coordinates (x right, y down, pixel
    (i, j) at ((j + 0.5) / W, (i + 0.5) / H)).

`trajectory_error` averages the distance between found and ground-truth
centres over the real objects and all frames. A missing detection counts
with the predicted centre at the image centre (0.5, 0.5): a video that loses
an object is penalised by how far the object was from the centre, rather than
ignored. The ground truth (`generate_clip`'s `centers`) is the projection of
the 3D centre, not the centroid of the visible pixels; on ground-truth
videos the error is small but not zero (see tests/eval/test_trajectory.py).

Vectorised NumPy, no JAX: it runs on decoded samples on the host.
"""
from __future__ import annotations

import numpy as np


def _to_unit(video) -> np.ndarray:
  """uint8 [0, 255] or float [-1, 1] -> float32 [0, 1]."""
  video = np.asarray(video)
  if video.dtype == np.uint8:
    return video.astype(np.float32) / 255.0
  if not np.issubdtype(video.dtype, np.floating):
    raise TypeError(f"video must be uint8 or float in [-1, 1], got dtype "
                    f"{video.dtype}")
  return np.clip((video.astype(np.float32) + 1.0) / 2.0, 0.0, 1.0)


def _hsv(rgb: np.ndarray):
  """rgb [..., 3] in [0, 1] -> hue degrees, saturation, value, each [...]."""
  r, g, b = rgb[..., 0], rgb[..., 1], rgb[..., 2]
  vmax = np.max(rgb, -1)
  chroma = vmax - np.min(rgb, -1)
  safe = np.where(chroma > 0, chroma, 1.0)
  hue = np.where(vmax == r, ((g - b) / safe) % 6.0,
                 np.where(vmax == g, (b - r) / safe + 2.0,
                          (r - g) / safe + 4.0)) * 60.0
  sat = np.where(vmax > 0, chroma / np.where(vmax > 0, vmax, 1.0), 0.0)
  return hue, sat, vmax


def find_centers(video, colors, obj_mask, *, min_saturation: float = 0.35,
                 min_value: float = 0.1, max_hue_deg: float = 14.0,
                 min_pixels: int = 1):
  """Finds each object's centre in every frame by its colour.

  Args:
    video: [T, H, W, 3] uint8, or float in [-1, 1].
    colors: [K, 3] uint8 palette colours of the objects.
    obj_mask: [K] bool, real objects.
    min_saturation: HSV saturation a pixel needs to count.
    min_value: HSV value (max channel, in [0, 1]) a pixel needs to count.
    max_hue_deg: largest hue distance to the object's colour.
    min_pixels: pixels needed for a detection.

  Returns:
    centers: [T, K, 2] float32 normalised (x, y); 0.5 where not found.
    found: [T, K] bool (False for padding objects).
  """
  frames = _to_unit(video)
  if frames.ndim != 4 or frames.shape[-1] != 3:
    raise ValueError(f"find_centers: video must be [T, H, W, 3], got "
                     f"{frames.shape}")
  t_count, h, w, _ = frames.shape
  obj_mask = np.asarray(obj_mask, bool)
  hue, sat, val = _hsv(frames.reshape(t_count, h * w, 3))        # [T, P]
  ref_hue, _, _ = _hsv(np.asarray(colors, np.float32) / 255.0)  # [K]
  diff = np.abs(hue[..., None] - ref_hue)                       # [T, P, K]
  diff = np.minimum(diff, 360.0 - diff)
  diff = np.where(obj_mask, diff, np.inf)
  nearest = np.argmin(diff, -1)                                 # [T, P]
  ok = (sat >= min_saturation) & (val >= min_value)
  ok &= np.take_along_axis(diff, nearest[..., None], -1)[..., 0] <= max_hue_deg
  onehot = (nearest[..., None] == np.arange(len(obj_mask))) & ok[..., None]
  onehot = onehot.astype(np.float32)                            # [T, P, K]
  ys, xs = np.meshgrid((np.arange(h) + 0.5) / h, (np.arange(w) + 0.5) / w,
                       indexing="ij")
  coords = np.stack([xs.ravel(), ys.ravel()], -1).astype(np.float32)
  count = onehot.sum(1)                                         # [T, K]
  total = np.einsum("tpk,pc->tkc", onehot, coords)
  found = (count >= max(min_pixels, 1)) & obj_mask
  centers = np.where(found[..., None],
                     total / np.maximum(count, 1.0)[..., None], 0.5)
  return centers.astype(np.float32), found


def trajectory_error(video, gt_centers, colors, obj_mask, **kwargs) -> dict:
  """Mean distance between detected and ground-truth object centres.

  Args:
    video: [T, H, W, 3] uint8, or float in [-1, 1].
    gt_centers: [T, K, 2] normalised ground-truth centres (x, y).
    colors: [K, 3] uint8 palette colours.
    obj_mask: [K] bool.
    **kwargs: detection thresholds of `find_centers`.

  Returns:
    dict with error (mean distance, normalised units; a missed detection
    counts with the centre predicted at (0.5, 0.5)), error_px64 (error * 64,
    pixels at 64x64), detection_rate (found / real objects, over frames) and
    count (number of (frame, object) pairs averaged).
  """
  centers, found = find_centers(video, colors, obj_mask, **kwargs)
  gt = np.asarray(gt_centers, np.float32)
  if gt.shape != centers.shape:
    raise ValueError(f"trajectory_error: gt_centers {gt.shape} do not match "
                     f"video/colors {centers.shape}")
  valid = np.broadcast_to(np.asarray(obj_mask, bool), found.shape)
  count = int(valid.sum())
  dist = np.linalg.norm(centers - gt, axis=-1)
  error = float(dist[valid].mean()) if count else 0.0
  rate = float(found[valid].mean()) if count else 0.0
  return {"error": error, "error_px64": error * 64.0, "detection_rate": rate,
          "count": count}


def trajectory_error_batch(videos, gt_centers, colors, obj_mask,
                           **kwargs) -> dict:
  """`trajectory_error` over a batch, pooled over all (frame, object) pairs.

  Args:
    videos: [B, T, H, W, 3] uint8, or float in [-1, 1].
    gt_centers: [B, T, K, 2].
    colors: [B, K, 3] uint8.
    obj_mask: [B, K] bool.
    **kwargs: detection thresholds of `find_centers`.

  Returns:
    dict with error, error_px64, detection_rate, count (pooled) and
    per_video: [B] float32.
  """
  results = [trajectory_error(v, g, c, m, **kwargs)
             for v, g, c, m in zip(videos, gt_centers, colors, obj_mask)]
  counts = np.array([r["count"] for r in results], np.float64)
  total = max(counts.sum(), 1.0)
  error = float(sum(r["error"] * n for r, n in zip(results, counts)) / total)
  rate = float(sum(r["detection_rate"] * n
                   for r, n in zip(results, counts)) / total)
  return {"error": error, "error_px64": error * 64.0, "detection_rate": rate,
          "count": int(counts.sum()),
          "per_video": np.array([r["error"] for r in results],
                                        np.float32)}
