"""mmworld builder: end to end on a tiny manual_dir, and every bad input."""
import json
import os
import re

import numpy as np
import pytest

from mfm_jax.data import sources
from mfm_jax.data import video_io
from mfm_jax.data.sources import common
from mfm_jax.data.sources import mmworld
from tests.data.sources.helpers import (frame_ids, mmworld_question,
                                        mmworld_video, write_garbage,
                                        write_json)


def _load(root, data_dir, policy="raise", config="smoke"):
  return sources.load_source("mmworld", config, str(data_dir), "test",
                             manual_dir=str(root), on_bad_record=policy,
                             num_workers=2)


def test_end_to_end(mmworld_dir, tmp_path):
  src = _load(mmworld_dir, tmp_path / "tfds")
  assert len(src) == 4
  ex = [src[i] for i in range(4)]
  assert [e["id"] for e in ex] == [b"vid_a/0", b"vid_a/1", b"vid_b/0",
                                   b"vid_b/1"]
  assert [int(e["index"]) for e in ex] == [0, 1, 2, 3]
  e = ex[1]
  assert e["video"].shape == (4, 32, 32, 3) and e["video"].dtype == np.uint8
  # K = 4 uniform frames of a 12-frame ramp: frames 1, 4, 7, 10.
  assert frame_ids(e["video"]) == [1, 4, 7, 10]
  assert frame_ids(ex[2]["video"], offset=2) == [1, 3, 5, 7]   # 8 frames
  assert list(e["options"]) == [b"it bounced", b"it collided",
                                b"it stopped", b"nothing"]
  assert e["answer"] == b"nothing" and e["correct_answer_label"] == b"d"
  assert e["answer_index"] == 3
  np.testing.assert_array_equal(e["correct"], [False, False, False, True])
  assert (e["video_id"], e["discipline"], e["subdiscipline"]) == (
      b"vid_a", b"Science", b"Physics")
  assert e["captions"] == [b"a ball rolls"] and e["type"] == b"Explanation"
  assert e["requires_visual"] and not e["requires_audio"]
  report = sources.bad_records(src)
  assert report["skipped"] == 0 and report["kept"] == {"test": 4}


def test_custom_config_and_reuse(mmworld_dir, tmp_path):
  src = _load(mmworld_dir, tmp_path / "tfds", config="frames=3,res=16")
  assert src[0]["video"].shape == (3, 16, 16, 3)
  # Prepared once: the same copy is found again, even without manual_dir.
  again = mmworld.load_source("frames=3,res=16", str(tmp_path / "tfds"))
  assert len(again) == 4
  np.testing.assert_array_equal(again[3]["video"], src[3]["video"])


def test_unknown_config_is_named():
  with pytest.raises(ValueError, match="unknown builder config 'tiny'"):
    mmworld.Mmworld.config_from("tiny")


def _drop(root, name):
  os.remove(os.path.join(root, "videos", "sub", name))


def _edit_json(root, fn):
  path = os.path.join(root, "mmworld.json")
  data = json.load(open(path))
  fn(data)
  write_json(path, data)


def _no_answer(data):
  del data[0]["questions"][1]["answer"]


def _no_discipline(data):
  del data[1]["discipline"]


def _wrong_answer(data):
  data[0]["questions"][0]["answer"] = "it exploded"


def _label_disagrees(data):
  data[0]["questions"][0]["correct_answer_label"] = "a"


def _duplicate(data):
  data.append(mmworld_video("vid_a", [mmworld_question("c")]))


# (name, edit of the manual_dir, bad ids, reason pattern, examples kept)
CASES = [
    ("missing_video", lambda r: _drop(r, "vid_b.mp4"),
     ["vid_b/0", "vid_b/1"], "missing video file", 2),
    ("unreadable_video",
     lambda r: write_garbage(os.path.join(r, "videos", "sub", "vid_b.mp4")),
     ["vid_b/0", "vid_b/1"], "unreadable video", 2),
    ("missing_question_field", lambda r: _edit_json(r, _no_answer),
     ["vid_a/1"], r"missing field\(s\) \['answer'\]", 3),
    ("missing_video_field", lambda r: _edit_json(r, _no_discipline),
     ["vid_b"], r"missing field\(s\) \['discipline'\]", 2),
    ("answer_not_in_options", lambda r: _edit_json(r, _wrong_answer),
     ["vid_a/0"], "answer not among the choices", 3),
    ("label_disagrees", lambda r: _edit_json(r, _label_disagrees),
     ["vid_a/0"], "disagrees with the answer", 3),
    ("duplicate_id", lambda r: _edit_json(r, _duplicate),
     ["vid_a"], "duplicate id", 4),
]


@pytest.mark.parametrize("name,edit,ids,reason,kept", CASES,
                         ids=[c[0] for c in CASES])
def test_bad_input_raises_naming_file_and_id(mmworld_dir, tmp_path, name,
                                             edit, ids, reason, kept):
  del name, kept
  edit(str(mmworld_dir))
  with pytest.raises(common.BadRecordError, match=reason) as err:
    _load(mmworld_dir, tmp_path / "tfds")
  assert err.value.file.endswith("mmworld.json")
  assert err.value.record_id == ids[0]
  assert f"record {ids[0]}:" in str(err.value)


@pytest.mark.parametrize("name,edit,ids,reason,kept", CASES,
                         ids=[c[0] for c in CASES])
def test_bad_input_skipped_and_counted(mmworld_dir, tmp_path, name, edit,
                                       ids, reason, kept):
  del name
  edit(str(mmworld_dir))
  src = _load(mmworld_dir, tmp_path / "tfds", policy="skip")
  assert len(src) == kept
  report = sources.bad_records(src)
  assert report["kept"] == {"test": kept}
  assert report["skipped"] == len(ids)
  assert [r["id"] for r in report["records"]] == ids
  for r in report["records"]:
    assert r["file"].endswith("mmworld.json") and r["split"] == "test"
    assert re.search(reason, r["reason"]), r["reason"]
  assert not {e["id"].decode() for e in (src[i] for i in range(len(src)))
              } & set(ids)
  # Never silent: the prepared copy refuses to load under "raise".
  with pytest.raises(common.BadRecordError, match="prepared with"):
    _load(mmworld_dir, tmp_path / "tfds", policy="raise")


def test_all_records_bad_is_an_error(mmworld_dir, tmp_path):
  for name in ("vid_a.mp4", "sub/vid_b.mp4"):
    os.remove(os.path.join(mmworld_dir, "videos", name))
  with pytest.raises(common.BadRecordError, match="no usable records"):
    _load(mmworld_dir, tmp_path / "tfds", policy="skip")


def test_invalid_json_names_the_file(mmworld_dir, tmp_path):
  with open(os.path.join(mmworld_dir, "mmworld.json"), "w") as f:
    f.write('[{"video_id": "x",\n oops}]')
  with pytest.raises(ValueError, match=r"mmworld.json: invalid JSON at line 2"):
    _load(mmworld_dir, tmp_path / "tfds")


def test_parse_question_accepts_string_booleans():
  q = mmworld_question("a", requires_audio="True", question_only=0)
  fields = mmworld.parse_question(mmworld_video("v"), q, 5)
  assert fields["id"] == "v/5" and fields["requires_audio"] is True
  assert fields["question_only"] is False and fields["answer_index"] == 0
  with pytest.raises(ValueError, match="expected a boolean"):
    mmworld.parse_question(mmworld_video("v"),
                           mmworld_question("a", requires_audio="maybe"), 0)


def test_decode_error_type_is_video_read_error(tmp_path):
  with pytest.raises(video_io.VideoReadError):
    mmworld.base.decode_clip(str(tmp_path / "none.mp4"), 2, 8)


def test_without_manual_dir_needs_exactly_one_prepared_copy(mmworld_dir,
                                                            tmp_path):
  data_dir = str(tmp_path / "tfds")
  with pytest.raises(FileNotFoundError, match="0 prepared copies.*manual_dir"):
    mmworld.load_source("smoke", data_dir)
  _load(mmworld_dir, data_dir)
  assert len(mmworld.load_source("smoke", data_dir)) == 4
  # An edited folder is another dataset (new fingerprint), not stale data.
  _edit_json(str(mmworld_dir), lambda d: d.pop())
  assert len(_load(mmworld_dir, data_dir)) == 2
  with pytest.raises(FileNotFoundError, match="2 prepared copies"):
    mmworld.load_source("smoke", data_dir)
