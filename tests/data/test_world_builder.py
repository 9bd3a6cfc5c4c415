"""TFDS world_video builder: array_record round trip without TensorFlow."""
import os

import numpy as np
import pytest

from mfm_jax.data.world import builder
from mfm_jax.data.world import generate

SMOKE = builder.CONFIGS[0]


@pytest.mark.parametrize("split,count", [("train", 64), ("validation", 16)])
def test_round_trip_matches_generate_clip(smoke_data_dir, split, count):
  src = builder.load_source(config="smoke", data_dir=smoke_data_dir,
                            split=split)
  assert len(src) == count
  for index in (0, count - 1):
    record = src[index]
    assert record["index"] == index
    seed = generate.clip_seed(SMOKE.base_seed, split, index)
    assert record["seed"] == seed
    clip = generate.generate_clip(seed, SMOKE.spec)
    assert record["caption"].decode("utf-8") == clip["caption"]
    assert record["num_objects"] == clip["num_objects"]
    for key in ("video", "centers", "colors", "obj_mask", "instance",
                "visible", "positions", "shape_ids", "color_ids", "size_ids"):
      value = np.asarray(record[key])
      assert value.dtype == clip[key].dtype, key
      np.testing.assert_array_equal(value, clip[key], err_msg=key)
  assert src[0]["video"].shape == (SMOKE.spec.num_frames, SMOKE.spec.height,
                                   SMOKE.spec.width, 3)


def test_records_in_index_order(smoke_data_dir):
  src = builder.load_source(config="smoke", data_dir=smoke_data_dir,
                            split="validation")
  assert [src[i]["index"] for i in range(len(src))] == list(range(len(src)))


def test_second_load_reuses_files(smoke_data_dir):
  path = os.path.join(smoke_data_dir, "world_video", "smoke", "1.0.0")
  files = sorted(os.listdir(path))
  stamps = [os.path.getmtime(os.path.join(path, f)) for f in files]
  builder.load_source(config="smoke", data_dir=smoke_data_dir)
  assert sorted(os.listdir(path)) == files
  assert [os.path.getmtime(os.path.join(path, f)) for f in files] == stamps


def test_default_data_dir_from_environment(monkeypatch, tmp_path):
  monkeypatch.setenv(builder.DATA_DIR_ENV, str(tmp_path))
  assert builder.default_data_dir() == str(tmp_path)
  b = builder.get_builder("small")
  assert str(b.data_dir).startswith(str(tmp_path))
  assert b.builder_config.num_train == 1000


def test_unknown_config_and_dataset_raise(tmp_path):
  with pytest.raises(ValueError, match="unknown builder config 'tiny'.*smoke"):
    builder.load_source(config="tiny", data_dir=str(tmp_path))
  with pytest.raises(ValueError, match="unknown dataset 'clevrer'"):
    builder.load_source(name="clevrer", data_dir=str(tmp_path))
