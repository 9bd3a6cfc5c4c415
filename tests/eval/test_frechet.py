"""Fréchet distance against the direct scipy computation; the random-init video encoder."""
import numpy as np
import pytest
import scipy.linalg

from mfm_jax.eval import frechet


def _scipy_fd(a, b):
  """The textbook route: scipy.linalg.sqrtm of the (non-symmetric) product Σ₁ Σ₂."""
  m1, m2 = a.mean(0), b.mean(0)
  s1, s2 = np.cov(a, rowvar=False), np.cov(b, rowvar=False)
  covmean = scipy.linalg.sqrtm(s1 @ s2)
  return float(np.sum((m1 - m2) ** 2) + np.trace(s1) + np.trace(s2)
               - 2 * np.trace(np.real(covmean)))


@pytest.mark.parametrize("n,d,seed", [(200, 8, 0), (64, 16, 1), (500, 32, 2)])
def test_matches_scipy_sqrtm(n, d, seed):
  rng = np.random.default_rng(seed)
  mix = rng.normal(size=(d, d))
  a = rng.normal(size=(n, d)) @ mix
  b = rng.normal(size=(n + 7, d)) @ (mix + 0.3 * rng.normal(size=(d, d))) + rng.normal(size=d)
  ours, ref = frechet.frechet_from_features(a, b), _scipy_fd(a, b)
  assert ref > 1.0
  np.testing.assert_allclose(ours, ref, rtol=1e-6)


def test_stats_match_numpy_and_properties():
  rng = np.random.default_rng(3)
  a = rng.normal(size=(50, 6))
  mu, sigma = frechet.stats(a)
  np.testing.assert_allclose(mu, a.mean(0))
  np.testing.assert_allclose(sigma, np.cov(a.T))
  assert frechet.frechet_from_features(a, a) == pytest.approx(0.0, abs=1e-9)
  shift = np.arange(6.0)
  # a pure shift: only the mean term remains, ||shift||^2
  assert frechet.frechet_from_features(a, a + shift) == pytest.approx(shift @ shift, rel=1e-9)


def test_singular_covariances_stay_finite():
  rng = np.random.default_rng(4)
  a, b = rng.normal(size=(5, 40)), rng.normal(size=(6, 40)) + 1.0   # N < D: rank-deficient
  d = frechet.frechet_from_features(a, b)
  assert np.isfinite(d) and d > 0
  np.testing.assert_allclose(d, _scipy_fd(a, b), rtol=1e-4)


def test_bad_inputs_are_clear_errors():
  with pytest.raises(ValueError, match="N >= 2"):
    frechet.stats(np.zeros((1, 3)))
  with pytest.raises(ValueError, match=r"\[N, D\] and \[M, D\]"):
    frechet.frechet_from_features(np.zeros((4, 3)), np.zeros((4, 2)))
  with pytest.raises(ValueError, match="non-finite"):
    frechet.stats(np.array([[0.0, np.nan], [1.0, 2.0]]))


def test_random_video_encoder_is_fixed_by_seed():
  rng = np.random.default_rng(5)
  videos = rng.uniform(-1, 1, size=(3, 4, 16, 16, 3)).astype(np.float32)
  with pytest.warns(UserWarning, match="comparable only"):
    enc = frechet.random_video_encoder(seed=0, width=32, depth=1, batch_size=2)
  f1 = enc(videos)
  f2 = frechet.random_video_encoder(seed=0, width=32, depth=1, batch_size=4, warn=False)(videos)
  f3 = frechet.random_video_encoder(seed=1, width=32, depth=1, warn=False)(videos)
  assert f1.shape == (3, 32) and np.isfinite(f1).all()
  np.testing.assert_allclose(f1, f2, rtol=1e-5, atol=1e-6)   # batching does not change features
  assert not np.allclose(f1, f3)
  assert not np.allclose(f1[0], f1[1])                        # different videos, different features
