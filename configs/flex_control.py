"""Multi-condition control of text-to-video (FlexEControl) on the procedural world:
``configs/video_gen.py``'s model and data, the DiT (and text encoder) initialised from a trained
``video_gen`` checkpoint and frozen, and one control branch over depth, Canny edges and instance
maps (``mfm_jax/tasks/flex_control.py``, ``mfm_jax/models/control.py``).

  python -m mfm_jax.train --config configs/flex_control.py --workdir /tmp/flex \\
      --config.init_from=/work/ckpt/video_gen/checkpoints            # FlexEControl
  python -m mfm_jax.train --config configs/flex_control.py:baseline --workdir /tmp/flex_base \\
      --config.init_from=/work/ckpt/video_gen/checkpoints            # per-condition branches
  python -m mfm_jax.train --config configs/flex_control.py:smoke --workdir /tmp/smoke  # seconds

Without ``init_from`` every part trains from scratch (set ``--config.control.freeze_base=False``).

Arg words: those of ``configs/video_gen.py`` (``smoke``, ``variant=``, ``res=``, ``frames=``,
``steps=``, ``batch=``) plus ``baseline`` (``control.mode="separate"``: one full branch per
condition, the same config otherwise).
"""

import ml_collections

from mfm_jax.engine.config import parse_arg, sibling_config


def get_config(arg=None):
  words = [w.strip() for w in (arg or "").split(",") if w.strip()]
  mine = [w for w in words if w in ("baseline", "flex")]
  a = parse_arg(",".join(mine), baseline=False, flex=False)
  video_gen = sibling_config(__file__, "video_gen")
  c = video_gen.get_config(",".join(w for w in words if w not in mine))
  c.task = "flex_control"
  c.total_steps = 240                    # ~12 min on 2 shared CPU cores (RESULTS.md)
  c.batch_size = 8
  c.eval_every = 240
  c.checkpoint.every = 240
  c.diffusion.num_inference_steps = 15
  c.optimizer.lr = 5e-4
  c.optimizer.warmup_steps = 50
  c.optimizer.ema_decay = 0.0            # short runs: sample with the trained params
  c.data.object_weight = 0.0             # the task weights the loss by the object masks itself
  c.data.edge_thresholds = (50.0, 150.0)
  c.control = ml_collections.ConfigDict(dict(
      mode="separate" if a.baseline else "flex",   # flex: FlexEControl | separate: baseline
      conditions=("depth", "edges", "instance"),
      blocks=2,             # branch blocks: copies of the first DiT blocks (0 = all)
      drop_prob=0.3,        # each condition dropped independently at training
      kron_n=8,             # Kronecker factors n (slow A_i: n x n), flex only
      kron_fast_rank=1,     # rank of the per-condition fast factors u_i v_i
      kron_slow_rank=1,     # rank of the shared slow factors (0: full n x n)
      kron_scale=16.0,      # dW = scale * sum_i A_i (x) u_i v_i
      freeze_base=True,     # train only the branch (the DiT and text encoder are frozen)
      copy_dit=True,        # after init_from: copy the DiT's blocks into the branch (ControlNet)
      mask_weight=2.0,      # masked diffusion loss: weight 1 + mask_weight * object union
      attn_weight=0.1,      # cross-attention supervision weight (0 = off)
      attn_layers=()))      # DiT blocks whose cross-attention is supervised; () = all
  c.eval.num_videos = 16
  c.eval.subsets = ("none", "all", "depth", "edges", "instance")
  c.eval.profile_examples = 64
  c.eval.gif_rows = 4
  if "smoke" in words:
    c.total_steps, c.eval_every, c.checkpoint.every = 4, 4, 4
    c.control.kron_n, c.control.blocks = 4, 0
    c.control.freeze_base = False        # no checkpoint: everything trains
    c.eval.num_videos, c.eval.profile_examples, c.eval.gif_rows = 2, 4, 2
    c.eval.subsets = ("none", "all")
  return c
