"""Compositional image-text matching with ComCLIP (Jiang et al., NAACL 2024), training-free.

ComCLIP scores a sentence against an image through its parse (subject, predicate, object):

  v_k   = image-tower embedding of sub-image k (subject box, object box, predicate = union box)
  t_k   = text-tower embedding of the phrase of role k (the subject / object name, the relation)
  w     = softmax_k(weight_scale * cos(v_k, t_k))          (k over subject, object, predicate)
  v*    = v_global + sum_k w_k v_k
  score = cos(v*, t_sentence)          against the global CLIP score cos(v_global, t_sentence)

All embeddings are L2-normalised before the sum (the reference code adds HF's normalised
``image_embeds``). Sub-images are bound to phrases by name, the world's stand-in for ComCLIP's
matching of parsed entities to dense-caption boxes: a phrase naming an object of the frame takes
that object's box; a phrase naming none (the colour-swapped negatives) takes the whole frame, and
the predicate takes the union box only when both entities are bound, else the whole frame (the
reference code's fallbacks); ``config.comclip.binding="overlap"`` binds a phrase to the object
sharing the most words instead (see :func:`bind`). Simplifications, all documented in ``configs/comclip.py``: the
world gives the parse (triplets from its scene-graph rules, no dependency parser), boxes come
from instance masks or the caller (:mod:`mfm_jax.data.compositional`) instead of a dense
captioner, and a sub-image is a square crop around its box resized to the model resolution (the
reference blacks out the rest of the full image instead).

Evaluation (``evaluate``): for every item and negative type, ``positive scores above the
negative`` (a tie counts one half; chance 0.5) for global CLIP and ComCLIP, and ``above all
negatives`` (chance 1/3), also per predicate, the paired counts (items only one method ranks
right, for a sign / McNemar test), the mean softmax weights and the mean cosine
between the positive's and each negative's sentence embedding (near 1: the text tower barely
tells them apart, and no image embedding can), written to
``<workdir>/eval/compositional_<step>.json``.

Nothing trains: every parameter is frozen (``trainable_mask`` all False, lr 0). The engine
evaluates after steps, so the config runs one no-op step (``total_steps=1``; its loss is the
frozen CLIP loss of a world batch, a sanity metric) and evaluates at step 1.
"""
from __future__ import annotations

import dataclasses
import json
import os
from typing import Any, Callable, Sequence

import jax
import numpy as np

from mfm_jax.data import compositional as comp
from mfm_jax.data import image_text
from mfm_jax.engine.task import Task
from mfm_jax.models import contrastive
from mfm_jax.tasks import encoders

ROLES = ("subject", "object", "predicate")


# --- ComCLIP -------------------------------------------------------------------------------------
def normalize(x: np.ndarray) -> np.ndarray:
  x = np.asarray(x, np.float64)
  return x / np.maximum(np.linalg.norm(x, axis=-1, keepdims=True), 1e-12)


def compose(v_global: np.ndarray, v_parts: np.ndarray, t_parts: np.ndarray,
            weight_scale: float = 1.0) -> tuple[np.ndarray, np.ndarray]:
  """ComCLIP's composed image embedding.

  Args:
    v_global: [..., E] global image embeddings.
    v_parts: [..., 3, E] sub-image embeddings (subject, object, predicate).
    t_parts: [..., 3, E] phrase embeddings of the same roles.
    weight_scale: multiplies the cosines inside the softmax.

  Returns:
    v_star [..., E] = normalise(v_global) + sum_k w_k normalise(v_k), and w [..., 3].
  """
  v_parts = normalize(v_parts)
  sim = np.sum(v_parts * normalize(t_parts), -1) * weight_scale
  w = np.exp(sim - sim.max(-1, keepdims=True))
  w /= w.sum(-1, keepdims=True)
  return normalize(v_global) + np.sum(w[..., None] * v_parts, -2), w


def cosine(a: np.ndarray, b: np.ndarray) -> np.ndarray:
  return np.sum(normalize(a) * normalize(b), -1)


@dataclasses.dataclass
class Prepared:
  """Items flattened for batched encoding. N items, C candidates (positive first), M views.

  pixels [M, R, R, 3] float32 model pixels; global_index [N]; role_index [N, C, 3] view of
  (subject, object, predicate); texts: U unique strings; sentence_index [N, C]; phrase_index
  [N, C, 3].
  """
  pixels: np.ndarray
  global_index: np.ndarray
  role_index: np.ndarray
  texts: list[str]
  sentence_index: np.ndarray
  phrase_index: np.ndarray
  candidates: tuple[str, ...]


def model_pixels(image: np.ndarray, resolution: int, norm: str = "clip") -> np.ndarray:
  """[h, w, 3] uint8 -> [R, R, 3] float32 as the encoder tasks' preprocessing."""
  x = image_text.resize_square(np.asarray(image)[None], resolution)[0] / 255.0
  x = (x - image_text.CLIP_MEAN) / image_text.CLIP_STD if norm == "clip" else 2.0 * x - 1.0
  return x.astype(np.float32)


def bind(boxes: dict, phrase: str, binding: str = "name"):
  """The box of ``phrase`` among ``boxes`` ({name: box}), or None (the whole frame)."""
  if phrase in boxes or binding == "name":
    return boxes.get(phrase)
  words = set(phrase.split())
  overlap = {name: len(words & set(name.split())) for name in boxes}
  best = max(overlap.values(), default=0)
  tops = [n for n, v in overlap.items() if v == best]
  return boxes[tops[0]] if best and len(tops) == 1 else None


def prepare(items: Sequence[comp.Item], resolution: int, norm: str = "clip",
            min_side: int = 4, negative_types: Sequence[str] = comp.NEGATIVE_TYPES,
            binding: str = "name") -> Prepared:
  """Crops and texts of every item; see :class:`Prepared` and the module docstring.

  ``binding``: how a phrase finds its box: ``"name"`` (the object of that exact name, else the
  whole frame) or ``"overlap"`` (the object whose name shares the most words with the phrase,
  the whole frame on a tie; a stand-in for a soft text matcher, so colour-swapped phrases still
  get the crop of the object with their shape and size).
  """
  if binding not in ("name", "overlap"):
    raise ValueError(f"comclip binding={binding!r}: use 'name' or 'overlap'")
  if not items:
    raise ValueError("comclip: no items (no relation holds between visible objects?)")
  candidates = ("positive",) + tuple(negative_types)
  pixels, texts, text_ids = [], [], {}
  g_idx, roles, s_idx, p_idx = [], [], [], []

  def tid(s):
    if s not in text_ids:
      text_ids[s] = len(texts)
      texts.append(s)
    return text_ids[s]

  for item in items:
    views = {None: len(pixels)}
    pixels.append(model_pixels(item.image, resolution, norm))

    def view(box):
      if box not in views:
        views[box] = len(pixels)
        pixels.append(model_pixels(comp.square_crop(item.image, box, min_side), resolution, norm))
      return views[box]

    g_idx.append(views[None])
    r_row, s_row, p_row = [], [], []
    for name in candidates:
      sent = item.positive if name == "positive" else item.negatives[name]
      sb, ob = bind(item.boxes, sent.subject, binding), bind(item.boxes, sent.object, binding)
      pb = comp.union_box(sb, ob) if sb is not None and ob is not None else None
      r_row.append([view(sb), view(ob), view(pb)])
      s_row.append(tid(sent.text))
      p_row.append([tid(sent.subject), tid(sent.object), tid(sent.predicate)])
    roles.append(r_row)
    s_idx.append(s_row)
    p_idx.append(p_row)
  return Prepared(np.stack(pixels), np.asarray(g_idx), np.asarray(roles), texts,
                  np.asarray(s_idx), np.asarray(p_idx), candidates)


def score(prep: Prepared, image_emb: np.ndarray, text_emb: np.ndarray,
          weight_scale: float = 1.0) -> dict[str, np.ndarray]:
  """{"global": [N, C], "comclip": [N, C], "weights": [N, C, 3]} from view / text embeddings."""
  image_emb, text_emb = np.asarray(image_emb), np.asarray(text_emb)
  v_g = image_emb[prep.global_index][:, None]                 # [N, 1, E]
  sent = text_emb[prep.sentence_index]                        # [N, C, E]
  v_star, w = compose(v_g, image_emb[prep.role_index], text_emb[prep.phrase_index], weight_scale)
  return {"global": cosine(v_g, sent), "comclip": cosine(v_star, sent), "weights": w}


def accuracies(scores: np.ndarray, candidates: Sequence[str]) -> dict[str, float]:
  """scores [N, C] (column 0 the positive) -> {negative type: P(pos > neg), ties 1/2; "all":
  P(pos above every negative)}."""
  pos = scores[:, :1]
  out = {}
  for c, name in enumerate(candidates[1:], start=1):
    out[name] = float(np.mean((pos[:, 0] > scores[:, c]) + 0.5 * (pos[:, 0] == scores[:, c])))
  out["all"] = float(np.mean(np.all(pos > scores[:, 1:], axis=1)))
  return out


def evaluate_items(items, embed_images: Callable, embed_texts: Callable, resolution: int,
                   norm: str = "clip", min_side: int = 4, weight_scale: float = 1.0,
                   binding: str = "name") -> dict[str, Any]:
  """Global CLIP vs ComCLIP on items; ``embed_images([M, R, R, 3]) -> [M, E]``,
  ``embed_texts(list[str]) -> [U, E]`` (any encoder: CLIP or a test's toy)."""
  prep = prepare(items, resolution, norm, min_side, binding=binding)
  text_emb = embed_texts(prep.texts)
  s = score(prep, embed_images(prep.pixels), text_emb, weight_scale)
  res = {m: accuracies(s[m], prep.candidates) for m in ("global", "comclip")}
  res["chance"] = {**{n: 0.5 for n in prep.candidates[1:]}, "all": 1.0 / len(prep.candidates)}
  res["n"] = len(items)
  res["mean_weights"] = dict(zip(ROLES, s["weights"][:, 0].mean(0).round(4).tolist()))
  sent = np.asarray(text_emb)[prep.sentence_index]              # [N, C, E]
  res["text_cos_to_positive"] = {n: float(cosine(sent[:, 0], sent[:, c]).mean())
                                 for c, n in enumerate(prep.candidates[1:], start=1)}
  # paired: items one method ranks right (pos > neg) and the other not
  right = {m: s[m][:, :1] > s[m][:, 1:] for m in ("global", "comclip")}
  res["paired"] = {n: {"comclip_only": int((right["comclip"][:, c] & ~right["global"][:, c]).sum()),
                       "global_only": int((right["global"][:, c] & ~right["comclip"][:, c]).sum())}
                   for c, n in enumerate(prep.candidates[1:])}
  preds = np.array([it.predicate for it in items])
  res["per_predicate"] = {
      p: {"n": int((preds == p).sum()),
          **{m: accuracies(s[m][preds == p], prep.candidates) for m in ("global", "comclip")}}
      for p in dict.fromkeys(preds.tolist())}
  return res


# --- the task ----------------------------------------------------------------------------------
class CompositionalTask(Task):
  """Frozen CLIP (``config.init_from``) scored with and without ComCLIP; see the docstring."""

  def __init__(self, config):
    super().__init__(config)
    if encoders.pixel_key(config.data) != "image":
      raise ValueError("config.data.num_frames must be 1: ComCLIP scores single frames")
    if not image_text.is_world(config.data):
      raise ValueError(f"config.data.name={config.data.name!r}: the compositional items come "
                       "from the world (its scene graph and instance masks)")
    self.tokenizer = encoders.make_tokenizer(config.data)
    self.model = encoders.build_clip(config, self.tokenizer)
    self.box_source = self._box_source(config.comclip.boxes)
    self._items = None
    self._img = jax.jit(lambda p, x: encoders.encode_pixels(self.model, p, x))
    self._txt = jax.jit(lambda p, i, m: encoders.encode_text(self.model, p, i, m))

  @staticmethod
  def _box_source(kind: str):
    """None (instance-mask boxes) or ``GivenBoxes`` read from an .npz; callers may also set
    ``task.box_source`` to any box source before evaluating."""
    if kind == "masks":
      return None   # MaskBoxes(config.comclip.min_pixels), made in items()
    if kind.endswith(".npz"):
      with np.load(kind) as f:
        boxes = {tuple(int(v) for v in k.split("_")): f[k] for k in f.files}
      return comp.GivenBoxes(boxes)
    raise ValueError(f"config.comclip.boxes={kind!r}: use 'masks' or an .npz of "
                     "'<clip>_<frame>' -> [K, 4] boxes")

  def init(self, rng):
    return {encoders.CLIP_KEY: encoders.init_clip(self.model, self.config, rng)}

  def trainable_mask(self, params):
    return jax.tree.map(lambda _: False, params)

  def loss(self, params, batch, rng):
    del rng
    clip = jax.lax.stop_gradient(params[encoders.CLIP_KEY])
    out = self.model.apply({"params": clip}, batch["image"], batch["text_ids"],
                           batch["text_mask"])
    loss = contrastive.clip_loss(out.image, out.text, out.scale)
    return loss, {"train/frozen_clip_loss": loss}

  def make_iterator(self, split, batch_size, seed, shard_index, shard_count):
    return image_text.make_iterator(self.config.data, split, batch_size, seed, self.tokenizer,
                                    shard_index, shard_count)

  # --- evaluation ---------------------------------------------------------------------------
  def items(self) -> list[comp.Item]:
    """The evaluation items (built once; deterministic by ``config.comclip.seed``)."""
    if self._items is None:
      from mfm_jax.data import sources  # pylint: disable=g-import-not-at-top
      from mfm_jax.data.world import builder  # pylint: disable=g-import-not-at-top
      d, c = self.config.data, self.config.comclip
      src = sources.source_from_config(d, d.eval_split)
      spec = builder.get_builder(d.builder_config).builder_config.spec
      boxes = self.box_source or comp.MaskBoxes(c.min_pixels)
      self._items = comp.world_items(src, spec, image_text.world_attributes(d.builder_config),
                                     boxes, c.frames_per_clip, c.triplets_per_frame, c.seed,
                                     tuple(c.predicates), c.max_items, c.with_size)
    return self._items

  def _batched(self, fn, arrays, batch_size):
    n, out = len(arrays[0]), []
    for s in range(0, n, batch_size):
      chunk = [a[s:s + batch_size] for a in arrays]
      pad = batch_size - len(chunk[0])
      chunk = [np.concatenate([a, np.repeat(a[-1:], pad, 0)]) if pad else a for a in chunk]
      out.append(np.asarray(fn(*chunk))[:batch_size - pad])
    return np.concatenate(out)

  def evaluate(self, params, step, workdir) -> dict[str, Any]:
    clip, c, bs = params[encoders.CLIP_KEY], self.config.comclip, int(self.config.eval.batch_size)

    def embed_images(pixels):
      return self._batched(lambda x: self._img(clip, x), [pixels], bs)

    def embed_texts(texts):
      ids, mask = self.tokenizer.encode(list(texts))
      return self._batched(lambda i, m: self._txt(clip, i, m), [np.asarray(ids),
                                                               np.asarray(mask)], bs)

    res = evaluate_items(self.items(), embed_images, embed_texts, self.config.data.resolution,
                         self.config.data.normalize, c.min_crop, c.weight_scale,
                         c.get("binding", "name"))
    flat = {f"eval/{m}_{k}": v for m in ("global", "comclip") for k, v in res[m].items()}
    flat["eval/items"] = res["n"]
    if jax.process_index() == 0:
      os.makedirs(os.path.join(workdir, "eval"), exist_ok=True)
      with open(os.path.join(workdir, "eval", f"compositional_{step:06d}.json"), "w") as f:
        json.dump({"step": step, **res, "predicates": list(c.predicates),
                   "boxes": c.boxes, "binding": c.get("binding", "name")}, f, indent=2)
    return flat
