"""Condition adherence of generated world clips (FlexEControl): mask IoU, depth error, edges.

Generated videos carry no depth or masks, so both are *measured* from the pixels, the same way on
real clips (their scores are the floor of each metric, reported beside the samples):

* ``object_pixels``: object k's pixels in each frame, by colour, with the rule of
  ``eval.trajectory`` (HSV saturation >= 0.35 and value >= 0.1; nearest palette hue among the
  clip's objects, within 14 degrees).
* ``mask_iou``: per (clip, object), IoU over the whole clip of the detected pixels and the
  condition mask (coverage >= 0.5); the mean over real objects. ``foreground_iou``: the same for
  the union of objects.
* ``estimate_disparity``: a ground-contact monocular depth estimate. The world camera has no roll,
  so the floor's disparity depends on the image row only: ``floor_profile`` calibrates it per
  row (median of the condition disparity over background pixels of reference clips). A
  background pixel gets the floor value of its row; an object pixel gets the floor value at the
  lowest object pixel of its vertical run in that column (where the object meets the floor).
  ``depth_error``: mean |estimate - condition| in disparity units ([0, 1] between the far and
  near planes of ``data.conditions.depth_map``), over all pixels and over object pixels (those
  that are object pixels in the condition or in the estimate).
* ``edge_f1``: Canny edges (``data.conditions.canny_edges``, same thresholds as the condition)
  of the generated frames against the condition edges, F1 with a 1-pixel tolerance; most world
  edges are the static floor / horizon (a shuffled real clip scores ~0.8), so ``adherence`` also
  reports ``edge_f1_objects``: edges within 1 pixel of the condition's or the detected objects.

NumPy / OpenCV on the host, no JAX. Conditions are the ``data.conditions`` fields of one clip:
``cond_depth`` / ``cond_edges`` [T, H, W, 3] in [-1, 1], ``obj_masks`` [T, H, W, K].
"""
from __future__ import annotations

import cv2
import numpy as np

from mfm_jax.data import conditions
from mfm_jax.eval import trajectory


def object_pixels(video, colors, obj_mask, *, min_saturation: float = 0.35,
                  min_value: float = 0.1, max_hue_deg: float = 14.0) -> np.ndarray:
  """video [T, H, W, 3] (uint8 or [-1, 1]); colors [K, 3] uint8; obj_mask [K] -> [T, H, W, K]."""
  rgb = trajectory._to_unit(video)  # pylint: disable=protected-access
  hue, sat, val = trajectory._hsv(rgb)  # pylint: disable=protected-access
  palette = np.asarray(colors, np.float32) / 255.0
  ph, _, _ = trajectory._hsv(palette)  # pylint: disable=protected-access
  dist = np.abs(hue[..., None] - ph)
  dist = np.minimum(dist, 360.0 - dist)
  dist = np.where(np.asarray(obj_mask, bool), dist, np.inf)          # [T, H, W, K]
  best = np.argmin(dist, -1)
  ok = (sat >= min_saturation) & (val >= min_value) & (np.min(dist, -1) <= max_hue_deg)
  k = len(obj_mask)
  return ok[..., None] & (best[..., None] == np.arange(k))


def _iou(a: np.ndarray, b: np.ndarray) -> float:
  union = np.logical_or(a, b).sum()
  return float(np.logical_and(a, b).sum() / union) if union else 1.0


def mask_iou(video, obj_masks, colors, obj_mask) -> dict:
  """``{"iou": mean per-object IoU, "foreground_iou": IoU of the union, "per_object": [K]}``."""
  det = object_pixels(video, colors, obj_mask)
  truth = np.asarray(obj_masks) >= 0.5
  if det.shape != truth.shape:
    raise ValueError(f"mask_iou: video gives masks {det.shape}, obj_masks are {truth.shape}")
  per = np.array([_iou(det[..., k], truth[..., k]) if obj_mask[k] else np.nan
                  for k in range(len(obj_mask))])
  return {"iou": float(np.nanmean(per)), "per_object": per,
          "foreground_iou": _iou(det.any(-1), truth.any(-1))}


def cond_disparity(cond_depth) -> tuple[np.ndarray, np.ndarray]:
  """``cond_depth`` [T, H, W, 3] in [-1, 1] -> (disparity [T, H, W] in [0, 1], hit [T, H, W])."""
  d = np.asarray(cond_depth, np.float32)[..., 0]
  return (d + 1.0) / 2.0, d > -1.0 + 1e-6


def floor_profile(cond_depths, obj_masks) -> np.ndarray:
  """[H] floor disparity per image row: median over the background pixels of reference clips.

  cond_depths: [N, T, H, W, 3]; obj_masks: [N, T, H, W, K]. Rows with no floor pixel take the
  nearest row that has one.
  """
  disp, hit = cond_disparity(cond_depths)
  bg = hit & ~(np.asarray(obj_masks) >= 0.5).any(-1) & (np.asarray(obj_masks).sum(-1) < 0.05)
  h = disp.shape[-2]
  prof = np.full(h, np.nan, np.float32)
  for r in range(h):
    vals = disp[..., r, :][bg[..., r, :]]
    if vals.size:
      prof[r] = np.median(vals)
  good = np.flatnonzero(~np.isnan(prof))
  if not good.size:
    raise ValueError("floor_profile: no background pixel in the reference clips")
  return np.interp(np.arange(h), good, prof[good]).astype(np.float32)


def estimate_disparity(video, colors, obj_mask, profile) -> tuple[np.ndarray, np.ndarray]:
  """Ground-contact disparity estimate (module docstring): ([T, H, W] disparity, object pixels)."""
  obj = object_pixels(video, colors, obj_mask).any(-1)               # [T, H, W]
  t, h, w = obj.shape
  profile = np.asarray(profile, np.float32)
  if profile.shape != (h,):
    raise ValueError(f"estimate_disparity: profile must be [H={h}], got {profile.shape}")
  est = np.broadcast_to(profile[:, None], (t, h, w)).copy()
  contact = np.full((t, w), -1)
  for r in range(h - 1, -1, -1):        # bottom-up: the lowest row of the current vertical run
    row = obj[:, r]
    contact = np.where(row & (contact < 0), r, np.where(row, contact, -1))
    est[:, r] = np.where(row, profile[np.maximum(contact, 0)], est[:, r])
  return est, obj


def depth_error(video, cond_depth, obj_masks, colors, obj_mask, profile) -> dict:
  """``{"error": all pixels, "object_error": object pixels (condition or estimate)}``."""
  est, obj = estimate_disparity(video, colors, obj_mask, profile)
  disp, _ = cond_disparity(cond_depth)
  err = np.abs(est - disp)
  sel = obj | (np.asarray(obj_masks) >= 0.5).any(-1)
  return {"error": float(err.mean()),
          "object_error": float(err[sel].mean()) if sel.any() else 0.0}


def _grow(masks: np.ndarray, radius: int) -> np.ndarray:
  """[T, H, W] bool dilated by a (2r+1)^2 square."""
  kernel = np.ones((2 * radius + 1,) * 2, np.uint8)
  return np.stack([cv2.dilate(f.astype(np.uint8), kernel) > 0 for f in masks])


def edge_f1(video, cond_edges, thresholds=(50.0, 150.0), tolerance: int = 1,
            region=None) -> dict:
  """Canny edges of ``video`` vs ``cond_edges`` [T, H, W, 3] in [-1, 1]: precision/recall/F1,
  counting only edges inside ``region`` [T, H, W] bool when given."""
  gen = conditions.canny_edges(video, *thresholds)
  ref = np.asarray(cond_edges)[..., 0] > 0
  if region is not None:
    gen, ref = gen & region, ref & region
  grow = lambda e: _grow(e, tolerance)  # noqa: E731
  p = float((gen & grow(ref)).sum() / gen.sum()) if gen.sum() else 0.0
  r = float((ref & grow(gen)).sum() / ref.sum()) if ref.sum() else 0.0
  return {"precision": p, "recall": r, "f1": 2 * p * r / (p + r) if p + r else 0.0}


def adherence(videos, examples, profile, thresholds=(50.0, 150.0)) -> dict:
  """Mean metrics of videos [N, T, H, W, 3] against the conditions of ``examples`` (dicts with
  ``cond_depth``, ``cond_edges``, ``obj_masks``, ``colors``, ``obj_mask``)."""
  rows = []
  for v, ex in zip(videos, examples):
    m = mask_iou(v, ex["obj_masks"], ex["colors"], ex["obj_mask"])
    dep = depth_error(v, ex["cond_depth"], ex["obj_masks"], ex["colors"], ex["obj_mask"], profile)
    e = edge_f1(v, ex["cond_edges"], thresholds)
    near = _grow((np.asarray(ex["obj_masks"]) >= 0.5).any(-1)
                 | object_pixels(v, ex["colors"], ex["obj_mask"]).any(-1), 1)
    eo = edge_f1(v, ex["cond_edges"], thresholds, region=near)
    rows.append((m["iou"], m["foreground_iou"], dep["error"], dep["object_error"], e["f1"],
                 eo["f1"]))
  names = ("mask_iou", "foreground_iou", "depth_error", "depth_error_objects", "edge_f1",
           "edge_f1_objects")
  arr = np.asarray(rows, np.float64)
  return {n: float(arr[:, i].mean()) for i, n in enumerate(names)}
