"""PSNR / SSIM of a 4D fit (task ``fit4d``, ``configs/world4d.py``) on its held-out views and
times, per category (novel view / novel time / both / train) and per view.

  python -m mfm_jax.evaluate --config configs/eval/fit4d.py --workdir /tmp/ev_fit4d \\
      --config.checkpoint=/tmp/world4d

Arg words: ``smoke`` (no GIFs), ``ckpt=PATH``.
Writes ``results.json``, ``results.md``, ``images.csv`` (and the fit's tables / GIFs under
``samples/``).
"""
from mfm_jax.eval.gen_bench import default_config


def get_config(arg=None):
  return default_config("fit4d", arg)
