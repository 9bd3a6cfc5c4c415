"""Attribute-binding metric: painted discs with known answers, and real world clips (the oracle)
against shuffled and colour-exchanged clips."""
import numpy as np
import pytest

from mfm_jax.data.world import generate
from mfm_jax.eval import binding

RED, BLUE, GREEN = (220, 30, 30), (30, 60, 220), (30, 200, 60)
COLORS = np.array([RED, BLUE, GREEN], np.uint8)
MASK = np.array([True, True, False])
T, H = 3, 32


def _centers():
  c = np.zeros((T, 3, 2), np.float32)
  c[:, 0] = [0.25, 0.3]
  c[:, 1] = [0.75, 0.7]
  c[:, 2] = [0.5, 0.5]          # padding slot
  c[:, 0, 0] += np.arange(T) * 0.02
  return c


def _paint(centers, colours, radius=0.06):
  """Gray frames with a disc of colours[k] at centers[t, k] for each k with a colour."""
  video = np.full((T, H, H, 3), 128, np.uint8)
  ys, xs = np.meshgrid((np.arange(H) + 0.5) / H, (np.arange(H) + 0.5) / H, indexing="ij")
  for t in range(T):
    for k, colour in enumerate(colours):
      if colour is not None:
        disc = np.hypot(xs - centers[t, k, 0], ys - centers[t, k, 1]) <= radius
        video[t][disc] = colour
  return video


def test_correct_clip_binds_everything():
  c = _centers()
  r = binding.binding_scores(_paint(c, [RED, BLUE]), c, COLORS, MASK)
  assert r == {"binding": 1.0, "presence": 1.0, "leakage": 0.0, "swap": 0.0, "count": 2 * T}


def test_exchanged_colours_fail_binding_but_not_presence():
  c = _centers()
  r = binding.binding_scores(_paint(c, [BLUE, RED]), c, COLORS, MASK)
  assert r["presence"] == 1.0
  assert r["binding"] == 0.0 and r["leakage"] == 1.0 and r["swap"] == 1.0


def test_missing_and_misplaced_colours():
  c = _centers()
  moved = c.copy()
  moved[:, 0] = [0.5, 0.9]          # red drawn far from every bound place
  r = binding.binding_scores(_paint(moved, [RED, BLUE]), c, COLORS, MASK)
  assert r["presence"] == 1.0 and r["binding"] == 0.5 and r["leakage"] == 0.0
  r = binding.binding_scores(_paint(c, [None, BLUE]), c, COLORS, MASK)
  assert r["presence"] == 0.5 and r["binding"] == 0.5


def test_leakage_is_the_wrong_colour_fraction_inside_regions():
  c = _centers()
  video = _paint(c, [RED, BLUE])
  blue = binding.colour_labels(video, COLORS, MASK) == 1
  # Paint the left half of the blue disc red: red leaks onto the blue object.
  half = blue & (np.arange(H)[None, None, :] < int(0.75 * H))
  video[half] = RED
  r = binding.binding_scores(video, c, COLORS, MASK)
  labels = binding.colour_labels(video, COLORS, MASK)
  assert r["leakage"] == pytest.approx(half.sum() / (labels >= 0).sum())
  assert r["binding"] == 1.0        # red is still mostly in its own region


def test_bad_shapes_raise():
  with pytest.raises(ValueError, match="gt_centers must be"):
    binding.binding_scores(_paint(_centers(), [RED, BLUE]), _centers()[:2], COLORS, MASK)
  with pytest.raises(ValueError, match="video must be"):
    binding.colour_labels(np.zeros((H, H, 3), np.uint8), COLORS, MASK)


def _exchange_first_two(video, colors, mask):
  labels = binding.colour_labels(video, colors, mask)
  out = video.copy()
  out[labels == 0], out[labels == 1] = colors[1], colors[0]
  return out


def test_real_clips_are_the_oracle_shuffled_and_exchanged_clips_fail():
  clips = [generate.generate_clip(s) for s in range(6)]
  videos = np.stack([c["video"] for c in clips])
  args = [np.stack([c[k] for c in clips]) for k in ("centers", "colors", "obj_mask")]
  real = binding.binding_batch(videos, *args)
  assert real["binding"] > 0.97 and real["presence"] > 0.97
  assert real["leakage"] < 0.05 and real["swap"] == 0.0
  shuffled = binding.binding_batch(np.roll(videos, 1, 0), *args)
  assert shuffled["binding"] < 0.4 and shuffled["leakage"] > 0.3
  exchanged = binding.binding_batch(np.stack(
      [_exchange_first_two(v, c["colors"], c["obj_mask"]) for v, c in zip(videos, clips)]), *args)
  assert exchanged["presence"] > 0.97          # every colour is still there ...
  assert exchanged["binding"] < real["binding"] - 0.3   # ... but on the wrong object
  assert exchanged["swap"] > 0.1     # one of the clip's 1 to 6 object pairs swapped
  assert real["per_video"]["binding"].shape == (6,)
