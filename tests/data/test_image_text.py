"""image_text: world frames -> (image, caption, main-object class), k-shot / base-new views,
checkpointable and process-sharded grain batches, and the same fields from an image folder."""
import os

import numpy as np
from PIL import Image
import pytest

from mfm_jax.data import image_text
from mfm_jax.data.world import builder


@pytest.fixture
def cfg(smoke_data_dir):
  c = image_text.default_data_config()
  c.builder_config, c.data_dir, c.resolution, c.tokenizer = "smoke", smoke_data_dir, 16, "bytes"
  return c


def test_class_names_and_main_object():
  names = image_text.world_class_names("smoke", "shape_color")
  assert len(names) == 16 and names[:3] == ["red sphere", "red cube", "green sphere"]
  full = image_text.world_class_names("smoke", "color_shape_size")
  assert len(full) == 32 and full[:2] == ["small red sphere", "large red sphere"]
  inst = np.zeros((2, 4, 4), np.uint8)
  inst[0, :2, :2] = 1          # slot 0: 4 pixels
  inst[1, :3, :] = 3           # slot 2: 12 pixels
  inst[1, 3, :] = 4            # slot 3: 4 pixels, but not a real object
  assert image_text.main_object(inst, np.array([True, True, True, False])) == 2
  assert image_text.main_object(inst[:1], np.array([True, True, True, False])) == 0


def test_world_examples_labels_and_frames(cfg):
  cfg.frames_per_clip = 2
  src = image_text.load(cfg, "validation")
  raw = builder.load_source(config="smoke", data_dir=cfg.data_dir, split="validation")
  assert len(src) == 2 * len(raw) and src.class_names == image_text.class_names(cfg)
  np.testing.assert_array_equal(src.labels(), [src[i]["label"] for i in range(len(src))])
  for i in (0, 3, 5):
    ex, record = src[i], raw[i // 2]
    t = [2, 6][i % 2]                         # frames (j + 0.5) * 8 / 2
    np.testing.assert_array_equal(ex["pixels"][0], record["video"][t])
    assert ex["caption"] == record["caption"].decode()
    slot = image_text.main_object(record["instance"][t:t + 1], record["obj_mask"])
    name = src.class_names[ex["label"]]
    shape = ("sphere", "cube")[record["shape_ids"][slot]]
    assert name.endswith(shape) and name.split()[0] in ("red", "green", "blue", "yellow", "cyan",
                                                        "magenta", "orange", "purple")


def test_kshot_and_base_new_views(cfg):
  cfg.shots, cfg.frames_per_clip = 2, 2
  a, b = image_text.load(cfg, "train"), image_text.load(cfg, "train")
  np.testing.assert_array_equal(a.indices, b.indices)          # deterministic by seed
  labels = np.array([a[i]["label"] for i in range(len(a))])
  assert np.bincount(labels).max() <= 2
  cfg.shots = 3
  bigger = image_text.load(cfg, "train")
  assert set(a.indices) <= set(bigger.indices)                  # nested in shots
  cfg.shots_seed = 1
  assert set(image_text.load(cfg, "train").indices) != set(bigger.indices)
  cfg.shots, cfg.classes = 0, "new"
  new = image_text.load(cfg, "validation")
  assert new.class_names == image_text.world_class_names("smoke", "shape_color")[8:]
  assert all(0 <= new[i]["label"] < 8 for i in range(len(new)))
  assert all(new.class_names[new[i]["label"]] == new.source.class_names[new[i]["source_label"]]
             for i in range(len(new)))
  assert image_text.prompts(cfg)[0] == "a cyan sphere"


def test_batches_state_and_process_sharding(cfg):
  tok = image_text.make_tokenizer(cfg)
  it = image_text.make_iterator(cfg, "train", 4, 0, tok)
  first = next(it)
  assert first["image"].shape == (4, 16, 16, 3) and first["image"].dtype == np.float32
  assert first["text_ids"].shape == (4, 80) and first["label"].dtype == np.int32
  state = it.get_state()
  ahead = [next(it) for _ in range(3)]
  again = image_text.make_iterator(cfg, "train", 4, 0, tok)
  again.set_state(state)
  for x in ahead:
    np.testing.assert_array_equal(next(again)["image"], x["image"])
  one = image_text.make_iterator(cfg, "train", 8, 0, tok)
  shards = [image_text.make_iterator(cfg, "train", 4, 0, tok, i, 2) for i in range(2)]
  for _ in range(2):
    glob = next(one)
    parts = [next(s) for s in shards]
    for key in glob:
      np.testing.assert_array_equal(glob[key], np.concatenate([p[key] for p in parts]))
  # Image values: area mean of the 32 x 32 frame, CLIP-normalised.
  src = image_text.load(cfg, "validation")
  batch, n = next(image_text.eval_batches(cfg, "validation", 3, tok))
  px = src[0]["pixels"][0].astype(np.float32).reshape(16, 2, 16, 2, 3).mean((1, 3)) / 255
  np.testing.assert_allclose(batch["image"][0], (px - image_text.CLIP_MEAN) / image_text.CLIP_STD,
                             atol=1e-5)
  assert n == 3 and tok.decode(batch["text_ids"][0]) == src[0]["caption"][:78]


def test_video_examples(cfg):
  cfg.num_frames = 4
  tok = image_text.make_tokenizer(cfg)
  batch = next(image_text.make_iterator(cfg, "validation", 2, 0, tok))
  assert batch["video"].shape == (2, 4, 16, 16, 3) and "image" not in batch
  cfg.frames_per_clip = 2
  with pytest.raises(ValueError, match="frames_per_clip"):
    image_text.load(cfg, "validation")


def test_eval_batches_pad_the_last_batch(cfg):
  tok = image_text.make_tokenizer(cfg)
  out = list(image_text.eval_batches(cfg, "validation", 6, tok))
  assert [n for _, n in out] == [6, 6, 4]
  last = out[-1][0]
  assert last["image"].shape[0] == 6
  np.testing.assert_array_equal(last["image"][4], last["image"][3])


def test_image_folder_gives_the_same_fields(tmp_path):
  root = tmp_path / "pets"
  for c, name in enumerate(["cat", "dog", "red_fox"]):
    for i in range(3):
      os.makedirs(root / name, exist_ok=True)
      arr = np.full((20, 30, 3), 40 * c + i, np.uint8)
      Image.fromarray(arr).save(root / name / f"{i}.png")
  c = image_text.default_data_config()
  c.name, c.builder_config, c.data_dir = f"image_folder:{root}", "default", str(tmp_path / "tfds")
  c.resolution, c.tokenizer, c.prompt, c.eval_split = 8, "words", "a photo of a {}.", "train"
  assert image_text.class_names(c) == ["cat", "dog", "red_fox"]
  assert image_text.prompts(c)[2] == "a photo of a red fox."
  tok = image_text.make_tokenizer(c)
  batch, n = next(image_text.eval_batches(c, "validation", 9, tok))
  assert n == 9 and batch["image"].shape == (9, 8, 8, 3)
  assert list(batch["label"]) == [0, 0, 0, 1, 1, 1, 2, 2, 2]
  assert tok.decode(batch["text_ids"][8]) == "a photo of a red fox ."
  expect = (np.full(3, 82 / 255, np.float32) - image_text.CLIP_MEAN) / image_text.CLIP_STD
  np.testing.assert_allclose(batch["image"][8], np.broadcast_to(expect, (8, 8, 3)), atol=1e-5)
  c.shots = 2
  kshot = image_text.load(c, "train")
  assert len(kshot) == 6 and kshot.class_names == ["cat", "dog", "red_fox"]
  train = next(image_text.make_iterator(c, "train", 4, 0, tok))
  assert set(train) == {"image", "text_ids", "text_mask", "label"}


def test_resize_square_center_crops():
  x = np.zeros((1, 10, 20, 3), np.uint8)
  x[:, :, 5:15] = 200
  out = image_text.resize_square(x, 10)
  assert out.shape == (1, 10, 10, 3)
  np.testing.assert_allclose(out[0, :, 2:8], 200, atol=1)
