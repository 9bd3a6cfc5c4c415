"""Few-shot classification (task ``classify``): linear probe, full fine-tuning, LoRA, KAdaptation
and subspace training on a CLIP backbone, the head initialised from the class prompts.

Default: world ``small``, class = colour x shape of each frame's main object (16 classes),
8 shots per class from 4 frames per clip, evaluated on the 256 validation frames (64 clips x 4);
the same model sizes as ``configs/encoder_pretrain.py``, whose checkpoint it starts from:

  python -m mfm_jax.train --config configs/encoder_pretrain.py --workdir /tmp/clip_world
  python -m mfm_jax.train --config configs/kadaptation.py:method=kadaptation --workdir /tmp/ka \\
      --config.init_from=/tmp/clip_world/checkpoints
  python -m mfm_jax.train --config configs/kadaptation.py:smoke --workdir /tmp/smoke   # seconds

From an HF CLIP (a ``CLIPModel.save_pretrained`` folder with the tokenizer files):

  python tools/convert_checkpoint.py --hf_clip /m/clip-vit-base-patch32 --out /tmp/b32 --under clip
  python -m mfm_jax.train --config configs/kadaptation.py:method=kadaptation,shots=16 \\
      --workdir /tmp/pets --config.init_from=/tmp/b32 --config.model.hf=/m/clip-vit-base-patch32 \\
      --config.data.tokenizer=clip:/m/clip-vit-base-patch32 --config.data.max_text_len=77 \\
      --config.data.name=image_folder:/data/pets --config.data.resolution=224 \\
      --config.data.prompt="a photo of a {}."

Arg words: ``method=`` (zeroshot | linear_probe | full_ft | lora | kadaptation | subspace; sets
the method's learning rate), ``shots=N``, ``steps=N``, ``batch=N``, ``smoke``, ``video``.
"""
from mfm_jax.data import image_text
from mfm_jax.engine.config import base_config, parse_arg
from mfm_jax.tasks import encoders

# Peak learning rate per method (AdamW, cosine): small for the whole tower, larger for few params.
LR = {"zeroshot": 0.0, "linear_probe": 1e-3, "full_ft": 1e-4, "lora": 1e-3,
      "kadaptation": 1e-3, "subspace": 1e-2}


def get_config(arg=None):
  a = parse_arg(arg, smoke=False, video=False, method="kadaptation", shots=8, steps=0, batch=0)
  c = base_config()
  c.task = "classify"
  c.method = a.method
  c.head_scale = 0.0          # 0: the checkpoint's exp(logit_scale)
  c.total_steps = 300
  c.batch_size = 32
  c.log_every = 50
  c.eval_every = 300
  c.eval_batches = 0
  c.checkpoint.every = 300

  c.optimizer.lr = LR[a.method]
  c.optimizer.warmup_steps = 20
  c.optimizer.weight_decay = 0.0

  c.data = image_text.default_data_config()
  c.data.frames_per_clip = 4
  c.data.shots = a.shots
  c.model = encoders.default_model_config()
  # PEViT's KAdaptation (n = 32 Kronecker factors, rank-1 slow and fast factors, q and v, scale
  # 160); LoRA rank 4 on q and v; subspace d = 1000 (global Fastfood projection).
  c.peft = dict(targets=("query", "value"), lora_rank=4, lora_alpha=8.0, kadapt_n=32,
                kadapt_fast_rank=1, kadapt_slow_rank=1, kadapt_scale=160.0, kadapt_dropout=0.0,
                subspace_dim=1000, subspace_seed=0, subspace_local=False)
  c.eval = dict(batch_size=64, max_examples=0)

  if a.video:
    c.data.num_frames, c.data.frames_per_clip = 4, 1
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
    c.peft.kadapt_n, c.peft.subspace_dim = 8, 64
    c.eval.batch_size, c.eval.max_examples = 8, 16
  if a.steps:
    c.total_steps = c.eval_every = c.checkpoint.every = a.steps
  if a.batch:
    c.batch_size = a.batch
  return c
