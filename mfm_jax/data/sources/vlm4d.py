"""TFDS builder `vlm4d`: VLM4D multiple-choice questions with K-frame videos.

manual_dir layout (no download):

  real_mc.json        -> split "real"       (1,371 questions in the release)
  synthetic_mc.json   -> split "synthetic"  (445)
  vlm4d.json          -> split "test"       (`tools/make_world.py` export)
  **/<name>.mp4       videos, found by the file name of each record's `video`
                      URL anywhere below manual_dir (e.g. videos_real/davis/)

Any subset of the three files may be present. Record: `id, video` (URL of
an .mp4), `question_type` ("multiple-choice"), `question`, `choices`
{"A".."D"}, `answer` (the text of the right choice). Choice texts may be
numbers (the counting questions of real_mc.json): they are kept as text.
One real question (validation_633) has two identical right choices: both
are marked in `correct`, `answer_index` is the first.

Example, one per question, keys in file order (config "smoke": K = 4,
R = 32; "default": K = 16, R = 224):
  video:        [K, R, R, 3] uint8, K uniform frames, centre-cropped R x R
  id, video_url, video_name, question_type, question, answer: text
  choices:      [4] text, labels A..D
  answer_index: int32, first choice whose text is the answer
  correct:      [4] bool
  category:     text: "exo" / "ego" (real, numeric id <= 922 / > 922),
                "directional" / "false_positive" (synthetic, answer is
                "no" or starts with "no "), or the record's own `category`
                (else "")
  index:        int64, position in its file

Bad input: a missing field, an answer that is not among the choices, a
duplicate id within a file, a missing or unreadable video -> error naming
the file and the id, or skipped and listed in bad_records.json
(on_bad_record="skip"). `parse_file` validates a question file alone.
"""
from __future__ import annotations

import os
import re
import urllib.parse

import numpy as np
import tensorflow_datasets as tfds

from mfm_jax.data.sources import base
from mfm_jax.data.sources import common

SPLIT_FILES = {"real": "real_mc.json", "synthetic": "synthetic_mc.json",
               "test": "vlm4d.json"}
LABELS = ("A", "B", "C", "D")
FIELDS = ("id", "video", "question_type", "question", "choices", "answer")
EXO_MAX_ID = 922   # real questions with numeric id <= 922: DAVIS / YouTube-VOS
PRESETS = {
    "smoke": base.ClipConfig(name="smoke", num_frames=4, resolution=32,
                             description="4 frames at 32x32 (tests)."),
    "default": base.ClipConfig(name="default", num_frames=16,
                               resolution=224,
                               description="16 frames at 224x224."),
}


def video_name(url: str) -> str:
  """File name of a video URL or path: ".../davis/x.mp4?raw" -> "x.mp4"."""
  path = urllib.parse.urlparse(url).path or url
  return os.path.basename(path.rstrip("/"))


def is_false_positive(answer: str) -> bool:
  """A synthetic false-positive item: answer "no" or "no ..." (as the paper)."""
  ans = str(answer).strip().lower()
  return ans == "no" or ans.startswith("no ")


def category(split: str, record: dict, answer: str) -> str:
  """The paper's sub-benchmark of a question (see module docstring)."""
  if split == "real":
    m = re.search(r"(\d+)$", str(record["id"]))
    if m:
      return "exo" if int(m.group(1)) <= EXO_MAX_ID else "ego"
    return ""
  if split == "synthetic":
    return "false_positive" if is_false_positive(answer) else "directional"
  return str(record.get("category", ""))


def parse_record(record, split: str = "test") -> dict:
  """One question record -> example fields (no video, no index).

  Raises:
    ValueError: a missing field, bad choices, an answer not among them.
  """
  missing = common.missing_fields(record, FIELDS)
  if missing:
    raise ValueError(f"missing field(s) {missing}")
  texts, correct = common.parse_choices(record["choices"], LABELS,
                                        record["answer"])
  try:
    answer = common.as_text(record["answer"])
    fields = {k: common.as_text(record[k])
              for k in ("id", "video", "question_type", "question")}
  except TypeError as e:
    raise ValueError(str(e)) from None
  name = video_name(fields["video"])
  if not name:
    raise ValueError(f"video {fields['video']!r} has no file name")
  return {
      "id": fields["id"], "video_url": fields["video"], "video_name": name,
      "question_type": fields["question_type"],
      "question": fields["question"], "answer": answer,
      "choices": np.asarray(texts, dtype=object),
      "answer_index": np.int32(correct.index(True)),
      "correct": np.asarray(correct, bool),
      "category": category(split, record, answer),
  }


def parse_records(data, file: str, split: str, bad: common.BadRecords
                  ) -> list[tuple[int, dict]]:
  """Validates a question list -> [(position in file, fields)]."""
  if not isinstance(data, list):
    raise ValueError(f"{file}: expected a list of question records, got "
                     f"{type(data).__name__}")
  out, first_seen = [], {}
  for i, record in enumerate(data):
    rid = (str(record["id"]) if isinstance(record, dict)
           and record.get("id") is not None else f"#{i}")
    try:
      fields = parse_record(record, split)
    except ValueError as e:
      bad.report(file, rid, str(e), split)
      continue
    if rid in first_seen:
      bad.report(file, rid, f"duplicate id: {rid!r} also at record "
                 f"#{first_seen[rid]}", split)
      continue
    first_seen[rid] = i
    out.append((i, fields))
  return out


def parse_file(path, on_bad_record: str = "raise", split: str | None = None
               ) -> tuple[list[tuple[int, dict]], common.BadRecords]:
  """Parses and validates a VLM4D question file (no videos needed).

  Args:
    path: real_mc.json, synthetic_mc.json or vlm4d.json.
    on_bad_record: "raise" or "skip".
    split: the split (for `category`); default from the file name.

  Returns:
    ([(position, fields)], BadRecords with the skipped records).
  """
  path = os.fspath(path)
  if split is None:
    names = {v: k for k, v in SPLIT_FILES.items()}
    split = names.get(os.path.basename(path), "test")
  bad = common.BadRecords(on_bad_record, "vlm4d")
  return parse_records(common.load_json(path), path, split, bad), bad


class Vlm4d(base.ManualDirBuilder):
  """VLM4D multiple-choice questions about motion, one example each."""

  VERSION = tfds.core.Version("1.0.0")
  RELEASE_NOTES = {"1.0.0": "Questions with K uniform frames."}
  BUILDER_CONFIGS = list(PRESETS.values())
  DEFAULT_CONFIG_NAME = "smoke"
  PRESETS = PRESETS
  ANNOTATION_FILES = tuple(SPLIT_FILES.values())
  MANUAL_DOWNLOAD_INSTRUCTIONS = """
  Put VLM4D's real_mc.json and/or synthetic_mc.json (or a world export's
  vlm4d.json) in manual_dir, and the videos (files named as the last part
  of each record's `video` URL) anywhere below it.
  """

  def _info(self) -> tfds.core.DatasetInfo:
    cfg = self.builder_config
    k, r = cfg.num_frames, cfg.resolution
    text = tfds.features.Text
    return tfds.core.DatasetInfo(
        builder=self, description=__doc__, disable_shuffling=True,
        features=tfds.features.FeaturesDict({
            "video": tfds.features.Tensor(shape=(k, r, r, 3), dtype=np.uint8,
                                          encoding="zlib"),
            "id": text(), "video_url": text(), "video_name": text(),
            "question_type": text(), "question": text(), "answer": text(),
            "choices": tfds.features.Tensor(shape=(4,), dtype=np.object_),
            "answer_index": tfds.features.Scalar(dtype=np.int32),
            "correct": tfds.features.Tensor(shape=(4,), dtype=np.bool_),
            "category": text(),
            "index": tfds.features.Scalar(dtype=np.int64),
        }))

  def _units(self, root) -> dict[str, list[base.Unit]]:
    present = {s: os.path.join(os.fspath(root), f)
               for s, f in SPLIT_FILES.items()
               if os.path.exists(os.path.join(os.fspath(root), f))}
    if not present:
      raise FileNotFoundError(f"vlm4d: none of {list(SPLIT_FILES.values())} "
                              f"in {root}")
    by_name, ambiguous = common.index_videos(root)
    splits = {}
    for split, file in present.items():
      records = parse_records(common.load_json(file), file, split, self._bad)
      groups: dict[str, list[base.Record]] = {}
      for i, q in records:
        try:
          path = common.find_video(q["video_name"], by_name, ambiguous, root,
                                   hint=q["video_url"])
        except ValueError as e:
          self._bad.report(file, q["id"], str(e), split)
          continue
        groups.setdefault(path, []).append(
            base.Record(i, file, q["id"], {**q, "index": np.int64(i)}))
      splits[split] = [base.Unit(p, recs) for p, recs in groups.items()]
    return splits


def load_source(config: str = "smoke", data_dir: str | None = None,
                split: str = "real", manual_dir: str | None = None,
                on_bad_record: str = "raise",
                num_workers: int | None = None):
  """The `vlm4d` data source; prepared from manual_dir on first use."""
  return base.load(Vlm4d, config, data_dir, split, manual_dir,
                   on_bad_record, num_workers)
