"""Motion intensity of a clip (Mojito's motion intensity modulator) and its quantised level.

* World clips: ``centers_motion`` = the mean per-frame displacement of the object centres
  (normalised image units per generated frame), over the real objects and the T - 1 frame pairs.
* Real video: ``flow_motion`` = the mean OpenCV Farneback optical-flow magnitude (pixels per
  frame, divided by the frame width to be in normalised units as well).
* ``motion_level`` quantises a motion value into ``len(edges) + 1`` levels 0 .. L-1 with
  ``searchsorted(edges, m, side="right")``: level l holds ``edges[l-1] <= m < edges[l]``.
  ``quantile_edges`` gives the L - 1 inner quantiles of a sample (e.g. the train split), so the
  levels are equally populated there; ``train_edges`` computes them deterministically from the
  first n train clips of a data config.

The centre functions accept NumPy or JAX arrays (the task computes levels inside the jitted
loss from the batch's ``centers``).
"""
from __future__ import annotations

import numpy as np


def _xp(x):
  import jax
  import jax.numpy as jnp
  return jnp if isinstance(x, jax.Array) else np


def centers_motion(centers, obj_mask):
  """Mean per-frame displacement of the real objects' centres.

  Args:
    centers: [..., T, K, 2] normalised (x, y) centres.
    obj_mask: [..., K] bool, real objects.

  Returns:
    [...] float32 (0 for a clip without real objects or with T < 2).
  """
  xp = _xp(centers)
  c = xp.asarray(centers, xp.float32)
  step = xp.sqrt(xp.square(c[..., 1:, :, :] - c[..., :-1, :, :]).sum(-1))   # [..., T-1, K]
  w = xp.asarray(obj_mask, xp.float32)[..., None, :] * xp.ones_like(step)
  return (step * w).sum((-2, -1)) / xp.maximum(w.sum((-2, -1)), 1.0)


def motion_level(motion, edges):
  """Motion -> level in 0 .. len(edges) (``searchsorted(edges, m, side='right')``)."""
  xp = _xp(motion)
  return xp.searchsorted(xp.asarray(edges, xp.float32), motion, side="right").astype(xp.int32)


def quantile_edges(values, num_levels: int) -> tuple[float, ...]:
  """The num_levels - 1 inner quantiles of ``values`` (equally populated levels)."""
  if num_levels < 1:
    raise ValueError(f"num_levels must be >= 1, got {num_levels}")
  q = np.arange(1, num_levels) / num_levels
  return tuple(float(v) for v in np.quantile(np.asarray(values, np.float64), q))


def train_edges(data_config, num_levels: int, n: int) -> tuple[float, ...]:
  """Quantile edges of ``centers_motion`` over the first n clips of the train split."""
  from mfm_jax.data import pipeline
  examples = pipeline.load_examples(data_config, "train", n)
  if not examples:
    raise ValueError(f"train_edges: the train split of {data_config.name} is empty")
  m = [float(centers_motion(ex["centers"], ex["obj_mask"])) for ex in examples]
  return quantile_edges(m, num_levels)


def _gray(frame: np.ndarray) -> np.ndarray:
  import cv2
  frame = np.asarray(frame)
  if frame.dtype != np.uint8:   # float in [-1, 1]
    frame = np.clip((frame.astype(np.float32) + 1.0) * 127.5, 0, 255).round().astype(np.uint8)
  return cv2.cvtColor(frame, cv2.COLOR_RGB2GRAY) if frame.ndim == 3 else frame


def farneback_flow(prev, nxt, *, pyr_scale: float = 0.5, levels: int = 3, winsize: int = 15,
                   iterations: int = 3, poly_n: int = 5, poly_sigma: float = 1.2) -> np.ndarray:
  """Dense optical flow ``cv2.calcOpticalFlowFarneback`` from ``prev`` to ``nxt``.

  Args:
    prev, nxt: [H, W, 3] RGB or [H, W] gray frames, uint8 or float in [-1, 1].
    pyr_scale ... poly_sigma: Farneback's parameters (OpenCV's usual values).

  Returns:
    [H, W, 2] float32 flow (dx, dy) in pixels: prev(y, x) ~ nxt(y + dy, x + dx).
  """
  import cv2
  return cv2.calcOpticalFlowFarneback(_gray(prev), _gray(nxt), None, pyr_scale, levels,
                                      winsize, iterations, poly_n, poly_sigma, 0)


def flow_motion(video, **kwargs) -> float:
  """Mean Farneback flow magnitude of a video, in image widths per frame.

  Args:
    video: [T, H, W, 3] uint8 or float in [-1, 1] (T >= 2).
    **kwargs: ``farneback_flow`` parameters.
  """
  video = np.asarray(video)
  if video.ndim != 4 or video.shape[0] < 2:
    raise ValueError(f"flow_motion: video must be [T >= 2, H, W, 3], got {video.shape}")
  mags = [np.linalg.norm(farneback_flow(a, b, **kwargs), axis=-1).mean()
          for a, b in zip(video[:-1], video[1:])]
  return float(np.mean(mags) / video.shape[2])
