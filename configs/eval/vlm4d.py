"""VLM4D evaluation (the paper's splits on real_mc / synthetic_mc; per view and type on the world).

By default on the procedural world exported in VLM4D's schema (``vlm4d.json``), on the real
benchmark with ``--config.data_dir`` (``real_mc.json`` and / or ``synthetic_mc.json`` + videos).
``mode``: the prompt, ``direct`` or ``cot`` (chain of thought).

  python -m mfm_jax.evaluate --config configs/eval/vlm4d.py --workdir /tmp/ev_vlm4d
  python -m mfm_jax.evaluate --config configs/eval/vlm4d.py:smoke --workdir /tmp/ev \\
      --config.model=constant:A
  python -m mfm_jax.evaluate --config configs/eval/vlm4d.py --workdir /tmp/ev \\
      --config.model=my_pkg.vlm:answer --config.mode=cot --config.data_dir=/data/VLM4D

Arg words: ``smoke``, ``world=smoke|small|full``, ``runs=N``.
Writes ``results.json``, ``results.md``, ``predictions.csv``.
"""
from mfm_jax.eval.qa_bench import default_config


def get_config(arg=None):
  c = default_config("vlm4d", arg)
  c.mode = "direct"           # direct | cot
  return c
