"""video_captions: world_video fields from a folder; the pipeline hook."""
import json
import os
import re

import ml_collections
import numpy as np
import pytest

from mfm_jax.data import pipeline
from mfm_jax.data import sources
from mfm_jax.data.sources import common
from mfm_jax.data.world import builder as world_builder
from tests.data.sources.helpers import frame_ids, write_garbage, write_ramp


def _jsonl(path, rows):
  with open(path, "w") as f:
    for r in rows:
      f.write((r if isinstance(r, str) else json.dumps(r)) + "\n")


@pytest.fixture
def footage(tmp_path):
  """4 clips (12 frames at 4 fps) and captions.jsonl: 3 train, 1 validation."""
  root = tmp_path / "footage"
  for i in range(4):
    write_ramp(str(root / "clips" / f"c{i}.mp4"), n=12, h=48, w=64,
               offset=i)
  _jsonl(root / "captions.jsonl", [
      {"path": f"clips/c{i}.mp4", "caption": f"clip number {i}"}
      for i in range(4)])
  return root


def _load(root, data_dir, split="train", policy="raise", config="smoke"):
  return sources.load_source(f"video_captions:{root}", config, str(data_dir),
                             split, on_bad_record=policy, num_workers=2)


def test_fields_match_world_video(footage, tmp_path):
  src = _load(footage, tmp_path / "tfds")
  val = _load(footage, tmp_path / "tfds", "validation")
  assert (len(src), len(val)) == (3, 1)
  ours = src.dataset_info.features
  world = world_builder.get_builder("smoke", str(tmp_path / "w")).info.features
  for key in world.keys():
    assert key in ours, key
    assert ours[key].shape == world[key].shape, key
    assert ours[key].np_dtype == world[key].np_dtype, key
  ex = src[1]
  assert ex["caption"] == b"clip number 1" and ex["path"] == b"clips/c1.mp4"
  assert ex["video"].shape == (8, 32, 32, 3)
  assert frame_ids(ex["video"], offset=1) == [0, 2, 3, 5, 6, 8, 9, 11]
  assert not ex["obj_mask"].any() and ex["num_objects"] == 0
  assert ex["seed"] == -1 and ex["index"] == 1
  assert val[0]["caption"] == b"clip number 3" and val[0]["index"] == 3


def test_preprocess_reads_it(footage, tmp_path):
  src = _load(footage, tmp_path / "tfds")
  dc = pipeline.default_data_config()
  dc.max_text_len = 64
  out = pipeline.Preprocess(4, 16, pipeline.make_tokenizer(dc)).map(src[0])
  assert out["video"].shape == (4, 16, 16, 3)
  assert -1.0 <= out["video"].min() and out["video"].max() <= 1.0
  assert out["text_mask"].sum() == len(b"clip number 0") + 2   # BOS/EOS


@pytest.mark.parametrize("tokenizer", ["bytes", "words"])
def test_pipeline_hook(footage, tmp_path, monkeypatch, tokenizer):
  """The grain pipeline reads a video-caption folder by name (one config override)."""
  dc = pipeline.default_data_config()
  dc.name = f"video_captions:{footage}"
  dc.data_dir = str(tmp_path / "tfds")
  dc.num_frames, dc.resolution, dc.max_text_len = 4, 16, 64
  dc.tokenizer = tokenizer
  batch = next(pipeline.make_iterator(dc, "train", batch_size=2, seed=0))
  assert batch["video"].shape == (2, 4, 16, 16, 3)
  assert batch["text_ids"].shape == (2, 64)
  assert batch["centers"].shape == (2, 4, 4, 2)
  ex = pipeline.load_examples(dc, "validation", 1)[0]
  assert ex["caption"] == "clip number 3" and ex["seed"] == -1


def test_source_from_config_world_and_manual_dir(footage, tmp_path,
                                                 monkeypatch):
  calls = []
  monkeypatch.setattr(world_builder, "load_source",
                      lambda **kw: calls.append(kw) or "world")
  dc = ml_collections.ConfigDict(dict(name="world_video",
                                      builder_config="small", data_dir="/d"))
  assert sources.source_from_config(dc, "validation") == "world"
  assert calls == [dict(name="world_video", config="small", data_dir="/d",
                        split="validation")]
  dc = ml_collections.ConfigDict(dict(
      name="video_captions", builder_config="smoke",
      data_dir=str(tmp_path / "tfds"), manual_dir=str(footage),
      on_bad_record="skip"))
  assert len(sources.source_from_config(dc, "train")) == 3
  with pytest.raises(ValueError, match="only .* read a folder"):
    sources.parse_name("webvid:/data")
  monkeypatch.undo()
  with pytest.raises(ValueError, match="unknown dataset 'webvid'"):
    sources.load_source("webvid", data_dir=str(tmp_path / "w"))


def test_csv_windows_and_fps(tmp_path):
  root = tmp_path / "csv"
  write_ramp(str(root / "long.mp4"), n=20, fps=10.0)          # 2 s
  (root / "train.csv").write_text(
      "video,text,fps,start,end\n"
      "long.mp4,whole,,,\n"
      "long,window,,0.5,1.5\n"
      "long.mp4,at fps,5,0.2,\n")
  src = _load(root, tmp_path / "tfds", config="frames=4,res=16")
  assert len(src) == 3
  assert [frame_ids(src[i]["video"]) for i in range(3)] == [
      [2, 7, 12, 17], [6, 8, 11, 13], [2, 4, 6, 8]]
  assert src[1]["path"] == b"long"
  fps_cfg = _load(root, tmp_path / "tfds", config="frames=4,res=16,fps=10")
  assert frame_ids(fps_cfg[0]["video"]) == [0, 1, 2, 3]


# (name, rows written to captions.jsonl after 3 good ones, bad id, reason)
def _good(i):
  return {"path": f"clips/c{i}.mp4", "caption": f"c{i}"}


CASES = [
    ("missing_field", [{"path": "clips/c0.mp4", "start": 1}],
     "line 4 (clips/c0.mp4)", "missing field 'caption'"),
    ("bad_number", [{**_good(1), "start": "soon"}],
     "line 4 (clips/c1.mp4)", "start is not a number"),
    ("duplicate_id", [_good(2)], "line 4 (clips/c2.mp4)", "duplicate id"),
    ("missing_video", [{"path": "clips/nope.mp4", "caption": "x"}],
     "line 4 (clips/nope.mp4)", "missing video file"),
    ("unreadable_video", [{"path": "clips/bad.mp4", "caption": "x"}],
     "line 4 (clips/bad.mp4)", "unreadable video"),
    ("too_short", [{**_good(0), "fps": 2.0, "start": 2.0}],
     "line 4 (clips/c0.mp4@2-end)", "clip too short"),
    ("invalid_json", ['{"path": "clips/c0.mp4", caption}'], "line 4",
     "invalid JSON"),
]


@pytest.mark.parametrize("policy", ["raise", "skip"])
@pytest.mark.parametrize("name,rows,rid,reason", CASES,
                         ids=[c[0] for c in CASES])
def test_bad_rows(footage, tmp_path, policy, name, rows, rid, reason):
  write_garbage(str(footage / "clips" / "bad.mp4"))
  # 3 good rows + the bad one, as train.jsonl (no validation split).
  os.remove(footage / "captions.jsonl")
  _jsonl(footage / "train.jsonl", [_good(i) for i in range(3)] + rows)
  if policy == "raise":
    with pytest.raises(common.BadRecordError, match=reason) as err:
      _load(footage, tmp_path / "tfds")
    assert err.value.file.endswith("train.jsonl")
    assert err.value.record_id == rid, name
    return
  src = _load(footage, tmp_path / "tfds", policy="skip")
  assert len(src) == 3
  report = sources.bad_records(src)
  assert report["kept"] == {"train": 3} and report["skipped"] == 1
  (entry,) = report["records"]
  assert entry["id"] == rid and re.search(reason, entry["reason"])
  np.testing.assert_array_equal([src[i]["index"] for i in range(3)],
                                [0, 1, 2])
