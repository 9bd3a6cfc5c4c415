"""Discffusion (He et al., TMLR 2024): the video_gen DiT as a video-text matcher on the world's
compositional negatives (task ``discffusion``, ``mfm_jax/tasks/discffusion.py``).

Model, data and diffusion settings are those of ``configs/video_gen.py`` (the checkpoint's); this
file adds ``config.discffusion`` (noise bank, LoRA, hinge loss, items) and trains only LoRA on the
cross-attention projections from ``config.init_from`` (a video_gen workdir's checkpoints).
Items: ComCLIP's (``configs/comclip.py`` defaults: world ``small`` validation, 4 frames per clip,
up to 2 triplets per frame; swap and colour-swap negatives), each frame as a still video.

  python -m mfm_jax.train --config configs/video_gen.py --workdir /tmp/video_gen
  python -m mfm_jax.train --config configs/discffusion.py:zero_shot --workdir /tmp/disc0 \\
      --config.init_from=/tmp/video_gen/checkpoints          # the score alone, no training
  python -m mfm_jax.train --config configs/discffusion.py --workdir /tmp/disc \\
      --config.init_from=/tmp/video_gen/checkpoints          # LoRA + hinge loss, then evaluate
  python -m mfm_jax.train --config configs/discffusion.py:zero_shot --workdir /tmp/disc_ev \
      --config.init_from=/tmp/disc/checkpoints --config.init_from_ema=False   # a trained LoRA again
  python -m mfm_jax.train --config configs/discffusion.py:smoke --workdir /tmp/smoke   # seconds

``init_from_ema`` (default True here) takes the video_gen checkpoint's EMA params, the weights its
sampling and evaluation use (the RESULTS numbers start from them).

Arg words: ``smoke``; ``zero_shot`` (one no-op step at lr 0, then the evaluation: LoRA's B factor
is zero, so this is the untrained score); ``steps=N``; ``bank=K``.
"""

import ml_collections

from mfm_jax.engine.config import parse_arg, sibling_config


def get_config(arg=None):
  a = parse_arg(arg, smoke=False, zero_shot=False, steps=0, bank=4)
  c = sibling_config(__file__, "video_gen").get_config("smoke" if a.smoke else None)
  c.task = "discffusion"
  c.total_steps = 300
  c.batch_size = 8
  c.log_every = 25
  c.eval_every = 300
  c.eval_batches = 0
  c.checkpoint.every = 300
  c.optimizer.lr = 1e-3
  c.optimizer.warmup_steps = 20
  c.optimizer.ema_decay = 0.0           # evaluate the trained LoRA itself
  c.init_from = ""                      # a video_gen workdir's checkpoints (required in practice)
  c.init_from_ema = True                # ... its EMA params (video_gen samples with them)
  c.eval = ml_collections.ConfigDict(dict(batch_size=16))

  comclip = sibling_config(__file__, "comclip").get_config(None).comclip
  c.discffusion = ml_collections.ConfigDict(dict(
      bank_size=a.bank, bank_seed=0,      # the fixed noise bank: K timesteps and K noises
      bank_range=(0.0, 1.0),              # noise levels (sigma for flow) at K bin midpoints
      train_bank_entries=1,               # bank entries drawn per training step
      layers=(),                          # DiT blocks averaged in the score; () = all
      lora_targets=("query", "key", "value"), lora_rank=8, lora_alpha=16.0,
      margin=0.1,                         # hinge margin, in score units (mean LSE logits)
      in_batch_negatives=1,               # rolled positives of other items as extra negatives
      calibrate=False,                    # subtract the caption's score on a null (grey) video
      eval_other=False,                   # also score another clip's caption (an easy negative)
      item_set=dict(                      # configs/comclip.py's: the same evaluation items
          **{k: comclip[k] for k in ("frames_per_clip", "triplets_per_frame", "seed",
                                     "predicates", "min_pixels", "with_size")},
          max_items=0,                    # validation cap (0 = all)
          max_train_items=3000)))         # train split cap (item building re-simulates clips)

  if a.smoke:
    c.total_steps = 2
    c.batch_size = 8
    c.log_every = 1
    c.eval_every = 2
    c.checkpoint.every = 2
    c.optimizer.warmup_steps = 1
    c.eval.batch_size = 8
    c.discffusion.bank_size = 2
    c.discffusion.item_set.frames_per_clip = 2
    c.discffusion.item_set.max_items = 12
    c.discffusion.item_set.max_train_items = 32
  if a.zero_shot:
    c.total_steps, c.eval_every, c.checkpoint.every = 1, 1, 1
    c.optimizer.lr, c.optimizer.warmup_steps = 0.0, 0
    c.discffusion.item_set.max_train_items = 64   # one no-op step needs no more
  if a.steps:
    c.total_steps = c.eval_every = c.checkpoint.every = a.steps
  return c
