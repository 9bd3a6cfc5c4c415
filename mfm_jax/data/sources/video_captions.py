"""TFDS builder `video_captions`: a user's videos with captions (WebVid-style).

manual_dir layout:

  train.jsonl | train.csv            split "train"
  validation.jsonl | validation.csv  split "validation" (optional), or
  captions.jsonl | captions.csv      one file: the last ceil(5%) of its rows
                                     are "validation", the rest "train"
  videos anywhere below, named by each row's `path`

Row: `path` (relative to manual_dir, or absolute; a path without extension
gets ".mp4"), `caption`, and optionally `fps`, `start`, `end` (seconds).
CSV needs a header; the aliases video / file (path) and text / name
(caption) are accepted. A row clip is T = num_frames frames: uniform over
[start, end), or with `fps` (the row's or the config's) T frames every
1/fps seconds from `start` (a clip shorter than that is a bad record).
Frames: short side resized to R, centre-cropped to R x R.

Examples have the fields and dtypes of the world's `world_video` records,
so `pipeline.Preprocess` and the video generation configs read them as is
(object fields are empty: obj_mask all False, num_objects 0, seed -1):
  video:      [T, R, R, 3] uint8
  caption:    text
  centers:    [T, K, 2] float32 zeros      (K = the world's max_objects)
  colors:     [K, 3] uint8 zeros;  obj_mask: [K] bool False
  num_objects: int32 0; instance: [T, R, R] uint8 zeros; visible: [T, K]
  positions:  [T, K, 3] float32 zeros; shape_ids, color_ids, size_ids: [K]
  seed:       int64 -1;  index: int64 row number in its file
  path:       text, the row's path (extra field)

Configs have the world's clip shapes (and names): "smoke" 8 x 32 x 32,
"small" and "full" 16 x 64 x 64, or "frames=T,res=R[,fps=F]". Train on a folder:

  python -m mfm_jax.train --config configs/video_gen.py --workdir /tmp/v \\
      --config.data.name=video_captions:/path/to/footage

Bad input (a missing field, a bad number, a duplicate row, a missing,
unreadable or too short video) -> an error naming the file and the row, or
skipped and listed in bad_records.json with on_bad_record="skip".
"""
from __future__ import annotations

import csv
import io
import json
import math
import os

from etils import epath
import numpy as np
import tensorflow_datasets as tfds

from mfm_jax.data.sources import base
from mfm_jax.data.world import builder as world_builder
from mfm_jax.data.world import sim

MAX_OBJECTS = sim.WorldSpec().max_objects
VALIDATION_FRACTION = 0.05
ALIASES = {"path": ("path", "video", "file"),
           "caption": ("caption", "text", "name")}
PRESETS = {
    "smoke": base.ClipConfig(name="smoke", num_frames=8, resolution=32,
                             description="8 frames at 32x32 (world smoke)."),
    "small": base.ClipConfig(name="small", num_frames=16, resolution=64,
                             description="16 frames at 64x64 (world small)."),
    "full": base.ClipConfig(name="full", num_frames=16, resolution=64,
                            description="16 frames at 64x64 (world full)."),
}
_FILES = tuple(f"{stem}.{ext}" for stem in ("train", "validation", "captions")
               for ext in ("jsonl", "csv"))


def read_rows(path) -> list[tuple[str, object]]:
  """[(row id "line N", row dict or a parse-error str)] of a JSONL / CSV."""
  path = os.fspath(path)
  text = epath.Path(path).read_text()
  rows = []
  if path.endswith(".jsonl"):
    for n, line in enumerate(text.splitlines(), 1):
      if not line.strip():
        continue
      try:
        row = json.loads(line)
      except json.JSONDecodeError as e:
        row = f"invalid JSON: {e.msg} at column {e.colno}"
      rows.append((f"line {n}", row))
  else:
    reader = csv.DictReader(io.StringIO(text))
    for row in reader:
      rows.append((f"line {reader.line_num}", row))
  return rows


def parse_row(row, root: str) -> dict:
  """A row -> {path, caption, fps, start, end, abs_path}; ValueError if bad."""
  if not isinstance(row, dict):
    raise ValueError(row if isinstance(row, str) else
                     f"expected an object, got {type(row).__name__}")
  out = {}
  for field, names in ALIASES.items():
    value = next((row[k] for k in names if row.get(k) not in (None, "")),
                 None)
    if value is None:
      raise ValueError(f"missing field {field!r} (or {names[1:]})")
    out[field] = str(value)
  for k in ("fps", "start", "end"):
    value = row.get(k)
    if value in (None, ""):
      out[k] = None
      continue
    try:
      out[k] = float(value)
    except (TypeError, ValueError):
      raise ValueError(f"{k} is not a number: {value!r}") from None
    if not math.isfinite(out[k]):
      raise ValueError(f"{k} is not finite: {value!r}")
  if out["fps"] is not None and out["fps"] <= 0:
    raise ValueError(f"fps must be > 0, got {out['fps']}")
  if out["start"] is not None and out["start"] < 0:
    raise ValueError(f"start must be >= 0, got {out['start']}")
  if out["end"] is not None and out["end"] <= (out["start"] or 0.0):
    raise ValueError(f"end {out['end']} must be > start {out['start'] or 0}")
  path = os.path.join(root, out["path"])
  if not os.path.splitext(path)[1] and not os.path.exists(path):
    path += ".mp4"
  if not os.path.isfile(path):
    raise ValueError(f"missing video file {path}")
  out["abs_path"] = path
  return out


def row_id(row: dict) -> str:
  """"<path>" or "<path>@start-end": unique per clip."""
  if row["start"] is None and row["end"] is None:
    return row["path"]
  return f"{row['path']}@{row['start'] or 0:g}-{row['end'] or 'end'}"


def split_files(root) -> dict[str, tuple[str, slice | None]]:
  """{split: (file, row slice)} present in root (see module docstring)."""
  root = os.fspath(root)

  def find(stem):
    hits = [f for f in (f"{stem}.jsonl", f"{stem}.csv")
            if os.path.exists(os.path.join(root, f))]
    if len(hits) > 1:
      raise ValueError(f"video_captions: both {hits} in {root}; keep one")
    return os.path.join(root, hits[0]) if hits else None

  train, val, single = find("train"), find("validation"), find("captions")
  if train:
    return {"train": (train, None), **({"validation": (val, None)}
                                       if val else {})}
  if single:
    return {"train": (single, "train"), "validation": (single, "validation")}
  raise FileNotFoundError(f"video_captions: no train.jsonl/.csv or "
                          f"captions.jsonl/.csv in {root}")


class VideoCaptions(base.ManualDirBuilder):
  """Captioned video clips from a folder, with world_video's fields."""

  VERSION = tfds.core.Version("1.0.0")
  RELEASE_NOTES = {"1.0.0": "world_video fields from a folder of mp4s."}
  BUILDER_CONFIGS = list(PRESETS.values())
  DEFAULT_CONFIG_NAME = "smoke"
  PRESETS = PRESETS
  ANNOTATION_FILES = _FILES
  MANUAL_DOWNLOAD_INSTRUCTIONS = """
  Put the videos and captions.jsonl (or .csv; or train.* + validation.*)
  with rows `path, caption[, fps, start, end]` in manual_dir.
  """

  def _info(self) -> tfds.core.DatasetInfo:
    cfg = self.builder_config
    t, r, k = cfg.num_frames, cfg.resolution, MAX_OBJECTS
    return tfds.core.DatasetInfo(
        builder=self, description=__doc__, disable_shuffling=True,
        features=tfds.features.FeaturesDict({
            **world_builder.clip_features(t, r, r, k), "path": tfds.features.Text()}))

  def _empty_fields(self) -> dict:
    cfg = self.builder_config
    t, r, k = cfg.num_frames, cfg.resolution, MAX_OBJECTS
    return {
        "centers": np.zeros((t, k, 2), np.float32),
        "colors": np.zeros((k, 3), np.uint8),
        "obj_mask": np.zeros((k,), bool), "num_objects": np.int32(0),
        "instance": np.zeros((t, r, r), np.uint8),
        "visible": np.zeros((t, k), bool),
        "positions": np.zeros((t, k, 3), np.float32),
        "shape_ids": np.zeros((k,), np.int32),
        "color_ids": np.zeros((k,), np.int32),
        "size_ids": np.zeros((k,), np.int32), "seed": np.int64(-1),
    }

  def _units(self, root) -> dict[str, list[base.Unit]]:
    root = os.fspath(root)
    splits = {}
    for split, (file, part) in split_files(root).items():
      rows, first = read_rows(file), 0
      if part is not None:
        cut = len(rows) - math.ceil(len(rows) * VALIDATION_FRACTION)
        first = 0 if part == "train" else cut
        rows = rows[:cut] if part == "train" else rows[cut:]
      units, first_seen = [], {}
      for index, (line, row) in enumerate(rows, first):
        try:
          parsed = parse_row(row, root)
        except ValueError as e:
          rid = (str(row.get("path") or line) if isinstance(row, dict)
                 else line)
          self._bad.report(file, f"{line} ({rid})" if rid != line else rid,
                           str(e), split)
          continue
        rid = row_id(parsed)
        if rid in first_seen:
          self._bad.report(file, f"{line} ({rid})", f"duplicate id: clip "
                           f"{rid!r} also at {first_seen[rid]}", split)
          continue
        first_seen[rid] = line
        example = {**self._empty_fields(), "caption": parsed["caption"],
                   "path": parsed["path"], "index": np.int64(index)}
        units.append(base.Unit(
            parsed["abs_path"], [base.Record(index, file, f"{line} ({rid})",
                                             example)],
            fps=parsed["fps"], start=parsed["start"], end=parsed["end"]))
      splits[split] = units
    return splits


def load_source(config: str = "smoke", data_dir: str | None = None,
                split: str = "train", manual_dir: str | None = None,
                on_bad_record: str = "raise",
                num_workers: int | None = None):
  """The `video_captions` source; prepared from manual_dir on first use."""
  return base.load(VideoCaptions, config, data_dir, split, manual_dir,
                   on_bad_record, num_workers)
