"""Attribute binding of (generated) world videos: is each object's colour where the caption
puts that object, and not on the others?

A world caption binds attributes to objects: "a large red sphere moves from the back left to the
front center; a small blue cube stays at the middle right" puts *red* at one trajectory and
*blue* at another. The ground-truth centres ``gt_centers [T, K, 2]`` of the conditioning clip are
where the caption binds object k at frame t. Pixels are labelled by colour as in
``eval/trajectory.py`` (saturated pixels go to the nearest palette hue of the clip's objects) and
the image is split into object *regions*: the pixels within ``radius`` (normalised units) of a
ground-truth centre, each given to its nearest centre. Over real objects k and frames t:

  * ``presence``: colour k has >= ``min_pixels`` pixels anywhere (a binding-free detection rate);
  * ``binding``: colour k is present and the region that holds most of its pixels is k's own
    (a colour drawn at another object's place, or nowhere near an object, fails);
  * ``leakage``: of the coloured pixels inside object regions, the fraction whose colour is
    another object's (pooled over the clip; the failure mode "red spills onto the blue cube");
  * ``swap``: of real object pairs (i, j) and frames, the fraction where i's colour sits mostly in
    j's region and j's in i's (the two attributes exchanged).

Real clips score binding ~1 and leakage ~0; the same clips with two objects' colours exchanged,
or another clip's video, score far lower (tests/eval/test_binding.py), so the metric can fail.
Shape and size are not scored (too few pixels at 32 x 32 to tell a cube from a sphere).

Vectorised NumPy on the host, like ``trajectory.py``.
"""
from __future__ import annotations

import numpy as np

from mfm_jax.eval import trajectory


def colour_labels(video, colors, obj_mask, *, min_saturation: float = 0.35,
                  min_value: float = 0.1, max_hue_deg: float = 14.0) -> np.ndarray:
  """Per pixel, the object whose palette colour it shows: ``[T, H, W]`` int, -1 = none.

  The same rule as ``trajectory.find_centers`` (its thresholds): saturated, bright pixels go to
  the real object of nearest hue, if within ``max_hue_deg``.
  """
  frames = trajectory._to_unit(video)
  if frames.ndim != 4 or frames.shape[-1] != 3:
    raise ValueError(f"colour_labels: video must be [T, H, W, 3], got {frames.shape}")
  obj_mask = np.asarray(obj_mask, bool)
  hue, sat, val = trajectory._hsv(frames)                              # [T, H, W]
  ref_hue, _, _ = trajectory._hsv(np.asarray(colors, np.float32) / 255.0)
  diff = np.abs(hue[..., None] - ref_hue)
  diff = np.where(obj_mask, np.minimum(diff, 360.0 - diff), np.inf)     # [T, H, W, K]
  nearest = np.argmin(diff, -1)
  ok = (sat >= min_saturation) & (val >= min_value)
  ok &= np.take_along_axis(diff, nearest[..., None], -1)[..., 0] <= max_hue_deg
  return np.where(ok, nearest, -1)


def object_regions(gt_centers, obj_mask, height: int, width: int,
                   radius: float = 0.15) -> np.ndarray:
  """Per pixel, the real object whose centre is nearest and within ``radius``: ``[T, H, W]``.

  Args:
    gt_centers: [T, K, 2] normalised (x, y) centres.
    obj_mask: [K] bool.
    height, width: the video's frame size.
    radius: normalised distance; -1 beyond it from every real centre.
  """
  gt = np.asarray(gt_centers, np.float32)
  ys, xs = np.meshgrid((np.arange(height) + 0.5) / height, (np.arange(width) + 0.5) / width,
                       indexing="ij")
  pix = np.stack([xs, ys], -1)                                          # [H, W, 2]
  dist = np.linalg.norm(pix[None, :, :, None] - gt[:, None, None], axis=-1)   # [T, H, W, K]
  dist = np.where(np.asarray(obj_mask, bool), dist, np.inf)
  nearest = np.argmin(dist, -1)
  near = np.take_along_axis(dist, nearest[..., None], -1)[..., 0] <= radius
  return np.where(near, nearest, -1)


def binding_scores(video, gt_centers, colors, obj_mask, *, radius: float = 0.15,
                   min_pixels: int = 1, **thresholds) -> dict:
  """Binding of one clip (see the module docstring).

  Args:
    video: [T, H, W, 3] uint8, or float in [-1, 1].
    gt_centers: [T, K, 2] where the caption binds each object (the conditioning clip's centres).
    colors: [K, 3] uint8 palette colours; obj_mask: [K] bool.
    radius: object region radius (normalised units).
    min_pixels: pixels of a colour needed to count it present.
    **thresholds: colour thresholds of :func:`colour_labels`.

  Returns:
    dict with binding, presence, leakage, swap (floats; nan where undefined: leakage with no
    coloured pixel in any region, swap with fewer than two objects) and count ((t, k) pairs).
  """
  obj_mask = np.asarray(obj_mask, bool)
  labels = colour_labels(video, colors, obj_mask, **thresholds)       # [T, H, W]
  t_count, h, w = labels.shape
  gt = np.asarray(gt_centers, np.float32)
  if gt.shape != (t_count, len(obj_mask), 2):
    raise ValueError(f"binding_scores: gt_centers must be [T, K, 2] = "
                     f"[{t_count}, {len(obj_mask)}, 2], got {gt.shape}")
  regions = object_regions(gt, obj_mask, h, w, radius)                # [T, H, W]
  k_count = len(obj_mask)
  # table[t, k, j]: pixels of colour k in region j (j = K: outside every region).
  lab = np.where(labels >= 0, labels, k_count).reshape(t_count, -1)
  reg = np.where(regions >= 0, regions, k_count).reshape(t_count, -1)
  table = np.zeros((t_count, k_count + 1, k_count + 1), np.int64)
  for t in range(t_count):
    np.add.at(table[t], (lab[t], reg[t]), 1)
  table = table[:, :k_count]                                          # drop "no colour"
  total = table.sum(-1)                                               # [T, K]
  present = (total >= max(min_pixels, 1)) & obj_mask
  inside = table[..., :k_count]
  best = np.argmax(inside, -1)                                        # [T, K] region with most
  own = np.take_along_axis(inside, np.arange(k_count)[None, :, None], -1)[..., 0]
  bound = present & (own > 0) & (best == np.arange(k_count))
  real = np.broadcast_to(obj_mask, present.shape)
  count = int(real.sum())
  in_regions = inside.sum()
  wrong = in_regions - np.trace(inside, axis1=1, axis2=2).sum()
  pairs = obj_mask[:, None] & obj_mask[None, :] & np.triu(np.ones((k_count,) * 2, bool), 1)
  mostly = present[..., None] & (own[..., None] < inside) & (best[..., None] ==
                                                               np.arange(k_count))
  swapped = mostly & np.swapaxes(mostly, 1, 2) & pairs                # [T, K, K]
  n_pairs = int(pairs.sum()) * t_count
  return {"binding": float(bound[real].mean()) if count else float("nan"),
          "presence": float(present[real].mean()) if count else float("nan"),
          "leakage": float(wrong / in_regions) if in_regions else float("nan"),
          "swap": float(swapped.sum() / n_pairs) if n_pairs else float("nan"),
          "count": count}


def binding_batch(videos, gt_centers, colors, obj_mask, **kwargs) -> dict:
  """:func:`binding_scores` over a batch: pooled means (binding / presence weighted by the
  objects' (t, k) pairs; leakage and swap averaged over the clips where defined) and
  ``per_video`` dicts of [B] arrays for paired comparisons."""
  rows = [binding_scores(v, g, c, m, **kwargs)
          for v, g, c, m in zip(videos, gt_centers, colors, obj_mask)]
  per = {k: np.array([r[k] for r in rows], np.float64)
         for k in ("binding", "presence", "leakage", "swap", "count")}
  n = np.maximum(per["count"], 0)
  out = {k: float(np.nansum(per[k] * n) / max(n.sum(), 1)) for k in ("binding", "presence")}
  for k in ("leakage", "swap"):
    vals = per[k][~np.isnan(per[k])]
    out[k] = float(vals.mean()) if len(vals) else float("nan")
  out["count"] = int(n.sum())
  out["per_video"] = per
  return out
