"""Times world clip generation and the GT trajectory-detection error.

  python tools/gen_world_bench.py                  # 1,000 clips, all cores
  python tools/gen_world_bench.py --clips=200 --workers=1 --build=False

Reports: clips/s of `generate_clip` on a process pool (16x64x64 by default),
the time to build the `small` TFDS config (1,000 + 64 clips) into a temporary
data_dir, and the trajectory error of the metric on ground-truth videos.
"""
from __future__ import annotations

import multiprocessing
import os
import tempfile
import time

from absl import app
from absl import flags
import numpy as np

from mfm_jax.data.world import builder
from mfm_jax.data.world import generate
from mfm_jax.data.world import sim
from mfm_jax.eval import trajectory

_CLIPS = flags.DEFINE_integer("clips", 1000, "clips to generate")
_WORKERS = flags.DEFINE_integer("workers", 0, "processes (0: all cores)")
_BUILD = flags.DEFINE_bool("build", True, "also time the `small` TFDS build")
_EVAL = flags.DEFINE_integer("eval_clips", 200, "clips for the GT error")


def _gt_error(seed: int) -> tuple[float, float, float]:
  clip = generate.generate_clip(seed, sim.WorldSpec())
  r = trajectory.trajectory_error(clip["video"], clip["centers"],
                                  clip["colors"], clip["obj_mask"])
  return r["error"], r["detection_rate"], len(clip["caption"])


def main(argv):
  del argv
  workers = _WORKERS.value or os.cpu_count() or 1
  spec = sim.WorldSpec()
  items = [(i, generate.clip_seed(0, "train", i)) for i in range(_CLIPS.value)]
  chunks = [(items[i:i + 16], spec) for i in range(0, len(items), 16)]
  ctx = multiprocessing.get_context("spawn")
  start = time.perf_counter()
  with ctx.Pool(workers) as pool:
    n = sum(len(c) for c in pool.imap(builder._make_chunk, chunks))  # pylint: disable=protected-access
  gen_s = time.perf_counter() - start
  print(f"generate_clip: {n} clips of {spec.num_frames}x{spec.height}x"
        f"{spec.width} on {workers} processes: {gen_s:.1f} s "
        f"({n / gen_s:.1f} clips/s, incl. pool start-up)")
  if _BUILD.value:
    with tempfile.TemporaryDirectory() as tmp:
      start = time.perf_counter()
      src = builder.load_source(config="small", data_dir=tmp,
                                num_workers=workers)
      print(f"TFDS build of world_video/small ({len(src)} train + 64 "
            f"validation clips): {time.perf_counter() - start:.1f} s")
  with ctx.Pool(workers) as pool:
    res = np.array(pool.map(_gt_error, range(_EVAL.value)))
  print(f"GT trajectory error over {len(res)} clips: mean "
        f"{res[:, 0].mean():.4f} (x64 = {res[:, 0].mean() * 64:.2f} px), "
        f"max clip {res[:, 0].max():.4f}, detection rate "
        f"{res[:, 1].mean():.4f}; caption bytes p50/p99/max "
        f"{np.percentile(res[:, 2], 50):.0f}/"
        f"{np.percentile(res[:, 2], 99):.0f}/{res[:, 2].max():.0f}")


if __name__ == "__main__":
  app.run(main)
