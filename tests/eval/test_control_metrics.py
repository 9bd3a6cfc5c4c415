"""Control metrics: Spearman against scipy, measured motion and subject error on drawn videos."""
import numpy as np
import pytest
from scipy import stats

from mfm_jax.eval import control


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_spearman_matches_scipy_with_ties(seed):
  rng = np.random.default_rng(seed)
  a = rng.integers(0, 4, 40)          # levels: many ties
  b = a * 0.5 + rng.normal(size=40)
  b[:5] = b[5]                        # ties in the measurements too
  assert control.spearman(a, b) == pytest.approx(stats.spearmanr(a, b).statistic, abs=1e-12)
  assert np.isnan(control.spearman(np.ones(5), np.arange(5)))


def _video(centers, color, size=16):
  """[T, H, W, 3] uint8 gray frames with one coloured 3x3 square at each centre."""
  t = len(centers)
  v = np.full((t, size, size, 3), 120, np.uint8)
  for i, (x, y) in enumerate(centers):
    cx, cy = int(x * size), int(y * size)
    v[i, cy - 1:cy + 2, cx - 1:cx + 2] = color
  return v


def test_video_motion_and_subject_error():
  red, blue = (220, 30, 30), (40, 70, 230)
  cs = [(4 / 16 + 0.5 / 16 + i * 2 / 16, 8.5 / 16) for i in range(4)]   # 2 px per frame in x
  v = _video(cs, red)
  colors = np.array([red, blue], np.uint8)
  mask = np.array([True, True])          # blue is never found: ignored by video_motion
  assert control.video_motion(v, colors, mask) == pytest.approx(2 / 16, abs=1e-6)
  target = np.array(cs, np.float32)
  err = control.subject_trajectory_error(v[None], target[None], colors[None], mask[None], [0])
  np.testing.assert_allclose(err, [0.0], atol=1e-6)
  shifted = target + [0.0, 0.25]
  err = control.subject_trajectory_error(v[None], shifted[None], colors[None], mask[None], [0])
  np.testing.assert_allclose(err, [0.25], atol=1e-6)
  adh = control.intensity_adherence([0, 0, 1, 1], [0.1, 0.2, 0.3, 0.5])
  assert adh["spearman"] == pytest.approx(stats.spearmanr([0, 0, 1, 1], [0.1, 0.2, 0.3, 0.5]).statistic)
  assert adh["motion_per_level"] == pytest.approx({0: 0.15, 1: 0.4})
