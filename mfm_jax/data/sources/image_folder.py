"""TFDS builder `image_folder`: a classifier source, one folder per class.

manual_dir layout:

  <split>/<class>/<image>   for split in train / validation / test, or
  <class>/<image>           a single split "train"

Classes are the sorted folder names (union over splits); `label` is the
index in that list. Images (.jpg .jpeg .png .bmp .gif .webp) are checked
with PIL and stored as RGB JPEG / PNG bytes (the original bytes when they
already are; a short side above `max_size` is resized down first).

Example:
  image:       [H, W, 3] uint8
  label:       int64 class index (ClassLabel; names in info.features)
  label_name:  text, the class folder name
  file:        text, path relative to manual_dir (the record id)
  index:       int64, position in the split (sorted by class, file name)

Few-shot views (ELEVATER / CoOp protocol), with `load_source(...)` or
`subset(...)`, no re-preparation:
  shots=k, seed=s   k images per class: the first k of a per-class
                    permutation drawn from (seed, class), so the k-shot set
                    is a subset of the (k+1)-shot set; fewer if a class has
                    fewer (logged)
  classes="base"    the first ceil(C / 2) sorted classes, "new" the rest
                    (CoOp base-to-new); labels renumbered from 0 unless
                    relabel=False

A file that PIL cannot read is a bad record (error naming the file, or
skipped and listed in bad_records.json with on_bad_record="skip").
"""
from __future__ import annotations

import dataclasses
import io
import json
import math
import os

from absl import logging
from etils import epath
import numpy as np
from PIL import Image
import tensorflow_datasets as tfds

from mfm_jax.data.sources import base

SPLITS = ("train", "validation", "test")
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp")
LABELS_FILE = "labels.json"


@dataclasses.dataclass(eq=False)
class ImageFolderConfig(tfds.core.BuilderConfig):
  """max_size: resize images whose short side is larger (None: keep)."""
  max_size: int | None = None


PRESETS = {
    "default": ImageFolderConfig(name="default", description="As stored."),
    "smoke": ImageFolderConfig(name="smoke", max_size=64,
                               description="Short side <= 64."),
}


def scan(root) -> tuple[dict[str, list[tuple[str, str]]], list[str]]:
  """{split: [(relative path, class)]} and the sorted class names."""
  root = os.fspath(root)
  split_dirs = [s for s in SPLITS if os.path.isdir(os.path.join(root, s))]
  layout = ({s: os.path.join(root, s) for s in split_dirs} if split_dirs
            else {"train": root})
  files, classes = {}, set()
  for split, folder in layout.items():
    items = []
    for cls in sorted(os.listdir(folder)):
      cdir = os.path.join(folder, cls)
      if not os.path.isdir(cdir):
        continue
      classes.add(cls)
      for dirpath, dirs, names in os.walk(cdir):
        dirs.sort()
        for n in sorted(names):
          if n.lower().endswith(IMAGE_EXTENSIONS):
            items.append((os.path.relpath(os.path.join(dirpath, n), root),
                          cls))
    files[split] = items
  if not classes:
    raise FileNotFoundError(f"image_folder: no class folders in {root}")
  return files, sorted(classes)


def read_image(path, max_size: int | None = None) -> bytes:
  """Checked RGB image bytes (JPEG / PNG); ValueError names the file."""
  try:
    raw = epath.Path(path).read_bytes()
    with Image.open(io.BytesIO(raw)) as img:
      img.load()
      fmt = img.format
      rgb = img.convert("RGB")
  except (OSError, ValueError, Image.DecompressionBombError) as e:
    raise ValueError(f"unreadable image {path}: {e}") from e
  resized = max_size is not None and min(rgb.size) > max_size
  if resized:
    scale = max_size / min(rgb.size)
    rgb = rgb.resize((max(1, round(rgb.width * scale)),
                      max(1, round(rgb.height * scale))), Image.BICUBIC)
  elif img.mode == "RGB" and fmt in ("JPEG", "PNG"):
    return raw
  out = io.BytesIO()
  if fmt == "JPEG":
    rgb.save(out, format="JPEG", quality=95)
  else:
    rgb.save(out, format="PNG")
  return out.getvalue()


class ImageFolder(base.ManualDirBuilder):
  """Images in one folder per class."""

  VERSION = tfds.core.Version("1.0.0")
  RELEASE_NOTES = {"1.0.0": "Class folders, RGB JPEG / PNG."}
  BUILDER_CONFIGS = list(PRESETS.values())
  DEFAULT_CONFIG_NAME = "default"
  PRESETS = PRESETS
  OUTPUT_KEY = "image"
  MANUAL_DOWNLOAD_INSTRUCTIONS = """
  manual_dir/<class>/<image> (one split "train"), or
  manual_dir/{train,validation,test}/<class>/<image>.
  """

  @classmethod
  def config_from(cls, spec: str) -> ImageFolderConfig:
    if spec in PRESETS:
      return PRESETS[spec]
    key, eq, value = spec.partition("=")
    if key.strip() != "max_size" or not eq:
      raise ValueError(f"unknown builder config {spec!r}: use one of "
                       f"{sorted(PRESETS)} or 'max_size=N'")
    return ImageFolderConfig(name=f"max{int(value)}", max_size=int(value))

  def __init__(self, **kwargs):
    self._labels: dict[str, dict[int, int]] = {}
    super().__init__(**kwargs)

  def _info(self) -> tfds.core.DatasetInfo:
    names = scan(self.manual_dir)[1] if self.manual_dir else None
    return tfds.core.DatasetInfo(
        builder=self, description=__doc__, disable_shuffling=True,
        features=tfds.features.FeaturesDict({
            "image": tfds.features.Image(shape=(None, None, 3)),
            "label": tfds.features.ClassLabel(names=names),
            "label_name": tfds.features.Text(),
            "file": tfds.features.Text(),
            "index": tfds.features.Scalar(dtype=np.int64),
        }))

  def _units(self, root) -> dict[str, list[base.Unit]]:
    files, classes = scan(root)
    label = {c: i for i, c in enumerate(classes)}
    return {split: [base.Unit(os.path.join(os.fspath(root), rel), [
        base.Record(i, os.path.join(os.fspath(root), rel), rel, {
            "label": label[c], "label_name": c, "file": rel,
            "index": np.int64(i)})]) for i, (rel, c) in enumerate(items)]
            for split, items in files.items() if items}

  def _decode(self, unit: base.Unit) -> bytes:
    return read_image(unit.video_path, self.builder_config.max_size)

  def _generate_examples(self, split, units):
    labels = self._labels.setdefault(split, {})
    for key, example in super()._generate_examples(split, units):
      labels[key] = example["label"]
      yield key, example

  def _download_and_prepare(self, dl_manager, download_config=None):
    out = super()._download_and_prepare(dl_manager,
                                        download_config=download_config)
    labels = {s: [v[k] for k in sorted(v)] for s, v in self._labels.items()}
    (epath.Path(self.data_dir) / LABELS_FILE).write_text(json.dumps(labels))
    return out


def class_split(num_classes: int, classes: str) -> np.ndarray:
  """Class ids of "all", "base" (first ceil(C/2)) or "new" (the rest)."""
  m = math.ceil(num_classes / 2)
  ranges = {"all": (0, num_classes), "base": (0, m), "new": (m, num_classes)}
  if classes not in ranges:
    raise ValueError(f"classes must be one of {sorted(ranges)}, got "
                     f"{classes!r}")
  return np.arange(*ranges[classes])


def kshot_indices(labels, shots: int, seed: int,
                  class_ids=None) -> np.ndarray:
  """Indices of `shots` examples per class, sorted: [<= shots * C] int64.

  Class c's examples are permuted by default_rng([seed, c]) and the first
  `shots` kept: deterministic by seed, nested in shots, independent of the
  other classes.
  """
  labels = np.asarray(labels, np.int64)
  if shots < 1:
    raise ValueError(f"shots must be >= 1, got {shots}")
  class_ids = np.unique(labels) if class_ids is None else class_ids
  out = []
  for c in class_ids:
    idx = np.flatnonzero(labels == c)
    if len(idx) < shots:
      logging.warning("image_folder: class %d has %d < %d images; using all",
                      c, len(idx), shots)
    perm = np.random.default_rng([int(seed), int(c)]).permutation(len(idx))
    out.append(idx[perm[:shots]])
  return np.sort(np.concatenate(out)) if out else np.zeros(0, np.int64)


class Subset:
  """Random-access view of a source: selected rows, labels renumbered.

  subset[i] = source[indices[i]] with `label` mapped through label_map
  (and `source_label`: the original label).
  """

  def __init__(self, source, indices, label_map: dict[int, int] | None,
               class_names: list[str]):
    self.source = source
    self.indices = np.asarray(indices, np.int64)
    self.label_map = label_map
    self.class_names = class_names

  def __len__(self) -> int:
    return len(self.indices)

  def __getitem__(self, i):
    record = dict(self.source[int(self.indices[i])])
    record["source_label"] = record["label"]
    if self.label_map is not None:
      record["label"] = self.label_map[int(record["label"])]
    return record

  def __repr__(self) -> str:
    return (f"Subset({len(self)} of {len(self.source)}, "
            f"{len(self.class_names)} classes)")


def read_labels(builder, split: str) -> np.ndarray:
  """Labels of a prepared split in record order: [N] int64."""
  labels = json.loads((builder.data_path / LABELS_FILE).read_text())
  if split not in labels:
    raise ValueError(f"image_folder: no split {split!r} (have "
                     f"{sorted(labels)}); k-shot / class subsets take a "
                     f"whole split")
  return np.asarray(labels[split], np.int64)


def subset(builder, split: str, shots: int | None = None, seed: int = 0,
           classes: str = "all", relabel: bool = True):
  """A few-shot and/or base / new view of a prepared split (see docstring)."""
  source = builder.as_data_source(split)
  names = builder.info.features["label"].names
  if shots is None and classes == "all":
    return source
  labels = read_labels(builder, split)
  class_ids = class_split(len(names), classes)
  if shots is None:
    indices = np.flatnonzero(np.isin(labels, class_ids))
  else:
    indices = kshot_indices(labels, shots, seed, class_ids)
  label_map = ({int(c): i for i, c in enumerate(class_ids)} if relabel
               else None)
  kept = [names[c] for c in class_ids]
  return Subset(source, indices, label_map, kept if relabel else names)


def load_source(config: str = "default", data_dir: str | None = None,
                split: str = "train", manual_dir: str | None = None,
                on_bad_record: str = "raise",
                num_workers: int | None = None, shots: int | None = None,
                seed: int = 0, classes: str = "all", relabel: bool = True):
  """The `image_folder` source (or a few-shot / class view of a split)."""
  builder = base.prepare(base.make_builder(
      ImageFolder, config, data_dir, manual_dir, on_bad_record, num_workers))
  return subset(builder, split, shots, seed, classes, relabel)
