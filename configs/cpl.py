"""Prompt learning (task ``prompt_learning``): CoOp, CoCoOp and CPL (counterfactual prompt
learning, He et al., EMNLP 2022) on a frozen CLIP, base / new class split.

Default: world ``small``, classes = colour x shape of each frame's main object (16); the first 8
(4 colours x 2 shapes) are the base classes, trained with 8 shots per class from 4 frames per
clip; evaluation on the validation frames of the base and of the new classes (4 colours never
seen in training, prompted with the learned context), and their harmonic mean. The same model
sizes as ``configs/encoder_pretrain.py``, whose checkpoint it starts from:

  python -m mfm_jax.train --config configs/encoder_pretrain.py --workdir /tmp/clip_world
  python -m mfm_jax.train --config configs/cpl.py:method=cpl --workdir /tmp/cpl \\
      --config.init_from=/tmp/clip_world/checkpoints
  python -m mfm_jax.train --config configs/cpl.py:method=zeroshot --workdir /tmp/zs \\
      --config.init_from=/tmp/clip_world/checkpoints          # hand prompt reference
  python -m mfm_jax.train --config configs/cpl.py:smoke --workdir /tmp/smoke   # seconds

From an HF CLIP: as in ``configs/kadaptation.py`` (``--config.model.hf``, ``data.tokenizer=
clip:<dir>``, ``data.prompt="a photo of a {}."``) plus ``--config.prompt.init_words="a photo of
a"``.

Arg words: ``method=`` (zeroshot | coop | cocoop | cpl), ``shots=N``, ``steps=N``, ``batch=N``,
``n_ctx=N`` (random context of N tokens instead of the init words), ``smoke``.
"""
from mfm_jax.data import image_text
from mfm_jax.engine.config import base_config, parse_arg
from mfm_jax.tasks import encoders


def get_config(arg=None):
  a = parse_arg(arg, smoke=False, method="cpl", shots=8, steps=0, batch=0, n_ctx=0)
  c = base_config()
  c.task = "prompt_learning"
  c.method = a.method
  c.total_steps = 300
  c.batch_size = 32
  c.log_every = 50
  c.eval_every = 300
  c.eval_batches = 0
  c.checkpoint.every = 300

  c.optimizer.lr = 0.0 if a.method == "zeroshot" else 2e-3
  c.optimizer.warmup_steps = 20
  c.optimizer.weight_decay = 0.0

  c.data = image_text.default_data_config()
  c.data.frames_per_clip = 4
  c.data.shots = a.shots
  c.data.classes = "base"
  c.model = encoders.default_model_config()
  # CoOp / CoCoOp: the context starts as the hand prompt's words ("a" of data.prompt "a {}"),
  # so step 0 is the zero-shot classifier; CPL on CoCoOp as in the paper's code, beta = 0.07.
  c.prompt = dict(n_ctx=4, init_words="a", meta_hidden=0, cpl_base="cocoop",
                  negative="text_similarity", beta=0.07, cf_weight=1.0)
  c.eval = dict(batch_size=64, max_examples=0, classes=("base", "new"))

  if a.n_ctx:
    c.prompt.n_ctx, c.prompt.init_words = a.n_ctx, ""
  if a.smoke:
    c.total_steps, c.batch_size, c.log_every = 3, 8, 1
    c.eval_every, c.checkpoint.every = 3, 3
    c.optimizer.warmup_steps = 1
    c.data.builder_config, c.data.resolution, c.data.frames_per_clip = "smoke", 16, 1
    c.data.shots = min(a.shots, 2)
    c.model.vision = dict(c.model.vision.to_dict(), width=32, depth=1, num_heads=2, mlp_dim=64,
                          patch=8, temporal_depth=1)
    c.model.text = dict(width=32, depth=1, num_heads=2, mlp_dim=64)
    c.model.embed_dim = 32
    c.eval.batch_size, c.eval.max_examples = 8, 16
  if a.steps:
    c.total_steps = c.eval_every = c.checkpoint.every = a.steps
  if a.batch:
    c.batch_size = a.batch
  return c
