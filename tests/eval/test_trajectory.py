"""Trajectory metric: ground truth, noise, known shifts, blank videos."""
import numpy as np
import pytest

from mfm_jax.data.world import generate
from mfm_jax.data.world import sim
from mfm_jax.eval import trajectory

SEEDS = range(8)


@pytest.fixture(scope="module")
def clips():
  return [generate.generate_clip(s) for s in SEEDS]


def _error(video, clip, **kwargs):
  return trajectory.trajectory_error(video, clip["centers"], clip["colors"],
                                     clip["obj_mask"], **kwargs)


def test_ground_truth_videos_have_small_error(clips):
  # Measured over 200 clips (tools/gen_world_bench.py): mean 0.0034
  # (0.22 px at 64x64), worst clip 0.011, detection rate 0.9999.
  errors = []
  for clip in clips:
    r = _error(clip["video"], clip)
    assert r["error"] < 0.02
    assert r["detection_rate"] > 0.97
    assert r["count"] == clip["num_objects"] * len(clip["video"])
    errors.append(r["error"])
    _, found = trajectory.find_centers(clip["video"], clip["colors"],
                                       clip["obj_mask"])
    # Found exactly where the object covers pixels; never for padding.
    np.testing.assert_array_equal(found, clip["visible"] & clip["obj_mask"])
  assert np.mean(errors) < 0.006


def test_float_video_in_minus_one_one_matches_uint8(clips):
  clip = clips[0]
  as_float = clip["video"].astype(np.float32) / 127.5 - 1.0
  assert _error(as_float, clip)["error"] == pytest.approx(
      _error(clip["video"], clip)["error"], abs=1e-6)


def test_noise_video_has_large_error(clips):
  rng = np.random.default_rng(0)
  for clip in clips[:4]:
    noise = rng.integers(0, 256, clip["video"].shape, dtype=np.uint8)
    assert _error(noise, clip)["error"] > 0.1


def test_shifted_video_error_equals_the_shift(clips):
  dx, dy = 3, 2
  for clip in clips[:4]:
    video = clip["video"].copy()
    video[:, dy:, dx:] = clip["video"][:, :-dy, :-dx]
    r = _error(video, clip)
    assert r["error"] == pytest.approx(np.hypot(dx, dy) / 64, abs=0.006)
    centers, _ = trajectory.find_centers(video, clip["colors"],
                                         clip["obj_mask"])
    offset = (centers - clip["centers"])[:, clip["obj_mask"]].mean((0, 1))
    np.testing.assert_allclose(offset * 64, [dx, dy], atol=0.3)


def test_blank_video_detects_nothing(clips):
  clip = clips[1]
  blank = np.full_like(clip["video"], 128)
  r = _error(blank, clip)
  assert r["detection_rate"] == 0.0
  # Missed detections are scored at the image centre.
  gt = clip["centers"][:, clip["obj_mask"]]
  assert r["error"] == pytest.approx(
      np.linalg.norm(gt - 0.5, axis=-1).mean(), rel=1e-5)
  assert r["error_px64"] == pytest.approx(r["error"] * 64)


def test_synthetic_squares_and_nearest_colour():
  palette = sim.palette_rgb()
  video = np.full((2, 32, 32, 3), 100, np.uint8)
  video[:, 4:8, 10:14] = palette[0] // 2        # a dark red square
  video[:, 20:30, 0:4] = palette[6]             # an orange bar
  colors = np.stack([palette[0], palette[6], palette[2], palette[3]])
  mask = np.array([True, True, True, False])
  centers, found = trajectory.find_centers(video, colors, mask)
  np.testing.assert_allclose(centers[0, 0], [12 / 32, 6 / 32])
  np.testing.assert_allclose(centers[0, 1], [2 / 32, 25 / 32])
  np.testing.assert_array_equal(found[0], [True, True, False, False])
  np.testing.assert_allclose(centers[0, 2], [0.5, 0.5])


def test_batched_helper_pools_examples(clips):
  batch = clips[:3]
  stack = lambda key: np.stack([c[key] for c in batch])  # noqa: E731
  r = trajectory.trajectory_error_batch(stack("video"), stack("centers"),
                                        stack("colors"), stack("obj_mask"))
  singles = [_error(c["video"], c) for c in batch]
  counts = np.array([s["count"] for s in singles])
  np.testing.assert_allclose(r["per_video"],
                             [s["error"] for s in singles], rtol=1e-6)
  assert r["error"] == pytest.approx(
      np.sum([s["error"] for s in singles] * counts) / counts.sum())
  assert r["count"] == counts.sum()


def test_bad_input_raises():
  with pytest.raises(ValueError, match=r"\[T, H, W, 3\]"):
    trajectory.find_centers(np.zeros((4, 4, 3), np.uint8),
                            np.zeros((1, 3), np.uint8), np.ones(1, bool))
  with pytest.raises(TypeError, match="uint8 or float"):
    trajectory.find_centers(np.zeros((1, 4, 4, 3), np.int32),
                            np.zeros((1, 3), np.uint8), np.ones(1, bool))
