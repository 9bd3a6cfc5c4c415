"""Image metrics of the 4D fit (dm-pix SSIM, PSNR) against NumPy references."""
import dm_pix as pix
import jax.numpy as jnp
import numpy as np
from scipy.signal import convolve2d

from mfm_jax.eval import fit4d as fit4d_eval


def np_ssim(a, b, size=11, sigma=1.5, k1=0.01, k2=0.03, max_val=1.0):
  """Wang et al. 2004: Gaussian-window SSIM, valid region, mean over pixels and channels."""
  x = np.arange(size) - (size - 1) / 2
  g = np.exp(-x ** 2 / (2 * sigma ** 2))
  win = np.outer(g, g) / np.outer(g, g).sum()
  c1, c2 = (k1 * max_val) ** 2, (k2 * max_val) ** 2
  vals = []
  for ch in range(a.shape[-1]):
    f = lambda im: convolve2d(im, win, mode="valid")  # noqa: E731
    x_, y_ = a[..., ch].astype(np.float64), b[..., ch].astype(np.float64)
    mx, my = f(x_), f(y_)
    sxx, syy, sxy = f(x_ * x_) - mx ** 2, f(y_ * y_) - my ** 2, f(x_ * y_) - mx * my
    vals.append(((2 * mx * my + c1) * (2 * sxy + c2))
                / ((mx ** 2 + my ** 2 + c1) * (sxx + syy + c2)))
  return float(np.mean(vals))


def test_ssim_matches_numpy_reference():
  rng = np.random.default_rng(0)
  a = rng.uniform(0, 1, (2, 24, 20, 3)).astype(np.float32)
  b = np.clip(a + 0.1 * rng.standard_normal(a.shape), 0, 1).astype(np.float32)
  got = np.asarray(pix.ssim(jnp.asarray(a), jnp.asarray(b)))
  want = [np_ssim(a[i], b[i]) for i in range(2)]
  np.testing.assert_allclose(got, want, atol=1e-5)
  assert abs(float(pix.ssim(jnp.asarray(a[0]), jnp.asarray(a[0]))) - 1.0) < 1e-6


def test_psnr():
  a = np.zeros((4, 4, 3))
  assert fit4d_eval.psnr(a, a) == float("inf")
  np.testing.assert_allclose(fit4d_eval.psnr(a, a + 0.1), 20.0, atol=1e-9)
