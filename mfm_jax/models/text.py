"""A small text transformer: the first text path for conditioning (video DiT cross-attention).

``TextEncoder`` maps token ids to per-token features and a pooled vector. It is the seam that a
CLIP-style text tower will fill later: same call signature ``(ids, mask) -> (tokens, pooled)``,
same shapes, so a task can swap one for the other without touching the diffusion model.

Byte patches (attribute ``patch``): with ``patch = p > 1`` the embeddings of p consecutive ids are
concatenated and projected to one token (as a ViT patchifies pixels), so a byte-level caption of L
ids becomes L/p tokens and every later cost (self-attention here, cross-attention in the DiT) drops
by p or p^2. The returned tokens then match :func:`patch_mask` ``(mask, p)``, not ``mask``.

Pooling (attribute ``pooling``):
  * ``"mean"`` (default): mean of the final-normed token features over real tokens
    (``mask == True``); an all-padding row pools to zeros.
  * ``"last"``: the feature at the last real token (index ``sum(mask) - 1``), which is the
    end-of-text token when the tokenizer appends one (CLIP's choice, natural with ``causal``).
"""
from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from mfm_jax.models import layers


def patch_mask(mask: jax.Array, patch: int) -> jax.Array:
  """``[B, L]`` id mask -> ``[B, L/patch]`` token mask (a token is real if any of its ids is)."""
  if patch == 1:
    return mask.astype(bool)
  b, l = mask.shape
  if l % patch:
    raise ValueError(f"TextEncoder(patch={patch}): sequence length {l} is not divisible by it")
  return mask.astype(bool).reshape(b, l // patch, patch).any(-1)


class TextEncoder(nn.Module):
  """Pre-LN transformer over token ids with learned absolute positions.

  Attributes:
    vocab_size: V; the embedding table is ``[V, D]`` named ``(vocab, embed)``.
    width, depth, num_heads, mlp_ratio: transformer size (D = width).
    max_len: capacity of the position table; inputs may be shorter.
    causal: causal self-attention (GPT / CLIP text style) instead of bidirectional.
    pooling: ``"mean"`` or ``"last"`` (see the module docstring).
    remat_policy: ``none | full | dots | dots_no_batch`` (see ``layers.remat``).
    patch: ids merged into one token (see the module docstring).
  """
  vocab_size: int
  width: int = 512
  depth: int = 12
  num_heads: int = 8
  max_len: int = 77
  causal: bool = False
  mlp_ratio: float = 4.0
  pooling: str = "mean"
  remat_policy: str = "none"
  dtype: Any = jnp.float32
  param_dtype: Any = jnp.float32
  flat: bool = True
  patch: int = 1

  @nn.compact
  def __call__(self, ids: jax.Array,
               mask: jax.Array | None = None) -> tuple[jax.Array, jax.Array]:
    """Encodes token ids.

    Args:
      ids: [B, L] int32 token ids, L <= max_len.
      mask: [B, L] bool, True = real token (default: all real). Padded keys are never attended.

    Returns:
      tokens: [B, L/patch, D] final-normed token features (padded positions hold values, ignore
        them); their mask is ``patch_mask(mask, patch)``.
      pooled: [B, D].
    """
    b, l = ids.shape
    if l > self.max_len:
      raise ValueError(f"TextEncoder: sequence length {l} exceeds max_len={self.max_len}")
    if self.pooling not in ("mean", "last"):
      raise ValueError(f"pooling must be 'mean' or 'last', got {self.pooling!r}")
    mask = jnp.ones((b, l), bool) if mask is None else mask.astype(bool)
    emb = self.param("embedding", layers.named(nn.initializers.normal(0.02), ("vocab", "embed")),
                     (self.vocab_size, self.width), self.param_dtype)
    pos = self.param("pos_embedding", layers.named(nn.initializers.normal(0.01),
                                                   (None, "embed")),
                     (self.max_len, self.width), self.param_dtype)
    x = jnp.take(emb, ids, axis=0)
    if self.patch > 1:
      mask = patch_mask(mask, self.patch)
      l //= self.patch
      x = layers.Dense(self.width, (None, "embed"), dtype=self.dtype, param_dtype=self.param_dtype,
                       flat=self.flat, name="patch_proj")(x.reshape(b, l, -1))
    x = x + pos[None, :l]
    x = layers.constrain(x.astype(self.dtype), ("batch", "length", "embed"))
    block = layers.remat(layers.EncoderBlock, self.remat_policy)
    for i in range(self.depth):
      x = block(self.num_heads, self.mlp_ratio, self.causal, dtype=self.dtype,
                param_dtype=self.param_dtype, flat=self.flat, name=f"block_{i}")(x, mask)
    x = layers.LayerNorm(dtype=self.dtype, param_dtype=self.param_dtype, name="final_norm")(x)

    m = mask.astype(jnp.float32)
    if self.pooling == "mean":
      pooled = (x.astype(jnp.float32) * m[..., None]).sum(1) / jnp.maximum(m.sum(1), 1.0)[:, None]
    else:
      last = jnp.maximum(mask.sum(1) - 1, 0)
      pooled = x[jnp.arange(b), last].astype(jnp.float32)
    return x, pooled.astype(self.dtype)
