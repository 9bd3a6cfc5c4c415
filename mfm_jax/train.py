"""Train a task from a config file.

  python -m mfm_jax.train --config configs/video_gen.py --workdir /tmp/video_gen
  python -m mfm_jax.train --config configs/video_gen.py:smoke --workdir /tmp/smoke \\
      --config.total_steps=20 --config.optimizer.lr=3e-4

Multi-host: ``jax.distributed.initialize`` is called when ``--num_processes > 1`` (or on a TPU pod /
Slurm, where JAX finds the cluster itself with ``--distributed``). On CPU the collectives use gloo.
"""
from __future__ import annotations

import json
import logging
import os
import sys

from absl import app, flags
from ml_collections import config_flags

_CONFIG = config_flags.DEFINE_config_file("config", None, "Config file (path[:arg]).",
                                          lock_config=True)
_WORKDIR = flags.DEFINE_string("workdir", None, "Where checkpoints, metrics and samples go.")
_COORD = flags.DEFINE_string("coordinator_address", None, "host:port of process 0 (multi-process).")
_NPROC = flags.DEFINE_integer("num_processes", 1, "Number of processes (multi-process runs).")
_PID = flags.DEFINE_integer("process_id", 0, "This process's index (multi-process runs).")
_DIST = flags.DEFINE_bool("distributed", False, "Call jax.distributed.initialize() with "
                          "auto-detection (TPU pods, Slurm).")
flags.mark_flags_as_required(["config", "workdir"])


def setup_logging() -> None:
  logging.basicConfig(level=logging.INFO, stream=sys.stderr,
                      format="%(asctime)s %(levelname)s %(name)s: %(message)s")
  for noisy in ("absl", "jax._src", "orbax", "tensorflow_datasets", "grain"):
    logging.getLogger(noisy).setLevel(logging.WARNING)


def init_distributed() -> None:
  import jax  # pylint: disable=g-import-not-at-top
  if _NPROC.value > 1:
    if jax.config.jax_platforms in (None, "", "cpu") or os.environ.get("JAX_PLATFORMS") == "cpu":
      jax.config.update("jax_cpu_collectives_implementation", "gloo")
    jax.distributed.initialize(coordinator_address=_COORD.value, num_processes=_NPROC.value,
                               process_id=_PID.value)
  elif _DIST.value:
    jax.distributed.initialize()


def parse_flags(argv):
  """absl flag parsing with a readable error for a bad ``--config.x.y=v`` override."""
  try:
    return flags.FLAGS(argv)
  except (AttributeError, KeyError, flags.Error) as e:
    bad = [a for a in argv[1:] if a.startswith("--config.")]
    msg = str(e).strip("'\"").replace("\\'", "'").replace("\\n", " ").replace("\n", " ")
    print(f"error: bad config override {' '.join(bad)}: unknown key {msg}", file=sys.stderr)
    sys.exit(2)


def main(argv) -> None:
  del argv
  setup_logging()
  init_distributed()
  from mfm_jax import tasks  # pylint: disable=g-import-not-at-top
  from mfm_jax.engine import trainer  # pylint: disable=g-import-not-at-top
  config = _CONFIG.value
  task = tasks.get(config.task)(config)
  summary = trainer.train(config, task, _WORKDIR.value)
  import jax  # pylint: disable=g-import-not-at-top
  if jax.process_index() == 0:
    print("summary: " + json.dumps({k: v for k, v in summary.items() if k != "evals"}, default=str))


if __name__ == "__main__":
  app.run(main, flags_parser=parse_flags)
