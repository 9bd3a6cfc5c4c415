"""Image-text contrastive losses: CLIP's softmax loss and SigLIP's sigmoid loss.

Both are written on the global ``[B, E]`` arrays: under ``jax.jit`` with a batch sharded over the
``data`` / ``fsdp`` mesh axes, GSPMD computes the ``[B, B]`` logits from the sharded operands
(gathering what it needs), so every example is contrasted with the whole global batch, never only
with its own shard, and the result equals the unsharded loss. No ``all_gather`` by hand, no
``shard_map``: the loss reads like the paper.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp


def similarity(image: jax.Array, text: jax.Array, scale: jax.Array | float = 1.0,
               bias: jax.Array | float | None = None) -> jax.Array:
  """Scaled pairwise logits: image: [B, E], text: [B', E] -> [B, B'] float32."""
  logits = jnp.einsum("ie,te->it", image.astype(jnp.float32), text.astype(jnp.float32),
                      precision=jax.lax.Precision.HIGHEST) * scale
  return logits if bias is None else logits + bias


def clip_loss(image: jax.Array, text: jax.Array, scale: jax.Array | float) -> jax.Array:
  """CLIP's symmetric softmax cross-entropy over the global batch.

  Args:
    image: [B, E] image embeddings (L2-normalised by the caller); pair i is (image i, text i).
    text: [B, E] text embeddings.
    scale: [] ``exp(logit_scale)`` (the temperature's inverse).

  Returns:
    [] float32: ``(CE(logits, arange) + CE(logits.T, arange)) / 2``, each a mean over B.
  """
  logits = similarity(image, text, scale)
  diag = jnp.diagonal(logits)
  image_to_text = jax.nn.logsumexp(logits, axis=1) - diag
  text_to_image = jax.nn.logsumexp(logits, axis=0) - diag
  return 0.5 * (image_to_text.mean() + text_to_image.mean())


def siglip_loss(image: jax.Array, text: jax.Array, scale: jax.Array | float,
                bias: jax.Array | float) -> jax.Array:
  """SigLIP's pairwise sigmoid loss (Zhai et al., 2023) over the global batch.

  Every (i, j) pair is a binary problem, positive iff i == j:
  ``-sum_ij log sigmoid(z_ij * (scale * <x_i, y_j> + bias)) / B`` with ``z = 2 * I - 1``.

  Args:
    image: [B, E] L2-normalised image embeddings.
    text: [B, E] L2-normalised text embeddings.
    scale: [] ``exp(logit_scale)`` (SigLIP inits ``logit_scale = log 10``).
    bias: [] learnable logit bias (SigLIP inits -10).

  Returns:
    [] float32.
  """
  logits = similarity(image, text, scale, bias)
  labels = 2.0 * jnp.eye(logits.shape[0], logits.shape[1], dtype=jnp.float32) - 1.0
  return -jax.nn.log_sigmoid(labels * logits).sum() / logits.shape[0]


def retrieval_accuracy(image: jax.Array, text: jax.Array) -> tuple[jax.Array, jax.Array]:
  """Top-1 in-batch retrieval accuracy (image->text, text->image): image, text: [B, E] -> 2 x []."""
  logits = similarity(image, text)
  target = jnp.arange(logits.shape[0])
  return ((logits.argmax(1) == target).mean(), (logits.argmax(0) == target).mean())
