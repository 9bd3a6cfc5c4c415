"""Counterfactual twins: the same initial state, re-simulated with one change.

A twin edits one object of a scene's initial `ObjectSet` and re-runs
`sim.run_physics` with the same spec:

  remove    object i is taken out (its mask slot is cleared; indices of the
            other objects are kept, so outcomes compare index by index);
  velocity  object i starts with another velocity (at rest if it moved, else
            a push towards the nearest other object);
  color     object i gets an unused palette colour (the physics is colour
            blind: the outcome must not change; a control for questions).

`outcome_diff(original, twin)` records what changes: collision pairs that no
longer happen / newly happen, first-collision times, final positions (keyed by
the object index as a string) and which objects end up elsewhere (> MOVED_DIST). Everything is JSON-able.
"""
from __future__ import annotations

import dataclasses

import numpy as np

from mfm_jax.data.world import sim

KINDS = ("remove", "velocity", "color")
MOVED_DIST = 0.1
PUSH_SPEED = 2.0


@dataclasses.dataclass(frozen=True, eq=False)
class Twin:
  """A counterfactual twin of a scene."""
  kind: str                 # one of KINDS
  target: int               # the edited object's index
  scene: sim.Scene          # the re-simulated twin
  change: dict              # JSON-able description of the edit
  diff: dict                # outcome_diff(original, twin)


def collision_pairs(scene: sim.Scene) -> dict[tuple[int, int], float]:
  """(i, j) with i < j -> time of their first collision."""
  out: dict[tuple[int, int], float] = {}
  for e in scene.events:
    if e.kind == "collision":
      out.setdefault((min(e.i, e.j), max(e.i, e.j)), e.time)
  return out


def edit_objects(objects: sim.ObjectSet, kind: str, i: int,
                 velocity=None, color: int | None = None) -> sim.ObjectSet:
  """A copy of `objects` with object i removed or its velocity/colour set."""
  if not objects.mask[i]:
    raise ValueError(f"twin: object {i} is not in the scene")
  if kind == "remove":
    mask = objects.mask.copy()
    mask[i] = False
    return dataclasses.replace(objects, mask=mask)
  if kind == "velocity":
    vel = objects.velocity.copy()
    vel[i] = np.asarray(velocity, np.float32)
    return dataclasses.replace(objects, velocity=vel)
  if kind == "color":
    col = objects.color.copy()
    col[i] = color
    return dataclasses.replace(objects, color=col)
  raise ValueError(f"twin: unknown kind {kind!r}; known: {KINDS}")


def outcome_diff(original: sim.Scene, twin: sim.Scene) -> dict:
  """What differs between the outcomes of two scenes (JSON-able)."""
  a, b = collision_pairs(original), collision_pairs(twin)
  both = original.mask & twin.mask
  final_a = original.positions[-1, :, :2]
  final_b = twin.positions[-1, :, :2]
  moved = np.linalg.norm(final_a - final_b, axis=-1) > MOVED_DIST
  return {
      "collisions_original": [list(p) for p in sorted(a)],
      "collisions_twin": [list(p) for p in sorted(b)],
      "collisions_removed": [list(p) for p in sorted(set(a) - set(b))],
      "collisions_added": [list(p) for p in sorted(set(b) - set(a))],
      "final_positions_original": {
          str(i): [round(float(x), 4) for x in final_a[i]]
          for i in np.flatnonzero(original.mask)},
      "final_positions_twin": {
          str(i): [round(float(x), 4) for x in final_b[i]]
          for i in np.flatnonzero(twin.mask)},
      "ends_elsewhere": [int(i) for i in np.flatnonzero(both & moved)],
  }


def _new_velocity(scene: sim.Scene, i: int) -> np.ndarray:
  obj = scene.objects
  if np.linalg.norm(obj.velocity[i]) > 0:
    return np.zeros(2, np.float32)
  others = [j for j in np.flatnonzero(obj.mask) if j != i]
  j = min(others, key=lambda j: np.linalg.norm(obj.position[j]
                                                - obj.position[i]))
  d = obj.position[j] - obj.position[i]
  return (PUSH_SPEED * d / np.linalg.norm(d)).astype(np.float32)


def make_twin(scene: sim.Scene, kind: str, i: int, color: int | None = None
              ) -> Twin:
  """The twin of `scene` editing object i (see the module docstring)."""
  obj = scene.objects
  if kind == "velocity":
    vel = _new_velocity(scene, i)
    objects = edit_objects(obj, kind, i, velocity=vel)
    change = {"velocity_from": [round(float(x), 4) for x in obj.velocity[i]],
              "velocity_to": [round(float(x), 4) for x in vel]}
  elif kind == "color":
    used = set(obj.color[obj.mask].tolist())
    if color is None:
      color = min(c for c in range(len(sim.PALETTE)) if c not in used)
    objects = edit_objects(obj, kind, i, color=color)
    change = {"color_from": sim.COLOR_NAMES[obj.color[i]],
              "color_to": sim.COLOR_NAMES[color]}
  else:
    objects = edit_objects(obj, kind, i)
    change = {}
  twin = sim.run_physics(objects, scene.spec, seed=scene.seed)
  change = {"kind": kind, "target": int(i), **change}
  return Twin(kind=kind, target=int(i), scene=twin, change=change,
              diff=outcome_diff(scene, twin))


def sample_twins(scene: sim.Scene, seed: int) -> list[Twin]:
  """One twin of each kind, targets drawn deterministically from `seed`.

  The removal targets preferably an object involved in a collision (so that
  the twin's outcome differs); needs >= 2 objects for the velocity twin.
  """
  rng = np.random.default_rng([seed, 31])
  ids = [int(i) for i in np.flatnonzero(scene.mask)]
  hit = sorted({k for p in collision_pairs(scene) for k in p})
  twins = [make_twin(scene, "remove",
                     int(rng.choice(hit if hit else ids)))]
  if len(ids) >= 2:
    twins.append(make_twin(scene, "velocity", int(rng.choice(ids))))
  twins.append(make_twin(scene, "color", int(rng.choice(ids))))
  return twins


def twin_record(twin: Twin) -> dict:
  """JSON-able summary of a twin (its edit and outcome differences)."""
  return {**twin.change, "diff": twin.diff}
