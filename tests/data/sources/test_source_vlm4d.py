"""vlm4d builder: end to end, the real question files, every bad input."""
import json
import os
import pathlib
import re

import numpy as np
import pytest

from mfm_jax.data import sources
from mfm_jax.data.sources import common
from mfm_jax.data.sources import vlm4d
from tests.data.sources.helpers import (frame_ids, vlm4d_record,
                                        write_garbage, write_json, write_ramp)

SHARED = pathlib.Path(__file__).resolve().parents[4] / "shared" / \
    "benchmarks" / "vlm4d"


def _load(root, data_dir, split="real", policy="raise"):
  return sources.load_source("vlm4d", "smoke", str(data_dir), split,
                             manual_dir=str(root), on_bad_record=policy,
                             num_workers=2)


def test_end_to_end(vlm4d_dir, tmp_path):
  real = _load(vlm4d_dir, tmp_path / "tfds", "real")
  synth = _load(vlm4d_dir, tmp_path / "tfds", "synthetic")
  assert (len(real), len(synth)) == (3, 1)
  ex = [real[i] for i in range(3)]
  assert [e["id"] for e in ex] == [b"validation_1", b"validation_2",
                                   b"validation_923"]
  assert [e["category"] for e in ex] == [b"exo", b"exo", b"ego"]
  assert ex[0]["video"].shape == (4, 32, 32, 3)
  assert frame_ids(ex[1]["video"]) == [1, 4, 7, 10]           # 12 frames
  assert frame_ids(ex[2]["video"]) == [1, 3, 6, 8]            # 10 frames
  assert ex[1]["answer"] == b"right" and ex[1]["answer_index"] == 1
  assert ex[0]["video_name"] == b"clip_a.mp4"
  # Counting questions: numeric choices kept as text.
  assert list(ex[2]["choices"]) == [b"1", b"2", b"3", b"0"]
  assert ex[2]["answer"] == b"2" and ex[2]["answer_index"] == 1
  np.testing.assert_array_equal(ex[2]["correct"], [0, 1, 0, 0])
  s = synth[0]
  assert s["category"] == b"false_positive" and s["answer_index"] == 3
  assert frame_ids(s["video"]) == [1, 3, 5, 7]
  assert sources.bad_records(real)["kept"] == {"real": 3, "synthetic": 1}


def test_world_export_layout(tmp_path):
  """tools/make_world.py writes DIR/videos/*.mp4 and DIR/vlm4d.json."""
  root = tmp_path / "world"
  write_ramp(str(root / "videos" / "clip_00000.mp4"), n=8)
  write_json(str(root / "vlm4d.json"), [
      vlm4d_record(0, "clip_00000.mp4", category="exo"),
      {**vlm4d_record(1, "clip_00000.mp4"), "video": "videos/clip_00000.mp4"}])
  src = _load(root, tmp_path / "tfds", "test")
  assert len(src) == 2 and src[0]["category"] == b"exo"
  assert src[1]["video_name"] == b"clip_00000.mp4"


def test_same_name_disambiguated_by_url(tmp_path):
  root = tmp_path / "v"
  write_ramp(str(root / "davis" / "x.mp4"), n=8)
  write_ramp(str(root / "ego4d" / "x.mp4"), n=8, offset=5)
  write_json(str(root / "real_mc.json"), [
      vlm4d_record(1, "davis/x.mp4"), vlm4d_record(2, "ego4d/x.mp4")])
  src = _load(root, tmp_path / "tfds")
  assert frame_ids(src[0]["video"]) == [1, 3, 5, 7]
  assert frame_ids(src[1]["video"], offset=5) == [1, 3, 5, 7]


def test_parse_record_and_ambiguous_answer():
  rec = vlm4d_record(633, choices={"A": "not sure", "B": "not moving",
                                   "C": "away", "D": "away "},
                     answer="away")
  fields = vlm4d.parse_record(rec, "real")
  np.testing.assert_array_equal(fields["correct"], [0, 0, 1, 1])
  assert fields["answer_index"] == 2 and fields["category"] == "exo"
  assert vlm4d.video_name("https://h/a/b/c.mp4?download=1") == "c.mp4"
  assert vlm4d.category("synthetic", rec, "no ball there") == "false_positive"


@pytest.mark.skipif(not SHARED.is_dir(),
                    reason=f"real VLM4D question files not present at {SHARED}")
@pytest.mark.parametrize("name,count", [("real_mc.json", 1371),
                                        ("synthetic_mc.json", 445)])
def test_real_question_files_parse(name, count):
  records, bad = vlm4d.parse_file(SHARED / name, on_bad_record="raise")
  assert len(records) == count and not len(bad)
  for _, f in records:
    assert f["choices"].shape == (4,) and f["correct"].any()
    assert f["video_name"].endswith(".mp4")
  cats = {c: sum(f["category"] == c for _, f in records) for c in
          ("exo", "ego", "directional", "false_positive")}
  if name == "real_mc.json":
    assert cats["exo"] + cats["ego"] == count and cats["exo"] > 0 < cats["ego"]
  else:
    assert cats["directional"] + cats["false_positive"] == count
    assert cats["false_positive"] > 0


def _edit(root, fn):
  path = os.path.join(root, "real_mc.json")
  data = json.load(open(path))
  fn(data)
  write_json(path, data)


def _del(i, key):
  return lambda d: d[i].pop(key)


def _set(i, key, value):
  return lambda d: d[i].__setitem__(key, value)


CLIP_A = os.path.join("videos_real", "davis", "clip_a.mp4")
# (name, edit, bad ids, reason pattern, real examples kept)
CASES = [
    ("missing_video", lambda r: os.remove(os.path.join(r, CLIP_A)),
     ["validation_1", "validation_2"], "missing video file", 1),
    ("unreadable_video", lambda r: write_garbage(os.path.join(r, CLIP_A)),
     ["validation_1", "validation_2"], "unreadable video", 1),
    ("missing_field", lambda r: _edit(r, _del(1, "choices")),
     ["validation_2"], r"missing field\(s\) \['choices'\]", 2),
    ("answer_not_in_choices", lambda r: _edit(r, _set(0, "answer", "up")),
     ["validation_1"], "answer not among the choices", 2),
    ("wrong_labels", lambda r: _edit(r, _set(0, "choices", {"A": "left"})),
     ["validation_1"], "choices have labels", 2),
    ("duplicate_id", lambda r: _edit(r, _set(1, "id", "validation_1")),
     ["validation_1"], "duplicate id", 2),
]


@pytest.mark.parametrize("name,edit,ids,reason,kept", CASES,
                         ids=[c[0] for c in CASES])
def test_bad_input_raises_naming_file_and_id(vlm4d_dir, tmp_path, name, edit,
                                             ids, reason, kept):
  del name, kept
  edit(str(vlm4d_dir))
  with pytest.raises(common.BadRecordError, match=reason) as err:
    _load(vlm4d_dir, tmp_path / "tfds")
  assert err.value.file.endswith("real_mc.json")
  assert err.value.record_id == ids[0]


@pytest.mark.parametrize("name,edit,ids,reason,kept", CASES,
                         ids=[c[0] for c in CASES])
def test_bad_input_skipped_and_counted(vlm4d_dir, tmp_path, name, edit, ids,
                                       reason, kept):
  del name
  edit(str(vlm4d_dir))
  src = _load(vlm4d_dir, tmp_path / "tfds", policy="skip")
  assert len(src) == kept
  report = sources.bad_records(src)
  assert report["kept"] == {"real": kept, "synthetic": 1}
  assert [r["id"] for r in report["records"]] == ids
  assert all(re.search(reason, r["reason"]) and r["split"] == "real"
             and r["file"].endswith("real_mc.json")
             for r in report["records"])
  with pytest.raises(common.BadRecordError, match="prepared with"):
    _load(vlm4d_dir, tmp_path / "tfds", policy="raise")


def test_parse_file_skip_mode_counts(tmp_path):
  path = write_json(str(tmp_path / "synthetic_mc.json"), [
      vlm4d_record(1), vlm4d_record(2, answer="up"), {"id": "validation_3"},
      vlm4d_record(1)])
  records, bad = vlm4d.parse_file(path, on_bad_record="skip")
  assert [i for i, _ in records] == [0]
  assert [e["id"] for e in bad.entries] == ["validation_2", "validation_3",
                                            "validation_1"]
  assert bad.counts() == {"answer not among the choices": 1,
                          "missing field(s) ['video', 'question_type', "
                          "'question', 'choices', 'answer']": 1,
                          "duplicate id": 1}
  with pytest.raises(common.BadRecordError, match=r"synthetic_mc.json: "
                     r"record validation_2: answer not among"):
    vlm4d.parse_file(path)


def test_no_question_file(tmp_path):
  (tmp_path / "empty").mkdir()
  (tmp_path / "empty" / "readme.txt").write_text("x")
  with pytest.raises(FileNotFoundError, match="none of"):
    _load(tmp_path / "empty", tmp_path / "tfds")
