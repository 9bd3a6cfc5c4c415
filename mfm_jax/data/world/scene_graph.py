"""Scene graphs of world clips: objects with attributes, relations with spans.

A scene graph is a JSON-able dict:

  {"objects": [{"id": 0, "name": "large red metal sphere", "shape": "sphere",
                "color": "red", "size": "large", "material": "metal",
                "radius": 0.55, "initial_position": [x, y],
                "initial_velocity": [vx, vy], "initial_yaw": 0.0,
                "initial_yaw_rate": 0.0, "static": false}, ...],
   "relations": [{"subject": 0, "predicate": "left_of", "object": 2,
                  "spans": [[0, 5], [9, 15]]}, ...]}

Spans are inclusive frame ranges [first, last] where the relation holds.
Predicates, from the simulation and the reference view (view 0, frame t):
  left_of(i, j)         i's image x < j's by more than LEFT_MARGIN
  behind(i, j)          i's camera depth > j's by more than DEPTH_MARGIN
  near(i, j)            surface gap (centre distance - ri - rj) < NEAR_GAP
  moving_towards(i, j)  i moves (speed > MOVING_SPEED) within 45 degrees of
                        the direction to j
  collides_with(i, j)   i < j; one-frame spans at each collision's frame
Object ids are the indices into the clip's K-capacity arrays (real objects).
"""
from __future__ import annotations

import numpy as np

from mfm_jax.data.world import captions
from mfm_jax.data.world import sim

LEFT_MARGIN = 0.02
DEPTH_MARGIN = 0.3
NEAR_GAP = 0.5
MOVING_SPEED = 0.05
PREDICATES = ("left_of", "behind", "near", "moving_towards", "collides_with")


def spans(holds: np.ndarray) -> list[list[int]]:
  """Inclusive [first, last] runs of True in a [T] bool array."""
  runs, start = [], None
  for t, h in enumerate(np.asarray(holds, bool).tolist() + [False]):
    if h and start is None:
      start = t
    elif not h and start is not None:
      runs.append([start, t - 1])
      start = None
  return runs


def object_attributes(scene: sim.Scene, i: int) -> dict:
  """The attribute dict of object i (see the module docstring)."""
  obj = scene.objects
  moves = np.linalg.norm(scene.velocities[:, i, :2], axis=-1) > 0
  return {
      "id": int(i), "name": captions.object_name(scene, i),
      "shape": sim.SHAPE_NAMES[obj.shape[i]],
      "color": sim.COLOR_NAMES[obj.color[i]],
      "size": scene.spec.size_names[obj.size[i]],
      "material": sim.MATERIAL_NAMES[obj.material[i]],
      "radius": round(float(obj.radius[i]), 4),
      "initial_position": [round(float(x), 4) for x in obj.position[i]],
      "initial_velocity": [round(float(x), 4) for x in obj.velocity[i]],
      "initial_yaw": round(float(obj.yaw[i]), 4),        # radians (sim.py)
      "initial_yaw_rate": round(float(obj.spin[i]), 4),  # rad / s
      "static": not bool(moves.any()),
  }


def relation_masks(scene: sim.Scene, centers: np.ndarray,
                   center_depth: np.ndarray) -> dict[str, np.ndarray]:
  """[T, K, K] bool per predicate (except collides_with); [t, i, j] = rel(i, j).

  Args:
    scene: the simulated scene.
    centers: [T, K, 2] normalised image centres in the reference view.
    center_depth: [T, K] camera depth of the centres in the reference view.
  """
  mask = scene.mask
  pair = mask[:, None] & mask[None, :] & ~np.eye(len(mask), dtype=bool)
  x = centers[..., 0]
  p = scene.positions[..., :2].astype(np.float64)
  v = scene.velocities[..., :2].astype(np.float64)
  r = scene.objects.radius.astype(np.float64)
  d = p[:, None, :, :] - p[:, :, None, :]                  # [T, i, j, 2] j - i
  dist = np.linalg.norm(d, axis=-1)
  speed = np.linalg.norm(v, axis=-1)                       # [T, K]
  with np.errstate(divide="ignore", invalid="ignore"):
    cos = np.sum(v[:, :, None] * d, -1) / (speed[:, :, None] * dist)
  return {
      "left_of": (x[:, :, None] < x[:, None, :] - LEFT_MARGIN) & pair,
      "behind": (center_depth[:, :, None] > center_depth[:, None, :]
                 + DEPTH_MARGIN) & pair,
      "near": (dist - r[:, None] - r[None, :] < NEAR_GAP) & pair,
      "moving_towards": ((speed[:, :, None] > MOVING_SPEED)
                         & (np.nan_to_num(cos) > np.cos(np.pi / 4)) & pair),
  }


def build(scene: sim.Scene, centers: np.ndarray, center_depth: np.ndarray
          ) -> dict:
  """The scene graph of a clip (JSON-able; see the module docstring)."""
  ids = [int(i) for i in np.flatnonzero(scene.mask)]
  relations = []
  for name, holds in relation_masks(scene, centers, center_depth).items():
    for i in ids:
      for j in ids:
        s = spans(holds[:, i, j])
        if s:
          relations.append({"subject": i, "predicate": name, "object": j,
                            "spans": s})
  hits: dict[tuple[int, int], list[int]] = {}
  for e in scene.events:
    if e.kind == "collision":
      hits.setdefault((min(e.i, e.j), max(e.i, e.j)), []).append(e.frame)
  for (i, j), frames in sorted(hits.items()):
    relations.append({"subject": i, "predicate": "collides_with",
                      "object": j, "spans": [[f, f] for f in frames]})
  return {"objects": [object_attributes(scene, i) for i in ids],
          "relations": relations}


def holds_at(graph: dict, predicate: str, i: int, j: int, frame: int) -> bool:
  """Whether predicate(i, j) holds at `frame` in a scene graph dict."""
  for rel in graph["relations"]:
    if (rel["predicate"], rel["subject"], rel["object"]) == (predicate, i, j):
      return any(a <= frame <= b for a, b in rel["spans"])
  return False
