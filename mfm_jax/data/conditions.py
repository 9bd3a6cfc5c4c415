"""Condition maps for multi-condition control (FlexEControl): depth, Canny edges, instance masks.

Every condition is a 3-channel map ``[T, H, W, 3]`` in [-1, 1] (one-channel maps are repeated),
so one Kronecker-shared stem can embed them all (``models/control.py``):

* ``depth``: inverse camera depth (disparity) scaled to [0, 1] between ``far`` (0) and ``near``
  (1), then to [-1, 1]; pixels that hit nothing are -1. World records store no depth: it is
  re-rendered from the record's seed (``generate.generate_clip(seed, spec)``, the same simulator
  and renderer as the TFDS builder; ``world_depth`` checks the re-rendered video equals the stored
  one). Cost: ~15 ms per 16 x 64 x 64 clip on one CPU core (measured, /tmp/notes/flex.md).
* ``edges``: Canny edges (OpenCV ``cv2.Canny`` on the grey frame, thresholds ``low`` / ``high``)
  of the frames at the model's resolution: 1 on an edge, -1 elsewhere. Works on any RGB frames
  (``canny_edges``), world or real.
* ``instance``: a segmentation-map style image: every object's pixels (resized coverage >= 0.5)
  painted with its palette colour (in [-1, 1]), the rest 0.

Real RGB frames (no simulator): only ``edges`` can be computed (``real_conditions``); depth and
instance maps need a depth / segmentation model we do not ship, and a caller passes them or
drops them (the control branch takes any subset).

``ConditionPreprocess`` extends ``pipeline.Preprocess`` with these fields (batched by
``make_iterator``): ``cond_depth``, ``cond_edges``, ``cond_instance`` [B, T, R, R, 3] and
``obj_masks`` [B, T, R, R, K] (each object's pixel coverage in [0, 1], for mask IoU, the
cross-attention supervision and the masked diffusion loss) and ``obj_tokens`` [B, K, 2] int32
(the caption token positions of object k's colour and shape words, -1 where absent or when the
tokenizer is not word-level).
"""
from __future__ import annotations

import cv2
import grain
import numpy as np

from mfm_jax.data import pipeline
from mfm_jax.data import tokenizer as tokenizer_lib
from mfm_jax.data.world import generate
from mfm_jax.data.world import sim

CONDITIONS = ("depth", "edges", "instance")


def to_uint8(frames) -> np.ndarray:
  """uint8 frames, or float frames in [-1, 1] -> uint8 [..., 3]."""
  frames = np.asarray(frames)
  if frames.dtype == np.uint8:
    return frames
  return np.clip(np.round((frames.astype(np.float32) + 1.0) * 127.5), 0, 255).astype(np.uint8)


def canny_edges(frames, low: float = 50.0, high: float = 150.0) -> np.ndarray:
  """frames: [T, H, W, 3] uint8 or float in [-1, 1] -> [T, H, W] bool Canny edges (OpenCV)."""
  frames = to_uint8(frames)
  if frames.ndim != 4 or frames.shape[-1] != 3:
    raise ValueError(f"canny_edges: frames must be [T, H, W, 3], got {frames.shape}")
  grey = [cv2.cvtColor(np.ascontiguousarray(f), cv2.COLOR_RGB2GRAY) for f in frames]
  return np.stack([cv2.Canny(g, low, high) > 0 for g in grey])


def depth_map(depth, near: float = 6.0, far: float = 16.0) -> np.ndarray:
  """depth: [T, H, W] camera z (0 = no hit) -> [T, H, W] disparity in [0, 1] (no hit: 0)."""
  depth = np.asarray(depth, np.float32)
  if not 0 < near < far:
    raise ValueError(f"depth_map: need 0 < near < far, got near={near}, far={far}")
  safe = np.where(depth > 0, depth, far)
  disp = (1.0 / safe - 1.0 / far) / (1.0 / near - 1.0 / far)
  return np.where(depth > 0, np.clip(disp, 0.0, 1.0), 0.0).astype(np.float32)


def world_depth(record: dict, spec, verify: bool = True) -> np.ndarray:
  """Re-renders a world record from its seed: [T0, H0, W0] float32 camera z (0 = no hit).

  ``verify``: check the re-rendered video equals the stored one (a wrong ``spec`` fails here).
  """
  if "seed" not in record:
    raise KeyError(f"world_depth: the record has no 'seed' field (has {sorted(record)})")
  clip = generate.generate_clip(int(record["seed"]), spec)
  if verify and "video" in record and not np.array_equal(clip["video"], record["video"]):
    raise ValueError(f"world_depth: re-rendering seed {int(record['seed'])} with {spec} does not "
                     "reproduce the stored video (wrong world spec?)")
  return clip["depth"]


def object_masks(instance, num_objects: int, resolution: int) -> np.ndarray:
  """instance: [T, H0, W0] ids (0 = background, k + 1 = object k) -> [T, R, R, K] coverage."""
  instance = np.asarray(instance)
  ids = np.arange(1, num_objects + 1)
  onehot = (instance[..., None] == ids).astype(np.float32)
  return pipeline.resize_video(onehot, resolution).astype(np.float32)


def instance_map(masks, colors) -> np.ndarray:
  """masks: [T, H, W, K] coverage; colors: [K, 3] uint8 -> [T, H, W, 3] in [-1, 1]."""
  masks = np.asarray(masks, np.float32)
  rgb = np.asarray(colors, np.float32) / 127.5 - 1.0                  # [K, 3]
  hard = masks >= 0.5
  painted = np.einsum("thwk,kc->thwc", hard.astype(np.float32), rgb)
  return np.where(hard.any(-1, keepdims=True), painted, 0.0).astype(np.float32)


def _three(x: np.ndarray) -> np.ndarray:
  return np.repeat(x[..., None], 3, axis=-1).astype(np.float32)


def world_conditions(record: dict, spec, num_frames: int, resolution: int,
                     edge_thresholds=(50.0, 150.0), verify: bool = True) -> dict:
  """The condition fields (module docstring) of one world record, unbatched."""
  for key in ("video", "instance", "colors", "seed"):
    if key not in record:
      raise KeyError(f"world_conditions: the record lacks {key!r} (has {sorted(record)})")
  raw = np.asarray(record["video"])
  idx = pipeline.frame_indices(raw.shape[0], num_frames)
  frames = pipeline.resize_video(raw[idx].astype(np.float32) / 127.5 - 1.0, resolution)
  depth = world_depth(record, spec, verify)[idx]
  disp = pipeline.resize_video(depth_map(depth)[..., None], resolution)[..., 0]
  hit = pipeline.resize_video((depth > 0).astype(np.float32)[..., None], resolution)[..., 0]
  colors = np.asarray(record["colors"], np.uint8)
  masks = object_masks(np.asarray(record["instance"])[idx], colors.shape[0], resolution)
  edges = canny_edges(frames, *edge_thresholds)
  return {
      "cond_depth": _three(np.where(hit > 0.5, 2.0 * disp - 1.0, -1.0)),
      "cond_edges": _three(np.where(edges, 1.0, -1.0)),
      "cond_instance": instance_map(masks, colors),
      "obj_masks": masks,
  }


def real_conditions(frames, edge_thresholds=(50.0, 150.0)) -> dict:
  """Conditions of real RGB frames [T, H, W, 3] (uint8 or [-1, 1]): only ``cond_edges``."""
  return {"cond_edges": _three(np.where(canny_edges(frames, *edge_thresholds), 1.0, -1.0))}


def object_tokens(caption: str, color_ids, shape_ids, obj_mask, tokenizer) -> np.ndarray:
  """[K, 2] token positions of each object's colour word and the shape word after it (BOS at 0),
  -1 where absent (padding objects, words missing, or a non word-level tokenizer)."""
  k = len(obj_mask)
  out = np.full((k, 2), -1, np.int32)
  if not isinstance(tokenizer, tokenizer_lib.WordTokenizer):
    return out
  words = tokenizer_lib.split_words(caption)[:tokenizer.max_len - 2]
  for i in range(k):
    color = sim.COLOR_NAMES[int(color_ids[i])]
    if not obj_mask[i] or color not in words:
      continue
    j = words.index(color)
    out[i, 0] = 1 + j
    if j + 1 < len(words) and words[j + 1] == sim.SHAPE_NAMES[int(shape_ids[i])]:
      out[i, 1] = 2 + j
  return out


class ConditionPreprocess(grain.transforms.Map):
  """One world_video record -> ``pipeline.Preprocess``'s example plus the condition fields."""

  def __init__(self, base: pipeline.Preprocess, spec, edge_thresholds=(50.0, 150.0)):
    self.base, self.spec, self.edge_thresholds = base, spec, tuple(edge_thresholds)

  def map(self, element: dict) -> dict:
    out = self.base.map(element)
    out.update(world_conditions(element, self.spec, self.base.num_frames, self.base.resolution,
                                self.edge_thresholds))
    out["obj_tokens"] = object_tokens(self.base.caption_of(element), element["color_ids"],
                                      element["shape_ids"], element["obj_mask"],
                                      self.base.tokenizer)
    return out


def make_preprocess(data_config) -> ConditionPreprocess:
  """``ConditionPreprocess`` for a world_video data config (``pipeline.default_data_config``)."""
  return ConditionPreprocess(pipeline._preprocess(data_config),  # pylint: disable=protected-access
                             pipeline.world_spec(data_config),
                             tuple(data_config.get("edge_thresholds", (50.0, 150.0))))


def make_iterator(data_config, split: str, batch_size: int, seed: int, shard_index: int = 0,
                  shard_count: int = 1):
  """``pipeline.make_iterator`` with the condition fields (same batching and sharding)."""
  if not 0 <= shard_index < shard_count:
    raise ValueError(f"shard_index={shard_index} must be in [0, shard_count={shard_count})")
  src = pipeline._source(data_config, split)  # pylint: disable=protected-access
  ds = grain.MapDataset.source(src)
  if len(ds) < batch_size * shard_count:
    raise ValueError(f"split {split!r} has {len(ds)} examples: too few for {shard_count} "
                     f"shard(s) of batch_size={batch_size}")
  if split.startswith("train"):
    ds = ds.shuffle(seed=seed).repeat(None)
  ds = ds.map(make_preprocess(data_config)).batch(batch_size, drop_remainder=True)
  ds = ds[shard_index::shard_count]
  read = grain.ReadOptions(num_threads=data_config.get("read_threads", 2), prefetch_buffer_size=2)
  return iter(ds.to_iter_dataset(read_options=read))


def load_examples(data_config, split: str, n: int) -> list[dict]:
  """``pipeline.load_examples`` with the condition fields added to every example."""
  src = pipeline._source(data_config, split)  # pylint: disable=protected-access
  prep = make_preprocess(data_config)
  out = pipeline.load_examples(data_config, split, n)
  for i, ex in enumerate(out):
    record = src[i]
    ex.update(world_conditions(record, prep.spec, prep.base.num_frames, prep.base.resolution,
                               prep.edge_thresholds))
    ex["obj_tokens"] = object_tokens(ex["caption"], record["color_ids"], record["shape_ids"],
                                     record["obj_mask"], prep.base.tokenizer)
  return out
