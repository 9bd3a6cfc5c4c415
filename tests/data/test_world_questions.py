"""Questions: every answer checked against the simulation, both schemas."""
import dataclasses

import numpy as np
import pytest

from mfm_jax.data.world import annotate
from mfm_jax.data.world import camera as camera_lib
from mfm_jax.data.world import episode
from mfm_jax.data.world import formats
from mfm_jax.data.world import questions as qlib
from mfm_jax.data.world import questions_vlm4d as v4lib
from mfm_jax.data.world import sim
from tests.data.test_world_spin import screen_turns, top_down_camera

SPEC = episode.world_v2_spec()
SEEDS = range(24)


@pytest.fixture(scope="module")
def clips():
  out = []
  for seed in SEEDS:
    ep = episode.generate_episode(seed, SPEC,
                                  ego_motion=episode.clip_camera(seed, 0.3))
    out.append((ep, *formats.clip_questions(ep)))
  return out


def _by_type(clips, qtype):
  return [(ep, q) for ep, mm, v4 in clips for q in mm + v4 if q.type == qtype]


def _collisions(scene):
  return [e for e in scene.events if e.kind == "collision"]


def test_every_type_is_made_and_well_formed(clips):
  types = {q.type for _, mm, v4 in clips for q in mm + v4}
  assert types == {"Explanation", "Counterfactual Thinking",
                   "Future Prediction", "Temporal Understanding",
                   "Attribution Understanding", "direction", "counting",
                   "false_positive", "ego_motion", "rotation"}
  for _, mm, v4 in clips:
    for q in mm + v4:
      assert len(q.options) == 4 == len(set(q.options)), q


def test_explanation(clips):
  for ep, q in _by_type(clips, "Explanation"):
    e, i = q.evidence["event"], q.evidence["object"]
    match = [x for x in ep.scene.events
             if (x.kind, x.frame, x.i, x.j) == (e["kind"], e["frame"],
                                                e["i"], e["j"])]
    assert match and i in (e["i"], e["j"])
    if e["kind"] == "collision":
      other = e["j"] if i == e["i"] else e["i"]
      assert qlib.name(ep.scene, other) in q.answer_text
    elif e["kind"] == "wall":
      assert "wall" in q.answer_text
    else:
      assert "friction" in q.answer_text
      assert np.all(ep.scene.velocities[e["frame"]:, i] == 0) or any(
          x.kind == "collision" and i in (x.i, x.j) and x.frame > e["frame"]
          for x in ep.scene.events)


def test_counterfactual_answer_follows_from_resimulation(clips):
  checked = 0
  for ep, q in _by_type(clips, "Counterfactual Thinking"):
    twin = q.evidence["twin"]
    obj = ep.scene.objects
    i = twin["target"]
    if twin["kind"] == "remove":
      mask = obj.mask.copy()
      mask[i] = False
      edited = dataclasses.replace(obj, mask=mask)
    else:
      vel = obj.velocity.copy()
      vel[i] = twin["velocity_to"]
      edited = dataclasses.replace(obj, velocity=vel)
    again = sim.run_physics(edited, ep.scene.spec)
    assert q.answer_text == str(len(_collisions(again)))
    checked += twin["diff"]["collisions_removed"] != []
  assert checked > 0  # some twins do change the outcome


def test_future_prediction(clips):
  for ep, q in _by_type(clips, "Future Prediction"):
    spec = ep.scene.spec
    longer = dataclasses.replace(
        spec, num_frames=spec.num_frames + int(qlib.HORIZON_S * spec.fps))
    future = sim.run_physics(ep.scene.objects, longer)
    np.testing.assert_array_equal(future.positions[:spec.num_frames],
                                  ep.scene.positions)
    end = (spec.num_frames - 1) / spec.fps
    after = [e for e in future.events
             if e.time > end and e.kind in ("collision", "stop")]
    if not after:
      assert q.answer_text == "None of these happens."
    else:
      e = after[0]
      want = qlib.event_text(ep.scene, e.kind, min(e.i, e.j) if e.j >= 0
                             else e.i, max(e.i, e.j))
      assert q.answer_text.lower() == want + "."


def test_temporal_answer_is_the_earliest_option(clips):
  for ep, q in _by_type(clips, "Temporal Understanding"):
    first = {}
    for e in ep.events:
      if e.kind == "wall":
        continue
      key = (e.kind, min(e.i, e.j), max(e.i, e.j)) if e.j >= 0 \
          else (e.kind, e.i, -1)
      text = qlib.event_text(ep.scene, *key).capitalize() + "."
      first.setdefault(text, e.time)
    assert q.answer_text in first
    for opt in q.options:
      if opt != q.answer_text and opt in first:
        assert first[opt] > first[q.answer_text]


def test_attribution(clips):
  for ep, q in _by_type(clips, "Attribution Understanding"):
    k, cause = q.evidence["object"], q.evidence["cause"]
    assert any(e.kind == "collision" and {e.i, e.j} == {k, cause}
               for e in ep.scene.events)
    assert q.answer_text == f"The {qlib.name(ep.scene, cause)}."


def test_vlm4d_direction_from_displacement(clips):
  n = 0
  for ep, q in _by_type(clips, "direction"):
    i = q.evidence["object"]
    right, fwd = camera_lib.ground_axes(ep.tracks[0][0])
    d = ep.scene.positions[-1, i, :2] - ep.scene.positions[0, i, :2]
    if q.answer_text == "not moving":
      assert np.linalg.norm(d) < 1e-6
      continue
    a, b = d @ right, d @ fwd
    want = (("right" if a > 0 else "left") if abs(a) > abs(b) else
            ("away from the camera" if b > 0 else "towards the camera"))
    assert q.answer_text == want
    n += 1
  assert n > 5


def test_vlm4d_counting_false_positive_ego(clips):
  for ep, q in _by_type(clips, "counting"):
    vis = ep.views[0]["visible"]
    spins = np.abs(ep.scene.spins) > v4lib.SPINNING
    moved = [i for i in np.flatnonzero(ep.scene.mask)
             if np.any(vis[:, i] & ((np.linalg.norm(
                 ep.scene.velocities[:, i], axis=-1) > 0) | spins[:, i]))]
    assert q.answer_text == str(len(moved))
  for ep, q in _by_type(clips, "false_positive"):
    names = {qlib.name(ep.scene, i) for i in np.flatnonzero(ep.scene.mask)}
    thing = q.answer_text[len("there is no "):-len(" in the video")]
    assert thing not in names
  egos = _by_type(clips, "ego_motion")
  assert egos
  for ep, q in egos:
    assert q.answer_text == ep.ego_motion
    step = ep.tracks[0][1].position - ep.tracks[0][0].position
    right, fwd = camera_lib.ground_axes(ep.tracks[0][0])
    want = {"forward": fwd, "backward": -fwd, "right": right,
            "left": -right}[q.answer_text]
    assert np.dot(step[:2], want) > 0


def test_vlm4d_rotation_against_sim_and_pixels(clips):
  """The sense comes from the simulated yaw rate and is the one seen from
  above: a camera straight above the cube sees it turn that way."""
  seen = set()
  for ep, q in _by_type(clips, "rotation"):
    scene, i = ep.scene, q.evidence["object"]
    assert scene.objects.shape[i] == sim.CUBE
    assert q.question == (f"Is the {qlib.name(scene, i)} rotating clockwise "
                          "or counterclockwise, seen from above?")
    assert set(q.options) <= set(v4lib.ROTATIONS)
    rate, yaw = scene.spins[:, i], scene.yaws[:, i]
    np.testing.assert_allclose(q.evidence["yaw_rate"], rate, atol=1e-4)
    if q.answer_text == "not rotating":
      assert not np.any(rate) and np.all(yaw == yaw[0])
      continue
    assert q.answer_text in ("clockwise", "counterclockwise")
    sign = 1.0 if q.answer_text == "counterclockwise" else -1.0
    assert np.all(sign * rate >= 0) and sign * (yaw[-1] - yaw[0]) > 0
    turning = np.abs(rate) > v4lib.SPINNING
    assert 2 * (turning & ep.views[0]["visible"][:, i]).sum() >= \
        ep.views[0]["visible"][:, i].sum()
    if q.answer_text not in seen:   # pixels: one clip of each sense
      seen.add(q.answer_text)
      track = [top_down_camera(*scene.positions[t, i, :2], height=3.0)
               for t in range(scene.spec.num_frames)]
      inst = annotate.render_view(scene, track)["instance"]
      turns = screen_turns(inst, i)[turning[1:]]
      assert sign * turns.sum() > 0 and np.mean(sign * turns > 0) > 0.8
  assert seen == {"clockwise", "counterclockwise"}
  answers = {q.answer_text for _, q in _by_type(clips, "rotation")}
  assert "not rotating" in answers


def test_schemas(clips):
  ep, mm, v4 = clips[0]
  rec = formats.mmworld_record("vid", "videos/vid.mp4", ep.caption, mm)
  assert set(rec) == {"video_id", "video_url", "discipline", "subdiscipline",
                      "captions", "questions"}
  for q in rec["questions"]:
    assert set(q["options"]) == {"a", "b", "c", "d"}
    assert q["options"][q["correct_answer_label"]] == q["answer"]
    assert (q["requires_domain_knowledge"], q["requires_audio"],
            q["requires_visual"], q["question_only"]) == (False, False, True,
                                                          False)
  ids = set()
  for ep, _, v4 in clips:
    for r in formats.vlm4d_records("v", "videos/v.mp4", bool(ep.ego_motion),
                                   v4):
      assert set(r) == {"id", "video", "question_type", "question",
                        "choices", "answer"}
      assert r["answer"] in r["choices"].values()
      assert set(r["choices"]) == {"A", "B", "C", "D"}
      assert r["question_type"] == "multiple-choice"
      ids.add(r["id"])
  assert v4lib.DIRECTIONS[-1] == "not moving"
