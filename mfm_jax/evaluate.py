"""Evaluate a model on a benchmark or a trained checkpoint on its metrics, from a config file.

  python -m mfm_jax.evaluate --config configs/eval/mmworld.py --workdir /tmp/ev_mmworld
  python -m mfm_jax.evaluate --config configs/eval/vlm4d.py:smoke --workdir /tmp/ev_vlm4d \\
      --config.model=constant:A --config.num_runs=3
  python -m mfm_jax.evaluate --config configs/eval/generation.py \\
      --config.checkpoint=/tmp/video_gen --workdir /tmp/ev_gen
  python -m mfm_jax.evaluate --config configs/eval/fit4d.py --config.checkpoint=/tmp/fit4d \\
      --workdir /tmp/ev_fit4d

``config.bench`` picks the harness: ``mmworld`` / ``vlm4d`` (``eval/qa_bench.py``),
``generation`` / ``fit4d`` (``eval/gen_bench.py``). Every run writes ``results.json``,
``results.md`` (Markdown tables, also printed) and a per-question / per-sample CSV into the
workdir, and prints a one-line JSON summary last. ``--config.x=y`` overrides a field; an unknown
key is an error naming it.
"""
from __future__ import annotations

import json
import logging
import sys

from absl import app, flags
from ml_collections import config_flags

_CONFIG = config_flags.DEFINE_config_file("config", None, "Config file (path[:arg]).",
                                          lock_config=True)
_WORKDIR = flags.DEFINE_string("workdir", None, "Where results.json / .md / .csv go.")
flags.mark_flags_as_required(["config", "workdir"])

BENCHES = ("mmworld", "vlm4d", "generation", "fit4d")


def parse_flags(argv):
  """absl flag parsing with a readable error for a bad ``--config.x.y=v`` override."""
  try:
    return flags.FLAGS(argv)
  except (AttributeError, KeyError, flags.Error) as e:
    bad = [a for a in argv[1:] if a.startswith("--config.")]
    msg = str(e).strip("'\"").replace("\\'", "'").replace("\\n", " ").replace("\n", " ")
    print(f"error: bad config override {' '.join(bad)}: unknown key {msg}", file=sys.stderr)
    sys.exit(2)


def evaluate(config, workdir: str) -> dict:
  """Runs the harness of ``config.bench``; returns what it wrote to results.json."""
  bench = config.get("bench")
  if bench in ("mmworld", "vlm4d"):
    from mfm_jax.eval import qa_bench  # pylint: disable=g-import-not-at-top
    return qa_bench.run(config, workdir)
  if bench in ("generation", "fit4d"):
    from mfm_jax.eval import gen_bench  # pylint: disable=g-import-not-at-top
    return gen_bench.run(config, workdir)
  raise ValueError(f"config.bench={bench!r}: use one of {BENCHES}")


def main(argv) -> None:
  del argv
  logging.basicConfig(level=logging.INFO, stream=sys.stderr,
                      format="%(asctime)s %(levelname)s %(name)s: %(message)s")
  for noisy in ("absl", "jax._src", "orbax", "tensorflow_datasets", "grain"):
    logging.getLogger(noisy).setLevel(logging.WARNING)
  try:
    out = evaluate(_CONFIG.value, _WORKDIR.value)
  except (ValueError, KeyError, FileNotFoundError) as e:
    print(f"error: {e}", file=sys.stderr)
    sys.exit(2)
  print("summary: " + json.dumps({"bench": out["bench"], **out.get("summary", {}),
                                  "files": out.get("files")}, default=str), flush=True)


if __name__ == "__main__":
  app.run(main, flags_parser=parse_flags)
