"""CLIP: a causal text transformer and the two-tower model (Radford et al., 2021).

``CLIPText``: token + learned position embeddings, causal pre-LN blocks, a final LayerNorm and
end-of-text pooling with HF's rule (:func:`eot_index`). ``CLIP``: a ``vit.ViT`` image tower and a
``CLIPText`` tower, bias-free projections to a shared width E, and a learnable logit scale
(``log(1 / 0.07)`` at init; an optional learnable logit bias for the SigLIP loss).

``encode_image`` / ``encode_text`` return the projected features before normalisation (HF's
``get_image_features`` / ``get_text_features``); ``__call__`` returns the normalised pair with
``exp(logit_scale)``. Losses live in ``mfm_jax.models.contrastive``; HF weights come in through
``mfm_jax.convert.hf_clip``.
"""
from __future__ import annotations

import math
from typing import Any, NamedTuple

import flax.linen as nn
import jax
import jax.numpy as jnp

from mfm_jax.models import layers
from mfm_jax.models import peft as peft_lib
from mfm_jax.models.vit import Transformer, ViT

LEGACY_EOS_ID = 2


def eot_index(ids: jax.Array, eos_token_id: int) -> jax.Array:
  """Index of the end-of-text token per row, HF's rule: ids: [B, L] -> [B] int32.

  With the legacy config ``eos_token_id == 2`` (OpenAI's original checkpoints) the pooled token is
  the highest id of the row (``argmax(ids)``, the EOT being the largest id of OpenAI's vocabulary);
  otherwise it is the first occurrence of ``eos_token_id`` (index 0 when absent). The first
  occurrence matters because the pad id may equal the eos id.
  """
  if eos_token_id == LEGACY_EOS_ID:
    return jnp.argmax(ids, axis=-1).astype(jnp.int32)
  return jnp.argmax(ids == eos_token_id, axis=-1).astype(jnp.int32)


class CLIPText(nn.Module):
  """CLIP's text transformer.

  Attributes:
    vocab_size: V; token table ``[V, D]`` named ``(vocab, embed)``.
    width, depth, num_heads, mlp_dim: sizes (D = width, mlp_dim defaults to 4 * D).
    max_len: capacity of the position table ``[max_len, D]``.
    eos_token_id: the pooled token (see :func:`eot_index`).
    pooling: ``"eot"`` (HF's rule, :func:`eot_index`) or ``"last"`` (the last real token of
      ``mask``: the EOS of tokenizers whose EOS id is not the largest, e.g. bytes / words, where
      the legacy ``eos_token_id == 2`` rule would pick the largest id instead).
    activation, norm_epsilon: ``quick_gelu`` and 1e-5 as in OpenAI CLIP.
    scan_blocks, remat_policy: as in ``vit.Transformer``.
    peft: ``peft.PeftConfig`` (None: no adapters); the tower creates ``peft.SharedFactors`` once
      (``peft_shared``) and passes it to every block.
  """
  vocab_size: int = 49408
  width: int = 512
  depth: int = 12
  num_heads: int = 8
  mlp_dim: int | None = None
  max_len: int = 77
  eos_token_id: int = 49407
  pooling: str = "eot"
  activation: str = "quick_gelu"
  norm_epsilon: float = 1e-5
  scan_blocks: bool = False
  remat_policy: str = "none"
  dtype: Any = jnp.float32
  param_dtype: Any = jnp.float32
  flat: bool = True
  peft: peft_lib.PeftConfig | None = None

  @nn.compact
  def __call__(self, ids: jax.Array,
               mask: jax.Array | None = None) -> tuple[jax.Array, jax.Array]:
    """Encodes token ids.

    Args:
      ids: [B, L] int token ids, L <= max_len.
      mask: [B, L] bool key padding mask, True = real token (default: none; with right padding
        and the causal mask it does not change the pooled feature).

    Returns:
      tokens: [B, L, D] final-normed token features.
      pooled: [B, D] the feature at :func:`eot_index` (``pooling="last"``: at the last True of
        ``mask``, which it then requires).
    """
    b, l = ids.shape
    if l > self.max_len:
      raise ValueError(f"CLIPText: sequence length {l} exceeds max_len={self.max_len}")
    if self.pooling not in ("eot", "last") or (self.pooling == "last" and mask is None):
      raise ValueError(f"CLIPText: pooling={self.pooling!r} must be 'eot' or 'last' (which "
                       "needs the mask)")
    kw = dict(dtype=self.dtype, param_dtype=self.param_dtype)
    emb = self.param("token_embedding", layers.named(nn.initializers.normal(0.02),
                                                     ("vocab", "embed")),
                     (self.vocab_size, self.width), self.param_dtype)
    pos = self.param("pos_embedding", layers.named(nn.initializers.normal(0.01), (None, "embed")),
                     (self.max_len, self.width), self.param_dtype)
    x = (jnp.take(emb, ids, axis=0) + pos[None, :l]).astype(self.dtype)
    x = layers.constrain(x, ("batch", "length", "embed"))
    mask = None if mask is None else mask.astype(bool)
    shared = None if self.peft is None else peft_lib.SharedFactors(
        self.peft, self.param_dtype, name="peft_shared")()
    x = Transformer(self.depth, self.num_heads, self.mlp_dim or 4 * self.width, causal=True,
                    activation=self.activation, norm_epsilon=self.norm_epsilon,
                    scan_blocks=self.scan_blocks, remat_policy=self.remat_policy,
                    flat=self.flat, peft=self.peft, name="encoder", **kw)(x, mask, shared)
    x = layers.LayerNorm(self.norm_epsilon, name="final_norm", **kw)(x)
    if self.pooling == "last":
      index = jnp.maximum(mask.sum(-1) - 1, 0).astype(jnp.int32)
    else:
      index = eot_index(ids, self.eos_token_id)
    pooled = x[jnp.arange(b), index]
    return x, pooled


class CLIPOutput(NamedTuple):
  """``CLIP.__call__`` result: L2-normalised embeddings and the logit scale / bias."""
  image: jax.Array  # [B, E]
  text: jax.Array  # [B', E]
  scale: jax.Array  # [] exp(logit_scale)
  bias: jax.Array | None  # [] logit bias (SigLIP), None unless ``logit_bias_init`` is set


def l2_normalize(x: jax.Array, eps: float = 1e-12) -> jax.Array:
  """x: [..., E] -> x / ||x|| over the last axis (float32 norm)."""
  xf = x.astype(jnp.float32)
  return (xf * jax.lax.rsqrt(jnp.maximum(jnp.square(xf).sum(-1, keepdims=True), eps))
          ).astype(x.dtype)


class CLIP(nn.Module):
  """Two-tower image-text model.

  Param tree: ``vision`` (``ViT``), ``text`` (``CLIPText``), ``visual_projection/kernel`` ``[Dv,
  E]``, ``text_projection/kernel`` ``[Dt, E]`` (no bias), ``logit_scale`` ``[]`` and, with
  ``logit_bias_init``, ``logit_bias`` ``[]``.

  Attributes:
    vision: the image tower (its pooled output is projected).
    text: the text tower.
    embed_dim: E.
    logit_scale_init: initial ``logit_scale`` (a log); ``log(10)`` for SigLIP.
    logit_bias_init: None (CLIP) or the initial learnable logit bias (SigLIP: -10).
  """
  vision: ViT
  text: CLIPText
  embed_dim: int = 512
  logit_scale_init: float = math.log(1 / 0.07)
  logit_bias_init: float | None = None
  dtype: Any = jnp.float32
  param_dtype: Any = jnp.float32

  def setup(self):
    kw = dict(use_bias=False, dtype=self.dtype, param_dtype=self.param_dtype)
    self.visual_projection = layers.Dense(self.embed_dim, ("embed", None), **kw)
    self.text_projection = layers.Dense(self.embed_dim, ("embed", None), **kw)
    self.logit_scale = self.param(
        "logit_scale", layers.named(nn.initializers.constant(self.logit_scale_init), ()), (),
        jnp.float32)
    self.logit_bias = None if self.logit_bias_init is None else self.param(
        "logit_bias", layers.named(nn.initializers.constant(self.logit_bias_init), ()), (),
        jnp.float32)

  def encode_image(self, pixel_values: jax.Array) -> jax.Array:
    """pixel_values: [B, H, W, C] float -> [B, E] projected, unnormalised."""
    return self.visual_projection(self.vision(pixel_values)[1])

  def encode_text(self, input_ids: jax.Array, mask: jax.Array | None = None) -> jax.Array:
    """input_ids: [B, L] int; mask: [B, L] bool (optional) -> [B, E] projected, unnormalised."""
    return self.text_projection(self.text(input_ids, mask)[1])

  def __call__(self, pixel_values: jax.Array, input_ids: jax.Array,
               mask: jax.Array | None = None) -> CLIPOutput:
    """pixel_values: [B, H, W, C]; input_ids: [B', L]; mask: [B', L] -> ``CLIPOutput``."""
    image = l2_normalize(self.encode_image(pixel_values))
    text = l2_normalize(self.encode_text(input_ids, mask))
    image = layers.constrain(image, ("batch", None))
    text = layers.constrain(text, ("batch", None))
    return CLIPOutput(image, text, jnp.exp(self.logit_scale), self.logit_bias)
