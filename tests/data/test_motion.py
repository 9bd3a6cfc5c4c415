"""Motion intensity: ground-truth centre motion, levels, Farneback flow on a shifted image."""
import jax.numpy as jnp
import numpy as np
import pytest

from mfm_jax.data import motion


def test_centers_motion_hand_made():
  c = np.zeros((3, 3, 2), np.float32)      # T=3, K=3
  c[:, 0] = [[0.1, 0.1], [0.4, 0.5], [0.4, 0.5]]   # steps 0.5, 0
  c[:, 1] = [[0.5, 0.5], [0.5, 0.6], [0.5, 0.7]]   # steps 0.1, 0.1
  c[:, 2] = [[0.0, 0.0], [1.0, 1.0], [0.0, 0.0]]   # padding: ignored
  mask = np.array([True, True, False])
  assert float(motion.centers_motion(c, mask)) == pytest.approx(0.7 / 4, abs=1e-6)
  batch = np.stack([c, c * 0])
  np.testing.assert_allclose(np.asarray(motion.centers_motion(jnp.asarray(batch),
                                                              jnp.asarray([mask, mask]))),
                             [0.7 / 4, 0.0], atol=1e-6)
  assert float(motion.centers_motion(c, np.zeros(3, bool))) == 0.0


def test_levels_and_quantile_edges():
  edges = motion.quantile_edges(np.arange(100), 4)
  np.testing.assert_allclose(edges, np.quantile(np.arange(100), [0.25, 0.5, 0.75]))
  m = np.array([0.0, 24.75, 24.8, 60.0, 99.0])
  np.testing.assert_array_equal(motion.motion_level(m, edges), [0, 1, 1, 2, 3])
  np.testing.assert_array_equal(np.asarray(motion.motion_level(jnp.asarray(m), edges)),
                                [0, 1, 1, 2, 3])
  assert motion.quantile_edges([1.0, 2.0], 1) == ()


def test_farneback_flow_measures_a_known_shift():
  rng = np.random.default_rng(0)
  base = rng.random((80, 80)).astype(np.float32)
  # Smooth texture (box blur) so the flow is well defined.
  k = np.ones(7) / 7
  base = np.apply_along_axis(lambda r: np.convolve(r, k, "same"), 0, base)
  base = np.apply_along_axis(lambda r: np.convolve(r, k, "same"), 1, base)
  img = ((base - base.min()) / np.ptp(base) * 255).astype(np.uint8)
  frames = np.stack([np.roll(img, (s, 2 * s), axis=(0, 1)) for s in range(3)])  # dy=1, dx=2
  rgb = np.repeat(frames[..., None], 3, -1)
  flow = motion.farneback_flow(rgb[0], rgb[1])
  inner = flow[16:-16, 16:-16]
  np.testing.assert_allclose(np.median(inner.reshape(-1, 2), 0), [2.0, 1.0], atol=0.15)
  assert motion.flow_motion(rgb) == pytest.approx(np.sqrt(5.0) / 80, rel=0.15)
  with pytest.raises(ValueError, match="T >= 2"):
    motion.flow_motion(rgb[:1])
