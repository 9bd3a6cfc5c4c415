"""TFDS builder `mmworld`: MMWorld questions with their K-frame videos.

manual_dir layout (no download; `tools/make_world.py` writes the same):

  mmworld.json        a list of video-level records
  **/<video_id>.mp4   one video per video_id, anywhere below (e.g. videos/)

Video record: `video_id, video_url, discipline, subdiscipline, questions`
(and optionally `captions`: a string or a list of strings). Question:
`type, question, options {"a".."d"}, answer` (the text of the right option),
`correct_answer_label`, `requires_domain_knowledge, requires_audio,
requires_visual, question_only` (booleans).

One example per question, split "test", in file order; `id` is
"<video_id>/<question number>". The video is decoded once per video_id:
K uniform frames, short side resized and centre-cropped to R.

Example (config "smoke": K = 4, R = 32; "default": K = 16, R = 224):
  video:            [K, R, R, 3] uint8
  id, video_id, video_url, discipline, subdiscipline, type, question,
  answer, correct_answer_label: text (bytes)
  captions:         list of text
  options:          [4] text, labels a..d
  answer_index:     int32 in [0, 4) (the correct_answer_label)
  correct:          [4] bool, options whose text is the answer
  requires_domain_knowledge, requires_audio, requires_visual,
  question_only:    bool
  index:            int64, question number in the whole file

Bad input (see `common`): a missing field, an answer that is not among the
options or disagrees with correct_answer_label, a duplicate video_id, a
missing or unreadable video -> error naming mmworld.json and the id, or
skipped and listed in bad_records.json with on_bad_record="skip".

  src = load_source("smoke", manual_dir="/data/mmworld", split="test")
"""
from __future__ import annotations

import os

import numpy as np
import tensorflow_datasets as tfds

from mfm_jax.data.sources import base
from mfm_jax.data.sources import common

JSON_FILE = "mmworld.json"
LABELS = ("a", "b", "c", "d")
VIDEO_FIELDS = ("video_id", "video_url", "discipline", "subdiscipline",
                "questions")
QUESTION_FIELDS = ("type", "question", "options", "answer",
                   "correct_answer_label")
BOOL_FIELDS = ("requires_domain_knowledge", "requires_audio",
               "requires_visual", "question_only")
QUESTION_TYPES = ("Explanation", "Counterfactual Thinking",
                  "Future Prediction", "Temporal Understanding",
                  "Attribution Understanding", "Procedure Understanding",
                  "Domain Expertise")
PRESETS = {
    "smoke": base.ClipConfig(name="smoke", num_frames=4, resolution=32,
                             description="4 frames at 32x32 (tests)."),
    "default": base.ClipConfig(name="default", num_frames=16,
                               resolution=224,
                               description="16 frames at 224x224."),
}


def parse_question(video: dict, q, number: int) -> dict:
  """One question of a validated video record -> example fields (no video).

  Raises:
    ValueError: a missing field, a non-boolean flag, bad options or answer.
  """
  missing = common.missing_fields(q, QUESTION_FIELDS + BOOL_FIELDS)
  if missing:
    raise ValueError(f"missing field(s) {missing}")
  texts, correct = common.parse_choices(q["options"], LABELS, q["answer"])
  label = str(q["correct_answer_label"]).strip().lower()
  if label not in LABELS:
    raise ValueError(f"correct_answer_label {label!r} not in {LABELS}")
  index = LABELS.index(label)
  if not correct[index]:
    right = [l for l, c in zip(LABELS, correct) if c]
    raise ValueError(f"correct_answer_label {label!r} disagrees with the "
                     f"answer text {q['answer']!r} (option {right})")
  try:
    flags = {k: common.as_bool(q[k]) for k in BOOL_FIELDS}
    fields = {k: common.as_text(q[k]) for k in ("type", "question",
                                                 "answer")}
  except TypeError as e:
    raise ValueError(str(e)) from None
  return {
      "id": f"{video['video_id']}/{number}",
      "video_id": str(video["video_id"]),
      "video_url": str(video["video_url"]),
      "discipline": str(video["discipline"]),
      "subdiscipline": str(video["subdiscipline"]),
      "captions": _captions(video.get("captions")),
      **fields,
      "options": np.asarray(texts, dtype=object),
      "answer_index": np.int32(index),
      "correct": np.asarray(correct, bool),
      "correct_answer_label": label,
      **flags,
  }


def _captions(value) -> list[str]:
  if value is None:
    return []
  if isinstance(value, str):
    return [value]
  if isinstance(value, list):
    return [v if isinstance(v, str) else str(v) for v in value]
  return [str(value)]


def parse_records(data, file: str, bad: common.BadRecords, split: str = ""
                  ) -> list[tuple[dict, list[tuple[int, dict]]]]:
  """Validates mmworld.json -> [(video record, [(index, fields)])].

  Question index runs over every question of the file (bad ones too).
  """
  if not isinstance(data, list):
    raise ValueError(f"{file}: expected a list of video records, got "
                     f"{type(data).__name__}")
  out, first_seen, index = [], {}, 0
  for i, video in enumerate(data):
    vid = video.get("video_id") if isinstance(video, dict) else None
    rid = str(vid) if vid is not None else f"#{i}"
    questions = video.get("questions") if isinstance(video, dict) else None
    n = len(questions) if isinstance(questions, list) else 0
    start, index = index, index + n
    missing = common.missing_fields(video, VIDEO_FIELDS)
    if missing:
      bad.report(file, rid, f"missing field(s) {missing}", split)
      continue
    if not isinstance(questions, list):
      bad.report(file, rid, "questions is not a list", split)
      continue
    if rid in first_seen:
      bad.report(file, rid, f"duplicate id: video_id {rid!r} also at record "
                 f"#{first_seen[rid]}", split)
      continue
    first_seen[rid] = i
    kept = []
    for j, q in enumerate(questions):
      try:
        kept.append((start + j, parse_question(video, q, j)))
      except ValueError as e:
        bad.report(file, f"{rid}/{j}", str(e), split)
    if kept:
      out.append((video, kept))
  return out


class Mmworld(base.ManualDirBuilder):
  """MMWorld multiple-choice video questions (one example per question)."""

  VERSION = tfds.core.Version("1.0.0")
  RELEASE_NOTES = {"1.0.0": "Questions with K uniform frames."}
  BUILDER_CONFIGS = list(PRESETS.values())
  DEFAULT_CONFIG_NAME = "smoke"
  PRESETS = PRESETS
  ANNOTATION_FILES = (JSON_FILE,)
  MANUAL_DOWNLOAD_INSTRUCTIONS = f"""
  Put MMWorld's {JSON_FILE} (a list of video records) in manual_dir and the
  videos, one <video_id>.mp4 per video, anywhere below it (e.g. videos/).
  """

  def _info(self) -> tfds.core.DatasetInfo:
    cfg = self.builder_config
    k, r = cfg.num_frames, cfg.resolution
    text = tfds.features.Text
    flag = tfds.features.Scalar(dtype=np.bool_)
    return tfds.core.DatasetInfo(
        builder=self, description=__doc__, disable_shuffling=True,
        features=tfds.features.FeaturesDict({
            "video": tfds.features.Tensor(shape=(k, r, r, 3), dtype=np.uint8,
                                          encoding="zlib"),
            "id": text(), "video_id": text(), "video_url": text(),
            "discipline": text(), "subdiscipline": text(),
            "captions": tfds.features.Sequence(text()),
            "type": text(), "question": text(), "answer": text(),
            "options": tfds.features.Tensor(shape=(4,), dtype=np.object_),
            "answer_index": tfds.features.Scalar(dtype=np.int32),
            "correct": tfds.features.Tensor(shape=(4,), dtype=np.bool_),
            "correct_answer_label": text(),
            **{k: flag for k in BOOL_FIELDS},
            "index": tfds.features.Scalar(dtype=np.int64),
        }))

  def _units(self, root) -> dict[str, list[base.Unit]]:
    file = os.path.join(os.fspath(root), JSON_FILE)
    videos = parse_records(common.load_json(file), file, self._bad, "test")
    by_name, ambiguous = common.index_videos(root)
    units = []
    for video, questions in videos:
      try:
        path = common.find_video(str(video["video_id"]), by_name, ambiguous,
                                 root)
      except ValueError as e:
        for _, q in questions:
          self._bad.report(file, q["id"], str(e), "test")
        continue
      units.append(base.Unit(path, [
          base.Record(i, file, q["id"], {**q, "index": np.int64(i)})
          for i, q in questions]))
    return {"test": units}


def load_source(config: str = "smoke", data_dir: str | None = None,
                split: str = "test", manual_dir: str | None = None,
                on_bad_record: str = "raise",
                num_workers: int | None = None):
  """The `mmworld` data source; prepared from manual_dir on first use."""
  return base.load(Mmworld, config, data_dir, split, manual_dir,
                   on_bad_record, num_workers)
