"""Path captions: where each object starts and ends on the floor, in words.

The world's own captions (`captions.py`) locate an object by the 3x3 *image* cell where it starts
and the direction of its first motion. As a text-to-video condition they leave most of the
trajectory open: objects spread over only the middle of the image (x in 0.15-0.88, y in 0.26-0.78
on `world_video/small`), so the top and bottom image rows are almost never used, and after the
first bounce the direction says nothing. Measured on the first 64 validation clips of
`world_video/small` (8 frames), the trajectory error (`eval/trajectory.py`) of a *deterministic
oracle* that reads the caption perfectly — each object static at the centre of its start cell — is
0.200, against 0.210 for every object at the mean position and 0.227 for real clips that ignore
the caption: no generator, however good, could show learning on that metric.

A path caption names each real object and the cells of a 3x3 grid over the *floor* where it is at
the first and the last frame of the clip:

  "a large red sphere moves from the back left to the front center;
   a small blue cube stays at the middle right."

Rows are ``front / middle / back`` along the world's y axis (the v1 camera looks along +y, so
"back" is far from it and high in the image) and columns ``left / center / right`` along x; each
cell is a third of the arena's side. An object whose floor position never moves more than
`still_distance` from its start "stays at" its cell. The oracle that puts each object at its start
cell's centre (the mean image position of training objects in that cell), moved linearly to its end
cell's centre, has a trajectory error of 0.085 on the same clips (0.227 without the caption), so
the caption determines most of the trajectory and the metric can show whether a model uses it.

Captions are built from a record's ground truth (`positions`, `size_ids`, `color_ids`,
`shape_ids`, `obj_mask`), so every `world_video` record gets one without regenerating the data
(`data.captions = "path"` in `pipeline.py`). The vocabulary is closed (`vocabulary()`).
"""
from __future__ import annotations

import numpy as np

from mfm_jax.data.world import sim

ROWS = ("front", "middle", "back")    # world y: -arena/2 .. +arena/2 (away from the v1 camera)
COLS = ("left", "center", "right")    # world x
_GLUE = ("a", "moves", "from", "to", "the", "stays", "at", ";", ".")


def floor_cell(xy, arena_size: float) -> str:
  """The 3x3 floor cell of a world (x, y) point, e.g. 'back left', 'middle center'."""
  third = float(arena_size) / 3.0
  col = int(np.clip(np.floor((float(xy[0]) + arena_size / 2.0) / third), 0, 2))
  row = int(np.clip(np.floor((float(xy[1]) + arena_size / 2.0) / third), 0, 2))
  return f"{ROWS[row]} {COLS[col]}"


def object_clause(name: str, path: np.ndarray, arena_size: float,
                  still_distance: float = 0.05) -> str:
  """'a <name> moves from the <cell> to the <cell>' or 'a <name> stays at the <cell>'.

  Args:
    name: e.g. "large red sphere".
    path: [T, 2+] world positions of the object (x, y first).
    arena_size: side of the square arena (world units).
    still_distance: largest floor distance from the start for "stays".
  """
  path = np.asarray(path, np.float64)[:, :2]
  start, end = floor_cell(path[0], arena_size), floor_cell(path[-1], arena_size)
  if np.max(np.linalg.norm(path - path[0], axis=-1)) <= still_distance:
    return f"a {name} stays at the {start}"
  return f"a {name} moves from the {start} to the {end}"


def path_caption(positions, size_ids, color_ids, shape_ids, obj_mask, *,
                 size_names=sim.SIZE_NAMES, arena_size: float = 6.0,
                 still_distance: float = 0.05) -> str:
  """The path caption of one clip (objects in slot order, clauses joined by "; ").

  Args:
    positions: [T, K, 3] world positions (record field `positions`).
    size_ids / color_ids / shape_ids: [K] int indices into `size_names`, `sim.COLOR_NAMES`,
      `sim.SHAPE_NAMES`.
    obj_mask: [K] bool, real objects.
    size_names: the world spec's size names (`WorldSpec.size_names`).
    arena_size: the world spec's `arena_size`.
    still_distance: see `object_clause`.
  """
  positions = np.asarray(positions)
  mask = np.asarray(obj_mask, bool)
  if positions.ndim != 3 or positions.shape[1] != mask.shape[0]:
    raise ValueError(f"path_caption: positions must be [T, K, 3] with K = len(obj_mask) = "
                     f"{mask.shape[0]}, got {positions.shape}")
  clauses = []
  for k in np.flatnonzero(mask):
    name = " ".join((size_names[int(size_ids[k])], sim.COLOR_NAMES[int(color_ids[k])],
                     sim.SHAPE_NAMES[int(shape_ids[k])]))
    clauses.append(object_clause(name, positions[:, k], arena_size, still_distance))
  if not clauses:
    raise ValueError("path_caption: the record has no real object (obj_mask is all False)")
  return "; ".join(clauses) + "."


def vocabulary(size_names=sim.SIZE_NAMES) -> list[str]:
  """Every word a path caption can use (for `WordTokenizer`), sorted."""
  words = set(_GLUE) | set(size_names) | set(sim.COLOR_NAMES) | set(sim.SHAPE_NAMES)
  return sorted(words | set(ROWS) | set(COLS))


class PathCaptioner:
  """record -> path caption, for a world spec (picklable, for grain workers)."""

  FIELDS = ("positions", "size_ids", "color_ids", "shape_ids", "obj_mask")

  def __init__(self, spec: sim.WorldSpec, still_distance: float = 0.05):
    self.size_names = tuple(spec.size_names)
    self.arena_size = float(spec.arena_size)
    self.still_distance = float(still_distance)

  def __call__(self, record: dict) -> str:
    missing = [f for f in self.FIELDS if f not in record]
    if missing:
      raise KeyError(f"data.captions='path' needs the record fields {missing} (the record has "
                     f"{sorted(record)})")
    return path_caption(*(record[f] for f in self.FIELDS), size_names=self.size_names,
                        arena_size=self.arena_size, still_distance=self.still_distance)
