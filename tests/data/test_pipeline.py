"""grain pipeline over world_video: batches, sharding, epochs, state, workers."""
import numpy as np
import pytest

from mfm_jax.data import pipeline
from mfm_jax.data import tokenizer as tok_lib
from mfm_jax.data.world import builder


@pytest.fixture
def cfg(smoke_data_dir):
  c = pipeline.default_data_config()
  c.data_dir = smoke_data_dir
  c.num_frames = 4
  c.resolution = 16
  c.max_text_len = 64
  return c


def _key(batch, i):
  """Identifies an example by its ground-truth trajectories."""
  return batch["centers"][i].tobytes()


def _keys(it, steps):
  return [_key(b, i) for b in (next(it) for _ in range(steps))
          for i in range(len(b["centers"]))]


def test_batch_shapes_dtypes_and_values(cfg):
  it = pipeline.make_iterator(cfg, "train", batch_size=4, seed=0)
  batch = next(it)
  expected = {"video": ((4, 4, 16, 16, 3), np.float32),
              "text_ids": ((4, 64), np.int32),
              "text_mask": ((4, 64), np.bool_),
              "centers": ((4, 4, 4, 2), np.float32),
              "colors": ((4, 4, 3), np.uint8),
              "obj_mask": ((4, 4), np.bool_)}
  assert set(batch) == set(expected)
  for key, (shape, dtype) in expected.items():
    assert batch[key].shape == shape and batch[key].dtype == dtype, key
  assert batch["video"].min() >= -1.0 and batch["video"].max() <= 1.0
  # The same example through the source: frames 0, 2, 4, 6; 32 -> 16 by area.
  src = builder.load_source(config="smoke", data_dir=cfg.data_dir)
  by_key = {src[i]["centers"][::2].tobytes(): src[i] for i in range(len(src))}
  record = by_key[_key(batch, 0)]
  raw = record["video"][::2].astype(np.float32) / 127.5 - 1.0
  area = raw.reshape(4, 16, 2, 16, 2, 3).mean((2, 4))
  np.testing.assert_allclose(batch["video"][0], area, atol=1e-5)
  np.testing.assert_array_equal(batch["colors"][0], record["colors"])
  tok = tok_lib.ByteTokenizer(64)
  assert tok.decode(batch["text_ids"][0]) == record["caption"][:62].decode()


def test_train_epochs_are_reshuffled_permutations(cfg):
  it = pipeline.make_iterator(cfg, "train", batch_size=8, seed=1)
  first, second = _keys(it, 8), _keys(it, 8)  # 64 examples per epoch
  assert len(set(first)) == 64 and set(first) == set(second)
  assert first != second
  other = pipeline.make_iterator(cfg, "train", batch_size=8, seed=2)
  assert _keys(other, 8) != first


def test_process_shards_are_disjoint(cfg):
  shards = [pipeline.make_iterator(cfg, "train", 8, seed=0, shard_index=i,
                                   shard_count=2) for i in range(2)]
  keys = [_keys(it, 4) for it in shards]  # one epoch of 32 per shard
  assert all(len(set(k)) == 32 for k in keys)
  assert not set(keys[0]) & set(keys[1])
  full = set(_keys(pipeline.make_iterator(cfg, "train", 8, seed=0), 8))
  assert set(keys[0]) | set(keys[1]) == full
  with pytest.raises(ValueError, match="shard_index"):
    pipeline.make_iterator(cfg, "train", 8, seed=0, shard_index=2,
                           shard_count=2)


def test_validation_is_one_ordered_pass_of_full_batches(cfg):
  batches = list(pipeline.make_iterator(cfg, "validation", 5, seed=0))
  assert [len(b["video"]) for b in batches] == [5, 5, 5]  # 16 clips: the partial batch is dropped
  src = builder.load_source(config="smoke", data_dir=cfg.data_dir,
                            split="validation")
  keys = [_key(b, i) for b in batches for i in range(len(b["video"]))]
  assert keys == [src[i]["centers"][::2].tobytes() for i in range(15)]
  shard = list(pipeline.make_iterator(cfg, "validation", 5, seed=0,
                                      shard_index=1, shard_count=3))
  assert sum(len(b["video"]) for b in shard) == 5


def test_process_batches_concatenate_to_the_one_process_batch(cfg):
  one = pipeline.make_iterator(cfg, "train", 8, seed=4)
  two = [pipeline.make_iterator(cfg, "train", 4, seed=4, shard_index=i, shard_count=2)
         for i in range(2)]
  for _ in range(10):  # past an epoch boundary (64 clips)
    want = next(one)
    got = [next(it) for it in two]
    for key in want:
      np.testing.assert_array_equal(np.concatenate([g[key] for g in got]), want[key],
                                    err_msg=key)


def test_get_state_set_state_resumes_identically(cfg):
  it = pipeline.make_iterator(cfg, "train", batch_size=6, seed=3)
  for _ in range(12):  # past the first epoch boundary
    next(it)
  state = it.get_state()
  expected = [next(it) for _ in range(4)]
  restored = pipeline.make_iterator(cfg, "train", batch_size=6, seed=3)
  restored.set_state(state)
  for want in expected:
    got = next(restored)
    for key in want:
      np.testing.assert_array_equal(got[key], want[key], err_msg=key)


def test_worker_processes_give_the_same_batches(cfg):
  plain = pipeline.make_iterator(cfg, "train", batch_size=4, seed=5)
  want = [next(plain) for _ in range(3)]
  cfg.worker_count = 1
  it = pipeline.make_iterator(cfg, "train", batch_size=4, seed=5)
  resumed = pipeline.make_iterator(cfg, "train", batch_size=4, seed=5)
  try:
    got = [next(it) for _ in range(2)]
    state = it.get_state()
    got.append(next(it))
    resumed.set_state(state)
    again = next(resumed)
  finally:
    it.close()
    resumed.close()
  for g, w in zip(got, want):
    np.testing.assert_array_equal(g["video"], w["video"])
    np.testing.assert_array_equal(g["text_ids"], w["text_ids"])
  np.testing.assert_array_equal(again["centers"], want[2]["centers"])


def test_load_examples(cfg):
  examples = pipeline.load_examples(cfg, "validation", 3)
  assert len(examples) == 3
  tok = tok_lib.ByteTokenizer(cfg.max_text_len)
  for i, ex in enumerate(examples):
    assert ex["index"] == i
    assert ex["video"].shape == (4, 16, 16, 3)
    assert ex["raw_video"].shape == (8, 32, 32, 3)
    assert ex["raw_video"].dtype == np.uint8
    assert isinstance(ex["caption"], str)
    assert tok.decode(ex["text_ids"]) == ex["caption"][:62]


def test_resize_and_frame_errors():
  video = np.arange(2 * 4 * 4 * 1, dtype=np.float32).reshape(2, 4, 4, 1)
  np.testing.assert_allclose(pipeline.resize_video(video, 2)[0, 0, 0, 0],
                             np.mean([0, 1, 4, 5]))
  up = pipeline.resize_video(video, 6)
  assert up.shape == (2, 6, 6, 1)
  assert up.min() >= video.min() and up.max() <= video.max()
  np.testing.assert_array_equal(pipeline.frame_indices(16, 4), [0, 4, 8, 12])
  with pytest.raises(ValueError, match="num_frames=9"):
    pipeline.frame_indices(8, 9)


def test_unknown_builder_config_is_a_clear_error(cfg):
  cfg.builder_config = "huge"
  with pytest.raises(ValueError, match="unknown builder config 'huge'"):
    pipeline.make_iterator(cfg, "train", 4, seed=0)


def test_object_weight_follows_the_instance_masks(cfg):
  """loss_weight = 1 + w * object coverage of each output pixel (area average of the masks)."""
  cfg.object_weight = 10.0
  src = builder.load_source(config="smoke", split="validation", data_dir=cfg.data_dir)
  record = src[0]
  ex = pipeline.load_examples(cfg, "validation", 1)[0]
  weight = ex["loss_weight"]
  assert weight.shape == (4, 16, 16, 1) and weight.dtype == np.float32
  idx = pipeline.frame_indices(record["instance"].shape[0], 4)
  inst = record["instance"][idx] > 0                       # [4, 32, 32] at the stored size
  cover = inst.reshape(4, 16, 2, 16, 2).mean((2, 4))       # 2x2 area average -> 16x16
  np.testing.assert_allclose(weight[..., 0], 1.0 + 10.0 * cover, rtol=1e-6)
  assert weight.max() > 1.0 and weight.min() == 1.0        # objects present, floor weighted 1


def test_object_weight_without_instance_masks_is_a_clear_error(cfg):
  record = builder.load_source(config="smoke", split="validation", data_dir=cfg.data_dir)[0]
  record = {k: v for k, v in record.items() if k != "instance"}
  prep = pipeline.Preprocess(4, 16, tok_lib.ByteTokenizer(64), object_weight=5.0)
  with pytest.raises(KeyError, match="object_weight.*instance"):
    prep.map(record)
