"""Learnable text prompts for a frozen CLIP text tower: CoOp (Zhou et al., IJCV 2022) and CoCoOp
(Zhou et al., CVPR 2022).

A prompt for class c is the token-embedding sequence ``[BOS, ctx_1 .. ctx_M, name_c, EOS]``: the
hand prompt's context words ("a photo of a") are replaced by M learned vectors of the tower's
token-embedding width D, shared by all classes (CoOp's unified context). The frozen tower encodes
the sequence as ``CLIPText`` does (learned positions, causal blocks, final norm) and pools at the
EOS position (:func:`encode_prompts`), then the CLIP text projection gives ``[.., C, E]``.

CoCoOp adds a meta-net ``Linear(E -> E // 16) - ReLU - Linear(-> D)`` that maps the (normalised)
image feature to one bias added to every context vector, so each image gets its own class text
features ``[B, C, E]``.

Shapes: M = n_ctx, D = text width, E = CLIP embed width, C = classes, L' = the longest prompt
(``1 + M + name tokens + 1``; a prompt shorter than the tokenizer's ``max_len`` loses nothing:
the tower is causal and pools at the EOS, so trailing padding never reaches the pooled token).
"""
from __future__ import annotations

import dataclasses
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from mfm_jax.models import clip as clip_lib
from mfm_jax.models import layers
from mfm_jax.models.vit import Transformer


@dataclasses.dataclass(frozen=True)
class PromptTable:
  """Where each prompt position reads from (numpy, static); C prompts of length L'.

  token_ids: [C, L'] int32 token id per position (BOS, name tokens, EOS, pad; 0 at ctx slots).
  ctx_index: [C, L'] int32, j at the slot of ctx_j, -1 elsewhere.
  mask: [C, L'] bool, True on BOS .. EOS.
  eos_index: [C] int32, the pooled position (= 1 + M + name length).
  """
  token_ids: np.ndarray
  ctx_index: np.ndarray
  mask: np.ndarray
  eos_index: np.ndarray

  @property
  def num_classes(self) -> int:
    return int(self.token_ids.shape[0])


def context_ids(tokenizer, words: str) -> np.ndarray:
  """Token ids of ``words`` without BOS / EOS: [M] int32 (raises on unknown words)."""
  ids, mask = tokenizer.encode([words])
  ids = np.asarray(ids[0])[:int(np.asarray(mask[0]).sum())]
  body = ids[1:-1]
  unk = getattr(tokenizer, "unk_id", None)
  if not len(body) or (unk is not None and (body == unk).any()):
    raise ValueError(f"prompt init_words={words!r}: empty or has words the tokenizer does not "
                     "know (use words of its vocabulary, or '' for random init)")
  return body.astype(np.int32)


def prompt_table(tokenizer, class_names: list[str], n_ctx: int) -> PromptTable:
  """The table of ``[BOS, ctx_1..ctx_M, name tokens, EOS]`` for each class name."""
  ids, mask = tokenizer.encode([n.replace("_", " ") for n in class_names])
  ids, mask = np.asarray(ids), np.asarray(mask).astype(bool)
  lens = mask.sum(-1)
  if not (ids[:, 0] == tokenizer.bos_id).all():
    raise ValueError("prompt_table: the tokenizer must start every sequence with BOS")
  length = int(lens.max()) + n_ctx
  if length > tokenizer.max_len:
    raise ValueError(f"prompt_table: {n_ctx} context tokens + the longest class name need "
                     f"{length} > data.max_text_len={tokenizer.max_len} positions")
  c = len(class_names)
  token_ids = np.full((c, length), tokenizer.pad_id, np.int32)
  ctx_index = np.full((c, length), -1, np.int32)
  out_mask = np.zeros((c, length), bool)
  for i, n in enumerate(lens):
    token_ids[i, 0] = ids[i, 0]
    token_ids[i, 1:1 + n_ctx] = 0
    ctx_index[i, 1:1 + n_ctx] = np.arange(n_ctx)
    token_ids[i, 1 + n_ctx:n + n_ctx] = ids[i, 1:n]
    out_mask[i, :n + n_ctx] = True
  return PromptTable(token_ids, ctx_index, out_mask, (lens + n_ctx - 1).astype(np.int32))


def prompt_embeddings(table: PromptTable, token_embedding: jax.Array, ctx: jax.Array
                      ) -> jax.Array:
  """Token embeddings with the context slots filled.

  Args:
    table: the class prompts.
    token_embedding: [V, D] the tower's token table.
    ctx: [M, D] (CoOp) or [B, M, D] (CoCoOp: one context per image).

  Returns:
    [C, L', D] or [B, C, L', D].
  """
  tok = jnp.take(token_embedding, jnp.asarray(table.token_ids), axis=0)      # [C, L', D]
  slot = jnp.asarray(table.ctx_index)
  is_ctx = (slot >= 0)[..., None]
  filled = jnp.take(ctx, jnp.maximum(slot, 0), axis=-2)                       # [(B,) C, L', D]
  return jnp.where(is_ctx, filled.astype(tok.dtype), tok)


def encode_embeddings(model: clip_lib.CLIP, clip_params: Any, x: jax.Array, mask: jax.Array,
                      index: jax.Array) -> jax.Array:
  """The frozen text tower and projection on token embeddings: what ``CLIP.encode_text`` does
  after the token lookup.

  Args:
    model: the CLIP module (its ``text`` tower's sizes are used; no text adapters).
    clip_params: the CLIP params (``text``, ``text_projection``).
    x: [N, L, D] token embeddings (positions are added here).
    mask: [N, L] bool key padding (True = real).
    index: [N] int, the position to pool (the EOS).

  Returns:
    [N, E] projected, unnormalised text features.
  """
  t = model.text
  if t.peft is not None:
    raise ValueError("prompts.encode_embeddings: the text tower must have no adapters")
  tp = clip_params["text"]
  n, l, _ = x.shape
  kw = dict(dtype=t.dtype, param_dtype=t.param_dtype)
  x = (x + tp["pos_embedding"][None, :l]).astype(t.dtype)
  x = layers.constrain(x, ("batch", "length", "embed"))
  enc = Transformer(t.depth, t.num_heads, t.mlp_dim or 4 * t.width, causal=True,
                    activation=t.activation, norm_epsilon=t.norm_epsilon,
                    scan_blocks=t.scan_blocks, remat_policy=t.remat_policy, flat=t.flat, **kw)
  x = enc.apply({"params": tp["encoder"]}, x, mask.astype(bool), None)
  x = layers.LayerNorm(t.norm_epsilon, **kw).apply({"params": tp["final_norm"]}, x)
  pooled = x[jnp.arange(n), index]
  proj = layers.Dense(model.embed_dim, ("embed", None), use_bias=False, dtype=model.dtype,
                      param_dtype=model.param_dtype)
  return proj.apply({"params": clip_params["text_projection"]}, pooled)


def encode_prompts(model: clip_lib.CLIP, clip_params: Any, table: PromptTable, ctx: jax.Array
                   ) -> jax.Array:
  """ctx [M, D] -> [C, E]; ctx [B, M, D] -> [B, C, E]; L2-normalised class text features."""
  x = prompt_embeddings(table, clip_params["text"]["token_embedding"], ctx)
  lead = x.shape[:-2]
  rows = int(np.prod(lead))
  mask = jnp.broadcast_to(jnp.asarray(table.mask), lead + table.mask.shape[-1:])
  index = jnp.broadcast_to(jnp.asarray(table.eos_index), lead)
  feats = encode_embeddings(model, clip_params, x.reshape((rows,) + x.shape[-2:]),
                            mask.reshape(rows, -1), index.reshape(rows))
  return clip_lib.l2_normalize(feats.reshape(lead + feats.shape[-1:]))


class PromptLearner(nn.Module):
  """The learned context (CoOp) and, with ``conditional``, CoCoOp's meta-net.

  Params: ``ctx`` [M, D] named ``(None, embed)`` (N(0, 0.02) at init; a task may overwrite it
  with word embeddings), ``meta_net/{linear1, linear2}`` (CoCoOp only).

  Attributes:
    n_ctx: M.
    width: D, the text tower's token-embedding width.
    conditional: CoCoOp (per-image bias from the image feature).
    meta_hidden: the meta-net's hidden width (0: image feature width // 16, at least 1).
  """
  n_ctx: int
  width: int
  conditional: bool = False
  meta_hidden: int = 0
  dtype: Any = jnp.float32
  param_dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, image_features: jax.Array | None = None) -> jax.Array:
    """image_features: [B, E] (CoCoOp) -> ctx [B, M, D]; without: ctx [M, D]."""
    ctx = self.param("ctx", layers.named(nn.initializers.normal(0.02), (None, "embed")),
                     (self.n_ctx, self.width), self.param_dtype)
    if not self.conditional:
      return ctx
    if image_features is None:
      raise ValueError("PromptLearner(conditional=True) needs the image features")
    hidden = self.meta_hidden or max(1, image_features.shape[-1] // 16)
    kw = dict(dtype=self.dtype, param_dtype=self.param_dtype)
    h = layers.Dense(hidden, ("embed", "mlp"), name="linear1", **kw)(image_features)
    bias = layers.Dense(self.width, ("mlp", "embed"), name="linear2", **kw)(nn.relu(h))
    return ctx[None] + bias[:, None, :]
