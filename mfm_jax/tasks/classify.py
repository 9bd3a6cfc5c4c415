"""Few-shot image (or clip) classification with a CLIP backbone and parameter-efficient methods.

Config: ``configs/kadaptation.py``. ``config.method``:

  zeroshot      nothing trains (the prompt head as it is; a reference row)
  linear_probe  the head only
  full_ft       the image tower, its projection and the head
  lora          LoRA in the image tower's attentions (``config.peft``) + the head
  kadaptation   KAdaptation (He et al., AAAI'23: shared slow / per-layer fast Kronecker factors)
                in the image tower's attentions + the head
  subspace      ``theta = theta0 + P theta_d`` over the image tower and its projection (Fastfood P,
                ``config.peft.subspace_*``) + the head

The head is CLIP's zero-shot classifier: its kernel ``[E, C]`` starts as the normalised text
embeddings of the class prompts (``data.prompt`` with each class name), logits
``scale * normalise(image embedding) @ kernel + bias`` with the checkpoint's ``exp(logit_scale)``
(or ``config.head_scale``). Params: ``{"clip": ..., "head": {kernel, bias}}`` plus ``"subspace":
{"theta_d"}``; with ``config.init_from`` (a ``contrastive`` checkpoint, or an HF CLIP written by
``tools/convert_checkpoint.py --under clip`` with ``config.model.hf`` set to the HF folder) the
CLIP params come from the checkpoint, the adapters / head / theta_d are fresh and the head is
recomputed from the loaded text tower (``after_init_from``). Frozen params are both masked in the
optimizer (``trainable_mask``) and under ``stop_gradient`` in the loss (no wasted backward).

Evaluation: accuracy and class-balanced accuracy over the whole validation split, with the
trainable / total parameter counts, also written to ``<workdir>/eval/classify_<step>.json``.
"""
from __future__ import annotations

import json
import os
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax

from mfm_jax.data import image_text
from mfm_jax.engine.task import Task
from mfm_jax.models import peft as peft_lib
from mfm_jax.tasks import encoders

METHODS = ("zeroshot", "linear_probe", "full_ft", "lora", "kadaptation", "subspace")
IMAGE_TOWER = ("vision", "visual_projection")   # what full_ft and subspace train / move


def _names(path) -> list[str]:
  return [str(getattr(k, "key", getattr(k, "name", k))) for k in path]


class ClassifyTask(Task):

  def __init__(self, config):
    super().__init__(config)
    self.method = config.method
    if self.method not in METHODS:
      raise ValueError(f"config.method={self.method!r}: use one of {METHODS}")
    layer = self.method if self.method in ("lora", "kadaptation") else "none"
    self.peft = peft_lib.PeftConfig.from_dict({**config.peft.to_dict(), "method": layer})
    self.tokenizer = encoders.make_tokenizer(config.data)
    self.model = encoders.build_clip(config, self.tokenizer,
                                     self.peft if layer != "none" else None)
    self.key = encoders.pixel_key(config.data)
    self.class_names = image_text.class_names(config.data)
    ids, mask = self.tokenizer.encode(image_text.prompts(config.data, self.class_names))
    self.prompt_ids, self.prompt_mask = np.asarray(ids), np.asarray(mask)
    clip = nn.meta.unbox(jax.eval_shape(
        lambda r: encoders.init_clip(self.model, config, r), jax.random.key(0)))
    self.subspace = None
    if self.method == "subspace":
      p = self.peft
      self.subspace = peft_lib.Subspace({k: clip[k] for k in IMAGE_TOWER}, p.subspace_dim,
                                        p.subspace_seed, p.subspace_local)
    self.abstract = nn.meta.unbox(jax.eval_shape(self.init, jax.random.key(0)))
    self.mask = self.trainable_mask(self.abstract)
    self._predict = jax.jit(self.logits)

  # --- model --------------------------------------------------------------------------------
  def zeroshot_head(self, clip_params) -> dict[str, jax.Array]:
    """kernel [E, C] = normalised prompt embeddings, bias [C] = 0."""
    text = encoders.encode_text(self.model, clip_params, jnp.asarray(self.prompt_ids),
                                jnp.asarray(self.prompt_mask))
    return {"kernel": text.T.astype(jnp.float32),
            "bias": jnp.zeros((len(self.class_names),), jnp.float32)}

  def init(self, rng):
    clip = encoders.init_clip(self.model, self.config, rng)
    params = {encoders.CLIP_KEY: clip, "head": self.zeroshot_head(nn.meta.unbox(clip))}
    if self.subspace is not None:
      params["subspace"] = {"theta_d": self.subspace.init()}
    return params

  def after_init_from(self, params):
    return {**params, "head": self.zeroshot_head(params[encoders.CLIP_KEY])}

  def init_from_fresh(self, params):
    def fresh(path, _):
      names = _names(path)
      return names[0] in ("head", "subspace") or any(n.startswith(peft_lib.PREFIX)
                                                     for n in names)
    return jax.tree_util.tree_map_with_path(fresh, params)

  def trainable_mask(self, params):
    layer = self.method in ("lora", "kadaptation")

    def train(path, _):
      names = _names(path)
      if self.method == "zeroshot":
        return False
      if names[0] == "head" or names[0] == "subspace":
        return True
      if self.method == "full_ft":
        return names[0] == encoders.CLIP_KEY and names[1] in IMAGE_TOWER
      return layer and any(n.startswith(peft_lib.PREFIX) for n in names)
    return jax.tree_util.tree_map_with_path(train, params)

  def effective(self, params) -> tuple[Any, Any]:
    """(CLIP params as the forward pass sees them, head); frozen leaves under stop_gradient."""
    params = jax.tree.map(lambda p, m: p if m else jax.lax.stop_gradient(p), params, self.mask)
    clip = params[encoders.CLIP_KEY]
    if self.subspace is not None:
      moved = self.subspace.expand(params["subspace"]["theta_d"], {k: clip[k] for k in IMAGE_TOWER})
      clip = {**clip, **moved}
    return clip, params["head"]

  def logits(self, params, pixels, rng=None):
    """pixels: [B, (K,) R, R, 3] -> [B, C] float32."""
    clip, head = self.effective(params)
    feats = encoders.encode_pixels(self.model, clip, pixels,
                                   None if rng is None else {"dropout": rng})
    scale = self.config.get("head_scale", 0.0) or jnp.exp(
        jax.lax.stop_gradient(clip["logit_scale"]))
    return scale * feats.astype(jnp.float32) @ head["kernel"] + head["bias"]

  def _metrics(self, logits, labels):
    ce = optax.softmax_cross_entropy_with_integer_labels(logits, labels).mean()
    return ce, (logits.argmax(-1) == labels).mean()

  def loss(self, params, batch, rng):
    ce, acc = self._metrics(self.logits(params, batch[self.key], rng), batch["label"])
    return ce, {"train/ce": ce, "train/accuracy": acc}

  def eval_step(self, params, batch, rng):
    del rng
    ce, acc = self._metrics(self.logits(params, batch[self.key]), batch["label"])
    return {"eval/batch_ce": ce, "eval/batch_accuracy": acc}

  def param_counts(self) -> tuple[int, int]:
    return peft_lib.count_params(self.abstract, self.mask)

  # --- data ---------------------------------------------------------------------------------
  def make_iterator(self, split, batch_size, seed, shard_index, shard_count):
    return image_text.make_iterator(self.config.data, split, batch_size, seed, self.tokenizer,
                                    shard_index, shard_count)

  # --- evaluation ---------------------------------------------------------------------------
  def predict_split(self, params, split: str = "validation") -> tuple[np.ndarray, np.ndarray]:
    """(predicted [N], labels [N]) over a whole split."""
    e = self.config.eval
    preds, labels = [], []
    for batch, n in image_text.eval_batches(self.config.data, split, e.batch_size,
                                            self.tokenizer, e.get("max_examples", 0)):
      preds.append(np.asarray(self._predict(params, batch[self.key])).argmax(-1)[:n])
      labels.append(batch["label"][:n])
    return np.concatenate(preds), np.concatenate(labels)

  def evaluate(self, params, step, workdir) -> dict[str, Any]:
    pred, labels = self.predict_split(params)
    present = np.unique(labels)
    per_class = {self.class_names[c]: float((pred[labels == c] == c).mean()) for c in present}
    trainable, total = self.param_counts()
    results = {"eval/accuracy": float((pred == labels).mean()),
               "eval/balanced_accuracy": float(np.mean(list(per_class.values()))),
               "eval/examples": int(len(labels)), "eval/trainable_params": trainable,
               "eval/total_params": total}
    if jax.process_index() == 0:
      os.makedirs(os.path.join(workdir, "eval"), exist_ok=True)
      with open(os.path.join(workdir, "eval", f"classify_{step:06d}.json"), "w") as f:
        json.dump({"step": step, "method": self.method, **results,
                   "per_class_accuracy": per_class,
                   "support": {self.class_names[c]: int((labels == c).sum()) for c in present}},
                  f, indent=2)
    return results
