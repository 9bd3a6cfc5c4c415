"""Throughput of world v2 generation (clips/s), 1 view (+questions) and K views.

  python tools/world_v2_bench.py                 # 160 clips each, all cores
  python tools/world_v2_bench.py --clips 400 --views 1 4 8 --workers 2

Each clip is a full stored record as the builders write it: simulation,
rendering of every view, 2D annotations, scene graph, counterfactual twins,
and (1 view) the MMWorld / VLM4D questions; 16x64x64 (world_v2_spec).
Pool start-up and imports are excluded (a warm-up map first).
"""
from __future__ import annotations

import argparse
import multiprocessing
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from mfm_jax.data.world import builder_v2  # noqa: E402  pylint: disable=g-import-not-at-top
from mfm_jax.data.world import episode  # noqa: E402  pylint: disable=g-import-not-at-top


def _work(args) -> int:
  views, indices = args
  cfg = builder_v2.WorldV2Config(name="bench", spec=episode.world_v2_spec(),
                                 num_views=views)
  for i in indices:
    builder_v2._record(cfg, "train", i, qa=views == 1)  # pylint: disable=protected-access
  return len(indices)


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--clips", type=int, default=160)
  parser.add_argument("--views", type=int, nargs="+", default=[1, 4])
  parser.add_argument("--workers", type=int, default=0, help="0: all cores")
  args = parser.parse_args()
  workers = args.workers or os.cpu_count() or 1
  for views in args.views:
    chunks = [(views, list(range(i, min(i + 8, args.clips))))
              for i in range(0, args.clips, 8)]
    with multiprocessing.get_context("spawn").Pool(workers) as pool:
      pool.map(_work, [(views, [0])] * workers)
      start = time.perf_counter()
      done = sum(pool.map(_work, chunks))
      sec = time.perf_counter() - start
    print(f"views={views}: {done} clips of 16x64x64 in {sec:.1f} s on "
          f"{workers} processes: {done / sec:.1f} clips/s")


if __name__ == "__main__":
  main()
