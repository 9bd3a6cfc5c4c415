"""ComCLIP (Jiang et al., NAACL 2024) vs the global CLIP embedding on swapped negatives (task
``compositional``): training-free, from a pretrained CLIP.

Items (``mfm_jax/data/compositional.py``): world ``small`` validation frames (4 per clip), up
to 2 subject-relation-object triplets per frame that hold in the frame (left of / right of /
behind / in front of, the world's scene-graph rules), each with a subject<->object swapped and a
colour-swapped negative. Scores: global CLIP ``cos(v, t)`` and ComCLIP ``cos(v*, t)`` with
``v* = v + sum_k softmax_k(weight_scale * cos(v_k, t_k)) v_k`` over the subject, object and
predicate (union box) sub-images. Simplifications against the paper: the world gives the parse
(no dependency parser), boxes come from instance masks (``comclip.boxes="masks"``) or a caller's
``.npz`` (no dense captioner), sub-images are square crops resized to ``data.resolution``.

Nothing trains: all parameters are frozen and the engine evaluates after one no-op step
(``total_steps=1``, lr 0), writing ``<workdir>/eval/compositional_000001.json``. Use a fresh
workdir (a workdir already at step 1 restores and evaluates nothing).

  python -m mfm_jax.train --config configs/encoder_pretrain.py --workdir /tmp/clip_world
  python -m mfm_jax.train --config configs/comclip.py --workdir /tmp/comclip \\
      --config.init_from=/tmp/clip_world/checkpoints
  python -m mfm_jax.train --config configs/comclip.py:smoke --workdir /tmp/smoke   # seconds

Arg words: ``smoke``, ``max_items=N`` (cap on the number of items), ``per_frame=N``.
"""
from mfm_jax.data import compositional
from mfm_jax.data import image_text
from mfm_jax.engine.config import base_config, parse_arg
from mfm_jax.tasks import encoders


def get_config(arg=None):
  a = parse_arg(arg, smoke=False, max_items=0, per_frame=2)
  c = base_config()
  c.task = "compositional"
  c.total_steps = 1       # one no-op step on frozen params, then the evaluation
  c.batch_size = 32
  c.log_every = 1
  c.eval_every = 1
  c.eval_batches = 0
  c.checkpoint.every = 1
  c.optimizer.lr = 0.0
  c.optimizer.warmup_steps = 0
  c.optimizer.weight_decay = 0.0

  c.data = image_text.default_data_config()   # the same model and data as encoder_pretrain.py
  c.model = encoders.default_model_config()
  c.eval = dict(batch_size=64)
  c.comclip = dict(
      boxes="masks",                    # masks | <file.npz>: "<clip>_<frame>" -> [K, 4] boxes
      predicates=tuple(compositional.PREDICATES),
      frames_per_clip=4, triplets_per_frame=a.per_frame, seed=0, max_items=a.max_items,
      min_pixels=4,                     # an object needs this many mask pixels to take part
      min_crop=4,                       # smallest crop side (pixels of the world frame)
      weight_scale=1.0,                 # softmax(weight_scale * cos(v_k, t_k))
      binding="name",                   # name | overlap (tasks/compositional.py: bind)
      with_size=True)                   # "large red sphere" (False: "red sphere")

  if a.smoke:
    c.batch_size = 8
    c.data.builder_config, c.data.resolution = "smoke", 16
    c.model.vision = dict(c.model.vision.to_dict(), width=32, depth=1, num_heads=2, mlp_dim=64,
                          patch=8, temporal_depth=1)
    c.model.text = dict(width=32, depth=1, num_heads=2, mlp_dim=64)
    c.model.embed_dim = 32
    c.eval.batch_size = 16
    c.comclip.frames_per_clip, c.comclip.max_items = 2, a.max_items or 12
  return c
