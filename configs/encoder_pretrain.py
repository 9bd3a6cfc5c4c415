"""Contrastive pretraining of the two towers (task ``contrastive``) on world frames + captions.

Default: a small ViT (width 128, 4 blocks, patch 8 on 32 x 32 frames) and a 2-block text tower
(width 64, world word tokens), CLIP loss, 4 frames per clip of world ``small`` (4,000 train images of 1,000
clips); runs on 2 CPU cores in a few minutes and evaluates retrieval recall@1/5 and zero-shot
accuracy (class prompts) on the 64 validation clips. Its checkpoint is what
``configs/kadaptation.py`` starts from (``--config.init_from=<workdir>/checkpoints``).

  python -m mfm_jax.train --config configs/encoder_pretrain.py --workdir /tmp/clip_world
  python -m mfm_jax.train --config configs/encoder_pretrain.py:smoke --workdir /tmp/smoke  # seconds
  python -m mfm_jax.train --config configs/encoder_pretrain.py:siglip,steps=3000 --workdir /tmp/s
  python -m mfm_jax.train --config configs/encoder_pretrain.py:video --workdir /tmp/clip_video
  python -m mfm_jax.train --config configs/encoder_pretrain.py --workdir /tmp/r \\
      --config.data.name=image_folder:/data/pets --config.data.tokenizer=bytes

Arg words: ``smoke``, ``video`` (4-frame clips, VideoViT with (2, 8, 8) tubelets), ``siglip``,
``steps=N``, ``batch=N``.
"""
from mfm_jax.data import image_text
from mfm_jax.engine.config import base_config, parse_arg
from mfm_jax.tasks import encoders


def get_config(arg=None):
  a = parse_arg(arg, smoke=False, video=False, siglip=False, steps=0, batch=0)
  c = base_config()
  c.task = "contrastive"
  c.total_steps = 800
  c.batch_size = 64
  c.log_every = 50
  c.eval_every = 400
  c.eval_batches = 0    # in-batch metrics mislead: frames of one clip share a caption
  c.checkpoint.every = 400

  c.optimizer.lr = 1e-3
  c.optimizer.warmup_steps = 100
  c.optimizer.end_lr_factor = 0.05
  c.optimizer.weight_decay = 0.05

  c.data = image_text.default_data_config()
  c.data.frames_per_clip = 4
  c.model = encoders.default_model_config()
  c.eval = dict(batch_size=64, max_examples=0)   # retrieval over the whole validation split

  if a.video:
    c.data.num_frames, c.data.frames_per_clip = 4, 1
  if a.siglip:
    c.model.loss = "siglip"
  if a.smoke:
    c.total_steps, c.batch_size, c.log_every = 4, 8, 2
    c.eval_every, c.eval_batches, c.checkpoint.every = 4, 1, 2
    c.optimizer.warmup_steps = 1
    c.data.builder_config, c.data.resolution, c.data.frames_per_clip = "smoke", 16, 1
    c.model.vision = dict(c.model.vision.to_dict(), width=32, depth=1, num_heads=2, mlp_dim=64,
                          patch=8, temporal_depth=1)
    c.model.text = dict(width=32, depth=1, num_heads=2, mlp_dim=64)
    c.model.embed_dim = 32
    c.eval.batch_size, c.eval.max_examples = 8, 16
  if a.steps:
    c.total_steps = a.steps
  if a.batch:
    c.batch_size = a.batch
  return c
