"""Discffusion (He et al., TMLR 2024): the text-to-video DiT as a discriminative video-text matcher.

The score of a video and a caption is the LogSumExp over the caption's tokens of the DiT's
cross-attention logits, averaged over heads, video tokens, layers and a fixed noise bank of
timesteps (``mfm_jax/diffusion/matcher.py`` has the exact definition). The DiT and the text tower
come from a trained ``video_diffusion`` checkpoint (``config.init_from``; the same
``config.model`` / ``config.data`` / ``config.diffusion`` as ``configs/video_gen.py``); LoRA on
the cross-attention projections of every block (``config.discffusion.lora_*``, B factor
zero-initialised, so step 0 is the zero-shot matcher) is the only thing that trains, with a hinge
loss over the hardest negative caption:

  candidates of a video = [positive, subject<->object swap, colour swap]   (the world's items)
                          + ``in_batch_negatives`` positives of other items of the batch (rolled)
  loss = mean_b max(0, margin - s(v_b, c+) + max_{valid c-} s(v_b, c-))

A rolled caption is not a negative when it comes from the same world clip (it may hold there).

Data: the compositional items of ComCLIP (``mfm_jax/data/compositional.py``; train items from
the ``train`` split, evaluation items from ``validation``, built with
``config.discffusion.item_set``, whose defaults are those of ``configs/comclip.py`` so the
evaluation items are the same). An item is one world frame; the DiT sees it as a still video
(the frame resized to ``data.resolution`` and repeated ``data.num_frames`` times, in [-1, 1] as
``pipeline.Preprocess``).

Batch fields: ``video [B, T, R, R, 3]``, ``text_ids [B, C, L]``, ``text_mask [B, C, L]`` (C = 3),
``clip [B]`` (world clip index).

Evaluation (``evaluate``): on the validation items, P(positive scores above the negative) per
negative type (ties 1/2) and P(positive above both), with the number of items and a 95% Wilson
interval, also per timestep of the bank, per layer and per predicate; written with the per-item
scores to ``<workdir>/eval/discffusion_<step>.json``. Options (off by default):
``discffusion.calibrate`` subtracts each caption's score on a grey null video (a variant, not in
the paper); ``discffusion.eval_other`` adds another clip's positive as an easy fourth candidate
(``accuracy["other_clip"]``; "all" stays over swap and colour swap).

Measured (RESULTS.md): with the default video_gen checkpoint, zero-shot and after 300 LoRA steps
the score sits at chance on both negatives (CLIP: 48 / 75 %).
"""
from __future__ import annotations

import json
import math
import os
from typing import Any

import grain.python as grain
import jax
import jax.numpy as jnp
import numpy as np

from mfm_jax.data import compositional as comp
from mfm_jax.data import image_text, pipeline
from mfm_jax.diffusion import matcher
from mfm_jax.models import dit as dit_lib
from mfm_jax.models import peft
from mfm_jax.models import text as text_lib
from mfm_jax.tasks import video_diffusion
from mfm_jax.tasks.compositional import accuracies

CANDIDATES = ("positive",) + comp.NEGATIVE_TYPES


def still_video(image: np.ndarray, num_frames: int, resolution: int) -> np.ndarray:
  """[H, W, 3] uint8 -> [T, R, R, 3] float32 in [-1, 1]: the frame repeated T times."""
  x = np.asarray(image, np.float32)[None] / 127.5 - 1.0
  x = pipeline.resize_video(x, resolution)
  return np.repeat(x, num_frames, axis=0).astype(np.float32)


def item_example(item: comp.Item, tokenizer, num_frames: int, resolution: int) -> dict:
  """An item -> the unbatched fields of the module docstring."""
  texts = [item.positive.text] + [item.negatives[n].text for n in comp.NEGATIVE_TYPES]
  ids, mask = tokenizer.encode(texts)
  return {"video": still_video(item.image, num_frames, resolution),
          "text_ids": np.asarray(ids, np.int32), "text_mask": np.asarray(mask, bool),
          "clip": np.int32(item.clip)}


def wilson(p: float, n: int, z: float = 1.96) -> tuple[float, float]:
  """95% Wilson score interval of a proportion ``p`` over ``n`` trials."""
  if n <= 0:
    return (float("nan"), float("nan"))
  den = 1.0 + z * z / n
  mid = (p + z * z / (2 * n)) / den
  half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / den
  return (max(0.0, mid - half), min(1.0, mid + half))


def with_other_clip_negative(examples: list[dict]) -> list[dict]:
  """Adds to each example's candidates the positive of the first item at or after N // 2 items
  further on (cyclically) that comes from another world clip: a caption of other objects."""
  n, out = len(examples), []
  for i, ex in enumerate(examples):
    j = next((j % n for j in range(i + n // 2, i + n + n // 2)
              if int(examples[j % n]["clip"]) != int(ex["clip"])), None)
    if j is None:
      raise ValueError("discffusion eval_other: every item comes from the same clip")
    out.append({**ex, "text_ids": np.concatenate([ex["text_ids"], examples[j]["text_ids"][:1]]),
                "text_mask": np.concatenate([ex["text_mask"], examples[j]["text_mask"][:1]])})
  return out


class DiscffusionTask(video_diffusion.VideoDiffusionTask):
  """LoRA-tuned cross-attention matcher on a ``video_diffusion`` checkpoint; see the docstring."""

  def __init__(self, config):
    super().__init__(config)
    c, m = config.discffusion, config.model
    if not m.cross_attention:
      raise ValueError("config.model.cross_attention must be True: Discffusion reads the "
                       "cross-attention logits")
    self.lora = peft.PeftConfig(method="lora", targets=tuple(c.lora_targets),
                                lora_rank=int(c.lora_rank), lora_alpha=float(c.lora_alpha))
    self.dit = dit_lib.VideoDiT(**self.dit_args, scan_blocks=m.scan_blocks,
                                remat_policy=m.remat_policy,
                                dtype=video_diffusion.DTYPES[m.dtype], flat=m.flat,
                                cross_peft=self.lora)
    d = config.diffusion
    self.bank = matcher.noise_bank(int(c.bank_seed), int(c.bank_size), self.video_shape,
                                   d.objective, lo=float(c.bank_range[0]),
                                   hi=float(c.bank_range[1]),
                                   num_train_timesteps=d.num_train_timesteps)
    if not 1 <= int(c.train_bank_entries) <= int(c.bank_size):
      raise ValueError(f"config.discffusion.train_bank_entries={c.train_bank_entries} must be "
                       f"in [1, bank_size={c.bank_size}]")
    self.layers = tuple(int(i) for i in c.layers)
    depth = self.dit_args["depth"]
    if any(not 0 <= i < depth for i in self.layers):
      raise ValueError(f"config.discffusion.layers={self.layers}: the DiT has {depth} blocks")
    self._items: dict[str, list[comp.Item]] = {}
    self._eval_fn = jax.jit(self._bank_scores)

  # --- model --------------------------------------------------------------------------------
  def trainable_mask(self, params):
    return peft.trainable_mask(params, self.lora)

  def init_from_fresh(self, params):
    return peft.trainable_mask(params, self.lora)   # a video_gen checkpoint has no LoRA

  def score_fn(self, params, ids, mask):
    """``(x_t [P, ...], t [P]) -> [P, Ly]`` per-layer scores for P = ``ids.shape[0]`` captions
    (ids, mask: [P, L]), the text encoded once."""
    tokens, pooled = self.encode_text(params, ids, mask)
    tmask = text_lib.patch_mask(mask, self.text.patch)

    def fn(x_t, t):
      _, state = self.dit.apply({"params": params["dit"]}, x_t, t, tokens, tmask, pooled,
                                mutable=["attn_logits"])
      return matcher.layer_scores(matcher.cross_logits(state["attn_logits"]), tmask)
    return fn

  def _bank_scores(self, params, video, ids, mask, bank=None):
    """video [B, ...], ids / mask [B, C, L] -> [K, B, C, Ly] (matcher.candidate_scores).

    With ``config.discffusion.calibrate`` the score of the same caption on a null video (all
    zeros = mid grey, under the same bank noise) is subtracted: the part of the score that the
    caption gets whatever the video (not in the paper; a variant, off by default)."""
    b, c, l = ids.shape
    fn = self.score_fn(params, ids.reshape(b * c, l), mask.reshape(b * c, l))
    bank = self.bank if bank is None else bank
    kw = dict(objective=self.config.diffusion.objective, **self._diffusion_kwargs())
    scores = matcher.candidate_scores(fn, video, c, bank, **kw)
    if self.config.discffusion.get("calibrate", False):
      scores = scores - matcher.candidate_scores(fn, jnp.zeros_like(video), c, bank, **kw)
    return scores

  def _candidates(self, batch):
    """(ids [B, C', L], mask [B, C', L], valid negatives [B, C' - 1]) with in-batch negatives."""
    ids, mask = batch["text_ids"], batch["text_mask"]
    valid = [jnp.ones(ids.shape[:1] + (ids.shape[1] - 1,), bool)]
    extra_ids, extra_mask = [], []
    for r in range(1, int(self.config.discffusion.in_batch_negatives) + 1):
      other = jnp.roll(ids[:, 0], r, axis=0)
      extra_ids.append(other)
      extra_mask.append(jnp.roll(mask[:, 0], r, axis=0))
      same_clip = jnp.roll(batch["clip"], r, axis=0) == batch["clip"]
      same_text = jnp.all(other == ids[:, 0], axis=-1)
      valid.append(~(same_clip | same_text)[:, None])
    if extra_ids:
      ids = jnp.concatenate([ids, jnp.stack(extra_ids, 1)], axis=1)
      mask = jnp.concatenate([mask, jnp.stack(extra_mask, 1)], axis=1)
    return ids, mask, jnp.concatenate(valid, axis=1)

  def loss(self, params, batch, rng):
    c = self.config.discffusion
    ids, mask, valid = self._candidates(batch)
    k = int(c.train_bank_entries)
    index = jax.random.choice(rng, int(c.bank_size), (k,), replace=False)
    per = self._bank_scores(params, batch["video"], ids, mask, matcher.subset(self.bank, index))
    scores = matcher.reduce_scores(per, self.layers)                # [B, C']
    hinge, _ = matcher.hinge_loss(scores, valid, float(c.margin))
    loss = jnp.mean(hinge)
    pos = scores[:, :1]
    metrics = {"train/hinge": loss,
               "train/gap_hardest": jnp.mean(pos[:, 0] - jnp.max(
                   jnp.where(valid, scores[:, 1:], -jnp.inf), axis=1)),
               "train/acc_all": jnp.mean(jnp.all(pos > scores[:, 1:len(CANDIDATES)], axis=1))}
    for j, name in enumerate(CANDIDATES[1:], start=1):
      metrics[f"train/acc_{name}"] = jnp.mean(pos[:, 0] > scores[:, j])
    return loss, metrics

  def eval_step(self, params, batch, rng):
    """The hinge loss and training accuracies on a validation batch (``eval/`` names)."""
    _, metrics = self.loss(params, batch, rng)
    return {k.replace("train/", "eval/batch_"): v for k, v in metrics.items()}

  def flops_per_example(self):
    c = self.config.discffusion
    pairs = (len(CANDIDATES) + int(c.in_batch_negatives)) * (2 if c.calibrate else 1)
    return super().flops_per_example() * pairs * int(c.train_bank_entries)

  # --- data ---------------------------------------------------------------------------------
  def items(self, split: str) -> list[comp.Item]:
    """The compositional items of ``split`` (``train`` / ``validation``), built once."""
    if split not in self._items:
      from mfm_jax.data import sources  # pylint: disable=g-import-not-at-top
      from mfm_jax.data.world import builder  # pylint: disable=g-import-not-at-top
      d, c = self.config.data, self.config.discffusion.item_set
      src = sources.source_from_config(d, split)
      spec = builder.get_builder(d.builder_config).builder_config.spec
      cap = int(c.max_train_items if split == "train" else c.max_items)
      self._items[split] = comp.world_items(
          src, spec, image_text.world_attributes(d.builder_config),
          comp.MaskBoxes(c.min_pixels), c.frames_per_clip, c.triplets_per_frame, c.seed,
          tuple(c.predicates), cap, c.with_size)
      if not self._items[split]:
        raise ValueError(f"discffusion: no compositional items in split {split!r}")
    return self._items[split]

  def examples(self, split: str) -> list[dict]:
    d = self.config.data
    return [item_example(it, self.tokenizer, d.num_frames, d.resolution)
            for it in self.items(split)]

  def make_iterator(self, split, batch_size, seed, shard_index, shard_count):
    ds = grain.MapDataset.source(self.examples(split))
    if len(ds) < batch_size * shard_count:
      raise ValueError(f"discffusion: split {split!r} has {len(ds)} items, too few for "
                       f"{shard_count} shard(s) of batch_size={batch_size}")
    train = split == "train"
    if train:
      ds = ds.shuffle(seed=seed).repeat(None)
    ds = ds.batch(batch_size, drop_remainder=train)[shard_index::shard_count]
    return iter(ds.to_iter_dataset())

  # --- evaluation ---------------------------------------------------------------------------
  def score_items(self, params, split: str = "validation") -> np.ndarray:
    """[K, N, C, Ly] scores of the items of ``split`` (C = positive, swap, attribute, and with
    ``config.discffusion.eval_other`` a 4th: another clip's positive, an easy negative)."""
    exs = self.examples(split)
    if self.config.discffusion.get("eval_other", False):
      exs = with_other_clip_negative(exs)
    bs = int(self.config.eval.batch_size)
    out = []
    for s in range(0, len(exs), bs):
      chunk = exs[s:s + bs]
      n = len(chunk)
      chunk = chunk + [chunk[-1]] * (bs - n)
      arr = {k: np.stack([e[k] for e in chunk]) for k in ("video", "text_ids", "text_mask")}
      per = self._eval_fn(params, arr["video"], arr["text_ids"], arr["text_mask"])
      out.append(np.asarray(jax.device_get(per))[:, :n])
    return np.concatenate(out, axis=1)

  def evaluate(self, params, step, workdir) -> dict[str, Any]:
    per = self.score_items(params)                                  # [K, N, C, Ly]
    other = None
    if per.shape[2] > len(CANDIDATES):                              # eval_other
      other = np.asarray(matcher.reduce_scores(per, self.layers))[:, [0, -1]]
      per = per[:, :, :len(CANDIDATES)]
    scores = np.asarray(matcher.reduce_scores(per, self.layers))    # [N, C]
    n = scores.shape[0]
    res = {"n": n, "accuracy": accuracies(scores, CANDIDATES),
           "chance": {**{k: 0.5 for k in CANDIDATES[1:]}, "all": 1 / len(CANDIDATES)}}
    if other is not None:
      res["accuracy"]["other_clip"] = accuracies(other, ("positive", "other_clip"))["other_clip"]
    res["ci95"] = {k: wilson(v, n) for k, v in res["accuracy"].items()}
    res["per_timestep"] = {f"t={float(t):.0f}": accuracies(per[k].mean(-1), CANDIDATES)
                           for k, t in enumerate(np.asarray(self.bank.t))}
    res["per_layer"] = {f"layer_{l}": accuracies(per[..., l].mean(0), CANDIDATES)
                        for l in range(per.shape[-1])}
    preds = np.array([it.predicate for it in self.items("validation")])
    res["per_predicate"] = {p: {"n": int((preds == p).sum()),
                                **accuracies(scores[preds == p], CANDIDATES)}
                            for p in dict.fromkeys(preds.tolist())}
    res["mean_gap"] = {k: float(np.mean(scores[:, 0] - scores[:, j]))
                       for j, k in enumerate(CANDIDATES[1:], start=1)}
    flat = {f"eval/{k}": v for k, v in res["accuracy"].items()}
    flat["eval/items"] = n
    if jax.process_index() == 0:
      os.makedirs(os.path.join(workdir, "eval"), exist_ok=True)
      with open(os.path.join(workdir, "eval", f"discffusion_{step:06d}.json"), "w") as f:
        json.dump({"step": step, **res, "bank_t": np.asarray(self.bank.t).tolist(),
                   "layers": list(self.layers), "scores": scores.round(6).tolist(),
                   "texts": [it.positive.text for it in self.items("validation")]}, f, indent=1)
    return flat
