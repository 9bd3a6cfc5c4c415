"""Writes a world split as real files: mp4 videos and benchmark-schema JSON.

  DIR/videos/<video_id>.mp4           view 0 of every clip (exo or ego)
  DIR/videos/<video_id>_view<k>.mp4   views k = 1..K-1 (with views > 1)
  DIR/mmworld.json                    list of MMWorld video-level records
  DIR/vlm4d.json                      list of VLM4D question records
  DIR/cameras.json                    {video_id: {"intrinsics": [V][3][3],
                                       "world_to_camera": [V][T][4][4]}}

Clips are those of the world_qa builder's "validation" split of the config
matching `size` (split seeds, so an export never overlaps training clips)
with `views` orbit views (ego clips only when views == 1), re-based on
`seed`. The bytes depend only on the arguments: the clips are deterministic
by seed, JSON is written with sorted keys, and the mp4 encoder is pinned
(libx264, one thread, fixed CRF/preset/GOP, bit-exact muxing, no metadata).
"""
from __future__ import annotations

import dataclasses
import json
import multiprocessing
import os

import imageio.v2 as imageio
import numpy as np

from mfm_jax.data.world import builder_v2
from mfm_jax.data.world import formats

SIZES = {"smoke": 8, "small": 200, "full": 2000}
# Pinned encoder settings: same bytes for the same frames.
FFMPEG_PARAMS = ("-preset", "medium", "-crf", "16", "-g", "16", "-threads",
                 "1", "-x264-params", "threads=1:sliced-threads=0",
                 "-fflags", "+bitexact", "-flags:v", "+bitexact",
                 "-map_metadata", "-1")


def write_mp4(path: str, frames: np.ndarray, fps: float) -> None:
  """Writes [T, H, W, 3] uint8 frames (H, W multiples of 16 kept as is)."""
  frames = np.asarray(frames)
  if frames.ndim != 4 or frames.shape[-1] != 3 or frames.dtype != np.uint8:
    raise ValueError(f"write_mp4 {path}: need [T, H, W, 3] uint8 frames, "
                     f"got {frames.shape} {frames.dtype}")
  with imageio.get_writer(path, format="FFMPEG", fps=fps, codec="libx264",
                          pixelformat="yuv420p", quality=None,
                          macro_block_size=16,
                          ffmpeg_params=list(FFMPEG_PARAMS),
                          ffmpeg_log_level="error") as writer:
    for frame in frames:
      writer.append_data(frame)


def _export_clip(args) -> tuple[dict, list[dict], str, dict]:
  cfg, index, out = args
  ep, vid = builder_v2.make_episode(cfg, "validation", index, "world")
  url = f"videos/{vid}.mp4"
  for v, frames in enumerate(ep.frames):
    name = f"{vid}.mp4" if v == 0 else f"{vid}_view{v}.mp4"
    write_mp4(os.path.join(out, "videos", name), frames["rgb"],
              cfg.spec.fps)
  mm, v4 = formats.clip_questions(ep)
  cams = {"intrinsics": [tr[0].intrinsics.round(6).tolist()
                         for tr in ep.tracks],
          "world_to_camera": [[c.world_to_camera.round(6).tolist()
                               for c in tr] for tr in ep.tracks]}
  return (formats.mmworld_record(vid, url, ep.caption, mm),
          formats.vlm4d_records(vid, url, bool(ep.ego_motion), v4), vid, cams)


def export(out: str, size: str = "smoke", views: int = 1, seed: int = 0,
           num_workers: int | None = None) -> dict:
  """Writes the files (see the module docstring). Returns counts."""
  if size not in SIZES:
    raise ValueError(f"make_world: unknown size {size!r}; known: "
                     f"{sorted(SIZES)}")
  if views < 1:
    raise ValueError(f"make_world: views={views} must be >= 1")
  base = next(c for c in builder_v2.QA_CONFIGS if c.name == size)
  cfg = dataclasses.replace(base, num_views=views, base_seed=seed,
                            ego_fraction=base.ego_fraction if views == 1
                            else 0.0)
  os.makedirs(os.path.join(out, "videos"), exist_ok=True)
  jobs = [(cfg, i, out) for i in range(SIZES[size])]
  workers = max(1, min(num_workers or os.cpu_count() or 1, len(jobs)))
  if workers == 1:
    results = [_export_clip(j) for j in jobs]
  else:
    with multiprocessing.get_context("spawn").Pool(workers) as pool:
      results = pool.map(_export_clip, jobs, chunksize=4)
  mmworld = [r[0] for r in results]
  vlm4d = [q for r in results for q in r[1]]
  cameras = {r[2]: r[3] for r in results}
  for name, obj in (("mmworld.json", mmworld), ("vlm4d.json", vlm4d),
                    ("cameras.json", cameras)):
    with open(os.path.join(out, name), "w", encoding="utf-8") as f:
      json.dump(obj, f, indent=1, sort_keys=True)
      f.write("\n")
  return {"videos": len(results) * views, "mmworld_questions":
          sum(len(r["questions"]) for r in mmworld), "vlm4d_questions":
          len(vlm4d)}
