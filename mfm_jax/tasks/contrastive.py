"""Contrastive pretraining of the two towers (CLIP / SigLIP) on images or clips and captions.

Config: ``configs/encoder_pretrain.py``. Data: ``mfm_jax.data.image_text`` (world frames or
K-frame clips with their captions by default; ``image_folder:<dir>`` with class prompts as
captions). Model: ``tasks.encoders.build_clip``; params ``{"clip": ...}``, the layout the
``classify`` task (and ``tools/convert_checkpoint.py --under clip``) uses, so its checkpoints
restore there through ``config.init_from``.

Loss: ``config.model.loss`` = ``clip`` (symmetric softmax) or ``siglip`` (pairwise sigmoid with a
learnable bias), on the global batch (``models.contrastive``). Evaluation (``evaluate``): one pass
over the validation split; image -> text and text -> image retrieval recall@1 / @5 over the whole
split (a hit is any retrieved item with the same caption: frames of one clip share it), and
zero-shot accuracy with the class prompts (``data.prompt``) as the classifier.
"""
from __future__ import annotations

import json
import os
from typing import Any

import jax
import numpy as np

from mfm_jax.data import image_text
from mfm_jax.engine.task import Task
from mfm_jax.models import contrastive
from mfm_jax.tasks import encoders


def recall_at_k(sim: np.ndarray, match: np.ndarray, ks=(1, 5)) -> dict[int, float]:
  """Recall@k of rows: sim [N, M] scores, match [N, M] bool (True = a correct item).

  A row counts as a hit at k when one of its k highest-scoring columns is correct.
  """
  order = np.argsort(-sim, axis=1, kind="stable")
  hits = np.take_along_axis(match, order, axis=1)
  return {k: float(hits[:, :k].any(1).mean()) for k in ks}


class ContrastiveTask(Task):

  def __init__(self, config):
    super().__init__(config)
    self.tokenizer = encoders.make_tokenizer(config.data)
    self.model = encoders.build_clip(config, self.tokenizer)
    self.key = encoders.pixel_key(config.data)
    model = self.model
    self._embed_pixels = jax.jit(lambda p, x: encoders.encode_pixels(model, p, x))
    self._embed_text = jax.jit(lambda p, i, m: encoders.encode_text(model, p, i, m))

  # --- model --------------------------------------------------------------------------------
  def init(self, rng):
    return {encoders.CLIP_KEY: encoders.init_clip(self.model, self.config, rng)}

  def _forward(self, params, batch, rng):
    out = self.model.apply({"params": params[encoders.CLIP_KEY]}, batch[self.key],
                           batch["text_ids"], batch["text_mask"],
                           rngs={} if rng is None else {"dropout": rng})
    if self.config.model.loss == "siglip":
      loss = contrastive.siglip_loss(out.image, out.text, out.scale, out.bias)
    else:
      loss = contrastive.clip_loss(out.image, out.text, out.scale)
    i2t, t2i = contrastive.retrieval_accuracy(out.image, out.text)
    return loss, {"contrastive_loss": loss, "i2t_acc": i2t, "t2i_acc": t2i,
                  "logit_scale": out.scale}

  def loss(self, params, batch, rng):
    loss, m = self._forward(params, batch, rng)
    return loss, {f"train/{k}": v for k, v in m.items()}

  def eval_step(self, params, batch, rng):
    del rng
    _, m = self._forward(params, batch, None)
    return {f"eval/batch_{k}": v for k, v in m.items() if k != "logit_scale"}

  # --- data ---------------------------------------------------------------------------------
  def make_iterator(self, split, batch_size, seed, shard_index, shard_count):
    return image_text.make_iterator(self.config.data, split, batch_size, seed, self.tokenizer,
                                    shard_index, shard_count)

  # --- evaluation ---------------------------------------------------------------------------
  def embed_split(self, params, split: str = "validation") -> dict[str, np.ndarray]:
    """Embeddings of a whole split: image [N, E], text [N, E], label [N], caption ids [N, L]."""
    e = self.config.eval
    clip = params[encoders.CLIP_KEY]
    out: dict[str, list] = {"image": [], "text": [], "label": [], "ids": []}
    for batch, n in image_text.eval_batches(self.config.data, split, e.batch_size,
                                            self.tokenizer, e.get("max_examples", 0)):
      out["image"].append(np.asarray(self._embed_pixels(clip, batch[self.key]))[:n])
      out["text"].append(np.asarray(self._embed_text(clip, batch["text_ids"],
                                                     batch["text_mask"]))[:n])
      out["label"].append(batch["label"][:n])
      out["ids"].append(batch["text_ids"][:n])
    return {k: np.concatenate(v) for k, v in out.items()}

  def class_embeddings(self, params) -> np.ndarray:
    """[C, E] normalised text embeddings of the class prompts."""
    ids, mask = self.tokenizer.encode(image_text.prompts(self.config.data))
    return np.asarray(self._embed_text(params[encoders.CLIP_KEY], ids, mask))

  def evaluate(self, params, step, workdir) -> dict[str, Any]:
    emb = self.embed_split(params)
    sim = emb["image"] @ emb["text"].T
    _, caption_id = np.unique(emb["ids"], axis=0, return_inverse=True)
    caption_id = caption_id.reshape(-1)
    match = caption_id[:, None] == caption_id[None, :]
    i2t, t2i = recall_at_k(sim, match), recall_at_k(sim.T, match.T)
    zs = (emb["image"] @ self.class_embeddings(params).T).argmax(1)
    results = {"eval/i2t_recall_at_1": i2t[1], "eval/i2t_recall_at_5": i2t[5],
               "eval/t2i_recall_at_1": t2i[1], "eval/t2i_recall_at_5": t2i[5],
               "eval/zeroshot_acc": float((zs == emb["label"]).mean()),
               "eval/examples": int(len(sim))}
    if jax.process_index() == 0:
      os.makedirs(os.path.join(workdir, "eval"), exist_ok=True)
      with open(os.path.join(workdir, "eval", f"retrieval_{step:06d}.json"), "w") as f:
        json.dump({"step": step, **results}, f, indent=2)
    return results
