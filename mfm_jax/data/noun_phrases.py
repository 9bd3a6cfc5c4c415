"""Noun phrases of captions, for structured cross-attention (StructureDiffusion, ICLR'23).

An extractor maps a caption (and optionally its world record) to noun-phrase *word spans*:

  extract(caption, record=None) -> list[(start, end)]

``start`` / ``end`` index ``tokenizer.split_words(caption)`` (lower-cased words and single
punctuation marks, the units of ``WordTokenizer``), ``end`` exclusive, sorted by ``start``; the
phrase text is ``" ".join(words[start:end])`` (:func:`phrases`). Word spans are independent of
the tokenizer; ``diffusion/structured.py`` maps them to token positions.

Two extractors, pluggable (any callable with this signature works):

* :class:`ChunkParser` -- a small deterministic parser standing in for the constituency parser
  of the paper: a noun phrase is a determiner, then a maximal run of adjectives and nouns, cut
  back to its last noun (``DET (ADJ|NOUN)* NOUN``). The lexicon is the world's closed
  vocabulary (sizes, colours, materials, shapes, image / floor places, "wall"); a word outside it
  ends a phrase. ``objects_only=True`` keeps the phrases whose head is an object noun (a shape).

    "a large red sphere moves from the back left to the front center."
      -> "a large red sphere", "the back left", "the front center"   (objects_only: the first)

* :class:`SceneGraphPhrases` -- ground truth from the world: each real object's name from the
  record (``size_ids / color_ids / shape_ids / obj_mask``, or a scene graph dict under
  ``"scene_graph"`` with ``objects[i]["name"]``, ``["color"]``, ``["shape"]``) is found in the
  caption as ``DET? name`` (the full name, or "colour shape", since colours are unique in a clip).

Written by hand: the captions come from closed grammars (``data/world/captions.py``,
``path_captions.py``), for which a 40-line chunker is exact, while a general parser (spaCy,
benepar) would add a model download for no gain.
"""
from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Protocol

from mfm_jax.data.tokenizer import split_words
from mfm_jax.data.world import sim

Span = tuple[int, int]

DETERMINERS = ("a", "an", "the")
# Place words are adjectives before a noun ("the back left") and nouns at the end ("the top").
PLACES = ("front", "middle", "back", "left", "center", "right", "top", "bottom")
OBJECT_NOUNS = tuple(sim.SHAPE_NAMES) + ("object", "wall")
ADJECTIVES = (("small", "medium", "large") + tuple(sim.COLOR_NAMES)
              + tuple(sim.MATERIAL_NAMES) + PLACES)
NOUNS = OBJECT_NOUNS + PLACES


class Extractor(Protocol):
  def __call__(self, caption: str, record: dict | None = None) -> list[Span]:
    ...


def phrases(caption: str, spans: Sequence[Span]) -> list[str]:
  """The text of word spans: ``" ".join(words[start:end])`` each."""
  words = split_words(caption)
  return [" ".join(words[a:b]) for a, b in spans]


class ChunkParser:
  """``DET (ADJ|NOUN)* NOUN`` chunks over a closed lexicon (see the module docstring).

  Attributes:
    objects_only: keep only phrases whose head (last word) is in ``object_nouns``.
  """

  def __init__(self, *, objects_only: bool = False, determiners: Sequence[str] = DETERMINERS,
               adjectives: Sequence[str] = ADJECTIVES, nouns: Sequence[str] = NOUNS,
               object_nouns: Sequence[str] = OBJECT_NOUNS):
    self.objects_only = bool(objects_only)
    self.determiners = frozenset(determiners)
    self.adjectives = frozenset(adjectives)
    self.nouns = frozenset(nouns)
    self.object_nouns = frozenset(object_nouns)
    if not self.object_nouns <= self.nouns:
      raise ValueError(f"ChunkParser: object_nouns {sorted(self.object_nouns - self.nouns)} "
                       "are not in nouns")

  def __call__(self, caption: str, record: dict | None = None) -> list[Span]:
    del record   # the parser reads the caption only
    words = split_words(caption)
    spans, i = [], 0
    while i < len(words):
      if words[i] not in self.determiners:
        i += 1
        continue
      j = i + 1
      while j < len(words) and (words[j] in self.adjectives or words[j] in self.nouns):
        j += 1
      end = j
      while end > i + 1 and words[end - 1] not in self.nouns:   # cut back to the last noun
        end -= 1
      if end > i + 1 and (not self.objects_only or words[end - 1] in self.object_nouns):
        spans.append((i, end))
      i = j
    return spans


def _find(words: list[str], name: list[str], start: int = 0) -> int:
  for i in range(start, len(words) - len(name) + 1):
    if words[i:i + len(name)] == name:
      return i
  return -1


def object_names(record: dict, size_names: Sequence[str] = sim.SIZE_NAMES) -> list[list[str]]:
  """Per real object, its candidate names as word lists: ``[full name, "colour shape"]``.

  Args:
    record: a world record with ``size_ids / color_ids / shape_ids / obj_mask`` ([K] each), or
      with ``scene_graph`` (a dict or its JSON) whose ``objects`` have name / color / shape.
    size_names: the world spec's size names (``WorldSpec.size_names``).
  """
  if "scene_graph" in record:
    graph = record["scene_graph"]
    if isinstance(graph, (bytes, str)):
      graph = json.loads(graph)
    return [[split_words(o["name"]), [o["color"], o["shape"]]] for o in graph["objects"]]
  need = ("size_ids", "color_ids", "shape_ids", "obj_mask")
  missing = [k for k in need if k not in record]
  if missing:
    raise KeyError(f"SceneGraphPhrases: the record needs 'scene_graph' or the fields {missing} "
                   f"(it has {sorted(record)})")
  out = []
  for k, real in enumerate(record["obj_mask"]):
    if real:
      color = sim.COLOR_NAMES[int(record["color_ids"][k])]
      shape = sim.SHAPE_NAMES[int(record["shape_ids"][k])]
      out.append([[size_names[int(record["size_ids"][k])], color, shape], [color, shape]])
  return out


class SceneGraphPhrases:
  """Ground-truth object phrases: each real object's name in the caption, with its determiner.

  Every mention of every object is a phrase ("a large red sphere ... then hits the red sphere"
  gives two). An object that the caption never names is skipped.
  """

  def __init__(self, size_names: Sequence[str] = sim.SIZE_NAMES,
               determiners: Sequence[str] = DETERMINERS):
    self.size_names = tuple(size_names)
    self.determiners = frozenset(determiners)

  def __call__(self, caption: str, record: dict | None = None) -> list[Span]:
    if record is None:
      raise ValueError("SceneGraphPhrases needs the caption's record (its objects)")
    words = split_words(caption)
    taken = [False] * len(words)
    spans = []
    for names in object_names(record, self.size_names):
      for name in names:                    # the full name first, then "colour shape"
        i = _find(words, name)
        while i >= 0:
          if not any(taken[i:i + len(name)]):
            start = i - 1 if i > 0 and words[i - 1] in self.determiners else i
            spans.append((start, i + len(name)))
            for w in range(start, i + len(name)):
              taken[w] = True
          i = _find(words, name, i + 1)
    return sorted(spans)


EXTRACTORS = {"parser": ChunkParser, "parser_objects": lambda **kw: ChunkParser(
    objects_only=True, **kw), "scene_graph": SceneGraphPhrases}


def get(name: str, **kwargs) -> Extractor:
  """An extractor by name: ``parser``, ``parser_objects`` or ``scene_graph``."""
  if name not in EXTRACTORS:
    raise ValueError(f"noun phrase extractor {name!r}: use one of {sorted(EXTRACTORS)}")
  return EXTRACTORS[name](**kwargs)
