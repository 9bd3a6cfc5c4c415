"""Text-to-video diffusion: a byte-level text transformer + a video DiT, trained with a
diffusion objective (rectified flow by default) and classifier-free condition dropout, evaluated by
sampling videos for held-out captions and measuring trajectory error against the conditioning clip.

Config: ``configs/video_gen.py``. Batch fields (from ``mfm_jax.data.pipeline``):
``video [B,T,H,W,3]`` in [-1, 1], ``text_ids [B,L]``, ``text_mask [B,L]``, ``centers [B,T,K,2]``,
``colors [B,K,3]``, ``obj_mask [B,K]``.

Backbone (``model.backbone``): ``"dit"`` (``models.dit.VideoDiT``, the default) or ``"unet"``
(``models.unet3d.UNet3D`` from ``model.unet``: a variant name plus optional overrides); both take
the text encoder's tokens by cross-attention (the DiT also the pooled embedding), and share the
loss, CFG, sampling and evaluation. Their params live under ``"dit"`` / ``"unet"``.

Latent space (``config.latent`` with ``vae_workdir`` = an ``autoencoder`` run, or ``vae_hf`` = a
diffusers ``AutoencoderKL`` folder imported by ``convert.sd_vae``): the backbone denoises the frozen
autoencoder's scaled latents ``[B, T', h, w, Z]`` (frame by frame, or T' = T / 2 when the
autoencoder has the temporal x2 pair) and its input / output channels follow Z. The train step
encodes each batch under ``stop_gradient`` with a posterior draw (``latent.posterior="sample"``,
as LDM's training does) or the posterior mean (``"mean"``); validation losses and the
reconstruction reference use the mean. ``latent.scale_factor``: > 0 fixed; 0 = 1 / std of the
posterior means of the first ``latent.scale_examples`` train clips (LDM section 4.3.2, estimated
once at construction); < 0 = the autoencoder's own ``scaling_factor``. Samples are decoded to
pixels before the evaluation; the frozen params live under ``"vae"`` (masked in the optimizer),
so a checkpoint samples on its own. ``data.object_weight`` is average-pooled to the latent grid.
"""
from __future__ import annotations

import json
import os
from functools import partial
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from mfm_jax.data import pipeline
from mfm_jax.diffusion import guidance, objectives, samplers
from mfm_jax.engine.task import Task
from mfm_jax.eval import trajectory, visualize
from mfm_jax.models import dit as dit_lib
from mfm_jax.models import text as text_lib
from mfm_jax.models import unet3d as unet_lib
from mfm_jax.models import vae as vae_lib

DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16}


class VideoDiffusionTask(Task):

  def __init__(self, config):
    super().__init__(config)
    m, d = config.model, config.data
    self.video_shape = (d.num_frames, d.resolution, d.resolution, 3)   # pixels
    self.vae, self.model_shape = None, self.video_shape   # model_shape: what the backbone sees
    if config.get("latent") is not None:
      self._init_latent(config.latent)
    self.backbone = m.get("backbone", "dit")
    if self.backbone not in ("dit", "unet"):
      raise ValueError(f"model.backbone={self.backbone!r}: use 'dit' or 'unet'")
    if type(self) is not VideoDiffusionTask and (self.vae is not None or self.backbone != "dit"):
      raise ValueError(f"{type(self).__name__}: config.latent and model.backbone='unet' are "
                       "implemented by video_diffusion only")
    channels = self.model_shape[-1]
    self.tokenizer = pipeline.make_tokenizer(d)
    v = dit_lib.decode_variant(m.variant, width=m.width or None, depth=m.depth or None,
                               num_heads=m.num_heads or None)
    self.dit_args = dict(width=v["width"], depth=v["depth"], num_heads=v["num_heads"],
                         patch_size=(m.temporal_patch, v["patch"], v["patch"]),
                         out_channels=channels,
                         attention=m.attention, cross_attention=m.cross_attention)
    self.dit = dit_lib.VideoDiT(**self.dit_args, scan_blocks=m.scan_blocks,
                                remat_policy=m.remat_policy, dtype=DTYPES[m.dtype], flat=m.flat)
    if self.backbone == "unet":
      u = m.unet
      args = unet_lib.decode_variant(u.variant)
      for key in ("block_out_channels", "attention_levels"):
        if u.get(key):
          args[key] = tuple(u[key])
      for key in ("layers_per_block", "num_heads"):
        if u.get(key):
          args[key] = u[key]
      self.unet_args = dict(out_channels=channels, transformer_depth=u.get("transformer_depth", 1),
                            norm_groups=u.get("norm_groups", 32),
                            temporal=u.get("temporal", True), **args)
      self.unet = unet_lib.UNet3D(**self.unet_args, remat_policy=m.remat_policy,
                                  dtype=DTYPES[m.dtype])
    t = m.text
    # The embedding table is padded to a multiple of 128 rows so that it shards over `tensor`.
    vocab = -(-self.tokenizer.vocab_size // 128) * 128
    self.text = text_lib.TextEncoder(vocab_size=vocab, width=t["width"],
                                     depth=t["depth"], num_heads=t["num_heads"],
                                     max_len=d.max_text_len, patch=t.get("patch", 1),
                                     dtype=DTYPES[m.dtype])
    null_ids, null_mask = self.tokenizer.encode([""])
    self.null_ids, self.null_mask = jnp.asarray(null_ids), jnp.asarray(null_mask)

  # --- model --------------------------------------------------------------------------------
  def init(self, rng):
    r1, r2 = jax.random.split(rng)
    ids = jnp.zeros((1, self.config.data.max_text_len), jnp.int32)
    mask = jnp.ones(ids.shape, bool)
    text_params = self.text.init(r1, ids, mask)["params"]
    tokens, pooled = jax.eval_shape(lambda: self.text.apply({"params": text_params}, ids, mask))
    x = jnp.zeros((1,) + self.model_shape)
    if self.backbone == "unet":
      params = {"text": text_params, "unet": self.unet.init(
          r2, x, jnp.zeros((1,)), jnp.zeros(tokens.shape),
          jnp.ones(tokens.shape[:2], bool))["params"]}
    else:
      params = {"text": text_params, "dit": self.dit.init(
          r2, x, jnp.zeros((1,)), jnp.zeros(tokens.shape), jnp.ones(tokens.shape[:2], bool),
          jnp.zeros(pooled.shape))["params"]}
    if self.vae is not None:
      params["vae"] = self._frozen_vae_params(jax.random.fold_in(rng, 3))
    return params

  # --- latent space -------------------------------------------------------------------------
  def _init_latent(self, lat):
    if lat.posterior not in ("sample", "mean"):
      raise ValueError(f"latent.posterior={lat.posterior!r}: use 'sample' or 'mean'")
    model, self.vae_host_params = load_autoencoder(lat)
    if lat.scale_factor > 0:
      scale = float(lat.scale_factor)
    elif lat.scale_factor < 0:
      scale = float(model.scaling_factor)
    else:
      scale = estimate_scale(model, self.vae_host_params, self.config.data, lat.scale_examples)
    self.vae = model.clone(scaling_factor=scale)
    self.model_shape = vae_lib.latent_shape(self.vae, (1,) + self.video_shape)[1:]

  def _frozen_vae_params(self, rng):
    """The loaded autoencoder params, boxed with the model's logical axis names."""
    boxed = self.vae.init(rng, jnp.zeros((1,) + self.video_shape))["params"]
    is_box = lambda a: isinstance(a, nn.meta.AxisMetadata)  # noqa: E731
    return jax.tree.map(lambda b, v: b.replace_boxed(jnp.asarray(v)) if is_box(b)
                        else jnp.asarray(v), boxed, self.vae_host_params, is_leaf=is_box)

  def trainable_mask(self, params):
    if self.vae is None:
      return None
    return {k: jax.tree.map(lambda _, keep=(k != "vae"): keep, v) for k, v in params.items()}

  def model_input(self, params, batch, rng=None):
    """``(x0, loss weight)`` the backbone denoises: the pixels ``batch["video"]`` and
    ``batch.get("loss_weight")``; in latent space the frozen autoencoder's scaled latents
    ``[B, T', h, w, Z]`` (a posterior draw with ``rng``, else the mean; no gradient) and the
    weight ``[B, T, H, W, 1]`` average-pooled to ``[B, T', h, w, 1]``."""
    video, weight = batch["video"], batch.get("loss_weight")
    if self.vae is None:
      return video, weight
    vp = jax.lax.stop_gradient(params["vae"])
    z = jax.lax.stop_gradient(vae_lib.encode_latents(self.vae, vp, video, rng))
    if weight is not None:
      b, t, h, w, _ = weight.shape
      _, tl, hl, wl, _ = z.shape
      weight = weight.reshape(b, tl, t // tl, hl, h // hl, wl, w // wl, 1).mean(axis=(2, 4, 6))
    return z.astype(jnp.float32), weight

  def decode(self, params, x):
    """Backbone space -> pixels ``[B, T, H, W, 3]`` (identity in pixel space; not clipped)."""
    if self.vae is None:
      return x
    return vae_lib.decode_latents(self.vae, params["vae"], x).astype(jnp.float32)

  @partial(jax.jit, static_argnums=(0,))
  def reconstruct(self, vae_params, video):
    """The frozen autoencoder's reconstruction (posterior mean) of ``[B, T, H, W, 3]``."""
    return jnp.clip(self.decode({"vae": vae_params}, self.model_input(
        {"vae": vae_params}, {"video": video})[0]), -1.0, 1.0)

  def encode_text(self, params, ids, mask):
    return self.text.apply({"params": params["text"]}, ids, mask)

  def denoiser(self, params, ids, mask, text_values=None):
    """``model_fn(x, t)`` for the diffusion code, with the text encoded once. ``text_values``
    ``[B, S, Lt, Dt]``: structured cross-attention values (``diffusion/structured.py``)."""
    tokens, pooled = self.encode_text(params, ids, mask)
    tmask = text_lib.patch_mask(mask, self.text.patch)
    if self.backbone == "unet":
      if text_values is not None:
        raise ValueError("text_values (structured cross-attention) needs model.backbone='dit'")
      return lambda x, t: self.unet.apply({"params": params["unet"]}, x, t, tokens, tmask)
    return lambda x, t: self.dit.apply({"params": params["dit"]}, x, t, tokens, tmask, pooled,
                                       text_values=text_values)

  def _diffusion_kwargs(self):
    c = self.config.diffusion
    return dict(num_train_timesteps=c.num_train_timesteps, beta_schedule=c.beta_schedule,
                beta_start=c.beta_start, beta_end=c.beta_end)

  def _loss_kwargs(self):
    c = self.config.diffusion
    extra = ({"time_sampling": c.time_sampling, "logit_mean": c.get("logit_mean", 0.0),
              "logit_std": c.get("logit_std", 1.0)} if c.objective == "flow" else {})
    return {**self._diffusion_kwargs(), **extra}

  def loss(self, params, batch, rng):
    r_drop, r_noise = jax.random.split(rng)
    null = (jnp.broadcast_to(self.null_ids, batch["text_ids"].shape),
            jnp.broadcast_to(self.null_mask, batch["text_mask"].shape))
    ids, mask = guidance.drop_condition(r_drop, (batch["text_ids"], batch["text_mask"]), null,
                                        self.config.diffusion.cond_dropout)
    draw = self.vae is not None and self.config.latent.posterior == "sample"
    x0, weight = self.model_input(params, batch, jax.random.fold_in(rng, 2) if draw else None)
    per_ex, _ = objectives.loss(self.denoiser(params, ids, mask), x0, r_noise,
                                self.config.diffusion.objective, mask=weight,
                                **self._loss_kwargs())
    loss = jnp.mean(per_ex)
    return loss, {"train/diffusion_loss": loss}

  def eval_step(self, params, batch, rng):
    """Validation loss with the true captions, and with the captions of other clips (rolled by
    one in the batch) under the same noise: the gap is how much the model uses the text."""
    x0, _ = self.model_input(params, batch)

    def loss_with(ids, mask):
      per_ex, _ = objectives.loss(self.denoiser(params, ids, mask), x0, rng,
                                  self.config.diffusion.objective, **self._loss_kwargs())
      return jnp.mean(per_ex)
    true = loss_with(batch["text_ids"], batch["text_mask"])
    other = loss_with(jnp.roll(batch["text_ids"], 1, 0), jnp.roll(batch["text_mask"], 1, 0))
    return {"eval/diffusion_loss": true, "eval/diffusion_loss_shuffled_text": other,
            "eval/text_gain": other - true}

  def flops_per_example(self):
    t = self.config.model.text
    p = t.get("patch", 1)
    lt = self.config.data.max_text_len // p
    text_flops = 2 * lt * p * t["width"] ** 2 if p > 1 else 0   # byte-patch projection
    text_flops += t["depth"] * (24 * lt * t["width"] ** 2 + 4 * lt * lt * t["width"])
    if self.backbone == "unet":
      backbone = unet_lib.flops_per_example(video_shape=self.model_shape, text_len=lt,
                                            text_dim=t["width"], **self.unet_args)
    else:
      backbone = dit_lib.flops_per_example(video_shape=self.model_shape, text_len=lt,
                                           text_dim=t["width"], **self.dit_args)
    # The frozen encoder runs forward once per step (the engine counts 3x): a third of it here.
    return float(backbone + text_flops + self._encoder_flops() / 3)

  def _encoder_flops(self) -> float:
    """XLA's FLOP count of the autoencoder's encode of one clip (0 in pixel space)."""
    if self.vae is None:
      return 0.0
    video = jax.ShapeDtypeStruct((1,) + self.video_shape, jnp.float32)
    params = jax.tree.map(lambda a: jax.ShapeDtypeStruct(a.shape, a.dtype), self.vae_host_params)
    fn = jax.jit(lambda p, v: self.vae.apply({"params": p}, v, method=self.vae.encode))
    cost = fn.lower(params, video).compile().cost_analysis()
    cost = cost[0] if isinstance(cost, (list, tuple)) else cost
    return float(cost["flops"])

  # --- data ---------------------------------------------------------------------------------
  def make_iterator(self, split, batch_size, seed, shard_index, shard_count):
    return pipeline.make_iterator(self.config.data, split, batch_size, seed,
                                  shard_index=shard_index, shard_count=shard_count)

  # --- sampling and evaluation --------------------------------------------------------------
  @partial(jax.jit, static_argnums=(0,))
  def sample(self, params, ids, mask, noise, text_values=None):
    """Videos ``[B, T, H, W, 3]`` in [-1, 1] for token ids ``[B, L]``, with CFG on a doubled batch.
    ``text_values`` ``[B, S, Lt, Dt]``: structured values of the conditional half (the null half
    keeps the null prompt's)."""
    c = self.config.diffusion
    b = ids.shape[0]
    all_ids = jnp.concatenate([ids, jnp.broadcast_to(self.null_ids, ids.shape)])
    all_mask = jnp.concatenate([mask, jnp.broadcast_to(self.null_mask, mask.shape)])
    if text_values is not None:
      null_tokens, _ = self.encode_text(params, self.null_ids, self.null_mask)
      text_values = jnp.concatenate(
          [text_values, jnp.broadcast_to(null_tokens[:, None], text_values.shape)])
    model = self.denoiser(params, all_ids, all_mask, text_values)

    def model_fn(x, t):
      out = model(jnp.concatenate([x, x]), jnp.concatenate([t, t]))
      return guidance.cfg(out[:b], out[b:], c.guidance_scale, c.guidance_rescale)

    extra = {"shift": c.shift} if c.sampler == "flow_euler" else {}
    pred = None if c.sampler == "flow_euler" else c.objective
    x = samplers.sample(model_fn, noise, name=c.sampler, prediction_type=pred,
                        timestep_spacing=None if c.sampler == "flow_euler" else c.timestep_spacing,
                        num_inference_steps=c.num_inference_steps, **self._diffusion_kwargs(),
                        **extra)
    return jnp.clip(self.decode(params, x), -1.0, 1.0)

  def evaluate(self, params, step, workdir) -> dict[str, Any]:
    e = self.config.eval
    examples = pipeline.load_examples(self.config.data, e.split, e.num_videos)
    captions = [ex["caption"] for ex in examples]
    ids, mask = self.tokenizer.encode(captions)
    noise = jax.random.normal(jax.random.key(1234), (len(examples),) + self.model_shape)
    videos = np.asarray(jax.device_get(self.sample(params, jnp.asarray(ids), jnp.asarray(mask),
                                                    noise)))
    gt = {k: np.stack([ex[k] for ex in examples]) for k in ("centers", "colors", "obj_mask")}
    err = trajectory.trajectory_error_batch(videos, gt["centers"], gt["colors"], gt["obj_mask"])
    truth = np.stack([ex["video"] for ex in examples])  # float in [-1, 1], as the model sees it
    gt_err = trajectory.trajectory_error_batch(truth, gt["centers"], gt["colors"], gt["obj_mask"])
    # Reference: a model that makes real clips but ignores the caption (clip i+1 for caption i).
    shuffled = trajectory.trajectory_error_batch(np.roll(truth, 1, axis=0), gt["centers"],
                                                 gt["colors"], gt["obj_mask"])
    # Reference: a model that draws no object at all (grey frames: every object undetected, so
    # predicted at the image centre); a generator must beat this too, not only the shuffled clips.
    empty = trajectory.trajectory_error_batch(np.zeros_like(truth), gt["centers"], gt["colors"],
                                              gt["obj_mask"])
    results = {"eval/trajectory_error": float(err["error"]),
               "eval/trajectory_error_px64": float(err["error_px64"]),
               "eval/detection_rate": float(err["detection_rate"]),
               "eval/trajectory_error_of_real_clips": float(gt_err["error"]),
               "eval/trajectory_error_of_shuffled_clips": float(shuffled["error"]),
               "eval/trajectory_error_of_empty_frames": float(empty["error"])}
    if self.vae is not None:   # the floor a latent model can reach: autoencoded real clips
      recon = np.asarray(jax.device_get(self.reconstruct(params["vae"], jnp.asarray(truth))))
      results["eval/trajectory_error_of_reconstructions"] = float(
          trajectory.trajectory_error_batch(recon, gt["centers"], gt["colors"],
                                            gt["obj_mask"])["error"])
      results["eval/latent_scale_factor"] = float(self.vae.scaling_factor)
    if jax.process_index() == 0:
      cells, labels = [], []
      for i in range(len(examples)):
        cells += [truth[i], videos[i]]
        labels += [f"real: {captions[i]}", f"sample (err {err['per_video'][i]:.3f})"]
      path = os.path.join(workdir, "samples", f"step_{step:06d}.gif")
      visualize.write_video_grid(path, cells, labels, cols=2 * e.gif_cols,
                                 scale=max(1, 128 // self.video_shape[1]))
      with open(os.path.join(workdir, "samples", f"step_{step:06d}.json"), "w") as f:
        json.dump({"step": step, "captions": captions, **results,
                   "per_video_error": [float(x) for x in err["per_video"]]}, f, indent=2)
      results["eval/gif"] = path
    return results


def load_autoencoder(lat) -> tuple[vae_lib.AutoencoderKL, Any]:
  """(``AutoencoderKL``, host numpy params) from ``latent.vae_workdir`` (an ``autoencoder`` run:
  its saved config and newest params, EMA when kept) or ``latent.vae_hf`` (a diffusers folder;
  ``latent.hf_temporal`` adds the temporal x2 pair at its init)."""
  if bool(lat.get("vae_workdir")) == bool(lat.get("vae_hf")):
    raise ValueError("config.latent: set exactly one of vae_workdir (an autoencoder run) and "
                     f"vae_hf (a diffusers folder); got {lat.get('vae_workdir')!r}, "
                     f"{lat.get('vae_hf')!r}")
  if lat.vae_workdir:
    from mfm_jax.eval import checkpoints  # pylint: disable=g-import-not-at-top
    loaded = checkpoints.load(lat.vae_workdir, "autoencoder")
    return loaded.task.model, loaded.params
  from mfm_jax.convert import sd_vae  # pylint: disable=g-import-not-at-top
  model, params = sd_vae.load(lat.vae_hf, temporal_downsample=bool(lat.get("hf_temporal")))
  return model, jax.tree.map(np.asarray, params)


def estimate_scale(model: vae_lib.AutoencoderKL, params: Any, data_config, n: int,
                   chunk: int = 16) -> float:
  """1 / std of ``mean - shift_factor`` over the posterior means of the first n train clips."""
  examples = pipeline.load_examples(data_config, "train", n)
  if not examples:
    raise ValueError("latent.scale_factor=0 needs train clips to estimate the scale; found none")
  encode = jax.jit(lambda p, v: model.apply({"params": p}, v, method=model.encode)[0])
  video = np.stack([ex["video"] for ex in examples])
  z = np.concatenate([np.asarray(encode(params, jnp.asarray(video[i:i + chunk])), np.float64)
                      for i in range(0, len(video), chunk)])
  return 1.0 / max(float(np.std(z - model.shift_factor)), 1e-8)
