"""Text-to-video diffusion: a byte-level text transformer + a video DiT, trained with a
diffusion objective (rectified flow by default) and classifier-free condition dropout, evaluated by
sampling videos for held-out captions and measuring trajectory error against the conditioning clip.

Config: ``configs/video_gen.py``. Batch fields (from ``mfm_jax.data.pipeline``):
``video [B,T,H,W,3]`` in [-1, 1], ``text_ids [B,L]``, ``text_mask [B,L]``, ``centers [B,T,K,2]``,
``colors [B,K,3]``, ``obj_mask [B,K]``.
"""
from __future__ import annotations

import json
import os
from functools import partial
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from mfm_jax.data import pipeline
from mfm_jax.diffusion import guidance, objectives, samplers
from mfm_jax.engine.task import Task
from mfm_jax.eval import trajectory, visualize
from mfm_jax.models import dit as dit_lib
from mfm_jax.models import text as text_lib

DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16}


class VideoDiffusionTask(Task):

  def __init__(self, config):
    super().__init__(config)
    m, d = config.model, config.data
    self.video_shape = (d.num_frames, d.resolution, d.resolution, 3)
    self.tokenizer = pipeline.make_tokenizer(d)
    v = dit_lib.decode_variant(m.variant, width=m.width or None, depth=m.depth or None,
                               num_heads=m.num_heads or None)
    self.dit_args = dict(width=v["width"], depth=v["depth"], num_heads=v["num_heads"],
                         patch_size=(m.temporal_patch, v["patch"], v["patch"]), out_channels=3,
                         attention=m.attention, cross_attention=m.cross_attention)
    self.dit = dit_lib.VideoDiT(**self.dit_args, scan_blocks=m.scan_blocks,
                                remat_policy=m.remat_policy, dtype=DTYPES[m.dtype], flat=m.flat)
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
    dit_params = self.dit.init(r2, jnp.zeros((1,) + self.video_shape), jnp.zeros((1,)),
                               jnp.zeros(tokens.shape), jnp.ones(tokens.shape[:2], bool),
                               jnp.zeros(pooled.shape))["params"]
    return {"text": text_params, "dit": dit_params}

  def encode_text(self, params, ids, mask):
    return self.text.apply({"params": params["text"]}, ids, mask)

  def denoiser(self, params, ids, mask):
    """``model_fn(x, t)`` for the diffusion code, with the text encoded once."""
    tokens, pooled = self.encode_text(params, ids, mask)
    tmask = text_lib.patch_mask(mask, self.text.patch)
    return lambda x, t: self.dit.apply({"params": params["dit"]}, x, t, tokens, tmask, pooled)

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
    per_ex, _ = objectives.loss(self.denoiser(params, ids, mask), batch["video"], r_noise,
                                self.config.diffusion.objective, mask=batch.get("loss_weight"),
                                **self._loss_kwargs())
    loss = jnp.mean(per_ex)
    return loss, {"train/diffusion_loss": loss}

  def eval_step(self, params, batch, rng):
    """Validation loss with the true captions, and with the captions of other clips (rolled by
    one in the batch) under the same noise: the gap is how much the model uses the text."""
    def loss_with(ids, mask):
      per_ex, _ = objectives.loss(self.denoiser(params, ids, mask), batch["video"], rng,
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
    return float(dit_lib.flops_per_example(video_shape=self.video_shape, text_len=lt,
                                           text_dim=t["width"], **self.dit_args) + text_flops)

  # --- data ---------------------------------------------------------------------------------
  def make_iterator(self, split, batch_size, seed, shard_index, shard_count):
    return pipeline.make_iterator(self.config.data, split, batch_size, seed,
                                  shard_index=shard_index, shard_count=shard_count)

  # --- sampling and evaluation --------------------------------------------------------------
  @partial(jax.jit, static_argnums=(0,))
  def sample(self, params, ids, mask, noise):
    """Videos ``[B, T, H, W, 3]`` in [-1, 1] for token ids ``[B, L]``, with CFG on a doubled batch."""
    c = self.config.diffusion
    b = ids.shape[0]
    all_ids = jnp.concatenate([ids, jnp.broadcast_to(self.null_ids, ids.shape)])
    all_mask = jnp.concatenate([mask, jnp.broadcast_to(self.null_mask, mask.shape)])
    model = self.denoiser(params, all_ids, all_mask)

    def model_fn(x, t):
      out = model(jnp.concatenate([x, x]), jnp.concatenate([t, t]))
      return guidance.cfg(out[:b], out[b:], c.guidance_scale, c.guidance_rescale)

    extra = {"shift": c.shift} if c.sampler == "flow_euler" else {}
    pred = None if c.sampler == "flow_euler" else c.objective
    x = samplers.sample(model_fn, noise, name=c.sampler, prediction_type=pred,
                        timestep_spacing=None if c.sampler == "flow_euler" else c.timestep_spacing,
                        num_inference_steps=c.num_inference_steps, **self._diffusion_kwargs(),
                        **extra)
    return jnp.clip(x, -1.0, 1.0)

  def evaluate(self, params, step, workdir) -> dict[str, Any]:
    e = self.config.eval
    examples = pipeline.load_examples(self.config.data, e.split, e.num_videos)
    captions = [ex["caption"] for ex in examples]
    ids, mask = self.tokenizer.encode(captions)
    noise = jax.random.normal(jax.random.key(1234), (len(examples),) + self.video_shape)
    videos = np.asarray(jax.device_get(self.sample(params, jnp.asarray(ids), jnp.asarray(mask),
                                                    noise)))
    gt = {k: np.stack([ex[k] for ex in examples]) for k in ("centers", "colors", "obj_mask")}
    err = trajectory.trajectory_error_batch(videos, gt["centers"], gt["colors"], gt["obj_mask"])
    truth = np.stack([ex["video"] for ex in examples])  # float in [-1, 1], as the model sees it
    gt_err = trajectory.trajectory_error_batch(truth, gt["centers"], gt["colors"], gt["obj_mask"])
    # Reference: a model that makes real clips but ignores the caption (clip i+1 for caption i).
    shuffled = trajectory.trajectory_error_batch(np.roll(truth, 1, axis=0), gt["centers"],
                                                 gt["colors"], gt["obj_mask"])
    results = {"eval/trajectory_error": float(err["error"]),
               "eval/trajectory_error_px64": float(err["error_px64"]),
               "eval/detection_rate": float(err["detection_rate"]),
               "eval/trajectory_error_of_real_clips": float(gt_err["error"]),
               "eval/trajectory_error_of_shuffled_clips": float(shuffled["error"])}
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
