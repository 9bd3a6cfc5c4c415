"""Noun-phrase extractors: the chunk parser on both caption grammars, ground truth from records
and scene graphs, and parser == ground truth on the world's path captions."""
import numpy as np
import pytest

from mfm_jax.data import noun_phrases as nps
from mfm_jax.data.tokenizer import split_words
from mfm_jax.data.world import generate, path_captions, sim

PATH = ("a large red sphere moves from the back left to the front center; "
        "a small blue cube stays at the middle right.")
WORLD = ("a small purple sphere at the bottom does not move; a large orange sphere starts in "
         "the center and rolls up-right, then hits the blue cube; a large red cube on the left "
         "slides down, then hits a wall.")


def test_parser_on_a_path_caption():
  spans = nps.ChunkParser()(PATH)
  assert nps.phrases(PATH, spans) == ["a large red sphere", "the back left", "the front center",
                                      "a small blue cube", "the middle right"]
  assert spans[0] == (0, 4)
  objects = nps.ChunkParser(objects_only=True)(PATH)
  assert nps.phrases(PATH, objects) == ["a large red sphere", "a small blue cube"]


def test_parser_on_a_world_caption():
  got = nps.phrases(WORLD, nps.ChunkParser()(WORLD))
  assert got == ["a small purple sphere", "the bottom", "a large orange sphere", "the center",
                 "the blue cube", "a large red cube", "the left", "a wall"]
  objects = nps.phrases(WORLD, nps.get("parser_objects")(WORLD))
  assert objects == ["a small purple sphere", "a large orange sphere", "the blue cube",
                     "a large red cube", "a wall"]


def test_parser_cuts_back_to_the_last_noun_and_needs_a_determiner():
  # A trailing adjective is cut off; a bare "red sphere" has no determiner.
  assert nps.phrases("the red cube green moves", nps.ChunkParser()(
      "the red cube green moves")) == ["the red cube"]
  assert nps.ChunkParser()("the red moves") == []         # no noun after the adjective
  assert nps.ChunkParser()("red sphere moves") == []      # no determiner
  assert nps.ChunkParser()("a dog runs") == []            # out of the lexicon


def test_scene_graph_phrases_from_record_ids():
  record = {"size_ids": np.array([1, 0, 0]), "color_ids": np.array([0, 2, 5]),
            "shape_ids": np.array([0, 1, 1]), "obj_mask": np.array([True, True, False])}
  got = nps.phrases(PATH, nps.SceneGraphPhrases()(PATH, record))
  assert got == ["a large red sphere", "a small blue cube"]   # the padding magenta is absent


def test_scene_graph_phrases_find_every_mention_with_short_names():
  graph = {"objects": [{"name": "large orange sphere", "color": "orange", "shape": "sphere"},
                       {"name": "large blue cube", "color": "blue", "shape": "cube"}]}
  got = nps.phrases(WORLD, nps.get("scene_graph")(WORLD, {"scene_graph": graph}))
  # "the blue cube" is the second object named by colour and shape; a large blue cube is absent.
  assert got == ["a large orange sphere", "the blue cube"]


def test_scene_graph_phrases_errors():
  with pytest.raises(ValueError, match="needs the caption's record"):
    nps.SceneGraphPhrases()(PATH)
  with pytest.raises(KeyError, match="shape_ids"):
    nps.SceneGraphPhrases()(PATH, {"size_ids": [0], "color_ids": [0], "obj_mask": [True]})
  with pytest.raises(ValueError, match="extractor 'spacy'"):
    nps.get("spacy")


def test_parser_objects_equal_ground_truth_on_world_path_captions():
  for seed in range(6):
    clip = generate.generate_clip(seed)
    caption = path_captions.path_caption(clip["positions"], clip["size_ids"], clip["color_ids"],
                                         clip["shape_ids"], clip["obj_mask"])
    truth = nps.SceneGraphPhrases()(caption, clip)
    assert nps.ChunkParser(objects_only=True)(caption) == truth
    assert len(truth) == clip["num_objects"]
    words = split_words(caption)
    for (a, b), k in zip(truth, np.flatnonzero(clip["obj_mask"])):   # slot order
      assert words[a] == "a" and words[b - 2] == sim.COLOR_NAMES[clip["color_ids"][k]]
