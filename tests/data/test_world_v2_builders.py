"""world_multiview / world_qa builders and the mp4 + JSON export."""
import dataclasses
import filecmp
import json
import os

import imageio.v2 as imageio
import numpy as np
import pytest

from mfm_jax.data.world import builder
from mfm_jax.data.world import builder_v2
from mfm_jax.data.world import episode
from mfm_jax.data.world import export


@pytest.mark.parametrize("name", ["world_multiview", "world_qa"])
def test_smoke_build_matches_generation(world_v2_data_dir, name):
  src = builder.load_source(name, "smoke", world_v2_data_dir, "validation")
  cfg = builder_v2.BUILDERS[name].BUILDER_CONFIGS[0]
  assert len(src) == cfg.num_validation
  for index in (0, len(src) - 1):
    rec = src[index]
    ep, vid = builder_v2.make_episode(cfg, "validation", index, name)
    want = episode.episode_record(ep)
    assert rec["video_id"].decode() == vid and rec["index"] == index
    assert rec["video"].shape[0] == cfg.num_views
    for key, value in want.items():
      got = rec[key]
      if isinstance(value, str):
        assert got.decode() == value, key
      else:
        np.testing.assert_array_equal(got, value, err_msg=key)
    assert rec["yaw"].shape == rec["positions"].shape[:2]
    assert len(json.loads(rec["view_events"])) == cfg.num_views
    if name == "world_qa":
      mm = json.loads(rec["mmworld"])
      assert mm["video_id"] == vid and mm["questions"]
      for q in json.loads(rec["vlm4d"]):
        assert q["answer"] in q["choices"].values()


def test_qa_build_does_not_depend_on_workers(tmp_path):
  a = builder.load_source("world_qa", "smoke", str(tmp_path / "a"), "train",
                          num_workers=1)
  b = builder.load_source("world_qa", "smoke", str(tmp_path / "b"), "train",
                          num_workers=2)
  for i in range(len(a)):
    assert a[i]["vlm4d"] == b[i]["vlm4d"]
    np.testing.assert_array_equal(a[i]["video"], b[i]["video"])


def test_unknown_names_raise(tmp_path):
  with pytest.raises(ValueError, match="unknown builder config 'huge'"):
    builder_v2.get_builder("world_qa", "huge", str(tmp_path))
  with pytest.raises(ValueError, match="unknown world dataset 'x'"):
    builder_v2.get_builder("x", "smoke", str(tmp_path))


def test_export_is_byte_identical_and_decodes(tmp_path):
  a, b = str(tmp_path / "a"), str(tmp_path / "b")
  export.export(a, "smoke", views=2, seed=3, num_workers=2)
  export.export(b, "smoke", views=2, seed=3, num_workers=1)
  cmp = filecmp.dircmp(a, b)
  assert not cmp.diff_files and not cmp.left_only and not cmp.right_only
  videos = sorted(os.listdir(os.path.join(a, "videos")))
  assert not filecmp.cmpfiles(os.path.join(a, "videos"),
                              os.path.join(b, "videos"), videos,
                              shallow=False)[1]
  assert len(videos) == 2 * export.SIZES["smoke"]
  mm = json.load(open(os.path.join(a, "mmworld.json"), encoding="utf-8"))
  v4 = json.load(open(os.path.join(a, "vlm4d.json"), encoding="utf-8"))
  assert len(mm) == export.SIZES["smoke"] and v4
  for rec in mm:
    assert os.path.exists(os.path.join(a, rec["video_url"]))
  for q in v4:
    assert os.path.exists(os.path.join(a, q["video"]))
  # The first video decodes to the rendered frames (lossy, close).
  cfg = next(c for c in builder_v2.QA_CONFIGS if c.name == "smoke")
  cfg = dataclasses.replace(cfg, num_views=2, base_seed=3, ego_fraction=0.0)
  ep, vid = builder_v2.make_episode(cfg, "validation", 0, "world")
  frames = np.stack(imageio.mimread(os.path.join(a, "videos",
                                                 f"{vid}_view1.mp4")))
  assert frames.shape == ep.frames[1]["rgb"].shape
  err = np.abs(frames.astype(float) - ep.frames[1]["rgb"]).mean()
  assert err < 6.0, err
  c = export.export(str(tmp_path / "c"), "smoke", views=2, seed=4,
                    num_workers=1)
  assert c["videos"] == 16
  assert not filecmp.cmp(os.path.join(a, "vlm4d.json"),
                         os.path.join(tmp_path, "c", "vlm4d.json"),
                         shallow=False)


def test_config_names_are_smoke_small_full():
  from configs import video_gen  # pylint: disable=g-import-not-at-top
  from mfm_jax.data.sources import video_captions  # pylint: disable=g-import-not-at-top
  names = ("smoke", "small", "full")
  assert builder.CONFIG_NAMES == names
  for cls in builder_v2.BUILDERS.values():
    assert tuple(c.name for c in cls.BUILDER_CONFIGS) == names
  assert tuple(video_captions.PRESETS) == names
  assert tuple(export.SIZES) == names
  for preset in ("b", "xl"):
    data = video_gen.get_config(preset).data
    assert data.builder_config == "full" and data.name == "world_video"
