"""Compositional image-text matching items from the world (task ``compositional``, ComCLIP).

An :class:`Item` is one world frame, a positive sentence for a subject-relation-object triplet
that holds in that frame and hard negatives:

  positive   "a large red sphere to the left of a small blue cube"
  swap       "a small blue cube to the left of a large red sphere"     (subject <-> object)
  attribute  "a large blue sphere to the left of a small red cube"     (colours exchanged)

Both negatives are false in the frame: the relations used are antisymmetric (``left_of``,
``behind`` and their converses ``right_of``, ``in_front_of``; ``near`` is symmetric and left out)
and colours are unique within a world clip, so no object carries a colour-swapped name. Pairs
that differ only in colour ("large red cube", "large blue cube") are left out: their colour swap
would be the subject/object swap again.

Where the triplets come from: the world's scene-graph rules (``scene_graph.relation_masks``:
image-x order with ``LEFT_MARGIN``, camera depth with ``DEPTH_MARGIN``) evaluated per frame on the
record's centres and the re-simulated scene (``sim.simulate(record["seed"], spec)``, checked
against the record's stored positions). This replaces ComCLIP's dependency parse: the world gives
the parse.

Boxes come from a pluggable box source, ``source(record, clip, frame) -> (boxes [K, 4] int,
valid [K] bool)`` with boxes ``(x0, y0, x1, y1)`` in pixels, half-open (``x0 <= x < x1``):
:class:`MaskBoxes` (default: tight boxes of the instance masks) or :class:`GivenBoxes` (boxes
given by the caller, e.g. a detector's). An object takes part in an item only when its box is
valid.

Items are deterministic by ``seed``: frames per clip are evenly spaced (as
``image_text.WorldExamples``), and ``triplets_per_frame`` triplets are drawn per frame with
``np.random.default_rng([seed, clip, frame])``.
"""
from __future__ import annotations

import dataclasses
from typing import Callable, Mapping

import numpy as np

from mfm_jax.data.world import camera as camera_lib
from mfm_jax.data.world import scene_graph
from mfm_jax.data.world import sim

# predicate -> (scene-graph relation, converse?, words)
PREDICATES = {
    "left_of": ("left_of", False, "to the left of"),
    "right_of": ("left_of", True, "to the right of"),
    "behind": ("behind", False, "behind"),
    "in_front_of": ("behind", True, "in front of"),
}
NEGATIVE_TYPES = ("swap", "attribute")
BoxSource = Callable[[Mapping, int, int], tuple[np.ndarray, np.ndarray]]


@dataclasses.dataclass(frozen=True)
class Sentence:
  """A sentence and its parse: ``text = f"a {subject} {predicate} a {object}"``."""
  subject: str
  predicate: str
  object: str

  @property
  def text(self) -> str:
    return f"a {self.subject} {self.predicate} a {self.object}"


@dataclasses.dataclass
class Item:
  """One matching item.

  image: [H, W, 3] uint8 frame; boxes: {object name: (x0, y0, x1, y1)} of every object of the
  frame with a valid box (what phrases are bound to); negatives: {type: Sentence}.
  """
  image: np.ndarray
  boxes: dict[str, tuple[int, int, int, int]]
  positive: Sentence
  negatives: dict[str, Sentence]
  predicate: str = ""
  clip: int = -1
  frame: int = -1


# --- boxes -------------------------------------------------------------------------------------
def boxes_from_instance(instance: np.ndarray, num_slots: int, min_pixels: int = 1
                        ) -> tuple[np.ndarray, np.ndarray]:
  """Tight boxes of an instance map: instance [H, W] (0 background, k + 1 = slot k).

  Returns boxes [K, 4] int32 ``(x0, y0, x1, y1)`` half-open (zeros where invalid) and valid [K]
  bool (the slot has at least ``min_pixels`` pixels).
  """
  instance = np.asarray(instance)
  boxes = np.zeros((num_slots, 4), np.int32)
  valid = np.zeros((num_slots,), bool)
  for k in range(num_slots):
    ys, xs = np.nonzero(instance == k + 1)
    if len(ys) >= max(min_pixels, 1):
      boxes[k] = (xs.min(), ys.min(), xs.max() + 1, ys.max() + 1)
      valid[k] = True
  return boxes, valid


class MaskBoxes:
  """Default box source: tight boxes of the record's instance masks at ``frame``."""

  def __init__(self, min_pixels: int = 4):
    self.min_pixels = int(min_pixels)

  def __call__(self, record, clip, frame):
    del clip
    k = np.asarray(record["obj_mask"]).shape[0]
    boxes, valid = boxes_from_instance(np.asarray(record["instance"])[frame], k, self.min_pixels)
    return boxes, valid & np.asarray(record["obj_mask"], bool)


class GivenBoxes:
  """Boxes given by the caller: ``{(clip, frame): [K, 4] (x0, y0, x1, y1)}``; a box with zero
  width or height is invalid."""

  def __init__(self, boxes: Mapping[tuple[int, int], np.ndarray]):
    self.boxes = {(int(c), int(f)): np.asarray(b, np.int32) for (c, f), b in boxes.items()}

  def __call__(self, record, clip, frame):
    key = (int(clip), int(frame))
    if key not in self.boxes:
      raise KeyError(f"GivenBoxes: no boxes for (clip, frame)={key}")
    b = self.boxes[key]
    k = np.asarray(record["obj_mask"]).shape[0]
    if b.shape != (k, 4):
      raise ValueError(f"GivenBoxes: boxes for (clip, frame)={key} have shape {b.shape}, "
                       f"expected ({k}, 4)")
    return b, (b[:, 2] > b[:, 0]) & (b[:, 3] > b[:, 1]) & np.asarray(record["obj_mask"], bool)


def union_box(a, b) -> tuple[int, int, int, int]:
  """The smallest box holding boxes a and b (ComCLIP's predicate region)."""
  return (min(a[0], b[0]), min(a[1], b[1]), max(a[2], b[2]), max(a[3], b[3]))


def square_crop(image: np.ndarray, box, min_side: int = 4) -> np.ndarray:
  """image [H, W, 3], box (x0, y0, x1, y1) -> the square crop [S, S, 3] centred on the box,
  ``S = max(box width, box height, min_side)`` (at most ``min(H, W)``), shifted inside the image.
  Square, so resizing it to the model resolution keeps the geometry of the box's content."""
  h, w = image.shape[:2]
  x0, y0, x1, y1 = (int(v) for v in box)
  if not (0 <= x0 < x1 <= w and 0 <= y0 < y1 <= h):
    raise ValueError(f"square_crop: box {tuple(box)} is empty or outside the {w}x{h} image")
  side = min(max(x1 - x0, y1 - y0, min_side), h, w)
  cx, cy = (x0 + x1) / 2.0, (y0 + y1) / 2.0
  left = int(np.clip(round(cx - side / 2.0), 0, w - side))
  top = int(np.clip(round(cy - side / 2.0), 0, h - side))
  return image[top:top + side, left:left + side]


# --- the world ----------------------------------------------------------------------------------
def world_relations(record: Mapping, spec: sim.WorldSpec) -> dict[str, np.ndarray]:
  """[T, K, K] bool per predicate of :data:`PREDICATES` for a ``world_video`` record."""
  scene = sim.simulate(int(record["seed"]), spec)
  if not np.allclose(scene.positions, np.asarray(record["positions"]), atol=1e-4):
    raise ValueError(f"world_relations: re-simulating seed {int(record['seed'])} does not give "
                     "the record's positions (wrong world spec?)")
  depth = camera_lib.world_camera(spec).depth(scene.positions)
  base = scene_graph.relation_masks(scene, np.asarray(record["centers"]), depth)
  return {p: (np.swapaxes(base[rel], 1, 2) if conv else base[rel])
          for p, (rel, conv, _) in PREDICATES.items()}


def object_names(record: Mapping, attrs: Mapping, with_size: bool = True
                 ) -> tuple[list[str], list[str]]:
  """(names [K], colours [K]) of a record's slots, e.g. "large red sphere"; ``attrs`` as
  ``image_text.world_attributes``."""
  names, colors = [], []
  for k in range(len(record["obj_mask"])):
    color = attrs["color"][int(record["color_ids"][k])]
    words = ([attrs["size"][int(record["size_ids"][k])]] if with_size else []) + [
        color, attrs["shape_table"][int(record["shape_ids"][k])]]
    names.append(" ".join(words))
    colors.append(color)
  return names, colors


def recolor(name: str, old: str, new: str) -> str:
  words = name.split()
  if old not in words:
    raise ValueError(f"recolor: colour {old!r} is not a word of {name!r}")
  return " ".join(new if w == old else w for w in words)


def negatives_of(pos: Sentence, subject_color: str, object_color: str) -> dict[str, Sentence]:
  """The swapped-role and swapped-colour negatives of a positive sentence."""
  return {"swap": Sentence(pos.object, pos.predicate, pos.subject),
          "attribute": Sentence(recolor(pos.subject, subject_color, object_color), pos.predicate,
                                recolor(pos.object, object_color, subject_color))}


def frame_items(record: Mapping, relations: Mapping[str, np.ndarray], names, colors,
                boxes: np.ndarray, valid: np.ndarray, frame: int, rng: np.random.Generator,
                per_frame: int, predicates, clip: int = -1) -> list[Item]:
  """Up to ``per_frame`` items of one frame (triplets drawn without replacement by ``rng``)."""
  cands = []
  for p in predicates:
    holds = relations[p][frame] & valid[:, None] & valid[None, :]
    cands += [(int(i), p, int(j)) for i, j in zip(*np.nonzero(holds))
              if colors[i] != colors[j] and recolor(names[i], colors[i], colors[j]) != names[j]]
  if not cands:
    return []
  pick = rng.permutation(len(cands))[:per_frame]
  box_of = {names[k]: tuple(int(v) for v in boxes[k]) for k in np.flatnonzero(valid)}
  image = np.asarray(record["video"])[frame]
  items = []
  for c in sorted(pick.tolist()):
    i, p, j = cands[c]
    pos = Sentence(names[i], PREDICATES[p][2], names[j])
    items.append(Item(image=image, boxes=box_of, positive=pos,
                      negatives=negatives_of(pos, colors[i], colors[j]), predicate=p,
                      clip=clip, frame=frame))
  return items


def world_items(source, spec: sim.WorldSpec, attrs: Mapping, box_source: BoxSource | None = None,
                frames_per_clip: int = 4, per_frame: int = 2, seed: int = 0,
                predicates=tuple(PREDICATES), max_items: int = 0, with_size: bool = True
                ) -> list[Item]:
  """Items over the clips of a ``world_video`` source (see the module docstring)."""
  unknown = set(predicates) - set(PREDICATES)
  if unknown:
    raise ValueError(f"comclip predicates {sorted(unknown)} unknown; use {list(PREDICATES)}")
  box_source = box_source or MaskBoxes()
  items: list[Item] = []
  for c in range(len(source)):
    record = source[c]
    relations = world_relations(record, spec)
    names, colors = object_names(record, attrs, with_size)
    t = np.asarray(record["video"]).shape[0]
    for jf in range(frames_per_clip):
      frame = int((jf + 0.5) * t / frames_per_clip)
      boxes, valid = box_source(record, c, frame)
      rng = np.random.default_rng([seed, c, frame])
      items += frame_items(record, relations, names, colors, np.asarray(boxes),
                           np.asarray(valid, bool), frame, rng, per_frame, predicates, c)
      if max_items and len(items) >= max_items:
        return items[:max_items]
  return items
