"""Controllable text-to-video (Mojito) on the procedural world: ``configs/video_gen.py``'s model
and data plus a motion-intensity level embedding (trained) and attention-energy trajectory
guidance (no training), both measured at evaluation (``mfm_jax/tasks/video_control.py``).

  python -m mfm_jax.train --config configs/video_control.py --workdir /tmp/video_control
  python -m mfm_jax.train --config configs/video_control.py:smoke --workdir /tmp/smoke  # seconds

Arg words: those of ``configs/video_gen.py`` (``smoke``, ``b``, ``xl``, ``variant=``, ``res=``,
``frames=``, ``steps=``, ``batch=``) plus ``levels=N`` (motion levels, default 4).

Motion level edges (``motion.edges``): empty = the quantiles of the ground-truth motion
(``data.motion.centers_motion``) of the first ``motion.edge_examples`` train clips, computed at
task construction (deterministic); or set them, e.g. ``--config.motion.edges="(0.01, 0.02, 0.03)"``.
"""

import ml_collections

from mfm_jax.engine.config import parse_arg, sibling_config


def get_config(arg=None):
  words = [w for w in (arg or "").split(",") if w.strip()]
  mine = [w for w in words if w.strip().startswith("levels")]
  a = parse_arg(",".join(mine), levels=4)
  video_gen = sibling_config(__file__, "video_gen")
  c = video_gen.get_config(",".join(w for w in words if w not in mine))
  c.task = "video_control"
  c.model.motion_levels = a.levels
  c.motion = ml_collections.ConfigDict(dict(edges=(), edge_examples=256))
  c.sample = ml_collections.ConfigDict(dict(motion_level=-1))   # -1: the clip's own level
  c.guidance = ml_collections.ConfigDict(dict(
      eta=1.0,            # step size of x <- x - eta * dE/dx
      steps=10,           # k: guided sampling steps (the first k)
      n_inner=2,          # gradient steps per guided sampling step
      layers=(),          # DiT blocks whose cross-attention maps enter E; () = all
      subject=0,          # object index whose colour word is the subject token
      box_size=0.3,       # target box side (normalised) around the target centres
      target="truth"))    # truth: the clip's centres; mirror: x -> 1 - x
  c.eval.num_videos = 8
  c.eval.guidance_videos = 4
  if "smoke" in words:
    c.motion.edge_examples = 16
    c.guidance.steps, c.guidance.n_inner = 2, 1
    c.eval.num_videos, c.eval.guidance_videos = 2, 2
  return c
