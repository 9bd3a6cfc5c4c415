"""Controllable text-to-video diffusion (Mojito): motion-intensity conditioning, trained, and
trajectory control without training (cross-attention energy guidance), both evaluated on the world.

Config: ``configs/video_control.py``. Same model and batches as ``video_diffusion``, plus:

* ``model.motion_levels`` = L: the DiT adds a zero-initialised embedding of the clip's motion level
  (0 .. L-1; L = null) to its timestep embedding. At training the level is ``batch["motion_level"]``
  if the pipeline provides it, else computed in the step from the batch's ground-truth ``centers``
  (``data.motion.centers_motion``, quantised with ``motion.edges``; empty edges: the quantiles of
  the first ``motion.edge_examples`` train clips, computed once at task construction). The level is
  dropped to the null level together with the caption (``diffusion.cond_dropout``); the
  unconditional branch of CFG uses the null caption and the null level.
* ``sample.motion_level``: the level used at sampling (-1: each clip's own level).
* ``guidance``: attention-energy guidance (``diffusion.attention_guidance``) for the subject object
  ``guidance.subject`` (its colour word is the subject token), target boxes of size
  ``guidance.box_size`` around the clip's ground-truth centres (``target="truth"``) or their mirror
  image x -> 1 - x (``target="mirror"``); ``eta``, ``steps`` (k), ``n_inner``, ``layers`` (DiT block
  indices, empty = all).

Evaluation: samples every validation caption at every level (intensity adherence: Spearman of level
vs measured motion) and ``eval.guidance_videos`` captions with guidance off and on (subject
trajectory error against the target centres).
"""
from __future__ import annotations

import json
import os
from functools import partial
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from mfm_jax.data import motion, pipeline
from mfm_jax.data import tokenizer as tokenizer_lib
from mfm_jax.data.world import sim
from mfm_jax.diffusion import attention_guidance as ag
from mfm_jax.diffusion import guidance, objectives
from mfm_jax.eval import control, trajectory, visualize
from mfm_jax.models import dit as dit_lib
from mfm_jax.models import text as text_lib
from mfm_jax.tasks.video_diffusion import DTYPES, VideoDiffusionTask


class VideoControlTask(VideoDiffusionTask):

  def __init__(self, config):
    super().__init__(config)
    m = config.model
    self.num_levels = int(m.get("motion_levels", 0))
    if self.num_levels < 1:
      raise ValueError(f"video_control needs model.motion_levels >= 1, got {self.num_levels}")
    self.dit = dit_lib.VideoDiT(**self.dit_args, motion_levels=self.num_levels,
                                scan_blocks=m.scan_blocks, remat_policy=m.remat_policy,
                                dtype=DTYPES[m.dtype], flat=m.flat)
    edges = tuple(config.motion.edges)
    if not edges and self.num_levels > 1:
      edges = motion.train_edges(config.data, self.num_levels, config.motion.edge_examples)
    if len(edges) != self.num_levels - 1:
      raise ValueError(f"motion.edges has {len(edges)} values; model.motion_levels="
                       f"{self.num_levels} needs {self.num_levels - 1}")
    self.edges = edges
    t, h, w, _ = self.video_shape
    pt, ph, pw = self.dit_args["patch_size"]
    self.grid = (t // pt, h // ph, w // pw)
    g = config.guidance
    self.layers = tuple(g.layers) or tuple(range(self.dit_args["depth"]))
    bad = [i for i in self.layers if not 0 <= i < self.dit_args["depth"]]
    if bad:
      raise ValueError(f"guidance.layers {bad} out of range for a DiT of depth "
                       f"{self.dit_args['depth']}")

  # --- model --------------------------------------------------------------------------------
  def denoiser(self, params, ids, mask, level=None):
    tokens, pooled = self.encode_text(params, ids, mask)
    tmask = text_lib.patch_mask(mask, self.text.patch)
    return lambda x, t: self.dit.apply({"params": params["dit"]}, x, t, tokens, tmask, pooled,
                                       motion_level=level)

  def levels_of(self, batch):
    """[B] int motion levels of a batch (the pipeline's, or from its ground-truth centres)."""
    if "motion_level" in batch:
      return jnp.asarray(batch["motion_level"], jnp.int32)
    return motion.motion_level(motion.centers_motion(jnp.asarray(batch["centers"]),
                                                     jnp.asarray(batch["obj_mask"])), self.edges)

  def loss(self, params, batch, rng):
    r_drop, r_noise = jax.random.split(rng)
    level = self.levels_of(batch)
    null = (jnp.broadcast_to(self.null_ids, batch["text_ids"].shape),
            jnp.broadcast_to(self.null_mask, batch["text_mask"].shape),
            jnp.full(level.shape, self.num_levels, jnp.int32))
    ids, mask, level = guidance.drop_condition(
        r_drop, (batch["text_ids"], batch["text_mask"], level), null,
        self.config.diffusion.cond_dropout)
    per_ex, _ = objectives.loss(self.denoiser(params, ids, mask, level), batch["video"], r_noise,
                                self.config.diffusion.objective, mask=batch.get("loss_weight"),
                                **self._loss_kwargs())
    loss = jnp.mean(per_ex)
    return loss, {"train/diffusion_loss": loss}

  def eval_step(self, params, batch, rng):
    """Validation loss with the clip's level and with the null level (same noise)."""
    level = self.levels_of(batch)

    def loss_with(lvl):
      per_ex, _ = objectives.loss(
          self.denoiser(params, batch["text_ids"], batch["text_mask"], lvl), batch["video"], rng,
          self.config.diffusion.objective, **self._loss_kwargs())
      return jnp.mean(per_ex)
    true, null = loss_with(level), loss_with(jnp.full_like(level, self.num_levels))
    return {"eval/diffusion_loss": true, "eval/diffusion_loss_null_level": null,
            "eval/level_gain": null - true}

  # --- sampling -----------------------------------------------------------------------------
  @partial(jax.jit, static_argnums=(0,))
  def sample_controlled(self, params, ids, mask, noise, level, boxes, token, eta):
    """Videos [B, T, H, W, 3] in [-1, 1] at motion levels [B], CFG, and attention guidance of
    text token [B] toward per-frame boxes [B, T, 4] with step size ``eta`` (0 = off)."""
    c, g = self.config.diffusion, self.config.guidance
    b = ids.shape[0]
    all_ids = jnp.concatenate([ids, jnp.broadcast_to(self.null_ids, ids.shape)])
    all_mask = jnp.concatenate([mask, jnp.broadcast_to(self.null_mask, mask.shape)])
    all_level = jnp.concatenate([level, jnp.full_like(level, self.num_levels)])
    model = self.denoiser(params, all_ids, all_mask, all_level)

    def model_fn(x, t):
      out = model(jnp.concatenate([x, x]), jnp.concatenate([t, t]))
      return guidance.cfg(out[:b], out[b:], c.guidance_scale, c.guidance_rescale)

    tokens, pooled = self.encode_text(params, ids, mask)
    tmask = text_lib.patch_mask(mask, self.text.patch)
    weights = ag.token_box_weights(boxes, self.grid, self.dit_args["patch_size"][0])

    def energy_fn(x, t):
      _, state = self.dit.apply({"params": params["dit"]}, x, t, tokens, tmask, pooled,
                                motion_level=level, mutable=["intermediates"])
      maps = ag.cross_attention_maps(state["intermediates"], self.layers)
      return ag.attention_energy(ag.subject_maps(maps, token // self.text.patch, self.grid),
                                 weights)

    flow = c.sampler == "flow_euler"
    x = ag.guided_sample(model_fn, energy_fn, noise, eta=eta, guidance_steps=g.steps,
                         n_inner=g.n_inner, name=c.sampler, prediction_type=None if flow
                         else c.objective, timestep_spacing=None if flow else c.timestep_spacing,
                         num_inference_steps=c.num_inference_steps, **self._diffusion_kwargs(),
                         **({"shift": c.shift} if flow else {}))
    return jnp.clip(x, -1.0, 1.0)

  def subject_token(self, caption: str, colors, k: int) -> int:
    """Token index of object k's colour word in the caption (words tokenizer, BOS at 0)."""
    if not isinstance(self.tokenizer, tokenizer_lib.WordTokenizer):
      raise ValueError("guidance needs data.tokenizer='words' (the subject token is a word)")
    name = sim.COLOR_NAMES[sim.PALETTE.index(tuple(int(v) for v in colors[k]))]
    words = tokenizer_lib.split_words(caption)
    if name not in words:
      raise ValueError(f"guidance.subject={k}: colour word {name!r} not in caption {caption!r}")
    return 1 + words.index(name)

  def target_boxes(self, centers):
    """[T, 2] ground-truth centres -> target boxes [T, 4] and their centres [T, 2]."""
    g = self.config.guidance
    c = np.array(centers, np.float32)
    if g.target == "mirror":
      c[:, 0] = 1.0 - c[:, 0]
    elif g.target != "truth":
      raise ValueError(f"guidance.target must be 'truth' or 'mirror', got {g.target!r}")
    return ag.centers_to_boxes(c, g.box_size), c

  def evaluate(self, params, step, workdir) -> dict[str, Any]:
    e, g = self.config.eval, self.config.guidance
    ex = pipeline.load_examples(self.config.data, e.split, e.num_videos)
    n = len(ex)
    ids, mask = (jnp.asarray(a) for a in self.tokenizer.encode([x["caption"] for x in ex]))
    gt = {k: np.stack([x[k] for x in ex]) for k in ("centers", "colors", "obj_mask", "video")}
    noise = jax.random.normal(jax.random.key(1234), (n,) + self.video_shape)
    dummy = jnp.zeros((n, self.video_shape[0], 4))
    levels, motions = [], []
    for lvl in range(self.num_levels):   # intensity: every caption at every level
      vids = np.asarray(self.sample_controlled(params, ids, mask, noise,
                                               jnp.full((n,), lvl, jnp.int32), dummy,
                                               jnp.zeros((n,), jnp.int32), 0.0))
      levels += [lvl] * n
      motions += [control.video_motion(v, c, m) for v, c, m in
                  zip(vids, gt["colors"], gt["obj_mask"])]
    adh = control.intensity_adherence(levels, motions)
    true_level = np.asarray(motion.motion_level(
        motion.centers_motion(gt["centers"], gt["obj_mask"]), self.edges))
    real = [control.video_motion(v, c, m) for v, c, m in
            zip(gt["video"], gt["colors"], gt["obj_mask"])]
    res = {"eval/intensity_spearman": adh["spearman"],
           "eval/intensity_spearman_of_real_clips": control.spearman(true_level, real)}
    res.update({f"eval/motion_at_level_{l}": v for l, v in adh["motion_per_level"].items()})
    # Trajectory guidance: off vs on for the first guidance_videos captions.
    m = min(e.guidance_videos, n)
    k = g.subject
    tok = np.array([self.subject_token(x["caption"], x["colors"], k) for x in ex[:m]], np.int32)
    boxes, tc = zip(*[self.target_boxes(x["centers"][:, k]) for x in ex[:m]])
    lvl = (true_level[:m] if self.config.sample.motion_level < 0
           else np.full((m,), self.config.sample.motion_level))
    args = (params, ids[:m], mask[:m], noise[:m], jnp.asarray(lvl, jnp.int32),
            jnp.asarray(np.stack(boxes)), jnp.asarray(tok))
    off = np.asarray(self.sample_controlled(*args, 0.0))
    on = np.asarray(self.sample_controlled(*args, float(g.eta)))
    sub = (np.stack(tc), gt["colors"][:m], gt["obj_mask"][:m], np.full((m,), k))
    err_off = control.subject_trajectory_error(off, *sub)
    err_on = control.subject_trajectory_error(on, *sub)
    res.update({"eval/guidance_off_subject_error": float(err_off.mean()),
                "eval/guidance_on_subject_error": float(err_on.mean()),
                "eval/trajectory_error": float(trajectory.trajectory_error_batch(
                    off, gt["centers"][:m], gt["colors"][:m], gt["obj_mask"][:m])["error"])})
    if jax.process_index() == 0:
      cells, labels = [], []
      for i in range(m):
        cells += [gt["video"][i], off[i], on[i]]
        labels += ["real", f"off {err_off[i]:.3f}", f"on {err_on[i]:.3f}"]
      path = os.path.join(workdir, "samples", f"control_{step:06d}.gif")
      visualize.write_video_grid(path, cells, labels, cols=3,
                                 scale=max(1, 128 // self.video_shape[1]))
      with open(os.path.join(workdir, "samples", f"control_{step:06d}.json"), "w") as f:
        json.dump({"step": step, **res, "levels": levels, "motions": motions,
                   "edges": list(self.edges), "err_off": err_off.tolist(),
                   "err_on": err_on.tolist()}, f, indent=2)
      res["eval/gif"] = path
    return res
