"""Image-text and labelled-image data for the encoder tasks (contrastive, classify), on grain.

Two sources give the same record fields, so a config switches from the world to real data by
one override (``config.data.name="image_folder:/path/to/folders"``):

* the world (``world_video``): example ``i`` is frame window ``i % F`` of clip ``i // F``
  (``F = data.frames_per_clip``); its caption is the clip's caption and its class is read off the
  clip's **main object**: the object with the most pixels in the instance masks of the frames
  used (ties: the lower slot). ``data.labels`` names the attributes that make the class:
  ``shape_color`` (default; ``2 x 8`` classes on world v1, names like ``"red sphere"``),
  ``color_shape_size`` (``"small red sphere"``), ``color`` or ``shape``. Labels are colour-major,
  so the base / new split (first / second half of the classes) separates colours.
* ``image_folder:<dir>`` (``sources/image_folder.py``): one folder per class; the caption is the
  class prompt ``data.prompt.format(name)``.

Few-shot and class splits (both sources, ELEVATER / CoOp protocol): ``data.shots = k`` keeps k
examples per class of the train split, drawn by ``data.shots_seed`` (nested in k);
``data.classes = "base" | "new"`` keeps the first ``ceil(C / 2)`` classes or the rest, labels
renumbered from 0.

Batches (:func:`make_iterator`; B = per-process batch size, R = ``data.resolution``):
  image:     [B, R, R, 3] float32 (``data.num_frames == 1``), normalised (``data.normalize``)
  video:     [B, K, R, R, 3] float32 instead, K = ``data.num_frames`` frames of the clip
  text_ids:  [B, L] int32, the caption tokenised (``data.tokenizer``), L = ``data.max_text_len``
  text_mask: [B, L] bool
  label:     [B] int32

The dataset flow is ``pipeline.py``'s: source -> (train) shuffle(seed).repeat() -> map ->
batch(drop_remainder) -> [shard_index::shard_count] -> iter (checkpointable). Full passes for
evaluation, with a padded last batch: :func:`eval_batches`.
"""
from __future__ import annotations

import functools
import math

import grain
import ml_collections
import numpy as np
from PIL import Image

from mfm_jax.data import pipeline
from mfm_jax.data import sources
from mfm_jax.data import tokenizer as tokenizer_lib

LABELS = {"shape_color": ("color", "shape"), "color_shape_size": ("color", "shape", "size"),
          "color": ("color",), "shape": ("shape",)}
_NAME_ORDER = ("size", "color", "shape")   # words of a class name: "small red sphere"
CLIP_MEAN = np.array([0.48145466, 0.4578275, 0.40821073], np.float32)
CLIP_STD = np.array([0.26862954, 0.26130258, 0.27577711], np.float32)


def default_data_config() -> ml_collections.ConfigDict:
  """Every field of the encoder tasks' ``config.data``."""
  c = ml_collections.ConfigDict()
  c.name = "world_video"        # a world dataset, or "image_folder:<dir>"
  c.builder_config = "small"    # world: smoke / small / full; image_folder: default / max_size=N
  c.data_dir = ml_collections.config_dict.placeholder(str)
  c.manual_dir = ml_collections.config_dict.placeholder(str)
  c.on_bad_record = "raise"
  c.train_split = "train"       # what the task's "train" reads
  c.eval_split = "validation"   # what the task's "validation" reads
  c.resolution = 32
  c.num_frames = 1              # 1: images; K > 1: K-frame clips ("video")
  c.frames_per_clip = 1         # world: F examples per clip (evenly spaced frames; images only)
  c.labels = "shape_color"      # world classes: a key of LABELS
  c.prompt = "a {}"             # class prompt, also the image_folder caption
  c.tokenizer = "words"         # bytes | words | clip:<dir with vocab.json, merges.txt>
  c.max_text_len = 80
  c.shots = 0                   # > 0: k examples per class of the train split
  c.shots_seed = 0
  c.classes = "all"             # all | base | new
  c.normalize = "clip"          # clip (OpenAI mean / std) | unit ([-1, 1])
  c.worker_count = 0
  c.read_threads = 2
  return c


def is_world(data_config) -> bool:
  return sources.parse_name(data_config.name)[0] not in sources.NAMES


def _split(data_config, split: str) -> str:
  return {"train": data_config.train_split, "validation": data_config.eval_split}.get(split, split)


# --- the world -------------------------------------------------------------------------------
@functools.lru_cache(maxsize=4)
def world_attributes(builder_config: str) -> dict[str, tuple[str, ...]]:
  """{attribute: names in id order} of a ``world_video`` config (colour, shape, size)."""
  from mfm_jax.data.world import builder, sim  # pylint: disable=g-import-not-at-top
  spec = builder.get_builder(builder_config).builder_config.spec
  return {"color": sim.COLOR_NAMES, "shape": tuple(spec.shapes), "size": spec.size_names,
          "shape_table": tuple(sim.SHAPE_NAMES)}


def world_class_names(builder_config: str, labels: str) -> list[str]:
  """Class names in label order, e.g. ``["red sphere", "red cube", "green sphere", ...]``."""
  if labels not in LABELS:
    raise ValueError(f"data.labels={labels!r}: use one of {sorted(LABELS)}")
  attrs = world_attributes(builder_config)
  keys = LABELS[labels]
  names = []
  for combo in np.ndindex(*[len(attrs[k]) for k in keys]):
    words = dict(zip(keys, (attrs[k][i] for k, i in zip(keys, combo))))
    names.append(" ".join(words[k] for k in _NAME_ORDER if k in words))
  return names


def main_object(instance: np.ndarray, obj_mask: np.ndarray) -> int:
  """Slot of the object with the most pixels: instance [T, H, W] (k + 1 = slot k) -> int."""
  k = obj_mask.shape[0]
  counts = np.bincount(np.asarray(instance, np.int64).ravel(), minlength=k + 1)[1:k + 1]
  counts = np.where(obj_mask, counts, -1)
  return int(np.argmax(counts))


class WorldExamples:
  """Random-access world examples: ``len = clips * frames_per_clip``; see the module docstring.

  ``src[i]`` -> ``{"pixels": [K, H, W, 3] uint8, "caption": str, "label": int, "clip": int,
  "frames": [K] int}``.
  """

  def __init__(self, source, builder_config: str, labels: str = "shape_color",
               num_frames: int = 1, frames_per_clip: int = 1):
    if num_frames > 1 and frames_per_clip != 1:
      raise ValueError("data.frames_per_clip > 1 is for images (data.num_frames == 1)")
    self.source = source
    self.attrs = world_attributes(builder_config)
    self.keys = LABELS[labels]
    self.class_names = world_class_names(builder_config, labels)
    self.num_frames, self.per_clip = int(num_frames), int(frames_per_clip)

  def __len__(self) -> int:
    return len(self.source) * self.per_clip

  def frames(self, clip_frames: int, j: int) -> np.ndarray:
    if self.num_frames > 1:
      return pipeline.frame_indices(clip_frames, self.num_frames)
    return np.array([int((j + 0.5) * clip_frames / self.per_clip)])

  def label_of(self, record: dict, frames: np.ndarray) -> int:
    slot = main_object(np.asarray(record["instance"])[frames], np.asarray(record["obj_mask"]))
    shape_index = {self.attrs["shape_table"].index(s): i for i, s in enumerate(self.attrs["shape"])}
    ids = {"color": int(record["color_ids"][slot]), "size": int(record["size_ids"][slot]),
           "shape": shape_index[int(record["shape_ids"][slot])]}
    sizes = [len(self.attrs[k]) for k in self.keys]
    return int(np.ravel_multi_index([ids[k] for k in self.keys], sizes))

  def labels(self) -> np.ndarray:
    """[len(self)] int64 labels, reading each clip once."""
    out = []
    for c in range(len(self.source)):
      record = self.source[c]
      t = record["video"].shape[0]
      out += [self.label_of(record, self.frames(t, j)) for j in range(self.per_clip)]
    return np.asarray(out, np.int64)

  def __getitem__(self, i: int) -> dict:
    record = self.source[int(i) // self.per_clip]
    frames = self.frames(record["video"].shape[0], int(i) % self.per_clip)
    caption = record["caption"]
    return {"pixels": np.asarray(record["video"])[frames],
            "caption": caption.decode("utf-8") if isinstance(caption, bytes) else str(caption),
            "label": self.label_of(record, frames), "clip": int(i) // self.per_clip,
            "frames": frames}


@functools.lru_cache(maxsize=16)
def _world_labels(name, builder_config, data_dir, split, labels, num_frames, per_clip):
  return _world_source(name, builder_config, data_dir, split, labels, num_frames,
                       per_clip).labels()


def _world_source(name, builder_config, data_dir, split, labels, num_frames, per_clip):
  cfg = ml_collections.ConfigDict(dict(name=name, builder_config=builder_config,
                                       data_dir=data_dir))
  return WorldExamples(sources.source_from_config(cfg, split), builder_config, labels,
                       num_frames, per_clip)


# --- image folders -----------------------------------------------------------------------------
class FolderExamples:
  """``image_folder`` records in the world's fields (caption = the class prompt)."""

  def __init__(self, source, class_names, prompt: str):
    self.source, self.class_names, self.prompt = source, list(class_names), prompt

  def __len__(self) -> int:
    return len(self.source)

  def __getitem__(self, i: int) -> dict:
    record = self.source[int(i)]
    label = int(record["label"])
    return {"pixels": np.asarray(record["image"])[None], "label": label,
            "caption": self.prompt.format(self.class_names[label].replace("_", " "))}


def _folder(data_config, split: str, **kwargs):
  return sources.load_source(data_config.name, data_config.builder_config, data_config.data_dir,
                             split, manual_dir=data_config.get("manual_dir"),
                             on_bad_record=data_config.get("on_bad_record") or "raise", **kwargs)


def _folder_names(src) -> list[str]:
  names = getattr(src, "class_names", None)
  return list(names) if names is not None else list(
      src.dataset_info.features["label"].names)


# --- the source of a split -------------------------------------------------------------------
def load(data_config, split: str):
  """The random-access examples of a split (``"train"``: k-shot / class view applied).

  Returns an object with ``len``, ``[i]`` -> ``{"pixels", "caption", "label", ...}`` and
  ``class_names`` (the kept classes, in label order).
  """
  from mfm_jax.data.sources import image_folder  # pylint: disable=g-import-not-at-top
  name = _split(data_config, split)
  shots = int(data_config.shots) if split == "train" else 0
  classes = data_config.classes
  if not is_world(data_config):
    src = _folder(data_config, name, shots=shots or None, seed=data_config.shots_seed,
                  classes=classes)
    return FolderExamples(src, _folder_names(src), data_config.prompt)
  args = (data_config.name, data_config.builder_config, data_config.data_dir, name,
          data_config.labels, int(data_config.num_frames), int(data_config.frames_per_clip))
  src = _world_source(*args)
  if not shots and classes == "all":
    return src
  labels = _world_labels(*args)
  class_ids = image_folder.class_split(len(src.class_names), classes)
  if shots:
    indices = image_folder.kshot_indices(labels, shots, data_config.shots_seed, class_ids)
  else:
    indices = np.flatnonzero(np.isin(labels, class_ids))
  return image_folder.Subset(src, indices, {int(c): i for i, c in enumerate(class_ids)},
                             [src.class_names[c] for c in class_ids])


def class_names(data_config) -> list[str]:
  """Names of the classes of ``data_config.classes``, in label order."""
  if is_world(data_config):
    from mfm_jax.data.sources import image_folder  # pylint: disable=g-import-not-at-top
    names = world_class_names(data_config.builder_config, data_config.labels)
    return [names[c] for c in image_folder.class_split(len(names), data_config.classes)]
  return load(data_config, "train").class_names


def prompts(data_config, names=None) -> list[str]:
  """``data.prompt`` filled with each class name."""
  names = class_names(data_config) if names is None else names
  return [data_config.prompt.format(n.replace("_", " ")) for n in names]


@functools.lru_cache(maxsize=8)
def _caption_vocab_texts(name, builder_config, data_dir) -> tuple[str, ...]:
  return pipeline._train_captions(name, builder_config, data_dir)  # pylint: disable=protected-access


def make_tokenizer(data_config):
  """``bytes``; ``words`` (the world's train-caption vocabulary, or the class prompts' words of
  an image folder; other words map to UNK); ``clip:<dir>`` (CLIP BPE from vocab.json/merges.txt)."""
  kind, n = data_config.tokenizer, data_config.max_text_len
  if kind == "bytes":
    return tokenizer_lib.ByteTokenizer(n)
  if kind == "words":
    if is_world(data_config):
      texts = _caption_vocab_texts(data_config.name, data_config.builder_config,
                                   data_config.data_dir)
    else:
      texts = tuple(prompts(data_config))
    return tokenizer_lib.WordTokenizer.from_texts(texts, n)
  if kind.startswith("clip:"):
    return tokenizer_lib.CLIPTokenizer.from_dir(kind.partition(":")[2], max_len=n)
  raise ValueError(f"data.tokenizer={kind!r}: use bytes, words or clip:<dir>")


# --- preprocessing and batches -----------------------------------------------------------------
def resize_square(pixels: np.ndarray, size: int) -> np.ndarray:
  """[K, H, W, 3] uint8 -> [K, R, R, 3] float32 in [0, 255]: area average when R divides a square
  frame, else short side resized to R (bicubic) and a centre crop."""
  k, h, w, _ = pixels.shape
  if h == w and h % size == 0:
    return pipeline.resize_video(pixels.astype(np.float32), size)
  out = []
  scale = size / min(h, w)
  nh, nw = max(size, round(h * scale)), max(size, round(w * scale))
  top, left = (nh - size) // 2, (nw - size) // 2
  for frame in pixels:
    img = Image.fromarray(frame).resize((nw, nh), Image.BICUBIC)
    out.append(np.asarray(img, np.float32)[top:top + size, left:left + size])
  return np.stack(out)


class Preprocess(grain.transforms.Map):
  """One example -> the batch fields of the module docstring (picklable for grain workers)."""

  def __init__(self, resolution: int, num_frames: int, tokenizer, normalize: str = "clip"):
    if normalize not in ("clip", "unit"):
      raise ValueError(f"data.normalize={normalize!r}: use 'clip' or 'unit'")
    self.resolution, self.num_frames = int(resolution), int(num_frames)
    self.tokenizer, self.normalize = tokenizer, normalize

  def map(self, element: dict) -> dict:
    x = resize_square(np.asarray(element["pixels"]), self.resolution) / 255.0
    x = (x - CLIP_MEAN) / CLIP_STD if self.normalize == "clip" else 2.0 * x - 1.0
    ids, mask = self.tokenizer.encode([element["caption"]])
    key = "image" if self.num_frames == 1 else "video"
    return {key: (x[0] if key == "image" else x).astype(np.float32), "text_ids": ids[0],
            "text_mask": mask[0], "label": np.int32(element["label"])}


def _preprocess(data_config, tokenizer) -> Preprocess:
  return Preprocess(data_config.resolution, data_config.num_frames, tokenizer,
                    data_config.normalize)


def make_iterator(data_config, split: str, batch_size: int, seed: int, tokenizer,
                  shard_index: int = 0, shard_count: int = 1) -> grain.DatasetIterator:
  """A checkpointable iterator of per-process batches (``pipeline.make_iterator``'s contract:
  train is infinite and reshuffled every epoch; process i of P takes batches i, i+P, ...)."""
  if not 0 <= shard_index < shard_count or batch_size < 1:
    raise ValueError(f"shard_index={shard_index} of {shard_count}, batch_size={batch_size}")
  ds = grain.MapDataset.source(load(data_config, split))
  if len(ds) < batch_size * shard_count:
    raise ValueError(f"split {split!r} of {data_config.name} has {len(ds)} examples: too few "
                     f"for {shard_count} shard(s) of batch_size={batch_size}")
  if split == "train":
    ds = ds.shuffle(seed=seed).repeat(None)
  ds = ds.map(_preprocess(data_config, tokenizer)).batch(batch_size, drop_remainder=True)
  ds = ds[shard_index::shard_count]
  it = ds.to_iter_dataset(grain.ReadOptions(num_threads=data_config.read_threads,
                                            prefetch_buffer_size=2))
  if data_config.worker_count > 0:
    pipeline._ensure_flags_parsed()  # pylint: disable=protected-access
    it = it.mp_prefetch(grain.MultiprocessingOptions(num_workers=data_config.worker_count))
  return iter(it)


def eval_batches(data_config, split: str, batch_size: int, tokenizer, limit: int = 0):
  """One ordered pass over a split: yields ``(batch, n_valid)``; the last batch is padded (by
  repeating its last example) to ``batch_size`` so every batch has one shape."""
  src = load(data_config, split)
  prep = _preprocess(data_config, tokenizer)
  n = len(src) if not limit else min(limit, len(src))
  for start in range(0, n, batch_size):
    rows = [prep.map(src[i]) for i in range(start, min(start + batch_size, n))]
    valid = len(rows)
    rows += [rows[-1]] * (batch_size - valid)
    yield {k: np.stack([r[k] for r in rows]) for k in rows[0]}, valid


def num_batches(n: int, batch_size: int) -> int:
  return math.ceil(n / batch_size)
