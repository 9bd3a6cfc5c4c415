"""KL video autoencoder on the procedural world (the latent space for latent video diffusion).

Default: a few minutes on 2 CPU cores: 4 frames x 32 x 32 clips from the world's small build,
channels (32, 64, 64) -> spatial x4, 4 latent channels (latents [T, 8, 8, 4]), frame by frame;
evaluates reconstruction PSNR and writes real | reconstruction GIFs under ``samples/``.

  python -m mfm_jax.train --config configs/vae.py --workdir /tmp/vae
  python -m mfm_jax.train --config configs/vae.py:smoke --workdir /tmp/smoke          # seconds
  python -m mfm_jax.train --config configs/vae.py:f8,temporal --workdir /tmp/vae_f8t  # x8, T/2
  python -m mfm_jax.train --config configs/vae.py:sd --workdir gs://bucket/vae         # TPU/GPU

Arg words (comma-separated): ``smoke``; ``f8`` (spatial x8: 4 channel entries); ``temporal``
(temporal x2); ``sd`` (SD-VAE widths (128, 256, 512, 512), 2 resnets per block, 64 x 64 x 16
frames, bfloat16); ``res=N``, ``frames=N``, ``steps=N``, ``batch=N``.
Loss and its weights: see ``mfm_jax/tasks/autoencoder.py``.
"""
import ml_collections

from mfm_jax.engine.config import base_config, parse_arg


def get_config(arg=None):
  a = parse_arg(arg, smoke=False, f8=False, temporal=False, sd=False, res=32, frames=4, steps=0,
                batch=0)
  c = base_config()
  c.task = "autoencoder"
  c.seed = 0
  c.total_steps = 300
  c.batch_size = 8
  c.log_every = 25
  c.eval_every = 150
  c.eval_batches = 4
  c.checkpoint.every = 150
  c.nonfinite_policy = "stop"

  c.optimizer.name = "adamw"
  c.optimizer.lr = 1e-3
  c.optimizer.warmup_steps = 20
  c.optimizer.schedule = "cosine"
  c.optimizer.end_lr_factor = 0.1
  c.optimizer.weight_decay = 0.0
  c.optimizer.clip_norm = 1.0

  c.data = ml_collections.ConfigDict(dict(
      name="world_video", builder_config="small", data_dir=None, num_frames=a.frames,
      resolution=a.res, tokenizer="bytes", max_text_len=8, object_weight=0.0, view=0,
      worker_count=0))

  c.model = ml_collections.ConfigDict(dict(
      block_out_channels=(32, 64, 64),   # spatial factor 2 ** (len - 1)
      layers_per_block=1, latent_channels=4, norm_num_groups=8, mid_attention=True,
      temporal_downsample=False,         # True: T / 2 latents (see models/vae.py)
      scaling_factor=1.0, shift_factor=0.0,   # set to eval/suggested_scaling_factor for diffusion
      dtype="float32"))

  c.loss = ml_collections.ConfigDict(dict(l1_weight=1.0, l2_weight=0.0, kl_weight=1e-6))
  c.eval = ml_collections.ConfigDict(dict(num_videos=8, split="validation", gif_cols=2))

  if a.smoke:
    c.total_steps = 4
    c.log_every = 2
    c.eval_every = 4
    c.eval_batches = 1
    c.checkpoint.every = 2
    c.optimizer.warmup_steps = 1
    c.data.builder_config = "smoke"
    c.data.num_frames, c.data.resolution = 2, 16
    c.model.block_out_channels = (8, 16)
    c.model.norm_num_groups = 4
    c.eval.num_videos = 2
  if a.f8:
    c.model.block_out_channels = tuple(c.model.block_out_channels) + (
        c.model.block_out_channels[-1],)
  if a.temporal:
    c.model.temporal_downsample = True
  if a.sd:   # accelerator preset: SD-VAE widths on 16 x 64 x 64 clips, data-parallel
    c.total_steps, c.batch_size = 100_000, 64
    c.data.builder_config, c.data.num_frames, c.data.resolution = "full", 16, 64
    c.model.block_out_channels, c.model.layers_per_block = (128, 256, 512, 512), 2
    c.model.norm_num_groups, c.model.dtype = 32, "bfloat16"
    c.optimizer.lr, c.optimizer.warmup_steps = 1e-4, 1000
    c.eval_every, c.checkpoint.every = 5000, 2000
  if not a.smoke and (a.res != 32 or a.frames != 4):
    c.data.resolution, c.data.num_frames = a.res, a.frames
  if a.steps:
    c.total_steps = a.steps
  if a.batch:
    c.batch_size = a.batch
  return c
