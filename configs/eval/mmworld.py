"""MMWorld evaluation (accuracy overall / per discipline / type / flag, EvalAI export).

By default on the procedural world exported in MMWorld's schema (``world.size``: smoke 8 clips,
small 200, full 2000; exported once into ``cache_dir``), on the real benchmark with
``--config.data_dir`` (``mmworld.json`` + the videos below it).

  python -m mfm_jax.evaluate --config configs/eval/mmworld.py --workdir /tmp/ev_mmworld
  python -m mfm_jax.evaluate --config configs/eval/mmworld.py:smoke,runs=5 --workdir /tmp/ev \\
      --config.model=random
  python -m mfm_jax.evaluate --config configs/eval/mmworld.py --workdir /tmp/ev \\
      --config.model=vqa:/tmp/vqa_graph            # the project's VQA model (a vqa run)
  python -m mfm_jax.evaluate --config configs/eval/mmworld.py --workdir /tmp/ev \\
      --config.model=my_pkg.vlm:answer --config.data_dir=/data/MMWorld

Arg words: ``smoke`` (world size smoke), ``world=smoke|small|full``, ``runs=N``.
Writes ``results.json``, ``results.md``, ``predictions.csv``, ``evalai_submission.json``.
"""
from mfm_jax.eval.qa_bench import default_config


def get_config(arg=None):
  return default_config("mmworld", arg)
