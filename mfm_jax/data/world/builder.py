"""TFDS builder `world_video`: procedural world clips, written as array_record.

No TensorFlow is needed to build or read it: every feature is a
`tfds.features.Tensor` / `Scalar` / `Text`, serialised by TFDS' own protos.
Read it with `builder.as_data_source(split)` (random access, for grain).

Configs (train / validation clips):
  smoke:   64 / 16, 8 frames of 32x32   (seconds; tests and CPU smoke runs)
  small:   1,000 / 64, 16 frames of 64x64
  full:    5,000 / 256, 16 frames of 64x64

Clip `index` of split `split` is `generate_clip(clip_seed(base_seed, split,
index), spec)`: the data is a pure function of (config, version). Records are
stored in index order (no TFDS shuffling); each record carries its `index`
and `seed`. Generation runs on a process pool ("spawn" context: safe when JAX
is already imported) with `num_workers` processes (default: all cores).

Usage:
  src = load_source(config="smoke", split="train")  # builds on first use
  example = src[0]   # dict of numpy arrays; caption is bytes
"""
from __future__ import annotations

import dataclasses
import multiprocessing
import os
from collections.abc import Iterator

import numpy as np
import tensorflow_datasets as tfds

from mfm_jax.data import tfds_base
from mfm_jax.data.world import generate
from mfm_jax.data.world import sim

DATA_DIR_ENV = "MFM_JAX_DATA_DIR"
_CHUNK = 16


@dataclasses.dataclass(eq=False)
class WorldVideoConfig(tfds.core.BuilderConfig):
  """A named world_video config: the world spec and the split sizes."""
  spec: sim.WorldSpec = dataclasses.field(default_factory=sim.WorldSpec)
  num_train: int = 64
  num_validation: int = 16
  base_seed: int = 0


CONFIGS = (
    WorldVideoConfig(
        name="smoke", description="64/16 clips of 8 frames at 32x32.",
        spec=sim.WorldSpec(num_frames=8, height=32, width=32, fps=4.0),
        num_train=64, num_validation=16),
    WorldVideoConfig(
        name="small", description="1,000/64 clips of 16 frames at 64x64.",
        num_train=1000, num_validation=64),
    WorldVideoConfig(
        name="full", description="5,000/256 clips of 16 frames at 64x64.",
        num_train=5000, num_validation=256),
)
CONFIG_NAMES = tuple(c.name for c in CONFIGS)


def default_data_dir() -> str:
  """$MFM_JAX_DATA_DIR, else ~/.cache/mfm_jax/tfds."""
  return os.environ.get(DATA_DIR_ENV) or os.path.join(
      os.path.expanduser("~"), ".cache", "mfm_jax", "tfds")


def _clip_record(seed: int, index: int, spec: sim.WorldSpec) -> dict:
  """generate_clip restricted to the stored features."""
  clip = generate.generate_clip(seed, spec)
  record = {k: clip[k] for k in (
      "video", "caption", "centers", "colors", "obj_mask", "num_objects",
      "instance", "visible", "positions", "shape_ids", "color_ids",
      "size_ids", "seed")}
  record["index"] = index
  return record


def _make_chunk(args) -> list[tuple[int, dict]]:
  """Pool worker: ((index, seed), ...), spec -> [(index, record)]."""
  items, spec = args
  return [(i, _clip_record(s, i, spec)) for i, s in items]


def clip_features(t: int, h: int, w: int, k: int) -> dict:
  """The fields of a ``world_video`` record (T frames of H x W, K object slots): the schema every
  video-generation source shares (``sources/video_captions.py`` fills the object fields empty)."""
  tensor = tfds.features.Tensor
  return {
      "video": tensor(shape=(t, h, w, 3), dtype=np.uint8, encoding="zlib"),
      "caption": tfds.features.Text(),
      "centers": tensor(shape=(t, k, 2), dtype=np.float32),
      "colors": tensor(shape=(k, 3), dtype=np.uint8),
      "obj_mask": tensor(shape=(k,), dtype=np.bool_),
      "num_objects": tfds.features.Scalar(dtype=np.int32),
      "instance": tensor(shape=(t, h, w), dtype=np.uint8, encoding="zlib"),
      "visible": tensor(shape=(t, k), dtype=np.bool_),
      "positions": tensor(shape=(t, k, 3), dtype=np.float32),
      "shape_ids": tensor(shape=(k,), dtype=np.int32),
      "color_ids": tensor(shape=(k,), dtype=np.int32),
      "size_ids": tensor(shape=(k,), dtype=np.int32),
      "seed": tfds.features.Scalar(dtype=np.int64),
      "index": tfds.features.Scalar(dtype=np.int64),
  }


class WorldVideo(tfds_base.LocalBuilder):
  """Procedural world video clips with captions and object ground truth."""

  VERSION = tfds.core.Version("1.0.0")
  RELEASE_NOTES = {"1.0.0": "World v1: one oblique camera, spheres/cubes."}
  BUILDER_CONFIGS = list(CONFIGS)
  DEFAULT_CONFIG_NAME = "smoke"

  def _info(self) -> tfds.core.DatasetInfo:
    spec = self.builder_config.spec
    t, h, w, k = spec.num_frames, spec.height, spec.width, spec.max_objects
    features = tfds.features.FeaturesDict(clip_features(t, h, w, k))
    return tfds.core.DatasetInfo(
        builder=self, description=__doc__, features=features,
        disable_shuffling=True)

  def _split_generators(self, dl_manager):
    del dl_manager  # nothing to download
    cfg = self.builder_config
    return {
        "train": self._generate_examples("train", cfg.num_train),
        "validation": self._generate_examples("validation",
                                              cfg.num_validation),
    }

  def _generate_examples(self, split: str, num: int
                         ) -> Iterator[tuple[int, dict]]:
    cfg = self.builder_config
    items = [(i, generate.clip_seed(cfg.base_seed, split, i))
             for i in range(num)]
    chunks = [(items[i:i + _CHUNK], cfg.spec)
              for i in range(0, num, _CHUNK)]
    workers = self._num_workers or os.cpu_count() or 1
    workers = max(1, min(workers, len(chunks)))
    if workers == 1:
      for chunk in chunks:
        yield from _make_chunk(chunk)
      return
    ctx = multiprocessing.get_context("spawn")
    with ctx.Pool(workers) as pool:
      for records in pool.imap(_make_chunk, chunks):
        yield from records


def get_builder(config: str = "smoke", data_dir: str | None = None,
                num_workers: int | None = None) -> WorldVideo:
  """The world_video builder of a named config (array_record files)."""
  if config not in CONFIG_NAMES:
    raise ValueError(f"world_video: unknown builder config {config!r}; "
                     f"known configs: {list(CONFIG_NAMES)}")
  return WorldVideo(config=config, data_dir=data_dir or default_data_dir(),
                    file_format="array_record", num_workers=num_workers)


def load_source(name: str = "world_video", config: str = "smoke",
                data_dir: str | None = None, split: str = "train",
                num_workers: int | None = None):
  """Random-access data source of a split; builds the dataset on first use.

  Args:
    name: "world_video", "world_multiview" or "world_qa" (builder_v2.py).
    config: builder config name (see CONFIG_NAMES).
    data_dir: TFDS data dir; None = $MFM_JAX_DATA_DIR or ~/.cache/mfm_jax/tfds.
    split: "train" or "validation" (any TFDS split string, e.g. "train[:8]").
    num_workers: generation processes on first use (None = all cores).

  Returns:
    A TFDS ArrayRecord data source: len(src), src[i] -> dict of numpy arrays.
  """
  if name in ("world_multiview", "world_qa"):
    from mfm_jax.data.world import builder_v2  # pylint: disable=g-import-not-at-top
    builder = builder_v2.get_builder(name, config, data_dir, num_workers)
  elif name != "world_video":
    raise ValueError(f"load_source: unknown dataset {name!r}; the embedded "
                     f"datasets are 'world_video', 'world_multiview' and "
                     f"'world_qa'")
  else:
    builder = get_builder(config, data_dir, num_workers)
  if not builder.is_prepared():
    builder.download_and_prepare()
  return builder.as_data_source(split)
