"""Text-to-video diffusion with a video DiT on the procedural world.

Default: trains on 2 CPU cores in about 15 minutes (pixel space, 4 frames x 32 x 32 taken from the
world's 16 x 64 x 64 clips, an XS DiT with (2, 4, 4) tubelets, rectified flow, 2,400 steps),
conditioned on path captions (where each object starts and ends on the floor:
``data/world/path_captions.py``), and evaluates the trajectory error of 32 sampled videos against
the conditioning clips at steps 800, 1,600 and 2,400 (RESULTS.md). ``frames=8`` doubles the frames
(and the step time); ``--config.data.captions=world`` trains on the world's own captions.

  python -m mfm_jax.train --config configs/video_gen.py --workdir /tmp/video_gen
  python -m mfm_jax.train --config configs/video_gen.py:smoke --workdir /tmp/smoke      # seconds
  python -m mfm_jax.train --config configs/video_gen.py:b --workdir gs://bucket/run      # TPU/GPU
  python -m mfm_jax.train --config configs/video_gen.py --workdir /tmp/v \\
      --config.total_steps=2000 --config.diffusion.objective=v_prediction

Arg words (comma-separated): ``smoke``, ``b``, ``xl`` presets; ``variant=S/2``, ``res=32``,
``frames=8``, ``steps=N``, ``batch=N``; ``unet`` (the 3-D U-Net backbone instead of the DiT);
``latent`` with ``vae=PATH`` (train and sample in the latent space of a frozen ``autoencoder``
run, e.g. one of ``configs/vae.py``; a diffusers SD VAE folder goes in
``--config.latent.vae_hf`` instead). Neither word changes the default job's config.

  python -m mfm_jax.train --config configs/video_gen.py:unet --workdir /tmp/video_unet
  python -m mfm_jax.train --config configs/vae.py --workdir /tmp/vae
  python -m mfm_jax.train --config configs/video_gen.py:latent,vae=/tmp/vae --workdir /tmp/v_lat
  python -m mfm_jax.train --config configs/video_gen.py:latent,unet,vae=/tmp/vae --workdir /tmp/vlu
"""
import ml_collections

from mfm_jax.engine.config import base_config, parse_arg


def get_config(arg=None):
  a = parse_arg(arg, smoke=False, b=False, xl=False, variant="XS/4", res=32, frames=4,
                steps=0, batch=0, unet=False, latent=False, vae="")
  c = base_config()
  c.task = "video_diffusion"
  c.seed = 0
  c.total_steps = 2400
  c.batch_size = 16
  c.log_every = 50
  c.eval_every = 800
  c.eval_batches = 4
  c.checkpoint.every = 800
  c.nonfinite_policy = "stop"

  c.optimizer.name = "adamw"
  c.optimizer.lr = 1e-3
  c.optimizer.warmup_steps = 100
  c.optimizer.schedule = "cosine"
  c.optimizer.end_lr_factor = 0.1
  c.optimizer.weight_decay = 0.0
  c.optimizer.clip_norm = 1.0
  c.optimizer.ema_decay = 0.99           # evaluations sample with the EMA params

  c.data = ml_collections.ConfigDict(dict(
      name="world_video", builder_config="small", data_dir=None, num_frames=a.frames,
      resolution=a.res, tokenizer="words", max_text_len=80,  # captions: <= 77 words
      object_weight=4.0, captions="path", view=0, worker_count=0))   # view: world_multiview camera, -1: all

  c.model = ml_collections.ConfigDict(dict(
      variant=a.variant, width=0, depth=0, num_heads=0,   # 0: from the variant table
      temporal_patch=2, attention="full", cross_attention=True, scan_blocks=False,
      remat_policy="none", dtype="float32", flat=True,
      text=dict(width=128, depth=2, num_heads=4, patch=1)))   # patch=4 with tokenizer=bytes

  c.diffusion = ml_collections.ConfigDict(dict(
      objective="flow",                 # flow | epsilon | v_prediction | sample
      num_train_timesteps=1000, beta_schedule="scaled_linear", beta_start=0.00085,
      beta_end=0.012, cond_dropout=0.1,
      time_sampling="logit_normal",     # flow only: uniform | logit_normal (SD3)
      logit_mean=0.0, logit_std=1.0,    # logit_normal: > 0 puts more steps at high noise
      sampler="flow_euler",             # flow_euler for flow; ddim | euler | ... otherwise
      num_inference_steps=30, guidance_scale=4.0, guidance_rescale=0.0, shift=1.0,
      timestep_spacing="trailing"))

  c.eval = ml_collections.ConfigDict(dict(num_videos=32, split="validation", gif_cols=2))

  if a.smoke:
    c.total_steps = 6
    c.batch_size = 8
    c.log_every = 2
    c.eval_every = 6
    c.eval_batches = 1
    c.checkpoint.every = 3
    c.optimizer.warmup_steps = 2
    c.data.builder_config = "smoke"
    c.data.num_frames, c.data.resolution = 4, 16
    c.model.variant = "XS/4"
    c.model.width, c.model.depth, c.model.num_heads = 32, 2, 2
    c.model.text = dict(width=32, depth=1, num_heads=2, patch=1)
    c.diffusion.num_inference_steps = 3
    c.eval.num_videos = 4
  if a.b:   # accelerator preset: 16 x 64 x 64 pixels, B/4 DiT, fsdp over the devices
    c.total_steps, c.batch_size = 100_000, 256
    c.data.builder_config, c.data.num_frames, c.data.resolution = "full", 16, 64
    c.data.object_weight = 0.0   # unbiased loss at scale (object_weight tilts the samples)
    c.model.variant, c.model.dtype, c.model.remat_policy = "B/4", "bfloat16", "dots"
    c.model.text = dict(width=512, depth=6, num_heads=8, patch=1)
    c.mesh.axes = dict(data=1, fsdp=-1, context=1, tensor=1)
    c.optimizer.lr, c.optimizer.warmup_steps = 3e-4, 2000
    c.eval_every, c.checkpoint.every = 5000, 2000
  if a.xl:  # XL/2 on 16 x 64 x 64, fsdp x tensor; scan over blocks to bound compile time
    c.total_steps, c.batch_size = 400_000, 512
    c.data.builder_config, c.data.num_frames, c.data.resolution = "full", 16, 64
    c.data.object_weight = 0.0
    c.model.variant, c.model.dtype, c.model.remat_policy = "XL/2", "bfloat16", "dots"
    c.model.scan_blocks, c.model.attention = True, "factorized"
    c.model.text = dict(width=768, depth=12, num_heads=12, patch=1)
    c.mesh.axes = dict(data=1, fsdp=-1, context=1, tensor=4)
    c.optimizer.lr, c.optimizer.warmup_steps = 1e-4, 5000
    c.eval_every, c.checkpoint.every = 10_000, 5000
  if a.unet:   # 3-D U-Net, FLOP-matched to the XS/4 DiT (0.33 vs 0.32 GFLOP per clip forward)
    c.model.backbone = "unet"
    c.model.unet = ml_collections.ConfigDict(dict(
        variant="XS", block_out_channels=(8, 16, 32, 64), layers_per_block=1, num_heads=4,
        attention_levels=(False, False, False, True), transformer_depth=1, norm_groups=4,
        temporal=True))   # empty / 0 fields: from the variant table (models/unet3d.py)
    if a.latent:   # latents are 8 x 8: the XS table entry, attention at full latent resolution
      c.model.unet.block_out_channels, c.model.unet.attention_levels = (32, 64), (True, False)
      c.model.unet.norm_groups = 8
    if a.smoke:
      c.model.unet.block_out_channels, c.model.unet.attention_levels = (8, 16), (False, True)
      c.model.unet.norm_groups, c.model.unet.num_heads = 4, 2
  if a.latent:  # frozen autoencoder; latents [T, H/4, W/4, 4] with configs/vae.py's default
    c.latent = ml_collections.ConfigDict(dict(
        vae_workdir=a.vae,      # an `autoencoder` run (its newest checkpoint)
        vae_hf="",              # or a diffusers AutoencoderKL folder (convert/sd_vae.py)
        hf_temporal=False,      # vae_hf only: add the temporal x2 pair (at its init)
        scale_factor=0.0,       # 0: 1 / std of the train latents; < 0: the autoencoder's own
        scale_examples=64,
        posterior="sample"))    # what the train step encodes: sample (LDM) | mean
    c.model.variant = "XS/1"    # (2, 1, 1) latent tubelets: the pixel default's 128 tokens
  if a.variant != "XS/4":
    c.model.variant = a.variant
  if a.steps:
    c.total_steps = a.steps
  if a.batch:
    c.batch_size = a.batch
  return c


def get_sweep(h):
  """Diffusion objective (with its sampler) x learning rate, 6 runs (``tools/sweep.py``)::

    python tools/sweep.py --config configs/video_gen.py:smoke --root /tmp/vsweep --run local
    python tools/sweep.py --config configs/video_gen.py:b --root gs://BUCKET/vsweep --emit tpu \\
        --tpu_name my-v5e-64 --zone us-west4-a
    python tools/sweep.py --collect /tmp/vsweep --metric eval/diffusion_loss
  """
  return h.product([
      h.zip([h.sweep("config.diffusion.objective", ["flow", "v_prediction", "epsilon"]),
             h.sweep("config.diffusion.sampler", ["flow_euler", "ddim", "ddim"])]),
      h.sweep("config.optimizer.lr", [3e-4, 1e-3]),
  ])
