"""Real-format sources: TFDS builders over local folders (TFDS manual_dir).

  mmworld         MMWorld questions + K-frame videos        (mmworld.py)
  vlm4d           VLM4D questions + K-frame videos          (vlm4d.py)
  image_folder    one folder per class; k-shot, base/new    (image_folder.py)
  video_captions  mp4s + JSONL/CSV captions, with the world_video fields,
                  so the video generation configs train on them (video_captions.py)

Each is prepared once from its folder into array_record files under
data_dir and read with random access (`len(src)`, `src[i]`), as the
embedded `world_video`. Bad records follow `on_bad_record` ("raise" or
"skip"; see common.py). This package imports TFDS only when a source is
loaded.

  src = load_source("vlm4d", "default", manual_dir="/data/vlm4d",
                    split="real")
  src = source_from_config(config.data, "train")    # what pipeline uses

A data config names a source by `name` ("world_video" or another world
dataset, one of NAMES, or "<name>:<manual_dir>", e.g.
"video_captions:/home/me/footage"), with
`builder_config`, `data_dir` and optionally `manual_dir`, `on_bad_record`.
The multi-view world datasets ("world_multiview", "world_qa") are read one
view per example: `view` (default 0; -1: every view; world_views.py).
"""
from __future__ import annotations

import importlib

from mfm_jax.data.sources import world_views

NAMES = ("mmworld", "vlm4d", "image_folder", "video_captions")
_DEFAULT_SPLIT = {"mmworld": "test", "vlm4d": "real",
                  "image_folder": "train", "video_captions": "train"}


def parse_name(name: str) -> tuple[str, str | None]:
  """"video_captions:/data/x" -> ("video_captions", "/data/x").

  Names other than NAMES are the world's (passed on unchanged, as
  "world_video"); only NAMES take a ":<manual_dir>".
  """
  base, sep, manual_dir = str(name).partition(":")
  base = base.strip()
  if sep and base not in NAMES:
    raise ValueError(f"data source {name!r}: only {list(NAMES)} read a "
                     f"folder ('<name>:<manual_dir>')")
  return base, (manual_dir.strip() or None) if sep else None


def module(name: str):
  """The module of a source name (imports TFDS): one of NAMES, else the
  world's builder (which names what it knows)."""
  base, _ = parse_name(name)
  if base not in NAMES:
    return importlib.import_module("mfm_jax.data.world.builder")
  return importlib.import_module(f"mfm_jax.data.sources.{base}")


def load_source(name: str, config: str | None = None,
                data_dir: str | None = None, split: str | None = None,
                manual_dir: str | None = None, on_bad_record: str = "raise",
                num_workers: int | None = None, **kwargs):
  """A random-access source of a split, prepared on first use.

  Args:
    name: a source name (see NAMES) or "<name>:<manual_dir>".
    config: builder config: a preset name ("smoke", ...) or a spec such as
      "frames=16,res=128" (image_folder: "max_size=N"); None: the default.
    data_dir: TFDS data dir (None: $MFM_JAX_DATA_DIR or ~/.cache/...).
    split: split name (None: the source's usual one).
    manual_dir: the folder with the data (also from "<name>:<dir>"); may be
      None once prepared (the one prepared copy under data_dir is used).
    on_bad_record: "raise" or "skip".
    num_workers: decoding threads when preparing.
    **kwargs: source extras (image_folder: shots, seed, classes, relabel).

  Returns:
    len(src), src[i] -> dict of numpy arrays (text as bytes).
  """
  base, from_name = parse_name(name)
  manual_dir = manual_dir or from_name
  mod = module(base)
  if base not in NAMES:                    # the world, exactly as before
    return mod.load_source(name=base, config=config or "smoke",
                           data_dir=data_dir, split=split or "train",
                           num_workers=num_workers)
  builder_cls = {"mmworld": "Mmworld", "vlm4d": "Vlm4d",
                 "image_folder": "ImageFolder",
                 "video_captions": "VideoCaptions"}[base]
  config = config or getattr(mod, builder_cls).DEFAULT_CONFIG_NAME
  return mod.load_source(config=config, data_dir=data_dir,
                         split=split or _DEFAULT_SPLIT[base],
                         manual_dir=manual_dir, on_bad_record=on_bad_record,
                         num_workers=num_workers, **kwargs)


def source_from_config(data_config, split: str):
  """The source `pipeline` reads: `data_config.name` and friends.

  World names go to the world builder exactly as before (world_multiview /
  world_qa records with their view selected by `view`, default 0: see
  world_views.ViewSource); NAMES take `manual_dir` (or "<name>:<dir>") and
  `on_bad_record` from the config when it has them.
  """
  base, _ = parse_name(data_config.name)
  get = data_config.get if hasattr(data_config, "get") else (
      lambda k, d=None: getattr(data_config, k, d))
  if base not in NAMES:
    src = module(base).load_source(
        name=base, config=data_config.builder_config,
        data_dir=data_config.data_dir, split=split)
    if base in world_views.DATASETS:
      src = world_views.ViewSource(src, get("view", 0), name=base)
    return src
  return load_source(data_config.name, data_config.builder_config,
                     data_config.data_dir, split,
                     manual_dir=get("manual_dir", None),
                     on_bad_record=get("on_bad_record", "raise") or "raise")


def bad_records(source) -> dict | None:
  """The bad-record report written when `source` was prepared.

  {"kept": {split: n}, "skipped": n, "skipped_by_reason": {...},
  "records": [{"split", "file", "id", "reason"}]}; None if there is none
  (world_video).
  """
  from mfm_jax.data.sources import common  # pylint: disable=g-import-not-at-top
  source = getattr(source, "source", source)          # image_folder.Subset
  info = getattr(source, "dataset_info", None)
  return common.read_report(info.data_dir) if info is not None else None
