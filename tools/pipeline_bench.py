"""Examples/s of a config's grain input pipeline (decode + resize + tokenize), to compare with
the examples/s its train step consumes (`tools/bench.py`).

  python tools/pipeline_bench.py --config configs/video_gen.py --batches 50
"""
from __future__ import annotations

import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from absl import app, flags  # noqa: E402
from ml_collections import config_flags  # noqa: E402

_CONFIG = config_flags.DEFINE_config_file("config", None, "Config file (path[:arg]).")
_BATCHES = flags.DEFINE_integer("batches", 50, "Batches to time after 2 warm-up batches.")


def main(argv):
  del argv
  from mfm_jax.data import pipeline  # pylint: disable=g-import-not-at-top
  c = _CONFIG.value
  it = pipeline.make_iterator(c.data, "train", c.batch_size, seed=0)
  for _ in range(2):
    next(it)
  t = time.perf_counter()
  for _ in range(_BATCHES.value):
    next(it)
  dt = time.perf_counter() - t
  n = _BATCHES.value * c.batch_size
  print(f"{n / dt:.1f} examples/s ({_BATCHES.value} batches of {c.batch_size}, "
        f"worker_count={c.data.worker_count}, {c.data.num_frames}x{c.data.resolution}^2)")


if __name__ == "__main__":
  flags.mark_flags_as_required(["config"])
  app.run(main)
