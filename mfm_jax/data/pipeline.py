"""grain input pipelines over the world_video TFDS source.

The data flow of `make_iterator`:

  load_source(name, builder_config, data_dir, split)     random access, TFDS
  -> MapDataset.source
  -> (train) .shuffle(seed).repeat()                     reshuffled every epoch
  -> .map(Preprocess)   frames, resolution, [-1, 1], tokens
  -> .batch(B, drop_remainder=True)[shard_index::shard_count]
  -> .to_iter_dataset() -> (worker_count > 0) .mp_prefetch()

Process i of P takes the batches i, i+P, ...: global batch s (P*B examples in the global order)
does not depend on the number of processes, and process i holds its rows [i*B, (i+1)*B), so a
P-process run sees the same global batches as a one-process run with the same global batch size.
Batches are defined on the MapDataset, so they do not depend on `worker_count`. The iterator
supports `get_state()` / `set_state()` (grain checkpointing); a restored iterator yields exactly
the same batches. Every batch is full (drop_remainder), validation included: the engine shards
batches over devices.

Batches are dicts of numpy arrays, B = per-process batch size:
  video:     [B, T, H, W, 3] float32 in [-1, 1]
  text_ids:  [B, L] int32      (ByteTokenizer, L = max_text_len)
  text_mask: [B, L] bool
  centers:   [B, T, K, 2] float32 normalised (x, y), same frames as video
  colors:    [B, K, 3] uint8
  obj_mask:  [B, K] bool
  loss_weight: [B, T, H, W, 1] float32 (only with data.object_weight > 0): 1 + w * the fraction
             of the pixel covered by objects (from the record's instance masks), for a diffusion
             loss that is not dominated by the empty floor

The source is built on first use (`load_source`). In a multi-process run on a
shared file system, build it once first (e.g. on process 0 before the other
processes make their iterators) so that processes do not build it twice.
"""
from __future__ import annotations

import functools

from absl import flags
import grain
import ml_collections
import numpy as np

from mfm_jax.data import tokenizer as tokenizer_lib
from mfm_jax.data import sources
from mfm_jax.data.world import builder as world_builder
from mfm_jax.data.world import path_captions


def default_data_config() -> ml_collections.ConfigDict:
  """The data config of the smoke world (every field documented)."""
  c = ml_collections.ConfigDict()
  c.name = "world_video"         # TFDS dataset name (embedded: world_video)
  c.builder_config = "smoke"     # smoke / small / full
  c.view = 0                     # world_multiview / world_qa: the camera view; -1: every view
  c.data_dir = ml_collections.config_dict.placeholder(str)  # None: cache
  c.num_frames = 8               # frames kept (temporal stride from the clip)
  c.resolution = 32              # output H = W
  c.tokenizer = "bytes"          # bytes | words (vocabulary of the train split's captions)
  c.max_text_len = 384           # tokens incl. BOS/EOS; captions are <~ 350 B, <= 77 words
  c.object_weight = 0.0          # > 0: a per-pixel loss weight 1 + w * (object coverage)
  c.captions = "world"           # world: the record's caption | path: start/end floor cells
  c.worker_count = 0             # grain worker processes (0: in process)
  c.read_threads = 2             # grain reader threads per process
  return c


def frame_indices(clip_frames: int, num_frames: int) -> np.ndarray:
  """Temporal subsampling: stride clip_frames // num_frames from frame 0."""
  if not 1 <= num_frames <= clip_frames:
    raise ValueError(f"data.num_frames={num_frames} must be in "
                     f"[1, {clip_frames}] (frames in a clip)")
  return np.arange(num_frames) * (clip_frames // num_frames)


def _resize_axis(x: np.ndarray, size: int, axis: int) -> np.ndarray:
  """Area average if size divides the axis, else linear interpolation."""
  n = x.shape[axis]
  if n == size:
    return x
  if n % size == 0:
    shape = x.shape[:axis] + (size, n // size) + x.shape[axis + 1:]
    return x.reshape(shape).mean(axis + 1)
  pos = np.clip((np.arange(size) + 0.5) * n / size - 0.5, 0, n - 1)
  lo = np.floor(pos).astype(np.int64)
  hi = np.minimum(lo + 1, n - 1)
  frac = (pos - lo).reshape((-1,) + (1,) * (x.ndim - axis - 1))
  return (np.take(x, lo, axis) * (1 - frac)
          + np.take(x, hi, axis) * frac).astype(x.dtype)


def resize_video(video: np.ndarray, resolution: int) -> np.ndarray:
  """video [T, H, W, C] float -> [T, R, R, C] (area average when R | H, W)."""
  return _resize_axis(_resize_axis(video, resolution, 1), resolution, 2)


class Preprocess(grain.transforms.Map):
  """One TFDS record -> model example (picklable for grain workers)."""

  def __init__(self, num_frames: int, resolution: int, tokenizer, object_weight: float = 0.0,
               captioner=None):
    self.num_frames = int(num_frames)
    self.resolution = int(resolution)
    self.tokenizer = tokenizer
    self.object_weight = float(object_weight)
    self.captioner = captioner     # None: the record's caption; else record -> str

  def caption_of(self, element: dict) -> str:
    """The conditioning caption of a record (its own, or the captioner's)."""
    if self.captioner is not None:
      return self.captioner(element)
    caption = element["caption"]
    return caption.decode("utf-8") if isinstance(caption, bytes) else str(caption)

  def map(self, element: dict) -> dict:
    """Returns the unbatched fields of the module docstring."""
    try:
      raw, centers = element["video"], element["centers"]
      caption = self.caption_of(element)
      colors, obj_mask = element["colors"], element["obj_mask"]
    except KeyError as e:
      raise KeyError(f"world_video record lacks field {e} (has "
                     f"{sorted(element)})") from None
    idx = frame_indices(raw.shape[0], self.num_frames)
    video = raw[idx].astype(np.float32) / 127.5 - 1.0
    video = resize_video(video, self.resolution)
    ids = self.tokenizer.encode_one(caption)
    out = {
        "video": video.astype(np.float32),
        "text_ids": ids,
        "text_mask": ids != tokenizer_lib.PAD,
        "centers": np.asarray(centers, np.float32)[idx],
        "colors": np.asarray(colors, np.uint8),
        "obj_mask": np.asarray(obj_mask, bool),
    }
    if self.object_weight > 0:
      if "instance" not in element:
        raise KeyError(f"data.object_weight={self.object_weight} needs instance masks, but the "
                       f"record has no 'instance' field (has {sorted(element)})")
      cover = (np.asarray(element["instance"])[idx] > 0).astype(np.float32)[..., None]
      out["loss_weight"] = 1.0 + self.object_weight * resize_video(cover, self.resolution)
    return out


def _ensure_flags_parsed() -> None:
  """grain's worker processes read absl flags (e.g. its profiling flags).

  Under `absl.app.run` they are parsed already; in tests, notebooks and
  plain scripts they are not, and grain fails with UnparsedFlagAccessError.
  Marking the (default) flags as parsed is the documented workaround; a
  later `app.run` parses argv again as usual.
  """
  if not flags.FLAGS.is_parsed():
    flags.FLAGS.mark_as_parsed()


def _source(data_config, split: str):
  return sources.source_from_config(data_config, split)


@functools.lru_cache(maxsize=8)
def _train_captions(name: str, builder_config: str, data_dir: str | None) -> tuple[str, ...]:
  src = sources.load_source(name=name, config=builder_config, data_dir=data_dir, split="train")
  return tuple(sources.world_views.all_captions(src))   # every view's captions


def make_tokenizer(data_config):
  """The tokenizer named by ``data_config.tokenizer``: ``bytes`` or ``words`` (the vocabulary
  of the train split's captions, so it is the same on every process and every restart)."""
  kind = data_config.get("tokenizer", "bytes")
  if kind == "bytes":
    return tokenizer_lib.ByteTokenizer(data_config.max_text_len)
  if kind == "words" and captions_kind(data_config) == "path":
    spec = world_spec(data_config)
    return tokenizer_lib.WordTokenizer(path_captions.vocabulary(spec.size_names),
                                       data_config.max_text_len)
  if kind == "words":
    caps = _train_captions(data_config.name, data_config.builder_config, data_config.data_dir)
    return tokenizer_lib.WordTokenizer.from_texts(caps, data_config.max_text_len)
  raise ValueError(f"data.tokenizer={kind!r}: use 'bytes' or 'words'")


def captions_kind(data_config) -> str:
  kind = data_config.get("captions", "world")
  if kind not in ("world", "path"):
    raise ValueError(f"data.captions={kind!r}: use 'world' (the record's caption) or 'path' "
                     f"(start/end floor cells, data/world/path_captions.py)")
  return kind


def world_spec(data_config):
  """The WorldSpec of a world_video builder config (what path captions need)."""
  if data_config.name != "world_video":
    raise ValueError(f"data.captions='path' is defined for world_video records; data.name="
                     f"{data_config.name!r}")
  specs = {c.name: c.spec for c in world_builder.CONFIGS}
  if data_config.builder_config not in specs:
    raise ValueError(f"data.builder_config={data_config.builder_config!r} is not a world_video "
                     f"config ({sorted(specs)})")
  return specs[data_config.builder_config]


def _preprocess(data_config) -> Preprocess:
  captioner = None
  if captions_kind(data_config) == "path":
    captioner = path_captions.PathCaptioner(world_spec(data_config))
  return Preprocess(data_config.num_frames, data_config.resolution,
                    make_tokenizer(data_config), data_config.get("object_weight", 0.0),
                    captioner)


def make_dataset(data_config, split: str, batch_size: int, seed: int,
                 shard_index: int = 0, shard_count: int = 1
                 ) -> grain.IterDataset:
  """The grain IterDataset behind `make_iterator` (same arguments)."""
  if not 0 <= shard_index < shard_count:
    raise ValueError(f"shard_index={shard_index} must be in [0, "
                     f"shard_count={shard_count})")
  if batch_size < 1:
    raise ValueError(f"batch_size must be >= 1, got {batch_size}")
  train = split.startswith("train")
  ds = grain.MapDataset.source(_source(data_config, split))
  if len(ds) < batch_size * shard_count:
    raise ValueError(
        f"split {split!r} of {data_config.name}/{data_config.builder_config} "
        f"has {len(ds)} examples: too few for {shard_count} shard(s) of "
        f"batch_size={batch_size}")
  if train:
    ds = ds.shuffle(seed=seed).repeat(None)
  # Global order -> batches of B -> process i takes batches i, i+P, i+2P, ...: the global batch
  # s (B*P examples) is the same whatever the number of processes, and process i holds its rows
  # [i*B, (i+1)*B). Elements are only decoded for the batches this process reads.
  ds = ds.map(_preprocess(data_config)).batch(batch_size, drop_remainder=True)
  ds = ds[shard_index::shard_count]
  read = grain.ReadOptions(num_threads=data_config.get("read_threads", 2),
                           prefetch_buffer_size=2)
  it = ds.to_iter_dataset(read_options=read)
  if data_config.worker_count > 0:
    _ensure_flags_parsed()
    it = it.mp_prefetch(grain.MultiprocessingOptions(
        num_workers=data_config.worker_count))
  return it


def make_iterator(data_config, split: str, batch_size: int, seed: int,
                  shard_index: int = 0, shard_count: int = 1
                  ) -> grain.DatasetIterator:
  """A checkpointable iterator of per-process batches.

  Args:
    data_config: ConfigDict as `default_data_config()`.
    split: "train" (infinite, reshuffled every epoch, drop_remainder) or
      "validation" (one pass in order, last batch may be smaller).
    batch_size: per-process batch size B.
    seed: shuffle seed (train).
    shard_index: this process (jax.process_index()).
    shard_count: number of processes (jax.process_count()).

  Returns:
    A grain DatasetIterator of batch dicts (see module docstring) with
    get_state() / set_state(). A state restores into an iterator made with
    the same arguments and data_config (the state's layout differs with and
    without worker processes). Call close() on it when worker_count > 0.
  """
  return iter(make_dataset(data_config, split, batch_size, seed,
                           shard_index, shard_count))


def load_examples(data_config, split: str, n: int) -> list[dict]:
  """The first n examples of a split, unbatched, for evaluation / plots.

  Returns:
    list of dicts with the batch fields (without the B axis) plus caption
    (str), raw_video ([T0, H0, W0, 3] uint8, the stored clip), seed, index.
  """
  src = _source(data_config, split)
  prep = _preprocess(data_config)
  out = []
  for i in range(min(n, len(src))):
    record = src[i]
    ex = prep.map(record)
    ex["caption"] = prep.caption_of(record)     # the conditioning caption
    ex["raw_video"] = np.asarray(record["video"], np.uint8)
    ex["seed"] = int(record["seed"])
    ex["index"] = int(record["index"])
    out.append(ex)
  return out
