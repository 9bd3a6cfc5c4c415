"""KL video autoencoder on the world: train ``models.vae.AutoencoderKL`` frame by frame (optionally
with the temporal x2 pair) and evaluate reconstruction PSNR; the latent space for latent diffusion.

Config: ``configs/vae.py``. Batches from ``mfm_jax.data.pipeline`` (``video [B, T, H, W, 3]`` in
[-1, 1]; the other fields are ignored).

Loss (the choice): the LDM / SD autoencoder objective without its perceptual (LPIPS) and GAN
terms, which need pretrained networks or long training:
``L = mean_pixels(l1_weight * |x - x_hat| + l2_weight * (x - x_hat)^2)
      + kl_weight * sum_latent(KL(q(z|x) || N(0, I))) / pixels``,
x_hat decoded from a posterior draw. It is LDM's per-example sum form (``kl_weight`` 1e-6 as in
LDM's ``kl-f*`` configs) divided by the number of pixel values per example, so the learning rate
sees per-pixel magnitudes. L1 keeps edges sharper than L2 (the world is flat colours on a floor);
the KL is small so the latents stay informative, and its scale is fixed afterwards by
``scaling_factor`` = 1 / std of the latents, reported by ``evaluate`` as
``eval/suggested_scaling_factor`` (LDM section 4.3.2).

Metrics: PSNR of posterior-mean reconstructions (per frame on [0, 1] pixels, dm-pix, averaged),
L1, KL per latent element. ``evaluate`` writes ``samples/step_N.gif`` (each held-out clip beside its
reconstruction) and ``samples/step_N.json``.

For latent diffusion: :func:`model_from_config` turns a ``config.model`` of this task into the
module; ``vae.encode_latents`` / ``vae.decode_latents`` do video <-> scaled latents.
"""
from __future__ import annotations

import json
import os
from functools import partial
from typing import Any

import dm_pix
import jax
import jax.numpy as jnp
import numpy as np

from mfm_jax.data import pipeline
from mfm_jax.engine.task import Task
from mfm_jax.eval import visualize
from mfm_jax.models import vae

DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16}


def model_from_config(m) -> vae.AutoencoderKL:
  """``vae.AutoencoderKL`` for a ``config.model`` of ``configs/vae.py``."""
  return vae.AutoencoderKL(
      block_out_channels=tuple(m.block_out_channels), layers_per_block=m.layers_per_block,
      latent_channels=m.latent_channels, norm_num_groups=m.norm_num_groups,
      mid_attention=m.mid_attention, temporal_downsample=m.temporal_downsample,
      scaling_factor=m.scaling_factor, shift_factor=m.get("shift_factor", 0.0),
      dtype=DTYPES[m.dtype])


def psnr(x: jax.Array, y: jax.Array) -> jax.Array:
  """Mean per-frame PSNR (dB) of videos ``[B, T, H, W, C]`` in [-1, 1], on [0, 1] pixels."""
  to01 = lambda a: jnp.clip((a.reshape(-1, *a.shape[-3:]) + 1) / 2, 0, 1)  # noqa: E731
  return jnp.mean(dm_pix.psnr(to01(x), to01(y)))


class AutoencoderTask(Task):

  def __init__(self, config):
    super().__init__(config)
    d = config.data
    self.video_shape = (d.num_frames, d.resolution, d.resolution, 3)
    self.model = model_from_config(config.model)
    vae.latent_shape(self.model, (1,) + self.video_shape)  # fails early on a bad factor

  def init(self, rng):
    return self.model.init(rng, jnp.zeros((1,) + self.video_shape))["params"]

  def _terms(self, params, video, rng):
    recon, mean, logvar = self.model.apply({"params": params}, video, rng)
    recon = recon.astype(jnp.float32)
    err = recon - video
    kl = vae.kl(mean.astype(jnp.float32), logvar.astype(jnp.float32))
    return recon, err, kl

  def loss(self, params, batch, rng):
    c = self.config.loss
    video = batch["video"]
    _, err, kl = self._terms(params, video, rng)
    l1, l2 = jnp.mean(jnp.abs(err)), jnp.mean(jnp.square(err))
    pixels = np.prod(video.shape[1:])
    kl_term = jnp.sum(kl) / video.shape[0] / pixels
    loss = c.l1_weight * l1 + c.l2_weight * l2 + c.kl_weight * kl_term
    return loss, {"train/loss": loss, "train/l1": l1, "train/psnr": -10 * jnp.log10(l2 / 4),
                  "train/kl": jnp.mean(kl)}

  def eval_step(self, params, batch, rng):
    del rng
    video = batch["video"]
    recon, err, kl = self._terms(params, video, None)   # posterior mean
    return {"eval/psnr": psnr(recon, video), "eval/l1": jnp.mean(jnp.abs(err)),
            "eval/kl": jnp.mean(kl)}

  # --- data ---------------------------------------------------------------------------------
  def make_iterator(self, split, batch_size, seed, shard_index, shard_count):
    return pipeline.make_iterator(self.config.data, split, batch_size, seed,
                                  shard_index=shard_index, shard_count=shard_count)

  # --- evaluation ---------------------------------------------------------------------------
  @partial(jax.jit, static_argnums=(0,))
  def reconstruct(self, params, video):
    """``(reconstruction in [-1, 1], posterior mean)`` for videos ``[B, T, H, W, 3]``."""
    mean, _ = self.model.apply({"params": params}, video, method=self.model.encode)
    recon = self.model.apply({"params": params}, mean, method=self.model.decode)
    return jnp.clip(recon.astype(jnp.float32), -1, 1), mean

  def evaluate(self, params, step, workdir) -> dict[str, Any]:
    e = self.config.eval
    examples = pipeline.load_examples(self.config.data, e.split, e.num_videos)
    truth = np.stack([ex["video"] for ex in examples])
    recon, mean = (np.asarray(a) for a in jax.device_get(self.reconstruct(params,
                                                                          jnp.asarray(truth))))
    per_video = [float(psnr(jnp.asarray(r[None]), jnp.asarray(t[None])))
                 for r, t in zip(recon, truth)]
    std = float(np.std(mean))
    results = {"eval/psnr_videos": float(np.mean(per_video)), "eval/latent_std": std,
               "eval/suggested_scaling_factor": 1.0 / max(std, 1e-8)}
    if jax.process_index() == 0:
      cells, labels = [], []
      for i, ex in enumerate(examples):
        cells += [truth[i], recon[i]]
        labels += [f"real: {ex['caption']}", f"reconstruction ({per_video[i]:.1f} dB)"]
      path = os.path.join(workdir, "samples", f"step_{step:06d}.gif")
      visualize.write_video_grid(path, cells, labels, cols=2 * e.gif_cols,
                                 scale=max(1, 128 // self.video_shape[1]))
      with open(os.path.join(workdir, "samples", f"step_{step:06d}.json"), "w") as f:
        json.dump({"step": step, **results, "per_video_psnr": per_video,
                   "latent_shape": list(mean.shape[1:])}, f, indent=2)
      results["eval/gif"] = path
    return results
