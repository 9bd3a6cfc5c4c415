"""One world clip as a dict of numpy arrays: simulate, render, caption.

`generate_clip(seed, spec)` is the single entry point used by the TFDS
builder, the tests and the evaluation code; the same seed always gives the
same clip. `clip_seed(base_seed, split, index)` derives the per-clip seeds of
a dataset split.
"""
from __future__ import annotations

import numpy as np

from mfm_jax.data.world import camera as camera_lib
from mfm_jax.data.world import captions
from mfm_jax.data.world import render
from mfm_jax.data.world import sim

SPLIT_IDS = {"train": 0, "validation": 1, "test": 2}
# Step used to measure image velocities (seconds).
_PROBE_DT = 0.05


def clip_seed(base_seed: int, split: str, index: int) -> int:
  """Seed of clip `index` of `split`, independent across splits and bases."""
  if split not in SPLIT_IDS:
    raise ValueError(f"clip_seed: unknown split {split!r}; "
                     f"known: {sorted(SPLIT_IDS)}")
  seq = np.random.SeedSequence([base_seed, SPLIT_IDS[split], index])
  return int(seq.generate_state(1, np.uint32)[0])


def generate_clip(seed: int, spec: sim.WorldSpec = sim.WorldSpec()) -> dict:
  """Simulates and renders one clip.

  Args:
    seed: the clip seed (any non-negative int).
    spec: the world spec; K = spec.max_objects, T = spec.num_frames.

  Returns:
    dict with
      video: [T, H, W, 3] uint8.
      caption: str.
      centers: [T, K, 2] float32, projected 3D object centres, normalised
        image coordinates (x right, y down, in [0, 1] inside the image);
        0 for padding.
      colors: [K, 3] uint8, palette rgb of each object; 0 for padding.
      obj_mask: [K] bool.
      num_objects: int.
      depth: [T, H, W] float32 camera z (0 where nothing is hit).
      instance: [T, H, W] uint8, 0 background, k + 1 for object k.
      visible: [T, K] bool, object k covers at least one pixel in frame t.
      positions: [T, K, 3] float32 world centres (z up, ground z = 0).
      shape_ids, color_ids, size_ids: [K] int32 (indices into
        sim.SHAPE_NAMES, sim.COLOR_NAMES / sim.PALETTE, sim.SIZE_NAMES).
      seed: int.
  """
  scene = sim.simulate(seed, spec)
  cam = camera_lib.world_camera(spec)
  frames = render.render(scene, cam)
  mask = scene.mask
  centers = cam.normalize(cam.project(scene.positions))
  centers = np.where(mask[None, :, None], centers, 0.0).astype(np.float32)
  ahead = scene.positions + scene.velocities * _PROBE_DT
  image_velocity = (cam.normalize(cam.project(ahead)) - centers) / _PROBE_DT
  image_velocity = np.where(mask[None, :, None], image_velocity, 0.0)
  k = mask.shape[0]
  ids = np.arange(1, k + 1, dtype=np.uint8)
  visible = np.any(frames["instance"][:, None] == ids[None, :, None, None],
                   axis=(-2, -1))
  obj = scene.objects
  colors = np.where(mask[:, None], sim.palette_rgb()[obj.color], 0)
  return {
      "video": frames["rgb"],
      "caption": captions.describe(scene, centers, image_velocity),
      "centers": centers,
      "colors": colors.astype(np.uint8),
      "obj_mask": mask.copy(),
      "num_objects": scene.num_objects,
      "depth": frames["depth"],
      "instance": frames["instance"],
      "visible": visible,
      "positions": scene.positions,
      "shape_ids": obj.shape.astype(np.int32),
      "color_ids": obj.color.astype(np.int32),
      "size_ids": obj.size.astype(np.int32),
      "seed": int(seed),
  }
