"""Tests for mfm_jax.eval.condition and mfm_jax.data.conditions: synthetic frames with known
answers, world clips against their own conditions (metric floors) and shuffled clips."""
import numpy as np
import pytest

from mfm_jax.data import conditions, pipeline
from mfm_jax.data.world import generate, sim
from mfm_jax.eval import condition

RED, BLUE = (230, 40, 40), (40, 60, 230)
GREY = 200


def _clip(t=2, h=16, w=16):
  """Two objects: red square rows 2-5 x cols 2-5, blue square rows 9-13 x cols 8-12."""
  v = np.full((t, h, w, 3), GREY, np.uint8)
  v[:, 2:6, 2:6] = RED
  v[:, 9:14, 8:13] = BLUE
  masks = np.zeros((t, h, w, 2), np.float32)
  masks[:, 2:6, 2:6, 0] = 1.0
  masks[:, 9:14, 8:13, 1] = 1.0
  return v, masks, np.array([RED, BLUE], np.uint8), np.array([True, True])


def test_object_pixels_and_mask_iou():
  v, masks, colors, obj = _clip()
  det = condition.object_pixels(v, colors, obj)
  np.testing.assert_array_equal(det, masks > 0.5)
  assert condition.mask_iou(v, masks, colors, obj)["iou"] == 1.0
  shifted = np.roll(v, 2, axis=2)                      # 4-wide square moved by 2: IoU 2/6
  m = condition.mask_iou(shifted, masks, colors, obj)
  np.testing.assert_allclose(m["per_object"][0], 8 / 24)
  np.testing.assert_allclose(m["per_object"][1], 15 / 35)   # 5-wide square moved by 2: 3/7
  with pytest.raises(ValueError, match="mask_iou"):
    condition.mask_iou(v, masks[:, :8], colors, obj)


def test_edges_of_a_square():
  v, _, _, _ = _clip(t=1)
  e = conditions.canny_edges(v)
  assert e.shape == (1, 16, 16) and e[0, 2:6, 2:6].any() and not e[0, 7, 0:2].any()
  cond = np.where(e, 1.0, -1.0)[..., None].repeat(3, -1)
  assert condition.edge_f1(v, cond)["f1"] == 1.0
  assert condition.edge_f1(np.full_like(v, GREY), cond)["f1"] == 0.0
  real = conditions.real_conditions(v.astype(np.float32) / 127.5 - 1.0)["cond_edges"]
  np.testing.assert_array_equal(real, cond)


def test_depth_map_and_disparity_estimate():
  d = np.array([[[0.0, 6.0, 16.0, 8.0]]], np.float32)
  np.testing.assert_allclose(conditions.depth_map(d, 6.0, 16.0)[0, 0],
                             [0.0, 1.0, 0.0, (1 / 8 - 1 / 16) / (1 / 6 - 1 / 16)], rtol=1e-6)
  with pytest.raises(ValueError, match="near < far"):
    conditions.depth_map(d, 16.0, 6.0)
  v, masks, colors, obj = _clip(t=1)
  profile = np.linspace(0.1, 1.0, 16, dtype=np.float32)
  est, det = condition.estimate_disparity(v, colors, obj, profile)
  np.testing.assert_allclose(est[0, :, 0], profile)           # floor: the row's value
  np.testing.assert_allclose(est[0, 2:6, 3], profile[5])       # red: its contact row (5)
  np.testing.assert_allclose(est[0, 9:14, 10], profile[13])    # blue: row 13
  disp = np.where(det, est, profile[None, :, None])
  cond = np.repeat((2.0 * disp - 1.0)[..., None], 3, -1)
  assert condition.depth_error(v, cond, masks, colors, obj, profile)["error"] < 1e-6
  flat = condition.depth_error(np.full_like(v, GREY), cond, masks, colors, obj, profile)
  assert flat["object_error"] > 0.05
  prof = condition.floor_profile(cond[None], masks[None])
  np.testing.assert_allclose(prof, profile, atol=1e-6)


def test_world_conditions_and_floors():
  spec = sim.WorldSpec(num_frames=4, height=32, width=32)
  recs = []
  for seed in (1, 2, 3):
    clip = generate.generate_clip(seed, spec)
    recs.append(clip)
  ex = []
  for r in recs:
    e = conditions.world_conditions(r, spec, num_frames=4, resolution=16)
    e.update(video=pipeline.resize_video(r["video"].astype(np.float32) / 127.5 - 1.0, 16),
             colors=r["colors"], obj_mask=r["obj_mask"])
    ex.append(e)
  assert ex[0]["cond_depth"].shape == (4, 16, 16, 3) and ex[0]["obj_masks"].shape == (4, 16, 16, 4)
  assert (ex[0]["cond_depth"] > -1).mean() > 0.5        # the floor is hit
  profile = condition.floor_profile(np.stack([e["cond_depth"] for e in ex]),
                                    np.stack([e["obj_masks"] for e in ex]))
  assert np.all(np.diff(profile) >= -1e-3)              # lower rows are nearer
  real = condition.adherence(np.stack([e["video"] for e in ex]), ex, profile)
  shuffled = condition.adherence(np.roll(np.stack([e["video"] for e in ex]), 1, 0), ex, profile)
  assert real["mask_iou"] > 0.7 and shuffled["mask_iou"] < real["mask_iou"]
  assert real["depth_error_objects"] < shuffled["depth_error_objects"]
  bad = dict(recs[0], seed=recs[1]["seed"])
  with pytest.raises(ValueError, match="does not reproduce"):
    conditions.world_depth(bad, spec)
  with pytest.raises(KeyError, match="seed"):
    conditions.world_depth({"video": recs[0]["video"]}, spec)
