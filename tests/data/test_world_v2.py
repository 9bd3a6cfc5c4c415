"""World v2: shapes, materials, friction, cameras, annotations, twins."""
import json

import numpy as np
import pytest

from mfm_jax.data.world import annotate
from mfm_jax.data.world import camera as camera_lib
from mfm_jax.data.world import episode
from mfm_jax.data.world import render
from mfm_jax.data.world import scene_graph
from mfm_jax.data.world import sim
from mfm_jax.data.world import twins

SPEC = episode.world_v2_spec()


def test_v2_spec_draws_all_shapes_sizes_materials():
  shapes, sizes, mats, counts = set(), set(), set(), set()
  for seed in range(40):
    obj = sim.simulate(seed, SPEC).objects
    m = obj.mask
    shapes |= set(obj.shape[m].tolist())
    sizes |= set(obj.size[m].tolist())
    mats |= set(obj.material[m].tolist())
    counts.add(int(m.sum()))
  assert shapes == {0, 1, 2} and sizes == {0, 1, 2} and mats == {0, 1}
  assert counts == set(range(2, 7))
  assert SPEC.size_names == ("small", "medium", "large")
  with pytest.raises(ValueError, match="shapes"):
    sim.WorldSpec(shapes=("torus",))


def test_decel_stops_objects_with_stop_events():
  scene = sim.simulate(3, sim.WorldSpec(decel=2.0))
  stops = [e for e in scene.events if e.kind == "stop"]
  assert stops
  for e in stops:
    assert np.all(scene.velocities[e.frame, e.i] == 0)
    # It moved just before stopping.
    assert np.linalg.norm(scene.velocities[e.frame - 1, e.i]) > 0


def test_cylinder_render_matches_analytic_silhouette():
  cam = camera_lib.Camera.from_fov(40, 64, 64, camera_lib.look_at(
      (0.0, -4.0, 0.5), (0.0, 0.0, 0.5)))
  pos = np.array([[[0.0, 0.0, 0.5]]], np.float32)
  out = render.render_frames(pos, [0.5], [False], [[200, 30, 30]], [True],
                             cam, is_cyl=[True])
  inst = out["instance"][0]
  # Seen from the side at the height of its centre, a cylinder is a
  # rectangle: its width is the same near the top and near the bottom
  # (a sphere would narrow).
  rows = np.flatnonzero(inst.any(1))
  widths = inst[rows].sum(1)
  mid = widths[len(widths) // 2]
  assert abs(int(widths[3]) - int(mid)) <= 1
  # The depth at the image centre is the distance to the front of the side.
  assert out["depth"][0, 32, 32] == pytest.approx(3.5, abs=0.05)


def test_metal_adds_a_highlight():
  cam = camera_lib.world_camera(sim.WorldSpec())
  pos = np.array([[[0.0, 0.0, 0.55]]], np.float32)
  args = ([0.55], [False], [[40, 70, 230]], [True], cam)
  matte = render.render_frames(pos, *args)["rgb"]
  metal = render.render_frames(pos, *args, metal=[True])["rgb"]
  assert metal.min(-1).max() > matte.min(-1).max() + 60  # whitish highlight


def test_orbit_and_ego_cameras():
  cams = camera_lib.orbit_cameras(SPEC, 4)
  v1 = camera_lib.world_camera(SPEC)
  np.testing.assert_array_equal(cams[0].world_to_camera, v1.world_to_camera)
  for c in cams:
    np.testing.assert_allclose(c.intrinsics, v1.intrinsics)
    np.testing.assert_allclose(c.normalize(c.project(
        np.asarray(SPEC.camera_target))), [0.5, 0.5], atol=1e-9)
    assert np.linalg.norm(c.position[:2]) == pytest.approx(6.0)
  np.testing.assert_allclose(cams[2].position, [0.0, 6.0, 8.0], atol=1e-9)
  track = camera_lib.ego_cameras(SPEC, "forward", speed=1.0)
  right, fwd = camera_lib.ground_axes(track[0])
  step = track[1].position - track[0].position
  np.testing.assert_allclose(step[:2], fwd / SPEC.fps, atol=1e-9)
  np.testing.assert_allclose(track[-1].rotation, track[0].rotation)
  left = camera_lib.ego_cameras(SPEC, "left")
  assert np.dot(left[1].position[:2] - left[0].position[:2], right) < 0


@pytest.mark.parametrize("ego", ["", "right"])
def test_view_annotations_agree_with_render(ego):
  ep = episode.generate_episode(5, SPEC, ego_motion=ego, with_twins=False)
  view, inst = ep.views[0], ep.frames[0]["instance"]
  t, h, w = inst.shape
  for ti, k in zip(*np.nonzero(view["visible"])):
    x0, y0, x1, y1 = view["boxes"][ti, k]
    ys, xs = np.nonzero(inst[ti] == k + 1)
    assert (x0, y0, x1, y1) == (xs.min() / w, ys.min() / h,
                                (xs.max() + 1) / w, (ys.max() + 1) / h)
  assert not np.any(view["boxes"][~view["visible"]])
  for e in view["events"]:
    assert view["in_view"][e.frame, e.i] == (e.kind == "enter")
    assert view["in_view"][e.frame - 1, e.i] == (e.kind == "exit")


def test_enter_exit_events_happen():
  kinds = set()
  for seed in range(12):
    kinds |= {e.kind for e in episode.generate_episode(
        seed, SPEC, with_twins=False).events}
  assert {"collision", "wall", "stop", "enter", "exit"} <= kinds


def test_motion_intensity_levels():
  c = np.zeros((5, 1, 2))
  assert annotate.motion_intensity(c, np.ones((5, 1), bool), 8.0) == (0.0, 0)
  c[:, 0, 0] = np.arange(5) * 0.05                     # 0.4 units / s
  speed, level = annotate.motion_intensity(c, np.ones((5, 1), bool), 8.0)
  assert speed == pytest.approx(0.4)
  assert level == annotate.NUM_MOTION_LEVELS - 1


def test_scene_graph_relations_follow_the_simulation():
  ep = episode.generate_episode(7, SPEC, with_twins=False)
  graph = json.loads(json.dumps(ep.graph))
  view = ep.views[0]
  assert len(graph["objects"]) == ep.scene.num_objects
  hits = {(min(e.i, e.j), max(e.i, e.j), e.frame) for e in ep.scene.events
          if e.kind == "collision"}
  got = {(r["subject"], r["object"], a) for r in graph["relations"]
         if r["predicate"] == "collides_with" for a, _ in r["spans"]}
  assert got == hits
  for r in graph["relations"]:
    i, j = r["subject"], r["object"]
    for a, b in r["spans"]:
      if r["predicate"] == "left_of":
        assert np.all(view["centers"][a:b + 1, i, 0]
                      < view["centers"][a:b + 1, j, 0])
      if r["predicate"] == "behind":
        assert np.all(view["center_depth"][a:b + 1, i]
                      > view["center_depth"][a:b + 1, j])
  assert scene_graph.spans(np.array([0, 1, 1, 0, 1], bool)) == [[1, 2],
                                                                 [4, 4]]


def test_twins_resimulate_the_same_initial_state():
  scene = next(s for s in (sim.simulate(i, SPEC) for i in range(50))
               if twins.collision_pairs(s))
  (i, j), _ = next(iter(twins.collision_pairs(scene).items()))
  removed = twins.make_twin(scene, "remove", i)
  assert not removed.scene.mask[i]
  assert all(i not in p for p in removed.diff["collisions_twin"])
  assert [i, j] in removed.diff["collisions_removed"]
  recolored = twins.make_twin(scene, "color", j)
  np.testing.assert_array_equal(recolored.scene.positions, scene.positions)
  assert recolored.diff["collisions_removed"] == []
  assert recolored.change["color_to"] != recolored.change["color_from"]
  pushed = twins.make_twin(scene, "velocity", i)
  np.testing.assert_allclose(pushed.scene.velocities[0, i, :2],
                             pushed.change["velocity_to"], atol=1e-4)
  json.dumps([twins.twin_record(t) for t in twins.sample_twins(scene, 1)])


def test_episode_record_and_determinism():
  a = episode.episode_record(episode.generate_episode(11, SPEC, num_views=3))
  b = episode.episode_record(episode.generate_episode(11, SPEC, num_views=3))
  assert a["video"].shape == (3, 16, 64, 64, 3)
  assert a["world_to_camera"].shape == (3, 16, 4, 4)
  for key, value in a.items():
    if isinstance(value, np.ndarray):
      np.testing.assert_array_equal(value, b[key], err_msg=key)
    else:
      assert value == b[key], key
  # Depth is camera z: re-projecting a pixel's depth lands on its ray.
  assert a["depth"].min() > 0


def test_enter_exit_events_and_captions_per_view():
  from mfm_jax.data.world import formats  # pylint: disable=g-import-not-at-top
  differ = 0
  for seed in range(6):
    ep = episode.generate_episode(seed, SPEC, num_views=4)
    rec = episode.episode_record(ep)
    stored = json.loads(rec["view_events"])
    assert len(stored) == 4 and len(json.loads(rec["view_captions"])) == 4
    assert json.loads(rec["view_captions"])[0] == rec["caption"]
    assert [episode.event_dict(e) for e in ep.events] == json.loads(
        rec["events"]) and ep.events == ep.view_events(0)
    for v, view in enumerate(ep.views):
      in_view = view["in_view"]
      want = [(t, int(i), "enter" if in_view[t, i] else "exit")
              for t in range(1, in_view.shape[0])
              for i in np.flatnonzero(in_view[t] != in_view[t - 1])]
      assert [(e["frame"], e["i"], e["kind"]) for e in stored[v]] == want
      physics = [e for e in ep.view_events(v) if e.kind not in
                 ("enter", "exit")]
      assert physics == episode.sort_events(ep.scene.events)
      # Questions about view v use view v's events and camera.
      mm, v4 = formats.clip_questions(ep, view=v)
      seen = {(e["kind"], e["i"]) for e in stored[v]}
      for q in mm:
        if q.type == "Temporal Understanding":
          for key in q.evidence["events"]:
            kind, i, _ = key.split()
            assert kind not in ("enter", "exit") or (kind, int(i)) in seen
      right, fwd = camera_lib.ground_axes(ep.tracks[v][0])
      for q in v4:
        if q.type == "direction" and q.answer_text != "not moving":
          i = q.evidence["object"]
          d = ep.scene.positions[-1, i, :2] - ep.scene.positions[0, i, :2]
          a, b = d @ right, d @ fwd
          assert q.answer_text == (
              ("right" if a > 0 else "left") if abs(a) > abs(b) else
              ("away from the camera" if b > 0 else "towards the camera"))
    differ += stored[0] != stored[2]
  assert differ > 0   # views see different enter / exit events
