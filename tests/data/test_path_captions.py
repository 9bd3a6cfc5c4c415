"""Path captions (start/end floor cells) and the pipeline's data.captions option."""
import numpy as np
import pytest

from mfm_jax.data import pipeline
from mfm_jax.data import sources
from mfm_jax.data import tokenizer as tok_lib
from mfm_jax.data.world import path_captions as pc
from mfm_jax.data.world import sim


@pytest.fixture
def cfg(smoke_data_dir):
  c = pipeline.default_data_config()
  c.data_dir = smoke_data_dir
  c.num_frames, c.resolution, c.max_text_len = 4, 16, 64
  c.captions, c.tokenizer = "path", "words"
  return c


def test_floor_cells_split_the_arena_in_thirds():
  assert pc.floor_cell((0.0, 0.0), 6.0) == "middle center"
  assert pc.floor_cell((-2.9, 2.9), 6.0) == "back left"
  assert pc.floor_cell((2.9, -2.9), 6.0) == "front right"
  assert pc.floor_cell((-1.01, 0.99), 6.0) == "middle left"
  assert pc.floor_cell((1.01, 1.01), 6.0) == "back right"
  assert pc.floor_cell((9.0, -9.0), 6.0) == "front right"      # outside: clipped


def test_clauses_name_start_and_end_or_stay():
  moving = np.array([[-2.0, -2.0], [0.0, 0.0], [2.0, 2.0]])
  assert pc.object_clause("large red cube", moving, 6.0) == (
      "a large red cube moves from the front left to the back right")
  still = np.array([[2.0, 0.0], [2.01, 0.02], [2.0, 0.01]])
  assert pc.object_clause("small blue sphere", still, 6.0) == (
      "a small blue sphere stays at the middle right")
  positions = np.stack([moving, still, still], 1)            # [T=3, K=3, 2]
  caption = pc.path_caption(positions, [1, 0, 0], [0, 2, 3], [1, 0, 0], [True, True, False])
  assert caption == ("a large red cube moves from the front left to the back right; "
                     "a small blue sphere stays at the middle right.")
  with pytest.raises(ValueError, match="no real object"):
    pc.path_caption(positions, [0] * 3, [0] * 3, [0] * 3, [False] * 3)
  with pytest.raises(ValueError, match="K = len"):
    pc.path_caption(positions[:, :2], [0] * 3, [0] * 3, [0] * 3, [True] * 3)


def test_captions_agree_with_the_rendered_image_positions(cfg):
  """'left' objects are left of 'right' ones in the image, 'back' above 'front' (v1 camera)."""
  src = sources.load_source(name="world_video", config="smoke", data_dir=cfg.data_dir,
                            split="train")
  spec = pipeline.world_spec(cfg)
  xs, ys = {}, {}
  for i in range(len(src)):
    r = src[i]
    for k in np.flatnonzero(r["obj_mask"]):
      row, col = pc.floor_cell(r["positions"][0, k], spec.arena_size).split()
      xs.setdefault(col, []).append(r["centers"][0, k, 0])
      ys.setdefault(row, []).append(r["centers"][0, k, 1])
  assert max(xs["left"]) < min(xs["right"])
  assert np.mean(xs["left"]) < np.mean(xs["center"]) < np.mean(xs["right"])
  assert np.mean(ys["back"]) < np.mean(ys["middle"]) < np.mean(ys["front"])


def test_pipeline_conditions_on_path_captions(cfg):
  tokenizer = pipeline.make_tokenizer(cfg)
  assert tokenizer.vocab == pc.vocabulary(sim.SIZE_NAMES)
  examples = pipeline.load_examples(cfg, "validation", 4)
  src = sources.load_source(name="world_video", config="smoke", data_dir=cfg.data_dir,
                            split="validation")
  for i, ex in enumerate(examples):
    r = src[i]
    expected = pc.path_caption(r["positions"], r["size_ids"], r["color_ids"], r["shape_ids"],
                               r["obj_mask"])
    assert ex["caption"] == expected
    assert expected != r["caption"].decode("utf-8")
    ids = ex["text_ids"]
    assert tok_lib.UNK not in ids                                   # closed vocabulary
    assert tokenizer.decode(ids) == " ".join(tok_lib.split_words(expected))
  batch = next(pipeline.make_iterator(cfg, "train", 8, seed=0))
  assert tok_lib.UNK not in batch["text_ids"]


def test_bad_caption_settings_are_clear_errors(cfg):
  cfg.captions = "poem"
  with pytest.raises(ValueError, match="data.captions='poem'"):
    pipeline.load_examples(cfg, "validation", 1)
  cfg.captions, cfg.name = "path", "world_multiview"
  with pytest.raises(ValueError, match="world_video"):
    pipeline.make_tokenizer(cfg)
  captioner = pc.PathCaptioner(sim.WorldSpec())
  with pytest.raises(KeyError, match="positions"):
    captioner({"size_ids": 0, "color_ids": 0, "shape_ids": 0, "obj_mask": 0})
