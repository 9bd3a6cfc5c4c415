"""Multi-condition controllable text-to-video (FlexEControl, TMLR'24) on the procedural world.

Config: ``configs/flex_control.py``. The text-to-video model of ``video_diffusion`` (text encoder +
``VideoDiT``), usually initialised from a trained checkpoint (``config.init_from``) and frozen,
plus a control branch (``models/control.py``) that sees the noisy video and N condition maps at
once (``control.conditions`` among depth / edges / instance, ``data/conditions.py``) and adds one
residual per DiT block. ``control.mode``: ``flex`` (FlexEControl: weights shared across conditions
by Kronecker decomposition) or ``separate`` (per-condition branches, the baseline).

Loss (per batch):

* masked diffusion loss: the objective's per-pixel squared error weighted by
  ``1 + control.mask_weight * U`` with ``U`` [B, T, H, W, 1] the union of the object masks
  (pixel coverage in [0, 1]), normalised by the weights' sum (``objectives.loss(mask=...)``):
  objects count ``1 + mask_weight`` times a floor pixel (set ``data.object_weight = 0``).
* cross-attention supervision (``control.attn_weight``): for every object k whose colour / shape
  words are in the caption (``obj_tokens``), the DiT's cross-attention probability of those tokens
  over the video tokens (mean over heads, the two words and the blocks ``control.attn_layers``;
  ``intermediates/.../cross_attn/attn_maps``), divided per token-frame by its maximum, is pulled
  toward the object's mask at the token grid (mean coverage over each tubelet) by a mean squared
  error; examples whose caption was dropped are skipped.
* conditions are dropped independently with probability ``control.drop_prob`` (``present``
  [B, N]), the caption with ``diffusion.cond_dropout`` (classifier-free guidance); any subset of
  conditions works at sampling.

Evaluation: samples ``eval.num_videos`` validation captions with the same noise under every subset
in ``eval.subsets`` (``none`` = no control, ``all``, or one condition name) and measures condition
adherence (``eval/condition.py``: mask IoU, depth error, edge F1) against the clip's conditions,
with real clips and shuffled real clips as references.
"""
from __future__ import annotations

import json
import os
from functools import partial
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from mfm_jax.data import conditions
from mfm_jax.diffusion import attention_guidance as ag
from mfm_jax.diffusion import guidance, objectives, samplers
from mfm_jax.eval import condition as cond_eval
from mfm_jax.eval import visualize
from mfm_jax.models import control as control_lib
from mfm_jax.models import dit as dit_lib
from mfm_jax.models import text as text_lib
from mfm_jax.tasks.video_diffusion import DTYPES, VideoDiffusionTask


class FlexControlTask(VideoDiffusionTask):

  def __init__(self, config):
    super().__init__(config)
    k, m = config.control, config.model
    self.cond_names = tuple(k.conditions)
    bad = [c for c in self.cond_names if c not in conditions.CONDITIONS]
    if bad or not self.cond_names or len(set(self.cond_names)) != len(self.cond_names):
      raise ValueError(f"control.conditions={self.cond_names!r}: distinct names among "
                       f"{conditions.CONDITIONS}")
    if config.data.get("object_weight", 0.0):
      raise ValueError("flex_control weights the loss by the object masks itself "
                       "(control.mask_weight); set data.object_weight=0")
    a = self.dit_args
    blocks = int(k.get("blocks", 0)) or a["depth"]
    if not 1 <= blocks <= a["depth"]:
      raise ValueError(f"control.blocks={blocks}: 1 .. the DiT's depth {a['depth']} (0 = all)")
    self.branch = control_lib.ControlBranch(
        num_conditions=len(self.cond_names), width=a["width"], depth=blocks, out_depth=a["depth"],
        num_heads=a["num_heads"], patch_size=a["patch_size"], mode=k.mode, kron_n=k.kron_n,
        kron_fast_rank=k.kron_fast_rank, kron_slow_rank=k.kron_slow_rank or None,
        kron_scale=k.kron_scale, dtype=DTYPES[m.dtype])
    t, h, w, _ = self.video_shape
    pt, ph, pw = a["patch_size"]
    self.grid = (t // pt, h // ph, w // pw)
    self.layers = tuple(k.attn_layers) or tuple(range(a["depth"]))
    if any(not 0 <= i < a["depth"] for i in self.layers):
      raise ValueError(f"control.attn_layers {self.layers} out of range for depth {a['depth']}")
    self._profile = None

  # --- model --------------------------------------------------------------------------------
  def init(self, rng):
    r1, r2 = jax.random.split(rng)
    params = super().init(r1)
    n = len(self.cond_names)
    x = jnp.zeros((1,) + self.video_shape)
    params["control"] = self.branch.init(
        r2, x, jnp.zeros((1,)), jnp.zeros((1, n) + self.video_shape[:3] + (3,)),
        jnp.ones((1, n), bool))["params"]
    return params

  def _by_part(self, params, control: bool, other: bool):
    return {key: jax.tree.map(lambda _: control if key == "control" else other, sub)
            for key, sub in params.items()}

  def trainable_mask(self, params):
    return self._by_part(params, True, False) if self.config.control.freeze_base else None

  def init_from_fresh(self, params):
    return self._by_part(params, True, False)

  def after_init_from(self, params):
    if not self.config.control.copy_dit:
      return params
    out = dict(params)
    out["control"] = control_lib.init_from_dit(params["control"], params["dit"],
                                               self.branch.depth)
    return out

  def conds_of(self, batch) -> jax.Array:
    """[B, N, T, H, W, 3] condition maps of a batch, in ``control.conditions`` order."""
    try:
      return jnp.stack([jnp.asarray(batch[f"cond_{c}"]) for c in self.cond_names], 1)
    except KeyError as e:
      raise KeyError(f"flex_control: batch lacks {e} (has {sorted(batch)})") from None

  def denoiser(self, params, ids, mask, conds=None, present=None, sink=None):
    """``model_fn(x, t)``; with ``conds`` [B, N, ...] and ``present`` [B, N] the control branch's
    residuals enter the DiT; ``sink``: a list that receives the sown intermediates."""
    tokens, pooled = self.encode_text(params, ids, mask)
    tmask = text_lib.patch_mask(mask, self.text.patch)

    def fn(x, t):
      ctrl = None
      if conds is not None:
        ctrl = self.branch.apply({"params": params["control"]}, x, t, conds, present)
      args = ({"params": params["dit"]}, x, t, tokens, tmask, pooled)
      if sink is None:
        return self.dit.apply(*args, control=ctrl)
      out, state = self.dit.apply(*args, control=ctrl, mutable=["intermediates"])
      sink.append(state["intermediates"])
      return out
    return fn

  def attention_loss(self, intermediates, obj_tokens, obj_masks, keep) -> jax.Array:
    """Cross-attention supervision (module docstring). obj_tokens: [B, K, 2]; obj_masks:
    [B, T, H, W, K]; keep: [B] bool (caption kept) -> scalar."""
    maps = jnp.mean(jnp.stack([a.mean(1) for a in ag.cross_attention_maps(
        intermediates, self.layers)]), 0)                               # [B, L, Lt]
    b, k = obj_tokens.shape[:2]
    tok = obj_tokens // self.text.patch
    valid = tok >= 0                                                    # [B, K, 2]
    idx = jnp.clip(tok, 0, maps.shape[-1] - 1).reshape(b, 1, 2 * k)
    sel = jnp.take_along_axis(maps, jnp.broadcast_to(idx, (b, maps.shape[1], 2 * k)), -1)
    sel = sel.reshape(b, -1, k, 2)
    a = (sel * valid[:, None]).sum(-1) / jnp.maximum(valid.sum(-1), 1)[:, None]   # [B, L, K]
    tp, hp, wp = self.grid
    a = a.reshape(b, tp, hp * wp, k)
    a = a / (a.max(2, keepdims=True) + 1e-8)
    pt, ph, pw = self.dit_args["patch_size"]
    target = obj_masks.reshape(b, tp, pt, hp, ph, wp, pw, k).mean((2, 4, 6))
    target = target.reshape(b, tp, hp * wp, k)
    mse = jnp.square(a - target).mean((1, 2))                          # [B, K]
    w = (valid.any(-1) & keep[:, None]).astype(jnp.float32)
    return (mse * w).sum() / jnp.maximum(w.sum(), 1.0)

  def loss(self, params, batch, rng):
    k = self.config.control
    r_drop, r_cond, r_noise = jax.random.split(rng, 3)
    ids, mask = batch["text_ids"], batch["text_mask"]
    keep = jax.random.uniform(r_drop, ids.shape[:1]) >= self.config.diffusion.cond_dropout
    ids = jnp.where(keep[:, None], ids, self.null_ids)
    mask = jnp.where(keep[:, None], mask, self.null_mask)
    present = jax.random.uniform(r_cond, (ids.shape[0], len(self.cond_names))) >= k.drop_prob
    obj_masks = jnp.asarray(batch["obj_masks"], jnp.float32)
    union = jnp.clip(obj_masks.sum(-1, keepdims=True), 0.0, 1.0)
    sink = [] if k.attn_weight > 0 else None
    per_ex, _ = objectives.loss(
        self.denoiser(params, ids, mask, self.conds_of(batch), present, sink), batch["video"],
        r_noise, self.config.diffusion.objective, mask=1.0 + k.mask_weight * union,
        **self._loss_kwargs())
    diff = jnp.mean(per_ex)
    metrics = {"train/diffusion_loss": diff}
    loss = diff
    if sink:
      attn = self.attention_loss(sink[0], batch["obj_tokens"], obj_masks, keep)
      metrics["train/attn_loss"] = attn
      loss = loss + k.attn_weight * attn
    return loss, metrics

  def eval_step(self, params, batch, rng):
    """Validation loss with every condition and with none (same noise)."""
    n = len(self.cond_names)
    conds = self.conds_of(batch)

    def loss_with(present):
      per_ex, _ = objectives.loss(
          self.denoiser(params, batch["text_ids"], batch["text_mask"], conds, present),
          batch["video"], rng, self.config.diffusion.objective, **self._loss_kwargs())
      return jnp.mean(per_ex)
    b = conds.shape[0]
    full, none = loss_with(jnp.ones((b, n), bool)), loss_with(jnp.zeros((b, n), bool))
    return {"eval/diffusion_loss": full, "eval/diffusion_loss_no_control": none,
            "eval/control_gain": none - full}

  def flops_per_example(self):
    branch = dit_lib.flops_per_example(video_shape=self.video_shape, **{
        **self.dit_args, "cross_attention": False, "depth": self.branch.depth}, pooled=False)
    return float(super().flops_per_example() + len(self.cond_names) * branch)

  # --- data ---------------------------------------------------------------------------------
  def make_iterator(self, split, batch_size, seed, shard_index, shard_count):
    return conditions.make_iterator(self.config.data, split, batch_size, seed,
                                    shard_index=shard_index, shard_count=shard_count)

  # --- sampling and evaluation --------------------------------------------------------------
  @partial(jax.jit, static_argnums=(0,))
  def sample_controlled(self, params, ids, mask, noise, conds, present):
    """Videos [B, T, H, W, 3] in [-1, 1] under conditions [B, N, ...] given where ``present``
    [B, N]; CFG over the caption (both branches see the conditions)."""
    c = self.config.diffusion
    b = ids.shape[0]
    all_ids = jnp.concatenate([ids, jnp.broadcast_to(self.null_ids, ids.shape)])
    all_mask = jnp.concatenate([mask, jnp.broadcast_to(self.null_mask, mask.shape)])
    model = self.denoiser(params, all_ids, all_mask, jnp.concatenate([conds, conds]),
                          jnp.concatenate([present, present]))

    def model_fn(x, t):
      out = model(jnp.concatenate([x, x]), jnp.concatenate([t, t]))
      return guidance.cfg(out[:b], out[b:], c.guidance_scale, c.guidance_rescale)

    flow = c.sampler == "flow_euler"
    x = samplers.sample(model_fn, noise, name=c.sampler, prediction_type=None if flow
                        else c.objective, timestep_spacing=None if flow else c.timestep_spacing,
                        num_inference_steps=c.num_inference_steps, **self._diffusion_kwargs(),
                        **({"shift": c.shift} if flow else {}))
    return jnp.clip(x, -1.0, 1.0)

  def floor_profile(self):
    """The depth estimator's floor calibration, from ``eval.profile_examples`` train clips."""
    if self._profile is None:
      ref = conditions.load_examples(self.config.data, "train",
                                     self.config.eval.get("profile_examples", 64))
      self._profile = cond_eval.floor_profile(np.stack([x["cond_depth"] for x in ref]),
                                              np.stack([x["obj_masks"] for x in ref]))
    return self._profile

  def presence(self, subset: str, n: int) -> np.ndarray:
    if subset == "none":
      return np.zeros((n, len(self.cond_names)), bool)
    if subset == "all":
      return np.ones((n, len(self.cond_names)), bool)
    if subset not in self.cond_names:
      raise ValueError(f"eval.subsets: {subset!r} is not none | all | one of {self.cond_names}")
    return np.broadcast_to(np.array([c == subset for c in self.cond_names]),
                           (n, len(self.cond_names))).copy()

  def evaluate(self, params, step, workdir) -> dict[str, Any]:
    e = self.config.eval
    ex = conditions.load_examples(self.config.data, e.split, e.num_videos)
    n = len(ex)
    ids, mask = (jnp.asarray(a) for a in self.tokenizer.encode([x["caption"] for x in ex]))
    conds = jnp.asarray(np.stack([np.stack([x[f"cond_{c}"] for c in self.cond_names])
                                  for x in ex]))
    noise = jax.random.normal(jax.random.key(1234), (n,) + self.video_shape)
    profile = self.floor_profile()
    truth = np.stack([x["video"] for x in ex])
    res, videos = {}, {}
    for name, vids in (("real", truth), ("shuffled_real", np.roll(truth, 1, 0))):
      res.update({f"eval/{name}/{k}": v for k, v in cond_eval.adherence(vids, ex, profile).items()})
    for subset in e.subsets:
      vids = np.asarray(jax.device_get(self.sample_controlled(
          params, ids, mask, noise, conds, jnp.asarray(self.presence(subset, n)))))
      videos[subset] = vids
      scores = cond_eval.adherence(vids, ex, profile)
      res.update({f"eval/{subset}/{k}": v for k, v in scores.items()})
    if jax.process_index() == 0:
      cells, labels = [], []
      for i in range(min(n, e.gif_rows)):
        cells.append(truth[i])
        labels.append("real")
        for subset, vids in videos.items():
          cells.append(vids[i])
          labels.append(subset)
      path = os.path.join(workdir, "samples", f"flex_{step:06d}.gif")
      visualize.write_video_grid(path, cells, labels, cols=1 + len(videos),
                                 scale=max(1, 128 // self.video_shape[1]))
      with open(os.path.join(workdir, "samples", f"flex_{step:06d}.json"), "w") as f:
        json.dump({"step": step, "mode": self.config.control.mode, **res}, f, indent=2)
      res["eval/gif"] = path
    return res
