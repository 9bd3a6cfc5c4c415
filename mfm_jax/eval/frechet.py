"""Fréchet distance between two sets of features (FID / FVD style), with a pluggable extractor.

  d² = ||μ₁ - μ₂||² + tr(Σ₁ + Σ₂ - 2 (Σ₁ Σ₂)^½)

μ, Σ: mean and covariance (ddof = 1) of features [N, D]. The trace of the matrix square root is
taken by the symmetric route: (Σ₁ Σ₂)^½ is similar to (Σ₁^½ Σ₂ Σ₁^½)^½, a symmetric PSD matrix,
so tr((Σ₁ Σ₂)^½) = Σᵢ √λᵢ(Σ₁^½ Σ₂ Σ₁^½) with Σ₁^½ from ``numpy.linalg.eigh`` (negative round-off
eigenvalues clipped to 0). Unlike ``scipy.linalg.sqrtm`` of the non-symmetric product this gives
no complex parts and stays finite for singular covariances (N <= D), which is the usual case on
small evaluation sets; ``tests/eval/test_frechet.py`` checks it against the direct scipy route.

Feature extractors are callables ``videos [N, T, H, W, 3] float in [-1, 1] -> [N, D]``:
``clip_score.ClipEncoder.embed_videos`` (a contrastive checkpoint: the project's encoder), or,
with none given, :func:`random_video_encoder`: a fixed random-init ``VideoViT`` (seeded). Its
distances rank sets of videos by low-level statistics only and are comparable ONLY between runs
with the same seed and settings (they are not FVD numbers); a warning says so.
"""
from __future__ import annotations

import logging
import warnings
from collections.abc import Callable

import numpy as np

log = logging.getLogger(__name__)

FeatureFn = Callable[[np.ndarray], np.ndarray]


def stats(features) -> tuple[np.ndarray, np.ndarray]:
  """features [N, D] -> (mean [D], covariance [D, D]) in float64 (ddof = 1; needs N >= 2)."""
  f = np.asarray(features, np.float64)
  if f.ndim != 2 or f.shape[0] < 2:
    raise ValueError(f"frechet.stats: need features [N >= 2, D], got shape {f.shape}")
  if not np.isfinite(f).all():
    raise ValueError("frechet.stats: features contain non-finite values")
  return f.mean(0), np.atleast_2d(np.cov(f, rowvar=False))


def _psd_sqrt(s: np.ndarray) -> np.ndarray:
  w, v = np.linalg.eigh((s + s.T) / 2)
  return (v * np.sqrt(np.clip(w, 0.0, None))) @ v.T


def trace_sqrt_product(sigma1, sigma2) -> float:
  """tr((Σ₁ Σ₂)^½) for symmetric PSD Σ₁, Σ₂ [D, D] (the symmetric route; module docstring)."""
  r = _psd_sqrt(np.asarray(sigma1, np.float64))
  m = r @ np.asarray(sigma2, np.float64) @ r
  w = np.linalg.eigvalsh((m + m.T) / 2)
  return float(np.sqrt(np.clip(w, 0.0, None)).sum())


def frechet_distance(mu1, sigma1, mu2, sigma2) -> float:
  """The Fréchet distance d² between N(μ₁, Σ₁) and N(μ₂, Σ₂) (>= 0)."""
  mu1, mu2 = np.asarray(mu1, np.float64), np.asarray(mu2, np.float64)
  s1, s2 = np.asarray(sigma1, np.float64), np.asarray(sigma2, np.float64)
  if mu1.shape != mu2.shape or s1.shape != s2.shape or s1.shape != mu1.shape * 2:
    raise ValueError(f"frechet_distance: shapes differ: mu {mu1.shape} vs {mu2.shape}, "
                     f"sigma {s1.shape} vs {s2.shape}")
  diff = mu1 - mu2
  d = diff @ diff + np.trace(s1) + np.trace(s2) - 2.0 * trace_sqrt_product(s1, s2)
  return float(max(d, 0.0))


def frechet_from_features(a, b) -> float:
  """Fréchet distance between two feature sets [N, D] and [M, D]."""
  fa, fb = np.asarray(a), np.asarray(b)
  if fa.ndim != 2 or fb.ndim != 2 or fa.shape[1] != fb.shape[1]:
    raise ValueError(f"frechet_from_features: need [N, D] and [M, D], got {fa.shape} and "
                     f"{fb.shape}")
  return frechet_distance(*stats(fa), *stats(fb))


def resample_video(videos, num_frames: int, resolution: int) -> np.ndarray:
  """[N, T, H, W, 3] -> [N, num_frames, R, R, 3] float32: nearest frames spread uniformly over T
  (frames repeat when T < num_frames) and an area / linear resize of each frame."""
  from mfm_jax.data import pipeline  # pylint: disable=g-import-not-at-top
  v = np.asarray(videos, np.float32)
  if v.ndim != 5 or v.shape[-1] != 3:
    raise ValueError(f"need videos [N, T, H, W, 3], got shape {v.shape}")
  t = v.shape[1]
  idx = np.minimum((np.arange(num_frames) * t) // num_frames, t - 1)
  return np.stack([pipeline.resize_video(x[idx], resolution) for x in v]).astype(np.float32)


def random_video_encoder(seed: int = 0, num_frames: int = 8, resolution: int = 32,
                         width: int = 128, depth: int = 2, batch_size: int = 16,
                         warn: bool = True) -> FeatureFn:
  """A fixed random-init ``VideoViT`` (tubelets (2, 8, 8), mean pooling) as a feature function.

  Videos are resampled to ``num_frames`` x ``resolution``² first (``resample_video``). The
  weights depend only on the arguments, so distances are comparable between runs with the same
  arguments and nothing else (see the module docstring).
  """
  import jax  # pylint: disable=g-import-not-at-top
  import jax.numpy as jnp  # pylint: disable=g-import-not-at-top
  from flax import linen as nn  # pylint: disable=g-import-not-at-top
  from mfm_jax.models.vit import VideoViT  # pylint: disable=g-import-not-at-top
  if warn:
    msg = (f"frechet: no encoder checkpoint given; features come from a random-init VideoViT "
           f"(seed={seed}, width={width}, depth={depth}): distances are comparable only between "
           f"runs with these same settings, and are not FVD numbers")
    warnings.warn(msg, stacklevel=2)
    log.warning(msg)
  model = VideoViT(width=width, depth=depth, num_heads=4, mlp_dim=2 * width,
                   image_size=resolution, pooling="mean", tubelet=(2, 8, 8),
                   num_frames=num_frames, attention="joint")
  shape = (1, num_frames, resolution, resolution, 3)
  params = nn.meta.unbox(model.init(jax.random.key(seed), jnp.zeros(shape))["params"])
  apply = jax.jit(lambda p, x: model.apply({"params": p}, x)[1])

  def features(videos) -> np.ndarray:
    v = resample_video(videos, num_frames, resolution)
    out = []
    for s in range(0, len(v), batch_size):
      chunk = v[s:s + batch_size]
      pad = batch_size - len(chunk)
      chunk = np.concatenate([chunk, np.repeat(chunk[-1:], pad, 0)]) if pad else chunk
      out.append(np.asarray(apply(params, jnp.asarray(chunk)))[:batch_size - pad])
    return np.concatenate(out).astype(np.float64)

  features.name = f"random_video_vit_seed{seed}"
  return features
