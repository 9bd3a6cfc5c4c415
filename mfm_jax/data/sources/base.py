"""The base of the manual_dir TFDS builders and their `load_source`.

Each builder reads a local folder (TFDS `manual_dir`), validates every record
up front (so "raise" fails before any decoding), decodes videos on a thread
pool (ffmpeg subprocesses) and writes array_record files, read back with
`builder.as_data_source(split)`.

Prepared data lives in `data_dir/<dataset>/<config>_<fingerprint>/<version>`:
the fingerprint hashes the manual_dir's path, its annotation files and the
names and sizes of its files, so two folders (or an edited one) never share
prepared data. Without a manual_dir, `make_builder` finds the one prepared
copy of the config (prepare on one machine, read on many).
"""
from __future__ import annotations

import dataclasses
import os
from collections.abc import Iterator

from absl import logging
from etils import epath
import numpy as np
import tensorflow_datasets as tfds

from mfm_jax.data import tfds_base
from mfm_jax.data import video_io
from mfm_jax.data.sources import common


@dataclasses.dataclass(eq=False)
class ClipConfig(tfds.core.BuilderConfig):
  """Stored clip shape: K frames, short side resized + centre crop to R.

  fps: sample at this frame rate from the clip start (T = num_frames
  frames, a shorter clip is a bad record) instead of K uniform frames.
  """
  num_frames: int = 8
  resolution: int = 224
  fps: float | None = None


def parse_config_spec(spec: str, presets: dict) -> ClipConfig:
  """A preset name or "frames=16,res=128[,fps=4]" -> ClipConfig."""
  if spec in presets:
    return presets[spec]
  fields = {"frames": "num_frames", "res": "resolution", "fps": "fps"}
  kw = {}
  for part in filter(None, spec.split(",")):
    key, eq, value = part.partition("=")
    if not eq or key.strip() not in fields:
      raise ValueError(f"unknown builder config {spec!r}: use one of "
                       f"{sorted(presets)} or 'frames=K,res=R[,fps=F]'")
    kw[fields[key.strip()]] = (float(value) if key.strip() == "fps"
                               else int(value))
  base = presets[next(iter(presets))]
  cfg = dataclasses.replace(base, **kw)
  name = f"f{cfg.num_frames}_r{cfg.resolution}" + (
      f"_fps{cfg.fps:g}".replace(".", "p") if cfg.fps else "")
  return dataclasses.replace(cfg, name=name, description=f"custom {spec}")


class ManualDirBuilder(tfds_base.LocalBuilder, skip_registration=True):
  """A builder over a local folder with the on_bad_record policy.

  Subclasses define `_info`, `_units(root)` -> {split: [Unit]} (records
  validated, videos located) and `ANNOTATION_FILES`.
  """

  VERSION = tfds.core.Version("1.0.0")
  ANNOTATION_FILES: tuple[str, ...] = ()
  PRESETS: dict[str, ClipConfig] = {}
  OUTPUT_KEY = "video"   # the field `_decode` fills

  @classmethod
  def config_from(cls, spec: str) -> ClipConfig:
    """A preset name or "frames=K,res=R[,fps=F]" -> ClipConfig."""
    return parse_config_spec(spec, cls.PRESETS)

  def __init__(self, *, on_bad_record: str = "raise",
               num_workers: int | None = None,
               manual_dir: str | None = None, **kwargs):
    self.manual_dir = manual_dir
    self.on_bad_record = common.check_policy(on_bad_record)
    self._bad = common.BadRecords(on_bad_record)
    self._kept: dict[str, int] = {}
    super().__init__(num_workers=num_workers or min(4, os.cpu_count() or 1), **kwargs)
    self._bad.dataset = f"{self.name}/{self.builder_config.name}"

  @classmethod
  def annotation_files(cls, root) -> list[str]:
    """The annotation files present in root (hashed into the config name)."""
    return [f for f in cls.ANNOTATION_FILES if (epath.Path(root) / f).exists()]

  # -------------------------------------------------------------- preparing

  def _split_generators(self, dl_manager):
    root = dl_manager.manual_dir
    self._bad = common.BadRecords(self.on_bad_record, self._bad.dataset)
    units = self._units(root)
    return {split: self._generate_examples(split, u)
            for split, u in units.items()}

  def _units(self, root) -> dict[str, list[Unit]]:
    raise NotImplementedError

  def _decode(self, unit: Unit):
    """The decoded field shared by the unit's records ([K, R, R, 3])."""
    cfg = self.builder_config
    return decode_clip(unit.video_path, cfg.num_frames, cfg.resolution,
                       fps=unit.fps or cfg.fps, start=unit.start,
                       end=unit.end)

  def _generate_examples(self, split: str, units: list[Unit]
                         ) -> Iterator[tuple[int, dict]]:
    self._kept[split] = 0
    for unit, value in common.ordered_map(self._decode, units,
                                          self._num_workers):
      if isinstance(value, Exception):
        if not isinstance(value, (video_io.VideoReadError, ValueError)):
          raise value
        for rec in unit.records:
          self._bad.report(rec.file, rec.record_id,
                           f"{self.OUTPUT_KEY}: {value}", split)
        continue
      for rec in unit.records:
        self._kept[split] += 1
        yield rec.key, {**rec.example, self.OUTPUT_KEY: value}
    if not self._kept[split]:
      file = (units[0].records[0].file if units else
              self._bad.entries[-1]["file"] if len(self._bad) else "-")
      raise common.BadRecordError(
          file, "*",
          f"split {split!r} has no usable records ({len(self._bad)} bad: "
          f"{self._bad.counts()})")

  def _download_and_prepare(self, dl_manager, download_config=None):
    out = super()._download_and_prepare(dl_manager,
                                        download_config=download_config)
    # self.data_dir is the (renamed on success) incomplete dir here.
    self._bad.write(self.data_dir, self._kept)
    return out


@dataclasses.dataclass
class Record:
  """One example to write: its key, where it came from, its fields."""
  key: int
  file: str
  record_id: str
  example: dict


@dataclasses.dataclass
class Unit:
  """One video to decode and the records (questions, captions) using it."""
  video_path: str
  records: list[Record]
  fps: float | None = None
  start: float | None = None
  end: float | None = None


def decode_clip(path, num_frames: int, resolution: int,
                fps: float | None = None, start: float | None = None,
                end: float | None = None) -> np.ndarray:
  """A stored clip: [num_frames, R, R, 3] uint8.

  K uniform frames of [start, end), or with fps: num_frames frames every
  1/fps seconds from start (VideoReadError when the clip is shorter). The
  short side is resized to R, then centre-cropped to R x R.
  """
  if fps:
    video = video_io.read_video(path, fps=fps, start=start, end=end,
                                max_frames=num_frames)
    if len(video) < num_frames:
      raise video_io.VideoReadError(
          path, f"clip too short: {len(video)} frames at fps={fps:g} from "
          f"start={start or 0:g}, need {num_frames}")
  else:
    video = video_io.read_video(path, num_frames=num_frames, start=start,
                                end=end)
  return video_io.resize_and_center_crop(video, resolution)


def make_builder(cls, config, data_dir: str | None = None,
                 manual_dir: str | None = None, on_bad_record: str = "raise",
                 num_workers: int | None = None):
  """A builder of `cls` for a config (preset name, spec or ClipConfig).

  With manual_dir, the config name gets the folder's fingerprint; without
  it, the single prepared copy of the config under data_dir is used.
  """
  from mfm_jax.data.world import builder as world_builder  # pylint: disable=g-import-not-at-top
  data_dir = data_dir or world_builder.default_data_dir()
  base = (config if isinstance(config, tfds.core.BuilderConfig)
          else cls.config_from(config))
  if manual_dir is not None:
    manual_dir = os.path.abspath(os.path.expanduser(os.fspath(manual_dir)))
    if not os.path.isdir(manual_dir):
      raise FileNotFoundError(f"{cls.name}: manual_dir {manual_dir} does not "
                              f"exist")
    fp = common.fingerprint(manual_dir, cls.annotation_files(manual_dir))
    name = f"{base.name}_{fp}"
  else:
    name = _find_prepared(cls, data_dir, base.name)
  cfg = dataclasses.replace(base, name=name)
  return cls(config=cfg, data_dir=data_dir, file_format="array_record",
             on_bad_record=on_bad_record, num_workers=num_workers,
             manual_dir=manual_dir)


def _find_prepared(cls, data_dir: str, base_name: str) -> str:
  root = epath.Path(data_dir) / cls.name
  found = sorted(p.name for p in root.glob(f"{base_name}_*")
                 if (p / str(cls.VERSION)).exists()) if root.exists() else []
  if len(found) != 1:
    raise FileNotFoundError(
        f"{cls.name}: no manual_dir given and {len(found)} prepared copies "
        f"of config {base_name!r} under {root} ({found}); pass manual_dir "
        f"(the folder with the data; see the builder's "
        f"MANUAL_DOWNLOAD_INSTRUCTIONS)")
  return found[0]


def prepare(builder):
  """Prepares from builder.manual_dir if needed and applies the policy to a
  prepared dataset's bad-record report; returns the builder."""
  if not builder.is_prepared():
    logging.info("%s: preparing %s from %s", builder.name, builder.data_path,
                 builder.manual_dir)
    builder.download_and_prepare(download_config=tfds.download.DownloadConfig(
        manual_dir=builder.manual_dir))
  common.check_report_on_load(builder.data_path, builder.on_bad_record,
                              f"{builder.name}/{builder.builder_config.name}")
  return builder


def load(cls, config, data_dir: str | None = None, split: str = "train",
         manual_dir: str | None = None, on_bad_record: str = "raise",
         num_workers: int | None = None):
  """Prepares on first use, applies the bad-record policy, returns a source.

  Returns:
    A TFDS ArrayRecord data source: len(src), src[i] -> dict of numpy.
  """
  builder = make_builder(cls, config, data_dir, manual_dir, on_bad_record,
                         num_workers)
  return prepare(builder).as_data_source(split)
