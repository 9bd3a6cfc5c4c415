"""Multimodal Graph Transformer (He & Wang, EACL 2023) for multiple-choice video QA.

One single-stream transformer over the tokens of a question about a video, in this order:

  [video tubelets (Lv) | object nodes (K) | question words (Lq) | options 1..O words (O * Lo)]

``L = Lv + K + Lq + O * Lo``. The paper (He & Wang, "Multimodal Graph Transformer for Multimodal
Question Answering", EACL 2023) adds multimodal graph information to vanilla self-attention as a
prior, in every layer ("graph-involved plug-and-play quasi-attention"): a text graph, a dense
region graph and a semantic graph give adjacency matrices over the input tokens. What we
implement, per block ``l`` and head ``h``, over ``C`` adjacency channels ``A_c [L, L]`` (0/1,
built on the host):

  logits_h = q_h k_h^T / sqrt(Dh) + s * sum_c gate[l, c, h] * A_c,   gate initialised to 0

so at gate 0 every block is exactly the plain transformer block (``graph=False`` has no gates at
all; ``tests/models/test_graph.py`` checks both). ``s`` (``gate_scale``, fixed) only speeds the
gates up under Adam. The world's channels (``mfm_jax.data.world_qa_pipeline``): layout (the
paper's text graph and dense region graph: neighbouring words of one segment, neighbouring
tubelets in space / time), grounding, relation and interaction (the semantic graph: tokens of the
same object, i.e. the tubelets its instance mask covers, its node and the words that name it;
and the scene graph's spatial relations / moving_towards-collides_with lifted to those tokens).

Where we simplify (and why): the paper composes its graphs with a pretrained vision-language
transformer on GQA / VQAv2 / MultiModalQA; we train a small single-stream model from scratch on
the procedural world. Its text graph comes from a parser and its region / semantic graphs from a
detector; the world gives exact scene graphs and instance masks instead, a word chain stands in
for the parse, and object nodes are embeddings of the true attributes (colour, shape, size,
material), given to the plain model too. We could read the paper only in abstract form here, so
its exact quasi-attention composition is not reproduced: we use the additive, per-head gated
logit bias that the layers' ``Attention(bias=...)`` takes and the design notes ask for.

Options are scored by mean-pooling each option's final tokens and a linear head: ``[B, O]``
logits. Options share their type embedding and position table, and the adjacency treats them
alike, so permuting the options permutes the scores.
"""
from __future__ import annotations

from typing import Any, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from mfm_jax.models import layers

# Token types, in sequence order.
VIDEO, OBJECT, QUESTION, OPTION = range(4)


def sequence_length(num_video: int, num_objects: int, question_len: int, num_options: int,
                    option_len: int) -> int:
  """L of the token order in the module docstring."""
  return num_video + num_objects + question_len + num_options * option_len


class GraphGate(nn.Module):
  """Per-head gates over adjacency channels: ``bias[b, h] = s * sum_c gate[c, h] adj[b, c]``.

  The gate ``[C, N]`` (names ``(None, heads)``) starts at ``init_value`` (0: no prior). ``scale``
  (s) is a fixed multiplier: Adam moves a parameter by about the learning rate per step, so with
  s = 1 a zero-initialised gate stays near 0 in a short run; s > 1 lets the prior grow s times
  faster without changing the gate-0 model.
  """
  num_heads: int
  init_value: float = 0.0
  scale: float = 1.0
  param_dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, adj: jax.Array) -> jax.Array:
    """adj: [B, C, Lq, Lk] (bool or float) -> bias [B, N, Lq, Lk] float32."""
    c = adj.shape[1]
    gate = self.param("gate", layers.named(nn.initializers.constant(self.init_value),
                                           (None, "heads")), (c, self.num_heads),
                      self.param_dtype)
    gate = gate.astype(jnp.float32) * self.scale
    bias = jnp.einsum("cn,bcqk->bnqk", gate, adj.astype(jnp.float32))
    return layers.constrain(bias, ("batch", "heads", "length", None))


class GraphTransformer(nn.Module):
  """Pre-LN ``layers.EncoderBlock`` stack; with ``graph`` each block gets its own gated bias.

  Attributes:
    depth, num_heads, mlp_dim: sizes.
    graph: add ``GraphGate(adj)`` to each block's attention logits (False: plain transformer,
      no gate parameters, ``adj`` ignored).
    gate_init: initial gate value (0 recovers the plain transformer).
    gate_scale: the gates' fixed multiplier (``GraphGate.scale``).
  """
  depth: int
  num_heads: int
  mlp_dim: int
  graph: bool = True
  gate_init: float = 0.0
  gate_scale: float = 1.0
  remat_policy: str = "none"
  dtype: Any = jnp.float32
  param_dtype: Any = jnp.float32
  flat: bool = True

  @nn.compact
  def __call__(self, x: jax.Array, mask: jax.Array | None = None,
               adj: jax.Array | None = None) -> jax.Array:
    """x: [B, L, D]; mask: [B, L] bool (True = real); adj: [B, C, L, L] -> [B, L, D]."""
    if self.graph and adj is None:
      raise ValueError("GraphTransformer(graph=True) needs an adjacency [B, C, L, L]")
    kw = dict(dtype=self.dtype, param_dtype=self.param_dtype)
    block = layers.remat(layers.EncoderBlock, self.remat_policy)
    for i in range(self.depth):
      bias = None
      if self.graph:
        bias = GraphGate(self.num_heads, self.gate_init, self.gate_scale, self.param_dtype,
                         name=f"gate_{i}")(adj)
      x = block(self.num_heads, mlp_dim=self.mlp_dim, flat=self.flat, name=f"block_{i}",
                **kw)(x, mask, bias)
    return layers.constrain(x, ("batch", "length", "embed"))


class GraphQA(nn.Module):
  """Multiple-choice video QA: video + object nodes + question + options -> option logits.

  Attributes:
    vocab_size: word ids (question and options share the table ``[V, D]``).
    attr_sizes: values per object attribute (e.g. colour, shape, size, material); an object
      node is the sum of its attribute embeddings (one table, offsets per attribute).
    width, depth, num_heads, mlp_dim: transformer sizes.
    tubelet: (pt, ph, pw) of the video tokens.
    max_text_len: capacity of the word position table (>= question and option lengths).
    graph, gate_init, gate_scale: see ``GraphTransformer``.
  """
  vocab_size: int
  attr_sizes: Sequence[int] = (12, 3, 3, 2)
  width: int = 128
  depth: int = 4
  num_heads: int = 4
  mlp_dim: int | None = None
  tubelet: tuple[int, int, int] = (2, 8, 8)
  max_text_len: int = 32
  graph: bool = True
  gate_init: float = 0.0
  gate_scale: float = 1.0
  remat_policy: str = "none"
  dtype: Any = jnp.float32
  param_dtype: Any = jnp.float32
  flat: bool = True

  def _embed(self, name, rows, std=0.02):
    return self.param(name, layers.named(nn.initializers.normal(std), (None, "embed")),
                      (rows, self.width), self.param_dtype).astype(self.dtype)

  @nn.compact
  def __call__(self, video: jax.Array, obj_attr: jax.Array, obj_mask: jax.Array,
               question_ids: jax.Array, question_mask: jax.Array, option_ids: jax.Array,
               option_mask: jax.Array, adjacency: jax.Array | None = None) -> jax.Array:
    """Scores the options.

    Args:
      video: [B, T, H, W, 3] float in [-1, 1] (T, H, W divisible by the tubelet).
      obj_attr: [B, K, A] int attribute ids of the object nodes (A = len(attr_sizes)).
      obj_mask: [B, K] bool, True = a real object.
      question_ids, question_mask: [B, Lq] int32 / bool.
      option_ids, option_mask: [B, O, Lo] int32 / bool.
      adjacency: [B, C, L, L] bool/float graph channels in the token order of the module
        docstring (ignored, and may be None, when ``graph`` is False).

    Returns:
      [B, O] float32 option logits.
    """
    b = video.shape[0]
    o, lo = option_ids.shape[1:]
    lq = question_ids.shape[1]
    if max(lq, lo) > self.max_text_len:
      raise ValueError(f"GraphQA: text length {max(lq, lo)} exceeds max_text_len="
                       f"{self.max_text_len}")
    kw = dict(dtype=self.dtype, param_dtype=self.param_dtype)
    types = self._embed("type_embedding", 4)

    v = layers.TubeletEmbed(self.width, tuple(self.tubelet), flat=self.flat, name="tubelet",
                            **kw)(video)
    v = layers.PosEmbed3D("sincos", **kw)(v)
    v = v.reshape(b, -1, self.width) + types[VIDEO]

    offsets = jnp.cumsum(jnp.asarray((0,) + tuple(self.attr_sizes[:-1]), jnp.int32))
    attr = self._embed("attr_embedding", sum(self.attr_sizes))
    objs = jnp.take(attr, obj_attr + offsets, axis=0).sum(-2) + types[OBJECT]   # [B, K, D]

    words = self._embed("word_embedding", self.vocab_size)
    pos = self._embed("text_pos_embedding", self.max_text_len, 0.01)
    q = jnp.take(words, question_ids, axis=0) + pos[:lq] + types[QUESTION]
    opts = jnp.take(words, option_ids, axis=0) + pos[:lo] + types[OPTION]      # [B, O, Lo, D]

    x = jnp.concatenate([v, objs, q, opts.reshape(b, o * lo, self.width)], axis=1)
    x = layers.constrain(x, ("batch", "length", "embed"))
    mask = jnp.concatenate([jnp.ones(v.shape[:2], bool), obj_mask.astype(bool),
                            question_mask.astype(bool),
                            option_mask.reshape(b, o * lo).astype(bool)], axis=1)
    if self.graph and adjacency is not None and adjacency.shape[-1] != x.shape[1]:
      raise ValueError(f"GraphQA: adjacency is over {adjacency.shape[-1]} tokens, the sequence "
                       f"has {x.shape[1]} (video {v.shape[1]}, objects {objs.shape[1]}, "
                       f"question {lq}, options {o}x{lo})")
    x = GraphTransformer(self.depth, self.num_heads, self.mlp_dim or 4 * self.width,
                         graph=self.graph, gate_init=self.gate_init, gate_scale=self.gate_scale,
                         remat_policy=self.remat_policy, flat=self.flat, name="encoder",
                         **kw)(x, mask, adjacency if self.graph else None)
    x = layers.LayerNorm(name="final_norm", **kw)(x)

    tail = x[:, -o * lo:].reshape(b, o, lo, self.width).astype(jnp.float32)
    m = option_mask.astype(jnp.float32)[..., None]
    pooled = (tail * m).sum(2) / jnp.maximum(m.sum(2), 1.0)                    # [B, O, D]
    return layers.Dense(1, ("embed", None), name="head", **kw)(pooled)[..., 0].astype(
        jnp.float32)


def flops_per_example(num_tokens: int, width: int, depth: int, mlp_dim: int,
                      tubelet_dim: int, num_video: int) -> float:
  """Forward FLOPs of one example (matmuls only; the bias add and softmax are not counted)."""
  per_block = 2 * num_tokens * (4 * width * width + 2 * width * mlp_dim)
  per_block += 4 * num_tokens * num_tokens * width       # logits and probs @ v
  return float(depth * per_block + 2 * num_video * tubelet_dim * width)
