"""Core blocks: named Dense, norms, attention (bias, masks, sown maps), MLP, encoder block, remat.

Every parameter carries logical axis names (``nn.with_logical_partitioning``) from the set
``batch, frames, length, height, width, embed, heads, kv, mlp, vocab, conv_in, conv_out``; the
mapping to mesh axes lives in the config (see ``mfm_jax.engine.mesh``).

Performance on CPU: matmuls in the hot paths run on 2-D operands (``[B*L, D] @ [D, F]``), which
measured 2.7-5x faster for a DiT train step on CPU than the batched-einsum form (``flat=False``,
kept for benchmarks). Attention runs in the heads-major layout ``[B, N, L, Dh]`` with plain
einsums, which measured faster on CPU than ``jax.nn.dot_product_attention`` on our shapes and
also gives the probabilities for ``sow`` without a second code path.
"""
from __future__ import annotations

import math
from typing import Any, Callable, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from mfm_jax.models import peft as peft_lib

Dtype = Any
Initializer = Callable[..., jax.Array]
Names = tuple[str | None, ...]

zeros = nn.initializers.zeros
ones = nn.initializers.ones


def named(init: Initializer, names: Sequence[str | None]) -> Initializer:
  """``init`` boxed with logical axis names (one per parameter dimension)."""
  return nn.with_logical_partitioning(init, tuple(names))


def constrain(x: jax.Array, names: Sequence[str | None]) -> jax.Array:
  """Logical sharding constraint on an activation (a no-op outside a mesh / rules context)."""
  return nn.with_logical_constraint(x, tuple(names))


def matmul(x: jax.Array, kernel: jax.Array, in_axes: int = 1, flat: bool = True) -> jax.Array:
  """Contracts the last ``in_axes`` axes of ``x`` with the leading axes of ``kernel``.

  Args:
    x: [..., *K] input.
    kernel: [*K, *F] weights.
    in_axes: how many trailing axes of ``x`` (leading axes of ``kernel``) are contracted.
    flat: run one 2-D ``[M, prod(K)] @ [prod(K), prod(F)]`` matmul (fast on CPU) instead of an
      einsum over the original ranks.

  Returns:
    [..., *F].
  """
  lead, k_shape = x.shape[:x.ndim - in_axes], kernel.shape[:in_axes]
  f_shape = kernel.shape[in_axes:]
  if flat:
    k, f = math.prod(k_shape), math.prod(f_shape)
    y = jnp.dot(x.reshape(-1, k), kernel.reshape(k, f))
    return y.reshape(*lead, *f_shape)
  return jax.lax.dot_general(x, kernel, ((tuple(range(x.ndim - in_axes, x.ndim)),
                                          tuple(range(in_axes))), ((), ())))


def fan_avg_init(in_axes: int, ndim: int) -> Initializer:
  """Xavier-uniform for a kernel whose first ``in_axes`` axes are the fan-in."""
  return nn.initializers.variance_scaling(
      1.0, "fan_avg", "uniform", in_axis=tuple(range(in_axes)),
      out_axis=tuple(range(in_axes, ndim)))


class Dense(nn.Module):
  """Linear layer with named axes; kernel ``[*K, *F]`` (``K`` = last ``in_axes`` input axes).

  Attributes:
    features: output feature size(s) ``F``.
    names: logical names of the kernel axes, ``len(K) + len(F)`` of them; the bias takes the
      trailing ``len(F)`` names.
    in_axes: number of trailing input axes contracted.
    kernel_init: defaults to Xavier-uniform over (fan-in, fan-out) as in DiT.
  """
  features: int | Sequence[int]
  names: Names
  in_axes: int = 1
  use_bias: bool = True
  kernel_init: Initializer | None = None
  bias_init: Initializer = zeros
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32
  flat: bool = True

  @nn.compact
  def __call__(self, x: jax.Array, delta: jax.Array | None = None) -> jax.Array:
    """x: [..., *K] -> [..., *F]; ``delta``: [*K, *F] added to the kernel (a merged adapter)."""
    feats = (self.features,) if isinstance(self.features, int) else tuple(self.features)
    shape = tuple(x.shape[x.ndim - self.in_axes:]) + feats
    if len(self.names) != len(shape):
      raise ValueError(f"{self.name}: kernel {shape} needs {len(shape)} names, got {self.names}")
    init = self.kernel_init or fan_avg_init(self.in_axes, len(shape))
    kernel = self.param("kernel", named(init, self.names), shape, self.param_dtype)
    if delta is not None:
      kernel = kernel + delta.astype(kernel.dtype)
    y = matmul(x.astype(self.dtype), kernel.astype(self.dtype), self.in_axes, self.flat)
    if self.use_bias:
      bias = self.param("bias", named(self.bias_init, self.names[self.in_axes:]), feats,
                        self.param_dtype)
      y = y + bias.astype(self.dtype)
    return y


class LayerNorm(nn.Module):
  """LayerNorm over the last axis, statistics in float32; scale/bias named ``embed``."""
  epsilon: float = 1e-6
  use_scale: bool = True
  use_bias: bool = True
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    """x: [..., D] -> [..., D]."""
    d = x.shape[-1]
    xf = x.astype(jnp.float32)
    mean = xf.mean(-1, keepdims=True)
    var = jnp.square(xf - mean).mean(-1, keepdims=True)
    y = (xf - mean) * jax.lax.rsqrt(var + self.epsilon)
    if self.use_scale:
      y = y * self.param("scale", named(ones, ("embed",)), (d,), self.param_dtype)
    if self.use_bias:
      y = y + self.param("bias", named(zeros, ("embed",)), (d,), self.param_dtype)
    return y.astype(self.dtype)


class RMSNorm(nn.Module):
  """RMSNorm over the last axis, statistics in float32; scale named ``embed``."""
  epsilon: float = 1e-6
  use_scale: bool = True
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    """x: [..., D] -> [..., D]."""
    xf = x.astype(jnp.float32)
    y = xf * jax.lax.rsqrt(jnp.square(xf).mean(-1, keepdims=True) + self.epsilon)
    if self.use_scale:
      y = y * self.param("scale", named(ones, ("embed",)), (x.shape[-1],), self.param_dtype)
    return y.astype(self.dtype)


class Attention(nn.Module):
  """Multi-head attention, self (``context=None``) or cross, with q/k/v/out projections.

  Projection kernels: q/k/v ``[D, N, Dh]`` named ``(embed, heads, kv)``, out ``[N, Dh, D]`` named
  ``(heads, kv, embed)``. Probabilities are sown as ``intermediates/.../attn_maps`` with shape
  ``[B, N, Lq, Lk]`` only when ``sow_maps`` is set and the ``intermediates`` collection is mutable;
  the scaled, masked logits (masked keys at the float32 minimum) are sown as
  ``attn_logits/.../logits`` only when the ``attn_logits`` collection is mutable in an ``apply``
  (Discffusion's score); otherwise nothing is stored (no extra cost).

  Attributes:
    num_heads: N.
    head_dim: Dh (default D // N).
    out_features: output width (default D of the queries).
    zero_out: zero-initialise the output projection (the layer starts as a zero residual).
    peft: a ``peft.PeftConfig``: LoRA / KAdaptation adapters on its ``targets`` projections
      (parameters ``peft_*``; see ``mfm_jax.models.peft``). None = no adapters.
  """
  num_heads: int
  head_dim: int | None = None
  out_features: int | None = None
  use_bias: bool = True
  zero_out: bool = False
  sow_maps: bool = True
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32
  flat: bool = True
  peft: Any = None

  @nn.compact
  def __call__(self, x: jax.Array, context: jax.Array | None = None, *,
               bias: jax.Array | None = None, mask: jax.Array | None = None,
               causal: bool = False, shared: Any = None,
               value_context: jax.Array | None = None) -> jax.Array:
    """Attends from ``x`` to ``context`` (or to ``x``).

    Args:
      x: [B, Lq, D] queries.
      context: [B, Lk, Dc] keys/values source; None for self-attention.
      bias: additive logits bias [B or 1, N, Lq, Lk] (e.g. a graph prior).
      mask: [B, Lk] bool key padding mask, True = attend. A row with no True key gets zero
        attention (the output is the out-projection bias), e.g. an empty caption.
      causal: also mask keys after the query position (self-attention).
      shared: the tower's ``peft.SharedFactors`` output (KAdaptation slow factors), or None.
      value_context: [B, Lk, Dc] a separate source for the values (keys still come from
        ``context``), e.g. StructureDiffusion's noun-phrase sequences; None = ``context``.

    Returns:
      [B, Lq, out_features].
    """
    d = x.shape[-1]
    dh = self.head_dim or d // self.num_heads
    kv_in = x if context is None else context
    dense = lambda f, n, name, **kw: Dense(  # noqa: E731
        f, n, dtype=self.dtype, param_dtype=self.param_dtype, use_bias=self.use_bias,
        flat=self.flat, name=name, **kw)
    qkv_names = ("embed", "heads", "kv")
    proj = peft_lib.AttentionHook(self, self.peft, shared)  # plain dense(x) when peft is None
    q = proj("query", dense((self.num_heads, dh), qkv_names, "query"), x)
    k = proj("key", dense((self.num_heads, dh), qkv_names, "key"), kv_in)
    v_in = kv_in if value_context is None else value_context
    if v_in.shape[:2] != kv_in.shape[:2]:
      raise ValueError(f"value_context {v_in.shape} must match the keys' [B, Lk] "
                       f"{kv_in.shape[:2]}")
    v = proj("value", dense((self.num_heads, dh), qkv_names, "value"), v_in)
    q = constrain(q, ("batch", "length", "heads", "kv"))
    k = constrain(k, ("batch", "length", "heads", "kv"))
    v = constrain(v, ("batch", "length", "heads", "kv"))

    # Heads-major layout for the two batched matmuls (fastest on CPU, see module docstring).
    q, k, v = (a.transpose(0, 2, 1, 3) for a in (q, k, v))  # [B, N, L, Dh]
    logits = jnp.einsum("bnqd,bnkd->bnqk", q, k, preferred_element_type=jnp.float32)
    logits = logits * (dh ** -0.5)
    if bias is not None:
      logits = logits + bias.astype(jnp.float32)
    keep = None
    if mask is not None:
      keep = mask[:, None, None, :]
    if causal:
      lq, lk = logits.shape[-2:]
      tri = jnp.tril(jnp.ones((lq, lk), bool), lk - lq)[None, None]
      keep = tri if keep is None else keep & tri
    if keep is not None:  # finite fill: no NaN for fully masked rows
      logits = jnp.where(keep, logits, jnp.finfo(jnp.float32).min)
    if self.is_mutable_collection("attn_logits") and not self.is_initializing():
      self.sow("attn_logits", "logits", logits)
    probs = jax.nn.softmax(logits, axis=-1)
    if mask is not None:  # a query with no real key attends to nothing (output = out bias)
      probs = probs * mask.any(-1)[:, None, None, None]
    if self.sow_maps and self.is_mutable_collection("intermediates"):
      self.sow("intermediates", "attn_maps", probs)
    out = jnp.einsum("bnqk,bnkd->bnqd", probs.astype(self.dtype), v)
    out = out.transpose(0, 2, 1, 3)  # [B, Lq, N, Dh]
    out_init = zeros if self.zero_out else None
    return proj("out", dense(self.out_features or d, ("heads", "kv", "embed"), "out", in_axes=2,
                             kernel_init=out_init), out, in_axes=2)


ACTIVATIONS: dict[str, Callable[[jax.Array], jax.Array]] = {
    "gelu_tanh": lambda x: nn.gelu(x, approximate=True),
    "gelu": lambda x: nn.gelu(x, approximate=False),  # exact (erf), torch's default GELU
    "quick_gelu": lambda x: x * jax.nn.sigmoid(1.702 * x),  # OpenAI CLIP
    "silu": nn.silu,
}


class Mlp(nn.Module):
  """Two-layer MLP: ``[.., D] -> [.., hidden] -> activation -> [.., out]``.

  Attributes:
    activation: a key of ``ACTIVATIONS``; default ``gelu_tanh`` (GELU, tanh approximation).
  """
  hidden: int
  out_features: int | None = None
  zero_out: bool = False
  activation: str = "gelu_tanh"
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32
  flat: bool = True

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    """x: [..., D] -> [..., out_features or D]."""
    kw = dict(dtype=self.dtype, param_dtype=self.param_dtype, flat=self.flat)
    h = Dense(self.hidden, ("embed", "mlp"), name="fc1", **kw)(x)
    if h.ndim == 3:  # token activations [B, L, M]: the largest tensor of a block
      h = constrain(h, ("batch", "length", "mlp"))
    if self.activation not in ACTIVATIONS:
      raise ValueError(f"Mlp activation must be one of {sorted(ACTIVATIONS)}, "
                       f"got {self.activation!r}")
    h = ACTIVATIONS[self.activation](h)
    out_init = zeros if self.zero_out else None
    return Dense(self.out_features or x.shape[-1], ("mlp", "embed"), kernel_init=out_init,
                 name="fc2", **kw)(h)


class EncoderBlock(nn.Module):
  """Pre-LN transformer block: ``x + Attn(LN(x))`` then ``x + Mlp(LN(x))``.

  Used by the text encoder, the ViT / video towers and the CLIP text tower.

  Attributes:
    mlp_dim: MLP hidden width (default ``int(D * mlp_ratio)``).
    activation: MLP activation (see ``Mlp``); ``norm_epsilon``: LayerNorm epsilon.
    scanned: return ``(x, None)`` (the ``nn.scan`` carry form) instead of ``x``.
    peft: ``peft.PeftConfig`` for the attention adapters; ``shared`` (call arg): the tower's
      ``peft.SharedFactors`` output (a broadcast argument under ``nn.scan``).
  """
  num_heads: int
  mlp_ratio: float = 4.0
  causal: bool = False
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32
  flat: bool = True
  mlp_dim: int | None = None
  activation: str = "gelu_tanh"
  norm_epsilon: float = 1e-6
  scanned: bool = False
  peft: Any = None

  @nn.compact
  def __call__(self, x: jax.Array, mask: jax.Array | None = None,
               bias: jax.Array | None = None, shared: Any = None):
    """x: [B, L, D]; mask: [B, L] bool key padding; bias: [B or 1, N, L, L] -> [B, L, D]."""
    kw = dict(dtype=self.dtype, param_dtype=self.param_dtype)
    x = constrain(x, ("batch", "length", "embed"))
    h = LayerNorm(self.norm_epsilon, name="norm1", **kw)(x)
    x = x + Attention(self.num_heads, flat=self.flat, peft=self.peft, name="attn", **kw)(
        h, mask=mask, bias=bias, causal=self.causal, shared=shared)
    h = LayerNorm(self.norm_epsilon, name="norm2", **kw)(x)
    hidden = self.mlp_dim or int(x.shape[-1] * self.mlp_ratio)
    x = x + Mlp(hidden, activation=self.activation, flat=self.flat, name="mlp", **kw)(h)
    return (x, None) if self.scanned else x


_POLICIES = {
    "full": None,
    "dots": jax.checkpoint_policies.checkpoint_dots,
    "dots_no_batch": jax.checkpoint_policies.dots_with_no_batch_dims_saveable,
}


def remat(module_cls: type[nn.Module], policy: str, prevent_cse: bool = True):
  """``nn.remat`` with a named policy: ``none | full | dots | dots_no_batch``.

  ``full`` saves nothing (recompute the whole block), ``dots`` saves every matmul output,
  ``dots_no_batch`` saves matmuls without batch dims (the 2-D projections / MLP, not attention
  logits). Pass ``prevent_cse=False`` under ``nn.scan``.
  """
  if policy == "none":
    return module_cls
  if policy not in _POLICIES:
    raise ValueError(f"remat_policy must be one of none|{'|'.join(_POLICIES)}, got {policy!r}")
  return nn.remat(module_cls, policy=_POLICIES[policy], prevent_cse=prevent_cse)
