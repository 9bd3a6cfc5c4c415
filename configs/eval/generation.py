"""Generation metrics of a text-to-video checkpoint (task ``video_diffusion``) on held-out captions.

Samples one video per held-out world caption and reports the Fréchet distance of video features
(samples vs the real clips; uniform noise as the ceiling), the CLIP-style score (with a
contrastive ``encoder`` checkpoint; the real clips as the reference) and the trajectory error
against the simulated tracks (``mfm_jax/eval/gen_bench.py``).

  python -m mfm_jax.evaluate --config configs/eval/generation.py --workdir /tmp/ev_gen \\
      --config.checkpoint=/tmp/video_gen
  python -m mfm_jax.evaluate --config configs/eval/generation.py:smoke --workdir /tmp/ev_gen \\
      --config.checkpoint=/tmp/smoke --config.encoder=/tmp/clip_video

Arg words: ``smoke`` (4 videos), ``n=N`` (videos), ``ckpt=PATH``.
Writes ``results.json``, ``results.md``, ``samples.csv``, ``samples.gif``.
"""
from mfm_jax.eval.gen_bench import default_config


def get_config(arg=None):
  return default_config("generation", arg)
