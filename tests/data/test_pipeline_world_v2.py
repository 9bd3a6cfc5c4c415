"""grain pipeline over world_multiview / world_qa: one view per example."""
import json

import numpy as np
import pytest

from mfm_jax.data import pipeline
from mfm_jax.data import sources
from mfm_jax.data import tokenizer as tok_lib
from mfm_jax.data.world import builder


def _cfg(data_dir, name, view):
  c = pipeline.default_data_config()
  c.name, c.data_dir, c.view = name, data_dir, view
  c.num_frames, c.resolution, c.max_text_len = 4, 16, 64
  return c


def _area(video):
  """Frames 0, 2, 4, 6 of a [8, 32, 32, 3] uint8 clip at 16x16, in [-1, 1]."""
  raw = video[::2].astype(np.float32) / 127.5 - 1.0
  return raw.reshape(4, 16, 2, 16, 2, 3).mean((2, 4))


def test_multiview_every_view_is_an_example(world_v2_data_dir):
  cfg = _cfg(world_v2_data_dir, "world_multiview", -1)
  raw = builder.load_source("world_multiview", "smoke", world_v2_data_dir,
                            "validation")
  batch = next(pipeline.make_iterator(cfg, "validation", 8, seed=0))
  assert batch["video"].shape == (8, 4, 16, 16, 3)
  assert batch["centers"].shape == (8, 4, 6, 2)
  assert batch["obj_mask"].shape == (8, 6)
  tok = tok_lib.ByteTokenizer(64)
  for n in range(8):          # validation is in order: record n // 4, view n % 4
    rec, v = raw[n // 4], n % 4
    np.testing.assert_allclose(batch["video"][n], _area(rec["video"][v]),
                               atol=1e-5)
    np.testing.assert_array_equal(batch["centers"][n],
                                  rec["centers"][v, ::2])
    caption = json.loads(rec["view_captions"])[v]
    assert tok.decode(batch["text_ids"][n]) == caption[:62]
  # Views differ: the same clip from another camera.
  assert not np.allclose(batch["video"][0], batch["video"][2])
  src = sources.source_from_config(cfg, "validation")
  assert len(src) == 4 * len(raw)
  # The words tokenizer's vocabulary sees every view's captions.
  caps = sources.world_views.all_captions(raw)
  assert caps == [src[n]["caption"].decode() for n in range(len(src))]
  ex = src[6]
  assert int(ex["view"]) == 2 and ex["instance"].shape == (8, 32, 32)
  assert ex["world_to_camera"].shape == (8, 4, 4)


def test_multiview_one_view_and_bad_view(world_v2_data_dir):
  cfg = _cfg(world_v2_data_dir, "world_multiview", 1)
  batch = next(pipeline.make_iterator(cfg, "train", 4, seed=0))
  assert batch["video"].shape == (4, 4, 16, 16, 3)
  assert len(sources.source_from_config(cfg, "train")) == 16
  cfg.view = 4
  with pytest.raises(ValueError, match="data.view=4 must be -1"):
    pipeline.make_iterator(cfg, "train", 4, seed=0)


def test_qa_reads_through_grain(world_v2_data_dir):
  cfg = _cfg(world_v2_data_dir, "world_qa", 0)
  cfg.tokenizer = "words"
  it = pipeline.make_iterator(cfg, "train", 4, seed=1)
  batch = next(it)
  assert batch["video"].shape == (4, 4, 16, 16, 3)
  assert batch["video"].min() >= -1.0 and batch["video"].max() <= 1.0
  assert batch["text_mask"].any(-1).all()
  raw = builder.load_source("world_qa", "smoke", world_v2_data_dir, "train")
  centers = {raw[i]["centers"][0, ::2].tobytes() for i in range(len(raw))}
  assert all(c.tobytes() in centers for c in batch["centers"])
