"""Captions of world clips, in image terms.

Each object gets one clause with its size, colour and shape, its coarse start
position in the image (a 3x3 grid: "at the top left", "in the center", ...),
the image direction of its first lasting motion ("moves down-left", "stays
still"; see `first_motion`) and the event that ends it ("then hits the blue
cube", "then hits a wall", "then stops"). Clauses are joined by "; ", e.g.

  "a large red sphere starts at the top left and rolls right, then hits the
  small blue cube; a small blue cube in the center stays still."

Template variety (verbs, clause form) is drawn from a generator seeded by the
clip seed, so captions are deterministic by seed. Colours are unique within a
clip, so "the blue cube" always names one object.
"""
from __future__ import annotations

import numpy as np

from mfm_jax.data.world import sim

_ROWS = ("top", "", "bottom")
_COLS = ("left", "", "right")
# Eight image directions, counter-clockwise from "right" (image y points down).
_DIRECTIONS = ("right", "up-right", "up", "up-left", "left", "down-left",
               "down", "down-right")
_VERBS = {sim.SPHERE: ("moves", "rolls"), sim.CUBE: ("moves", "slides"),
          sim.CYLINDER: ("moves", "slides")}
_STILL = ("stays still", "does not move", "rests")
# Image speeds (normalised units / second) below this are "still".
STILL_SPEED = 1e-3


def region(xy) -> str:
  """Coarse 3x3 image region of a normalised (x, y) point, e.g. 'top left'."""
  col = _COLS[min(int(xy[0] * 3), 2) if xy[0] > 0 else 0]
  row = _ROWS[min(int(xy[1] * 3), 2) if xy[1] > 0 else 0]
  return " ".join(w for w in (row, col) if w) or "center"


def region_phrase(xy) -> str:
  """'at the top left', 'on the left', 'at the top', 'in the center'."""
  name = region(xy)
  if name == "center":
    return "in the center"
  if name in ("left", "right"):
    return f"on the {name}"
  return f"at the {name}"


def direction(dxy) -> str:
  """One of 8 image directions for a displacement (dx, dy), y down."""
  angle = np.degrees(np.arctan2(-dxy[1], dxy[0])) % 360.0
  return _DIRECTIONS[int(np.round(angle / 45.0)) % 8]


def object_name(scene: sim.Scene, i: int, with_size: bool = True) -> str:
  """E.g. 'large red sphere' ('large red metal sphere' with materials)."""
  obj = scene.objects
  words = [scene.spec.size_names[obj.size[i]]] if with_size else []
  words.append(sim.COLOR_NAMES[obj.color[i]])
  if scene.spec.metal_prob > 0 and with_size:
    words.append(sim.MATERIAL_NAMES[obj.material[i]])
  words.append(sim.SHAPE_NAMES[obj.shape[i]])
  return " ".join(words)


def _object_events(scene: sim.Scene, i: int) -> list[sim.Event]:
  return [e for e in scene.events
          if e.i == i or (e.kind == "collision" and e.j == i)]


def first_motion(scene: sim.Scene, i: int, min_frames: float = 2.0
                 ) -> tuple[int, sim.Event | None]:
  """Object i's first lasting motion: a frame showing it, and its end event.

  Object i moves at constant velocity between its events. The described
  segment is the first lasting >= min_frames frames (else the longest), so
  that a bounce in the first instant does not set the caption's direction.

  Returns:
    (frame whose velocity is the segment's, event ending it or None).
  """
  fps = scene.spec.fps
  events = _object_events(scene, i)
  bounds = [0.0] + [e.time for e in events] + [(scene.spec.num_frames - 1)
                                               / fps]
  lengths = np.diff(bounds)
  lasting = np.flatnonzero(lengths >= min_frames / fps - 1e-9)
  seg = int(lasting[0]) if len(lasting) else int(np.argmax(lengths))
  frame = 0 if seg == 0 else int(np.floor(bounds[seg] * fps + 1e-9)) + 1
  frame = min(frame, scene.spec.num_frames - 1)
  return frame, (events[seg] if seg < len(events) else None)


def _event_name(scene: sim.Scene, i: int, event: sim.Event | None) -> str:
  """'the green cube', 'a wall' or '' for what ends object i's motion."""
  if event is None or event.kind == "stop":
    return ""
  if event.kind == "wall":
    return "a wall"
  other = event.j if event.i == i else event.i
  return f"the {object_name(scene, other, with_size=False)}"


def describe(scene: sim.Scene, centers: np.ndarray,
             image_velocity: np.ndarray) -> str:
  """The caption of a clip.

  Args:
    scene: the simulated scene (its seed picks the templates).
    centers: [T, K, 2] normalised image centres (x, y) of the objects.
    image_velocity: [T, K, 2] image velocity (normalised units / s).

  Returns:
    The caption, one clause per object in object order.
  """
  rng = np.random.default_rng([scene.seed, 7])
  clauses = []
  for i in np.flatnonzero(scene.mask):
    name = object_name(scene, i)
    where = region_phrase(centers[0, i])
    form = int(rng.integers(0, 2))
    frame, event = first_motion(scene, int(i))
    hit = _event_name(scene, int(i), event)
    if np.hypot(*image_velocity[frame, i]) < STILL_SPEED:
      if event is not None and event.kind == "collision":
        clauses.append(f"a {name} rests {where} until {hit} hits it")
        continue
      still = _STILL[int(rng.integers(0, len(_STILL)))]
      if still == "rests":
        clauses.append(f"a {name} rests {where}")
      else:
        clauses.append(f"a {name} {where} {still}")
      continue
    verbs = _VERBS[int(scene.objects.shape[i])]
    verb = verbs[int(rng.integers(0, len(verbs)))]
    way = direction(image_velocity[frame, i])
    if form == 0:
      clause = f"a {name} starts {where} and {verb} {way}"
    else:
      clause = f"a {name} {where} {verb} {way}"
    if event is not None and event.kind == "stop":   # worlds with decel
      clause += ", then stops"
    elif hit:
      clause += f", then hits {hit}"
    clauses.append(clause)
  return "; ".join(clauses) + "."


_OPENERS = ("There are {n} objects on the floor.", "The scene shows {n} objects.",
            "{N} objects sit on a gray floor.", "We see {n} objects.")
_NUMBERS = ("zero", "one", "two", "three", "four", "five", "six", "seven",
            "eight")
_EVENT_FORMS = {
    "collision": ("the {a} collides with the {b}", "the {a} hits the {b}",
                  "the {a} and the {b} bump into each other"),
    "stop": ("the {a} comes to a stop", "the {a} stops",
             "the {a} slows down and stops"),
    "enter": ("the {a} enters the view", "the {a} comes into view"),
    "exit": ("the {a} leaves the view", "the {a} moves out of view"),
}
_WHEN = ("at {t:.1f} s", "after {t:.1f} seconds", "{t:.1f} s into the clip")


def describe_varied(scene: sim.Scene, centers: np.ndarray,
                    image_velocity: np.ndarray, events) -> str:
  """A caption with varied templates: opener, per-object clauses, events.

  Deterministic by scene.seed. Per-object clauses are those of `describe`;
  then one sentence per spinning cube ("The red cube spins clockwise, seen
  from above."; sim.rotation_sense); then up to 4 events (collisions, stops,
  view enter/exit; wall bounces are left to the clauses) in time order, each
  with its time, e.g. "At 1.2 s the red sphere collides with the blue cube."

  Args:
    scene: the simulated scene.
    centers: [T, K, 2] normalised image centres in the captioned view.
    image_velocity: [T, K, 2] image velocities in that view.
    events: sim.Events (physics and view events), any order.
  """
  rng = np.random.default_rng([scene.seed, 8])
  n = scene.num_objects
  opener = _OPENERS[int(rng.integers(0, len(_OPENERS)))]
  parts = [opener.format(n=_NUMBERS[n], N=_NUMBERS[n].capitalize())]
  body = describe(scene, centers, image_velocity)
  parts.append(body[0].upper() + body[1:])
  for i in np.flatnonzero(scene.mask & (scene.objects.spin != 0)):
    parts.append(f"The {object_name(scene, i, with_size=False)} spins "
                 f"{sim.rotation_sense(scene.objects.spin[i])}, seen from "
                 f"above.")
  chosen = [e for e in sorted(events, key=lambda e: (e.time, e.kind, e.i))
            if e.kind in _EVENT_FORMS][:4]
  for e in chosen:
    forms = _EVENT_FORMS[e.kind]
    text = forms[int(rng.integers(0, len(forms)))].format(
        a=object_name(scene, e.i, with_size=False),
        b=object_name(scene, e.j, with_size=False) if e.j >= 0 else "")
    when = _WHEN[int(rng.integers(0, len(_WHEN)))].format(t=e.time)
    if rng.random() < 0.5:
      sentence = f"{when[0].upper()}{when[1:]} {text}."
    else:
      sentence = f"{text[0].upper()}{text[1:]} {when}."
    parts.append(sentence)
  return " ".join(parts)
