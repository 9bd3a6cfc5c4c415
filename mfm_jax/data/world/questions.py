"""Multiple-choice questions computed from the simulation (MMWorld types).

Every answer is a fact read off the simulated scene, a re-simulation of a
counterfactual twin, or an extension of the simulation past the clip's end;
templates only phrase it. Each `Question` carries `evidence`, the JSON-able
facts its answer follows from (tests check them against the simulation).

MMWorld question types made here (`mmworld_questions`):
  Explanation              why does X change direction / stop at ~t s?
  Counterfactual Thinking  if X were removed (twin) / had not moved, how many
                           collisions would happen?  (re-simulated)
  Future Prediction        which of these happens first after the clip ends?
                           (the physics run HORIZON_S seconds further)
  Temporal Understanding   which of these events happens first?
  Attribution Understanding  what makes X start moving / change direction?
Distractors are plausible: other objects of the clip, other event kinds,
events that do not happen, near-miss counts. Options are shuffled by seed.
`questions_vlm4d.py` makes the VLM4D-style questions; `formats.py` writes
both schemas.
"""
from __future__ import annotations

import dataclasses

import numpy as np

from mfm_jax.data.world import sim
from mfm_jax.data.world import twins as twins_lib

HORIZON_S = 2.0
MIN_GAP_FRAMES = 1   # "first" needs a lead of at least this many frames


@dataclasses.dataclass(frozen=True)
class Question:
  """A multiple-choice question with exactly 4 options."""
  type: str            # MMWorld type or VLM4D category
  question: str
  options: tuple       # 4 unique strings, shuffled
  answer: int          # index of the right option
  evidence: dict       # JSON-able simulation facts behind the answer

  @property
  def answer_text(self) -> str:
    return self.options[self.answer]


def assemble(qtype: str, text: str, correct: str, distractors, rng,
             evidence: dict) -> Question | None:
  """A Question from the right option and >= 3 distinct distractors."""
  seen, picked = {correct}, []
  for d in distractors:
    if d not in seen:
      seen.add(d)
      picked.append(d)
  if len(picked) < 3:
    return None
  order = rng.permutation(4)
  options = [correct] + picked[:3]
  options = tuple(options[i] for i in order)
  return Question(qtype, text, options, int(np.argmax(order == 0)), evidence)


def name(scene: sim.Scene, i: int) -> str:
  """'red sphere' (colours are unique within a clip)."""
  obj = scene.objects
  return f"{sim.COLOR_NAMES[obj.color[i]]} {sim.SHAPE_NAMES[obj.shape[i]]}"


def event_text(scene: sim.Scene, kind: str, i: int, j: int = -1) -> str:
  """A sentence for an event, e.g. 'the red sphere hits the blue cube'."""
  a = name(scene, i)
  return {
      "collision": lambda: f"the {a} hits the {name(scene, j)}",
      "wall": lambda: f"the {a} bounces off a wall",
      "stop": lambda: f"the {a} comes to a stop",
      "enter": lambda: f"the {a} enters the view",
      "exit": lambda: f"the {a} leaves the view",
  }[kind]()


def _first_times(events) -> dict[tuple, float]:
  """(kind, i, j) -> first time, collisions with i < j."""
  out: dict[tuple, float] = {}
  for e in events:
    key = (e.kind, min(e.i, e.j), max(e.i, e.j)) if e.kind == "collision" \
        else (e.kind, e.i, -1)
    out.setdefault(key, e.time)
  return out


def _fake_events(scene: sim.Scene, real: set, stoppable=None):
  """Plausible events that do not happen in `real` ((kind, i, j) keys).

  Collisions of any pair; stops (worlds with friction) of the objects in
  `stoppable` (default: all).
  """
  ids = [int(i) for i in np.flatnonzero(scene.mask)]
  out = [("collision", i, j) for i in ids for j in ids if i < j]
  if scene.spec.decel > 0:
    out += [("stop", i, -1) for i in (ids if stoppable is None
                                      else stoppable)]
  return [k for k in out if k not in real]


def explanation(scene, events, rng) -> Question | None:
  """Why does X change direction (collision / wall) or stop at ~t s?"""
  cands = [e for e in events if e.kind in ("collision", "wall", "stop")]
  if not cands:
    return None
  e = cands[int(rng.integers(0, len(cands)))]
  i = e.i if e.kind != "collision" or rng.random() < 0.5 else e.j
  other = e.j if e.kind == "collision" and i == e.i else e.i
  ids = [int(k) for k in np.flatnonzero(scene.mask) if k != i]
  hit = lambda k: f"Because it collides with the {name(scene, k)}."  # noqa
  wall, friction = "Because it bounces off a wall.", \
      "Because friction slows it down until it stops."
  near = {(x.kind, x.i, x.j) for x in events if abs(x.time - e.time) < 0.3}
  if e.kind == "stop":   # a cube may still spin: it stops sliding
    verb = "sliding" if np.any(scene.spins[e.frame:, i]) else "moving"
    text = f"Why does the {name(scene, i)} stop {verb} at about {e.time:.1f} s?"
    correct, wrong = friction, [hit(k) for k in ids] + [wall]
  else:
    text = (f"Why does the {name(scene, i)} change direction at about "
            f"{e.time:.1f} s?")
    correct = wall if e.kind == "wall" else hit(other)
    wrong = [hit(k) for k in ids
             if ("collision", min(i, k), max(i, k)) not in near]
    if not any(x[0] == "wall" and x[1] == i for x in near):
      wrong.append(wall)
    if scene.spec.decel > 0:
      wrong.append(friction)
  wrong.append("Because the floor is tilted.")
  rng.shuffle(wrong)
  return assemble("Explanation", text, correct, wrong, rng,
                  {"event": _edict(e), "object": int(i)})


def _edict(e: sim.Event) -> dict:
  return {"kind": e.kind, "time": round(e.time, 4), "frame": e.frame,
          "i": e.i, "j": e.j}


def _count_options(answer: int, also: int, rng) -> list[str]:
  near = [answer + 1, answer - 1, answer + 2, also, answer - 2, answer + 3]
  near = [str(n) for n in near if n >= 0 and n != answer]
  return near


def counterfactual(scene, twins, rng) -> Question | None:
  """If X were removed / had not moved: how many collisions would happen?"""
  pool = [t for t in twins if t.kind in ("remove", "velocity")]
  if not pool:
    return None
  twin = pool[int(rng.integers(0, len(pool)))]
  obj = scene.objects
  x = name(scene, twin.target)
  if twin.kind == "remove":
    cond = f"If the {x} were removed from the scene"
  elif np.linalg.norm(obj.velocity[twin.target]) > 0:
    cond = f"If the {x} had stayed at rest"
  else:
    dest = np.asarray(twin.change["velocity_to"])
    cond = (f"If the {x} had been pushed towards the "
            f"{_nearest_name(scene, twin.target, dest)}")
  n_twin = sum(e.kind == "collision" for e in twin.scene.events)
  n_orig = sum(e.kind == "collision" for e in scene.events)
  text = f"{cond}, how many collisions would happen in the video?"
  return assemble("Counterfactual Thinking", text, str(n_twin),
                  _count_options(n_twin, n_orig, rng), rng,
                  {"twin": twins_lib.twin_record(twin),
                   "collisions_twin": n_twin, "collisions_original": n_orig})


def _nearest_name(scene, i, direction) -> str:
  obj = scene.objects
  others = [j for j in np.flatnonzero(obj.mask) if j != i]
  def score(j):
    d = obj.position[j] - obj.position[i]
    return -float(np.dot(d, direction) / np.linalg.norm(d))
  return name(scene, int(min(others, key=score)))


def future_prediction(scene, rng) -> Question | None:
  """Which of these happens first after the clip ends (physics continued)?"""
  spec = scene.spec
  extra = int(round(HORIZON_S * spec.fps))
  longer = dataclasses.replace(spec, num_frames=spec.num_frames + extra)
  future = sim.run_physics(scene.objects, longer, seed=scene.seed)
  end = (spec.num_frames - 1) / spec.fps
  after = [e for e in future.events
           if e.time > end and e.kind in ("collision", "stop")]
  happens = set(_first_times(after))
  moving = np.linalg.norm(scene.velocities[-1, :, :2], axis=-1) > 0
  fakes = _fake_events(scene, happens,
                       [int(i) for i in np.flatnonzero(moving & scene.mask)])
  rng.shuffle(fakes)
  none = "None of these happens."
  if after:
    first = after[0]
    key = ("collision", min(first.i, first.j), max(first.i, first.j)) \
        if first.kind == "collision" else (first.kind, first.i, -1)
    correct = event_text(scene, *key).capitalize() + "."
    # Real later events are plausible distractors only if clearly later.
    later = [k for k, t in _first_times(after).items()
             if k != key and t >= first.time + MIN_GAP_FRAMES / spec.fps]
    wrong = [event_text(scene, *k).capitalize() + "." for k in later + fakes]
    wrong.insert(2, none)
  else:
    key, correct = None, none
    wrong = [event_text(scene, *k).capitalize() + "." for k in fakes]
  text = ("Suppose the video continued for two more seconds. Which of these "
          "would happen first?")
  return assemble("Future Prediction", text, correct, wrong, rng,
                  {"horizon_s": HORIZON_S, "first_after_end":
                   list(key) if key else None,
                   "events_after_end": [_edict(e) for e in after]})


def temporal(scene, events, rng) -> Question | None:
  """Which of these events happens first? (real events of the clip)."""
  firsts = _first_times([e for e in events if e.kind != "wall"])
  if not firsts:
    return None
  order = sorted(firsts, key=lambda k: firsts[k])
  first = order[0]
  gap = MIN_GAP_FRAMES / scene.spec.fps
  later = [k for k in order[1:] if firsts[k] >= firsts[first] + gap]
  if len(order) > 1 and not later:
    return None
  fakes = _fake_events(scene, set(firsts))
  rng.shuffle(fakes)
  wrong = [event_text(scene, *k).capitalize() + "." for k in later + fakes]
  return assemble("Temporal Understanding",
                  "Which of these events happens first in the video?",
                  event_text(scene, *first).capitalize() + ".", wrong, rng,
                  {"first": list(first), "time": round(firsts[first], 4),
                   "events": {" ".join(map(str, k)): round(t, 4)
                              for k, t in firsts.items()}})


def attribution(scene, events, rng) -> Question | None:
  """What makes X start moving (hit while at rest) / change direction?"""
  cols = [e for e in events if e.kind == "collision"]
  if not cols:
    return None
  obj = scene.objects
  speed = np.linalg.norm(scene.velocities[..., :2], axis=-1)   # [T, K]
  starters = [(e, k) for e in cols for k in (e.i, e.j)
              if not np.any(speed[:e.frame, k] > 0)]
  if starters:
    e, k = starters[int(rng.integers(0, len(starters)))]
    text = f"What makes the {name(scene, k)} start moving?"
  else:
    e = cols[int(rng.integers(0, len(cols)))]
    k = e.i if rng.random() < 0.5 else e.j
    text = (f"What is responsible for the {name(scene, k)} changing "
            f"direction at about {e.time:.1f} s?")
  cause = e.j if k == e.i else e.i
  near = [x for x in events if abs(x.time - e.time) < 0.3 and k in (x.i, x.j)]
  busy = {m for x in near for m in (x.i, x.j)}
  ids = [int(m) for m in np.flatnonzero(obj.mask) if m not in busy]
  wrong = [f"The {name(scene, m)}." for m in ids]
  rng.shuffle(wrong)
  wrong = wrong[:2]
  if not any(x.kind == "wall" for x in near):
    wrong.append("A wall.")
  wrong.append("Nothing; it moves by itself.")
  return assemble("Attribution Understanding", text,
                  f"The {name(scene, cause)}.", wrong, rng,
                  {"event": _edict(e), "object": int(k), "cause": int(cause)})


def mmworld_questions(scene: sim.Scene, events, twins, seed: int
                      ) -> list[Question]:
  """The MMWorld-type questions of a clip (those its events allow).

  Args:
    scene: the simulated scene.
    events: all sim.Events of the clip seen from the asked view (physics +
      that view's enter / exit; episode.Episode.view_events).
    twins: its counterfactual twins (twins.sample_twins).
    seed: the clip seed (phrasing, choices and option order).
  """
  rng = np.random.default_rng([seed, 41])
  made = [explanation(scene, events, rng), counterfactual(scene, twins, rng),
          future_prediction(scene, rng), temporal(scene, events, rng),
          attribution(scene, events, rng)]
  return [q for q in made if q is not None]
