"""Prompt learning on a frozen CLIP (task ``prompt_learning``): CoOp, CoCoOp and CPL, trained on
the base classes and evaluated on base and new classes.

Config: ``configs/cpl.py``. ``config.method``:

  zeroshot  nothing trains; the hand prompt ``data.prompt`` (a reference row)
  coop      learned context vectors shared by all classes (``models/prompts.py``)
  cocoop    + a meta-net bias from the image feature on every context vector
  cpl       CoCoOp (``prompt.cpl_base = "coop"``: CoOp) + counterfactual features
            (``models/counterfactual.py``): loss = CE + ``cf_weight`` * contrastive(real vs
            counterfactual) + ``beta`` * ||u||_1 / E

``config.prompt``: ``n_ctx`` (M, used when ``init_words`` is ""; context ~ N(0, 0.02)),
``init_words`` (the context starts as these words' token embeddings, M = their number),
``meta_hidden`` (0: E // 16), ``cpl_base``, ``negative`` (``text_similarity``: the most similar
other class by the cosine of the class names' hand-prompt text features under the frozen tower;
any ``scorer(class_feats [C, E], labels [B]) -> [B]`` can be set as ``task.negative_scorer``),
``beta`` (0.07), ``cf_weight``.

Params: ``{"clip": ..., "prompt": {"ctx", "meta_net"...}}``; only ``prompt`` trains (mask in the
optimizer and ``stop_gradient`` on the towers). ``config.init_from`` loads the CLIP (a
``contrastive`` checkpoint, or an HF CLIP converted ``--under clip``); the prompt is fresh and,
with ``init_words``, re-initialised from the loaded token table (``after_init_from``).

Training reads ``config.data`` (``classes = "base"``, ``shots = k``). Evaluation: accuracy over
the validation split of each of ``config.eval.classes`` (the new classes' names are prompted with
the learned context: zero-shot transfer), their harmonic mean, the parameter counts; also written
to ``<workdir>/eval/prompt_learning_<step>.json``.
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
from mfm_jax.models import counterfactual as cf_lib
from mfm_jax.models import peft as peft_lib
from mfm_jax.models import prompts as prompts_lib
from mfm_jax.tasks import encoders

METHODS = ("zeroshot", "coop", "cocoop", "cpl")
NEGATIVES = {"text_similarity": cf_lib.most_similar_other}


def _names(path) -> list[str]:
  return [str(getattr(k, "key", getattr(k, "name", k))) for k in path]


def harmonic_mean(a: float, b: float) -> float:
  return 0.0 if a + b <= 0 else 2 * a * b / (a + b)


class _Classes:
  """One class set: names, the learned-prompt table and the hand-prompt ids (trimmed)."""

  def __init__(self, data_config, tokenizer, n_ctx: int):
    self.data = data_config
    self.names = image_text.class_names(data_config)
    self.table = prompts_lib.prompt_table(tokenizer, self.names, n_ctx)
    ids, mask = tokenizer.encode(image_text.prompts(data_config, self.names))
    width = int(np.asarray(mask).sum(-1).max())   # causal tower: trailing pads change nothing
    self.hand_ids, self.hand_mask = np.asarray(ids)[:, :width], np.asarray(mask)[:, :width]


class PromptLearningTask(Task):

  def __init__(self, config):
    super().__init__(config)
    self.method = config.method
    if self.method not in METHODS:
      raise ValueError(f"config.method={self.method!r}: use one of {METHODS}")
    p = config.prompt
    if p.negative not in NEGATIVES:
      raise ValueError(f"config.prompt.negative={p.negative!r}: use one of {sorted(NEGATIVES)}")
    if p.cpl_base not in ("coop", "cocoop"):
      raise ValueError(f"config.prompt.cpl_base={p.cpl_base!r}: use coop or cocoop")
    self.negative_scorer = NEGATIVES[p.negative]
    self.tokenizer = encoders.make_tokenizer(config.data)
    self.model = encoders.build_clip(config, self.tokenizer)
    self.key = encoders.pixel_key(config.data)
    self.init_ids = (prompts_lib.context_ids(self.tokenizer, p.init_words) if p.init_words
                     else None)
    self.n_ctx = int(p.n_ctx) if self.init_ids is None else len(self.init_ids)
    if self.n_ctx < 1:
      raise ValueError(f"config.prompt.n_ctx={p.n_ctx}: need >= 1 context token")
    self.conditional = self.method == "cocoop" or (self.method == "cpl" and
                                                   p.cpl_base == "cocoop")
    self.learner = prompts_lib.PromptLearner(self.n_ctx, self.model.text.width,
                                             self.conditional, int(p.meta_hidden),
                                             dtype=encoders.dtype_of(config))
    self.train_classes = _Classes(config.data, self.tokenizer, self.n_ctx)
    self.eval_classes = {}
    for split in config.eval.classes:
      d = config.data.copy_and_resolve_references()
      d.classes = split
      self.eval_classes[split] = _Classes(d, self.tokenizer, self.n_ctx)
    self.abstract = nn.meta.unbox(jax.eval_shape(self.init, jax.random.key(0)))
    self.mask = self.trainable_mask(self.abstract)
    self._predict = {s: jax.jit(lambda params, px, c=c: self.logits(params, px, c).argmax(-1))
                     for s, c in self.eval_classes.items()}

  # --- model --------------------------------------------------------------------------------
  def _with_init_words(self, prompt, clip):
    """prompt params with ctx = the init words' token embeddings (boxed or plain leaves)."""
    if self.init_ids is None:
      return prompt
    table = nn.meta.unbox(clip)["text"]["token_embedding"]
    ctx = jnp.take(table, jnp.asarray(self.init_ids), axis=0)
    old = prompt["ctx"]
    if isinstance(old, nn.meta.AxisMetadata):
      return {**prompt, "ctx": old.replace_boxed(ctx.astype(old.unbox().dtype))}
    return {**prompt, "ctx": ctx.astype(old.dtype)}

  def init(self, rng):
    r_clip, r_prompt = jax.random.split(rng)
    clip = encoders.init_clip(self.model, self.config, r_clip)
    feats = jnp.zeros((1, self.model.embed_dim), jnp.float32) if self.conditional else None
    prompt = self.learner.init(r_prompt, feats)["params"]
    return {encoders.CLIP_KEY: clip, "prompt": self._with_init_words(dict(prompt), clip)}

  def after_init_from(self, params):
    return {**params, "prompt": self._with_init_words(params["prompt"],
                                                      params[encoders.CLIP_KEY])}

  def init_from_fresh(self, params):
    return jax.tree_util.tree_map_with_path(lambda path, _: _names(path)[0] == "prompt", params)

  def trainable_mask(self, params):
    return jax.tree_util.tree_map_with_path(
        lambda path, _: self.method != "zeroshot" and _names(path)[0] == "prompt", params)

  def param_counts(self) -> tuple[int, int]:
    return peft_lib.count_params(self.abstract, self.mask)

  def _frozen(self, params):
    return jax.tree.map(lambda p, m: p if m else jax.lax.stop_gradient(p), params, self.mask)

  def hand_features(self, clip_params, classes: _Classes) -> jax.Array:
    """[C, E] normalised hand-prompt class features (``data.prompt``) under the tower."""
    return encoders.encode_text(self.model, clip_params, jnp.asarray(classes.hand_ids),
                                jnp.asarray(classes.hand_mask))

  def features(self, params, pixels, classes: _Classes):
    """(image [B, E], class text [C, E] or per image [B, C, E], scale), all normalised."""
    params = self._frozen(params)
    clip = params[encoders.CLIP_KEY]
    image = encoders.encode_pixels(self.model, clip, pixels).astype(jnp.float32)
    scale = jnp.exp(clip["logit_scale"])
    if self.method == "zeroshot":
      return image, self.hand_features(clip, classes).astype(jnp.float32), scale
    ctx = self.learner.apply({"params": params["prompt"]},
                             image if self.conditional else None)
    text = prompts_lib.encode_prompts(self.model, clip, classes.table, ctx)
    return image, text.astype(jnp.float32), scale

  def logits(self, params, pixels, classes: _Classes):
    """pixels: [B, (K,) R, R, 3] -> [B, C] float32."""
    image, text, scale = self.features(params, pixels, classes)
    if text.ndim == 2:
      return scale * image @ text.T
    return scale * jnp.einsum("be,bce->bc", image, text)

  def loss(self, params, batch, rng):
    del rng
    classes = self.train_classes
    image, text, scale = self.features(params, batch[self.key], classes)
    labels = batch["label"]
    logits = (scale * image @ text.T if text.ndim == 2
              else scale * jnp.einsum("be,bce->bc", image, text))
    ce = optax.softmax_cross_entropy_with_integer_labels(logits, labels).mean()
    metrics = {"train/ce": ce, "train/accuracy": (logits.argmax(-1) == labels).mean()}
    if self.method != "cpl":
      return ce, metrics
    p = self.config.prompt
    clip = jax.lax.stop_gradient(params[encoders.CLIP_KEY])
    negative = self.negative_scorer(self.hand_features(clip, classes), labels)
    rows = jnp.arange(labels.shape[0])
    pick = (lambda idx: text[idx]) if text.ndim == 2 else (lambda idx: text[rows, idx])
    v, v_neg = pick(labels), pick(negative)
    u = cf_lib.greedy_swap(image, v, v_neg)
    v_cf = cf_lib.counterfactual(v, v_neg, u)
    contrast = cf_lib.contrastive_real_vs_counterfactual(image, v, v_cf,
                                                         jax.lax.stop_gradient(scale)).mean()
    u_l1 = u.sum(-1).mean() / u.shape[-1]
    total = ce + p.cf_weight * contrast + p.beta * u_l1
    metrics.update({"train/cf_contrastive": contrast, "train/u_l1": u_l1,
                    "train/cf_swapped": (u.sum(-1) > 0).mean()})
    return total, metrics

  def eval_step(self, params, batch, rng):
    del rng
    logits = self.logits(params, batch[self.key], self.train_classes)
    ce = optax.softmax_cross_entropy_with_integer_labels(logits, batch["label"]).mean()
    return {"eval/batch_ce": ce,
            "eval/batch_accuracy": (logits.argmax(-1) == batch["label"]).mean()}

  # --- data ---------------------------------------------------------------------------------
  def make_iterator(self, split, batch_size, seed, shard_index, shard_count):
    return image_text.make_iterator(self.config.data, split, batch_size, seed, self.tokenizer,
                                    shard_index, shard_count)

  # --- evaluation ---------------------------------------------------------------------------
  def predict_split(self, params, split: str) -> tuple[np.ndarray, np.ndarray]:
    """(predicted [N], labels [N]) over the validation images of class set ``split``."""
    e, classes = self.config.eval, self.eval_classes[split]
    preds, labels = [], []
    for batch, n in image_text.eval_batches(classes.data, "validation", e.batch_size,
                                            self.tokenizer, e.get("max_examples", 0)):
      preds.append(np.asarray(self._predict[split](params, batch[self.key]))[:n])
      labels.append(batch["label"][:n])
    return np.concatenate(preds), np.concatenate(labels)

  def evaluate(self, params, step, workdir) -> dict[str, Any]:
    trainable, total = self.param_counts()
    results = {"eval/trainable_params": trainable, "eval/total_params": total}
    detail = {}
    for split, classes in self.eval_classes.items():
      pred, labels = self.predict_split(params, split)
      results[f"eval/{split}_accuracy"] = float((pred == labels).mean())
      results[f"eval/{split}_examples"] = int(len(labels))
      detail[split] = {classes.names[c]: float((pred[labels == c] == c).mean())
                       for c in np.unique(labels)}
    if "base" in self.eval_classes and "new" in self.eval_classes:
      results["eval/harmonic_mean"] = harmonic_mean(results["eval/base_accuracy"],
                                                    results["eval/new_accuracy"])
    if jax.process_index() == 0:
      os.makedirs(os.path.join(workdir, "eval"), exist_ok=True)
      with open(os.path.join(workdir, "eval", f"prompt_learning_{step:06d}.json"), "w") as f:
        json.dump({"step": step, "method": self.method, "n_ctx": self.n_ctx, **results,
                   "per_class_accuracy": detail}, f, indent=2)
    return results
