"""VLM4D-style spatio-temporal questions computed from the simulation.

Categories (`Question.type`), for exo-centric (fixed camera) and ego-centric
(moving camera) clips, about one view (formats.clip_questions: view 0):
  direction       "What direction is the red cube moving?": left / right /
                  towards the camera / away from the camera / not moving, in
                  the camera's ground axes (camera.ground_axes; ego cameras
                  translate without rotating, so the axes are fixed). Asked
                  only about objects whose every moving frame falls in one
                  direction (a component DOMINANCE times the other) and that
                  are visible in at least half of the frames (not about a
                  cube that spins without sliding: "not moving" would be
                  ambiguous).
  counting        "How many objects are moving?": objects that slide, or
                  spin faster than SPINNING rad/s, while visible;
                  near-miss counts as distractors.
  false_positive  a direction question about an object that is not there
                  (a colour of the clip on another shape, or vice versa);
                  the answer is "there is no <object> in the video".
  ego_motion      (ego clips) "In which direction is the camera moving?"
  rotation        "Is the red cube rotating clockwise or counterclockwise,
                  seen from above?": clockwise / counterclockwise / not
                  rotating, from the sign of the simulated yaw rate
                  (sim.rotation_sense: from above, x right, y up; the same
                  sense on screen for every camera above the ground, though
                  the OpenCV image y axis points down). Asked about one cube
                  visible in at least half of the frames, that never spins
                  ("not rotating") or spins faster than SPINNING in at least
                  half of its visible frames. Distractors include the
                  reversals "clockwise, then counterclockwise" (spins never
                  reverse: collisions leave them unchanged). Only cubes: the
                  shapes carry no texture, so a sphere's or cylinder's spin
                  would be invisible.
"""
from __future__ import annotations

import numpy as np

from mfm_jax.data.world import camera as camera_lib
from mfm_jax.data.world import sim
from mfm_jax.data.world.questions import Question, assemble, name

DIRECTIONS = ("left", "right", "towards the camera", "away from the camera",
              "not moving")
ROTATIONS = ("clockwise", "counterclockwise", "not rotating",
             "clockwise, then counterclockwise",
             "counterclockwise, then clockwise")
DOMINANCE = 2.0
MOVING = 1e-3    # world speed (units / s) above which an object moves
SPINNING = 0.3   # |yaw rate| (rad / s) above which a cube visibly turns


def direction_per_frame(velocity: np.ndarray, cam: camera_lib.Camera
                        ) -> list[str]:
  """A DIRECTIONS entry (or "" if mixed) per frame. velocity: [T, 2]."""
  right, fwd = camera_lib.ground_axes(cam)
  a, b = velocity @ right, velocity @ fwd
  out = []
  for x, y in zip(a, b):
    if np.hypot(x, y) <= MOVING:
      out.append("not moving")
    elif abs(x) >= DOMINANCE * abs(y):
      out.append("right" if x > 0 else "left")
    elif abs(y) >= DOMINANCE * abs(x):
      out.append("away from the camera" if y > 0 else "towards the camera")
    else:
      out.append("")
  return out


def object_direction(scene: sim.Scene, i: int, cam) -> str | None:
  """The clip-level direction of object i, or None when ambiguous."""
  per = direction_per_frame(scene.velocities[:, i, :2], cam)
  moving = [d for d in per if d != "not moving"]
  if not moving:
    return "not moving"
  if len(set(moving)) == 1 and moving[0] and len(moving) * 2 >= len(per):
    return moving[0]
  return None


def _direction_choices(correct: str, rng) -> list[str]:
  wrong = [d for d in DIRECTIONS if d != correct]
  rng.shuffle(wrong)
  return wrong


def direction_questions(scene, view: dict, cam, rng) -> list[Question]:
  """One direction question per unambiguous, mostly visible object."""
  out = []
  t = scene.spec.num_frames
  for i in np.flatnonzero(scene.mask):
    if view["visible"][:, i].sum() * 2 < t:
      continue
    d = object_direction(scene, int(i), cam)
    if d is None or (d == "not moving" and np.any(scene.spins[:, i])):
      continue
    q = assemble("direction",
                 f"What direction is the {name(scene, int(i))} moving?", d,
                 _direction_choices(d, rng), rng,
                 {"object": int(i), "direction": d})
    out.append(q)
  return out


def moving_count(scene: sim.Scene, view: dict) -> int:
  """Objects that slide (speed > MOVING) or spin (|yaw rate| > SPINNING)
  in a frame where they are visible."""
  speed = np.linalg.norm(scene.velocities[..., :2], axis=-1)      # [T, K]
  active = (speed > MOVING) | (np.abs(scene.spins) > SPINNING)
  moves = np.any(active & view["visible"], axis=0) & scene.mask
  return int(moves.sum())


def counting_question(scene, view, rng) -> Question | None:
  n = moving_count(scene, view)
  near = [n + 1, n - 1, n + 2, n - 2, n + 3]
  wrong = [str(m) for m in near if m >= 0]
  return assemble("counting", "How many objects are moving in the video?",
                  str(n), wrong, rng, {"moving_count": n})


def false_positive_question(scene, rng) -> Question | None:
  """A direction question about an absent object."""
  obj = scene.objects
  present = {(int(c), int(s)) for c, s, m in
             zip(obj.color, obj.shape, obj.mask) if m}
  shapes = sorted({int(s) for s in scene.spec.shape_ids})
  colors = sorted({c for c, _ in present})
  absent = [(c, s) for c in colors for s in shapes if (c, s) not in present]
  if not absent:
    return None
  c, s = absent[int(rng.integers(0, len(absent)))]
  thing = f"{sim.COLOR_NAMES[c]} {sim.SHAPE_NAMES[s]}"
  correct = f"there is no {thing} in the video"
  wrong = [d for d in DIRECTIONS]
  rng.shuffle(wrong)
  return assemble("false_positive", f"What direction is the {thing} moving?",
                  correct, wrong, rng, {"absent": [c, s]})


def object_rotation(scene: sim.Scene, i: int, visible: np.ndarray
                    ) -> str | None:
  """Cube i's sense of rotation over the clip, or None when ambiguous.

  visible: [T] bool, the frames showing it. "not rotating" if its yaw rate
  is 0 throughout; else the sense of its yaw rate if it turns faster than
  SPINNING in at least half of the visible frames, in one sense only.
  """
  rate = scene.spins[:, i]
  if not np.any(rate):
    return "not rotating"
  turning = np.abs(rate) > SPINNING
  senses = {sim.rotation_sense(float(w)) for w in rate[rate != 0]}
  if len(senses) != 1 or (turning & visible).sum() * 2 < visible.sum():
    return None
  return senses.pop()


def rotation_question(scene, view, rng) -> Question | None:
  """Rotation sense of one mostly visible cube (module docstring)."""
  t = scene.spec.num_frames
  cands = []
  for i in np.flatnonzero(scene.mask & (scene.objects.shape == sim.CUBE)):
    vis = view["visible"][:, i]
    if vis.sum() * 2 >= t:
      sense = object_rotation(scene, int(i), vis)
      if sense is not None:
        cands.append((int(i), sense))
  if not cands:
    return None
  i, sense = cands[int(rng.integers(0, len(cands)))]
  wrong = [r for r in ROTATIONS if r != sense]
  rng.shuffle(wrong)
  wrong.sort(key=lambda r: "then" in r)   # the simple senses first
  evidence = {"object": i, "rotation": sense,
              "yaw": [round(float(y), 4) for y in scene.yaws[:, i]],
              "yaw_rate": [round(float(w), 4) for w in scene.spins[:, i]]}
  return assemble("rotation", f"Is the {name(scene, i)} rotating clockwise "
                  "or counterclockwise, seen from above?", sense, wrong, rng,
                  evidence)


def ego_question(ego_motion: str, rng) -> Question | None:
  if not ego_motion:
    return None
  wrong = [m for m in camera_lib.EGO_MOTIONS if m != ego_motion]
  rng.shuffle(wrong)
  return assemble("ego_motion", "In which direction is the camera moving?",
                  ego_motion, wrong, rng, {"ego_motion": ego_motion})


def vlm4d_questions(scene: sim.Scene, view: dict,
                    track: list[camera_lib.Camera], ego_motion: str,
                    seed: int, max_direction: int = 2) -> list[Question]:
  """VLM4D-style questions about one view of a clip (the video shown).

  Args:
    scene: the simulated scene.
    view: annotate.annotate_view of the view the video shows.
    track: its cameras (one per frame).
    ego_motion: "" for a fixed camera, else the camera's motion.
    seed: the clip seed (choice of objects, option order).
    max_direction: at most this many direction questions.
  """
  rng = np.random.default_rng([seed, 43])
  dirs = direction_questions(scene, view, track[0], rng)
  if len(dirs) > max_direction:
    keep = sorted(rng.choice(len(dirs), max_direction, replace=False))
    dirs = [dirs[k] for k in keep]
  made = dirs + [counting_question(scene, view, rng),
                 false_positive_question(scene, rng),
                 ego_question(ego_motion, rng),
                 rotation_question(scene, view, rng)]
  return [q for q in made if q is not None]
