"""Camera, renderer, captions and generate_clip of the procedural world."""
import numpy as np
import pytest

from mfm_jax.data.world import camera as camera_lib
from mfm_jax.data.world import captions
from mfm_jax.data.world import generate
from mfm_jax.data.world import render
from mfm_jax.data.world import sim

SPEC = sim.WorldSpec()
SMALL = sim.WorldSpec(num_frames=4, height=32, width=32)


def _hue(rgb):
  rgb = np.asarray(rgb, np.float64)
  return np.degrees(np.arctan2(np.sqrt(3) * (rgb[..., 1] - rgb[..., 2]),
                               2 * rgb[..., 0] - rgb[..., 1] - rgb[..., 2]))


def test_look_at_is_a_rotation_and_opencv_oriented():
  w2c = camera_lib.look_at((0.0, -6.0, 8.0), (0.0, 0.0, 0.0))
  rot = w2c[:3, :3]
  np.testing.assert_allclose(rot @ rot.T, np.eye(3), atol=1e-12)
  assert np.linalg.det(rot) == pytest.approx(1.0)
  np.testing.assert_allclose(rot[0], [1.0, 0.0, 0.0], atol=1e-12)  # x right
  assert rot[1, 2] < 0  # camera y (down) points to world -z
  with pytest.raises(ValueError, match="parallel"):
    camera_lib.look_at((0, 0, 5), (0, 0, 0), up=(0, 0, 1))


def test_project_known_points():
  cam = camera_lib.Camera(fx=10.0, fy=20.0, cx=15.5, cy=7.5, width=32,
                          height=16, world_to_camera=np.eye(4))
  np.testing.assert_allclose(cam.project([1.0, 2.0, 5.0]),
                             [15.5 + 2.0, 7.5 + 8.0])
  np.testing.assert_allclose(cam.normalize([15.5, 7.5]), [0.5, 0.5])
  world = camera_lib.world_camera(SPEC)
  # The look-at target projects to the image centre.
  np.testing.assert_allclose(world.normalize(world.project(
      np.asarray(SPEC.camera_target))), [0.5, 0.5], atol=1e-9)
  # Rays through pixel centres project back onto those pixels.
  origin, dirs = world.pixel_rays()
  uv = world.project(origin + 3.0 * dirs[[0, 10, 63], [0, 40, 63]])
  np.testing.assert_allclose(uv, [[0, 0], [40, 10], [63, 63]], atol=1e-6)
  np.testing.assert_allclose(world.position, SPEC.camera_eye, atol=1e-9)


def test_whole_arena_is_in_view():
  cam = camera_lib.world_camera(SPEC)
  h = SPEC.arena_size / 2
  top = 2 * max(SPEC.sizes)
  corners = np.array([[x, y, z] for x in (-h, h) for y in (-h, h)
                      for z in (0.0, top)])
  uv = cam.normalize(cam.project(corners))
  assert np.all((uv > 0) & (uv < 1))


def test_render_colors_depth_and_instances():
  scene = sim.simulate(11, SPEC)
  out = render.render(scene)
  rgb, depth, inst = out["rgb"], out["depth"], out["instance"]
  t, h, w = SPEC.num_frames, SPEC.height, SPEC.width
  assert rgb.shape == (t, h, w, 3) and rgb.dtype == np.uint8
  assert depth.shape == (t, h, w) and inst.shape == (t, h, w)
  palette = sim.palette_rgb()
  for k in np.flatnonzero(scene.mask):
    pix = rgb[inst == k + 1].astype(np.int32)
    assert len(pix) > 10
    # Shading scales the palette colour: hue kept, gray never appears.
    expected = _hue(palette[scene.objects.color[k]])
    lit = pix[pix.max(-1) > 60]
    diff = (_hue(lit) - expected + 180) % 360 - 180
    assert np.all(np.abs(diff) < 6), (k, np.abs(diff).max())
  ground = rgb[inst == 0].astype(np.int32)
  assert np.all(ground.max(-1) == ground.min(-1))  # neutral gray
  assert np.all(depth > 0)  # every ray hits the ground or an object
  # Objects are nearer than the ground behind them.
  obj_depth = depth[inst > 0].mean()
  assert obj_depth < depth[inst == 0].max()


@pytest.mark.parametrize("seed", [3, 11])
def test_culled_render_equals_brute_force(seed, monkeypatch):
  scene = sim.simulate(seed, SMALL)
  fast = render.render(scene)
  # Without screen rectangles every ray and every point is cast exactly.
  monkeypatch.setattr(render, "_screen_rect", lambda points, camera: None)
  slow = render.render(scene)
  for key in fast:
    np.testing.assert_array_equal(fast[key], slow[key], err_msg=key)


def test_render_is_shadowed_and_empty_scene_has_no_objects():
  scene = sim.simulate(2, SPEC)
  out = render.render(scene)
  ground = out["rgb"][out["instance"] == 0][:, 0]
  assert len(np.unique(ground)) >= 3  # arena, outside, shadow
  mask = np.zeros(SPEC.max_objects, bool)
  empty = render.render_frames(scene.positions, scene.objects.radius,
                               np.zeros(SPEC.max_objects, bool),
                               sim.palette_rgb()[:SPEC.max_objects], mask,
                               camera_lib.world_camera(SPEC))
  assert not empty["instance"].any()
  assert np.all(empty["rgb"][..., 0] == empty["rgb"][..., 2])


def test_region_and_direction_words():
  assert captions.region((0.1, 0.1)) == "top left"
  assert captions.region((0.5, 0.5)) == "center"
  assert captions.region((0.9, 0.5)) == "right"
  assert captions.region((0.5, 0.95)) == "bottom"
  assert captions.region_phrase((0.5, 0.5)) == "in the center"
  assert captions.region_phrase((0.1, 0.5)) == "on the left"
  assert captions.direction((1.0, 0.0)) == "right"
  assert captions.direction((0.0, -1.0)) == "up"  # image y points down
  assert captions.direction((-1.0, 1.0)) == "down-left"


def test_generate_clip_fields_and_determinism():
  a = generate.generate_clip(5, SMALL)
  b = generate.generate_clip(5, SMALL)
  t, h, w, k = SMALL.num_frames, SMALL.height, SMALL.width, SMALL.max_objects
  expected = {"video": ((t, h, w, 3), np.uint8),
              "centers": ((t, k, 2), np.float32),
              "colors": ((k, 3), np.uint8), "obj_mask": ((k,), np.bool_),
              "depth": ((t, h, w), np.float32),
              "instance": ((t, h, w), np.uint8),
              "visible": ((t, k), np.bool_),
              "positions": ((t, k, 3), np.float32),
              "shape_ids": ((k,), np.int32)}
  for key, (shape, dtype) in expected.items():
    assert a[key].shape == shape and a[key].dtype == dtype, key
    np.testing.assert_array_equal(a[key], b[key])
  assert a["caption"] == b["caption"]
  assert a["num_objects"] == a["obj_mask"].sum()
  assert not np.array_equal(a["video"],
                            generate.generate_clip(6, SMALL)["video"])


@pytest.mark.parametrize("seed", [0, 1, 2, 3])
def test_caption_names_every_object_and_its_start(seed):
  clip = generate.generate_clip(seed, SMALL)
  clauses = clip["caption"].rstrip(".").split("; ")
  assert len(clauses) == clip["num_objects"]
  for k, clause in enumerate(clauses):
    color = sim.COLOR_NAMES[clip["color_ids"][k]]
    shape = sim.SHAPE_NAMES[clip["shape_ids"][k]]
    assert clause.startswith(f"a {sim.SIZE_NAMES[clip['size_ids'][k]]} "
                             f"{color} {shape}"), clause
    assert captions.region_phrase(clip["centers"][0, k]) in clause
    np.testing.assert_array_equal(
        clip["colors"][k], sim.palette_rgb()[clip["color_ids"][k]])


def test_still_objects_are_captioned_still():
  spec = sim.WorldSpec(num_frames=4, height=16, width=16, still_prob=0.5)
  found = False
  for seed in range(20):
    scene = sim.simulate(seed, spec)
    clip = generate.generate_clip(seed, spec)
    clauses = clip["caption"].rstrip(".").split("; ")
    for k in np.flatnonzero(scene.mask):
      frame, _ = captions.first_motion(scene, int(k))
      if not np.any(scene.velocities[frame, k]):
        found = True
        assert any(w in clauses[k] for w in ("still", "rests", "not move"))
      else:
        assert "still" not in clauses[k] and "rests" not in clauses[k]
  assert found


def test_first_motion_skips_an_instant_bounce():
  spec = sim.WorldSpec(num_frames=8)
  k = spec.max_objects
  mask = np.arange(k) < 2
  radius = np.where(mask, spec.sizes[0], 0).astype(np.float32)
  pos = np.zeros((k, 2), np.float32)
  vel = np.zeros((k, 2), np.float32)
  pos[0], vel[0] = (2.6, 0.0), (1.0, 0.0)     # at the +x wall, moving out
  pos[1], vel[1] = (-2.0, -2.0), (0.0, 1.0)
  objects = sim.ObjectSet(mask=mask, shape=np.zeros(k, np.int32),
                          color=np.arange(k, dtype=np.int32),
                          size=np.zeros(k, np.int32), radius=radius,
                          position=pos, velocity=vel)
  scene = sim.run_physics(objects, spec)
  frame, event = captions.first_motion(scene, 0)
  assert scene.velocities[frame, 0, 0] < 0 and event is None
  frame, event = captions.first_motion(scene, 1)
  assert frame == 0 and event is None


def test_centers_match_visible_pixels():
  clip = generate.generate_clip(4)
  h, w = clip["video"].shape[1:3]
  for t in range(0, len(clip["video"]), 5):
    for k in np.flatnonzero(clip["obj_mask"]):
      ys, xs = np.nonzero(clip["instance"][t] == k + 1)
      if len(xs) < 20:
        continue
      centroid = np.array([(xs + 0.5).mean() / w, (ys + 0.5).mean() / h])
      assert np.linalg.norm(centroid - clip["centers"][t, k]) < 0.03


def test_clip_seed_is_split_dependent():
  seeds = {generate.clip_seed(0, s, i) for s in ("train", "validation")
           for i in range(50)}
  assert len(seeds) == 100
  assert generate.clip_seed(0, "train", 3) == generate.clip_seed(0, "train", 3)
  with pytest.raises(ValueError, match="unknown split 'dev'"):
    generate.clip_seed(0, "dev", 0)
