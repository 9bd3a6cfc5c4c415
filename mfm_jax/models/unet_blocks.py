"""Blocks of the 3-D U-Net (``models.unet3d``): SD-style spatial layers plus residual temporal ones.

Spatial layers follow diffusers' ``UNet2DConditionModel`` exactly (so that SD weights import):
``ResnetBlock`` = ``ResnetBlock2D`` (GroupNorm, SiLU, 3x3 conv, + time projection, GroupNorm, SiLU,
3x3 conv, 1x1 conv shortcut when the width changes, ``/ output_scale``); ``SpatialTransformer`` =
``Transformer2DModel`` (GroupNorm eps 1e-6, ``proj_in``, ``BasicTransformerBlock`` x N with
LayerNorm eps 1e-5, self-attention, cross-attention to text, GEGLU feed-forward, ``proj_out``,
residual); ``Downsample`` = stride-2 3x3 conv (padding 1); ``Upsample`` = nearest x2 then 3x3 conv.
A 1x1 conv ``proj_in`` / ``proj_out`` (``use_linear_projection=False``) is the same map as a
linear one; both are stored as a ``Dense`` ``[C, D]`` (the importer reshapes).

Temporal layers (``TemporalConv``, ``TemporalAttention``) act along frames of ``[B, T, H, W, C]``
activations. Both are residual with a zero-initialised output projection, so at init they are the
identity and the U-Net is exactly the per-frame 2-D U-Net (the inflation of an image model).

Layouts: spatial activations are ``[N, H, W, C]`` with ``N = B * T`` (frame-major within a video),
conv kernels HWIO ``[kh, kw, C_in, C_out]`` named ``(None, None, conv_in, conv_out)``.
"""
from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from mfm_jax.models import layers

SPATIAL = ("batch", "height", "width", None)
VIDEO = ("batch", "frames", "height", "width", None)


def conv(features: int, kernel: int = 3, stride: int = 1, *, name: str, zero: bool = False,
         out_name: str | None = "conv_out", dtype: Any = jnp.float32,
         param_dtype: Any = jnp.float32) -> nn.Conv:
  """2-D conv on NHWC, torch-style symmetric padding ``(kernel - 1) // 2``; HWIO kernel.

  ``out_name``: logical name of the output channels (None for a few, e.g. the final 4 channels,
  that no mesh axis should split)."""
  pad = (kernel - 1) // 2
  init = layers.zeros if zero else nn.initializers.lecun_normal()
  return nn.Conv(features, (kernel, kernel), strides=stride, padding=((pad, pad), (pad, pad)),
                 kernel_init=layers.named(init, (None, None, "conv_in", out_name)),
                 bias_init=layers.named(layers.zeros, (out_name,)), dtype=dtype,
                 param_dtype=param_dtype, name=name)


def group_norm(groups: int, eps: float, *, name: str, dtype: Any = jnp.float32,
               param_dtype: Any = jnp.float32) -> nn.GroupNorm:
  """torch ``GroupNorm`` over all non-batch axes (exact two-pass variance, float32 stats)."""
  return nn.GroupNorm(num_groups=groups, epsilon=eps, use_fast_variance=False,
                      scale_init=layers.named(layers.ones, ("conv_out",)),
                      bias_init=layers.named(layers.zeros, ("conv_out",)), dtype=dtype,
                      param_dtype=param_dtype, name=name)


class ResnetBlock(nn.Module):
  """diffusers ``ResnetBlock2D`` (``time_embedding_norm="default"``, SiLU): [N, H, W, Cin] -> Cout."""
  features: int
  groups: int = 32
  eps: float = 1e-5
  output_scale: float = 1.0
  dtype: Any = jnp.float32
  param_dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array, temb: jax.Array) -> jax.Array:
    """x: [N, H, W, Cin]; temb: [N, E] -> [N, H, W, features]."""
    kw = dict(dtype=self.dtype, param_dtype=self.param_dtype)
    h = nn.silu(group_norm(self.groups, self.eps, name="norm1", **kw)(x))
    h = conv(self.features, name="conv1", **kw)(h)
    t = layers.Dense(self.features, ("embed", "conv_out"), name="time_proj", **kw)(nn.silu(temb))
    h = h + t[:, None, None, :]
    h = nn.silu(group_norm(self.groups, self.eps, name="norm2", **kw)(h))
    h = conv(self.features, name="conv2", **kw)(h)
    if x.shape[-1] != self.features:
      x = conv(self.features, 1, name="shortcut", **kw)(x)
    return layers.constrain((x + h) / self.output_scale, SPATIAL)


class Downsample(nn.Module):
  """Stride-2 3x3 conv, padding 1 (diffusers ``Downsample2D(use_conv=True, padding=1)``)."""
  dtype: Any = jnp.float32
  param_dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    """x: [N, H, W, C] -> [N, ceil(H/2), ceil(W/2), C]."""
    return conv(x.shape[-1], 3, 2, name="conv", dtype=self.dtype, param_dtype=self.param_dtype)(x)


class Upsample(nn.Module):
  """Nearest-neighbour x2 then a 3x3 conv (diffusers ``Upsample2D(use_conv=True)``)."""
  dtype: Any = jnp.float32
  param_dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    """x: [N, H, W, C] -> [N, 2H, 2W, C]."""
    x = jnp.repeat(jnp.repeat(x, 2, axis=1), 2, axis=2)
    return conv(x.shape[-1], name="conv", dtype=self.dtype, param_dtype=self.param_dtype)(x)


class TransformerBlock(nn.Module):
  """diffusers ``BasicTransformerBlock`` (layer_norm, GEGLU): self-attn, cross-attn, feed-forward.

  q/k/v projections have no bias, the output projections do (``attention_bias=False``): the
  output bias lives beside the attention as ``attn{1,2}_out_bias``. Attention maps are sown by
  ``layers.Attention`` (``intermediates/.../attn1|attn2/attn_maps``, [N, heads, Lq, Lk]) only
  when asked for.
  """
  num_heads: int
  head_dim: int
  ff_mult: int = 4
  dtype: Any = jnp.float32
  param_dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array, ctx: jax.Array, mask: jax.Array | None) -> jax.Array:
    """x: [N, L, D]; ctx: [N, Lt, Dt]; mask: [N, Lt] bool or None -> [N, L, D]."""
    d = x.shape[-1]
    kw = dict(dtype=self.dtype, param_dtype=self.param_dtype)

    def attend(name, h, context=None, m=None):
      y = layers.Attention(self.num_heads, self.head_dim, out_features=d, use_bias=False,
                           name=name, **kw)(h, context, mask=m)
      b = self.param(f"{name}_out_bias", layers.named(layers.zeros, ("embed",)), (d,),
                     self.param_dtype)
      return y + b.astype(self.dtype)

    x = x + attend("attn1", layers.LayerNorm(1e-5, name="norm1", **kw)(x))
    x = x + attend("attn2", layers.LayerNorm(1e-5, name="norm2", **kw)(x), ctx, mask)
    h = layers.LayerNorm(1e-5, name="norm3", **kw)(x)
    inner = d * self.ff_mult
    h = layers.Dense(2 * inner, ("embed", "mlp"), name="ff_proj", **kw)(h)
    h, gate = jnp.split(h, 2, axis=-1)
    h = h * nn.gelu(gate, approximate=False)  # GEGLU with exact GELU
    return x + layers.Dense(d, ("mlp", "embed"), name="ff_out", **kw)(h)


class SpatialTransformer(nn.Module):
  """diffusers ``Transformer2DModel`` on continuous input, applied to every frame."""
  num_heads: int
  depth: int = 1
  groups: int = 32
  dtype: Any = jnp.float32
  param_dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array, ctx: jax.Array, mask: jax.Array | None = None) -> jax.Array:
    """x: [N, H, W, C]; ctx: [N, Lt, Dt]; mask: [N, Lt] -> [N, H, W, C]."""
    n, h, w, c = x.shape
    kw = dict(dtype=self.dtype, param_dtype=self.param_dtype)
    if c % self.num_heads:
      raise ValueError(f"{self.name}: {c} channels are not divisible by {self.num_heads} heads")
    y = group_norm(self.groups, 1e-6, name="norm", **kw)(x).reshape(n, h * w, c)
    y = layers.Dense(c, ("conv_in", "embed"), name="proj_in", **kw)(y)
    y = layers.constrain(y, ("batch", "length", "embed"))
    for i in range(self.depth):
      y = TransformerBlock(self.num_heads, c // self.num_heads, name=f"block_{i}", **kw)(
          y, ctx, mask)
    y = layers.Dense(c, ("embed", "conv_out"), name="proj_out", **kw)(y)
    return layers.constrain(x + y.reshape(n, h, w, c), SPATIAL)


class TemporalConv(nn.Module):
  """Residual 1-D conv over frames: ``x + Conv_t(SiLU(GroupNorm(x)))``, kernel 3, zero padding.

  The conv kernel ``[3, C, C]`` (names ``(None, conv_in, conv_out)``) and bias start at zero, so
  the layer is the identity at init. GroupNorm statistics run over (T, H, W) per video.
  """
  groups: int = 32
  eps: float = 1e-5
  dtype: Any = jnp.float32
  param_dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array, frames: int) -> jax.Array:
    """x: [B*T, H, W, C] (frames = T) -> same shape."""
    n, hh, ww, c = x.shape
    v = layers.constrain(x.reshape(n // frames, frames, hh, ww, c), VIDEO)
    h = nn.silu(group_norm(self.groups, self.eps, name="norm", dtype=self.dtype,
                           param_dtype=self.param_dtype)(v))
    h = jnp.pad(h, ((0, 0), (1, 1), (0, 0), (0, 0), (0, 0)))
    h = jnp.concatenate([h[:, k:k + frames] for k in range(3)], axis=-1)  # [B, T, H, W, 3C]
    kernel = self.param("kernel", layers.named(layers.zeros, (None, "conv_in", "conv_out")),
                        (3, c, c), self.param_dtype)
    bias = self.param("bias", layers.named(layers.zeros, ("conv_out",)), (c,), self.param_dtype)
    y = layers.matmul(h.astype(self.dtype), kernel.reshape(3 * c, c).astype(self.dtype))
    return x + (y + bias.astype(self.dtype)).reshape(n, hh, ww, c)


class TemporalAttention(nn.Module):
  """Residual self-attention over frames at every pixel, with fixed sin-cos frame positions.

  ``x + Attn(LN(x) + pos_t)`` over sequences ``[B*H*W, T, C]``; the output projection starts at
  zero (identity at init).
  """
  num_heads: int
  dtype: Any = jnp.float32
  param_dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array, frames: int) -> jax.Array:
    """x: [B*T, H, W, C] (frames = T) -> same shape."""
    n, hh, ww, c = x.shape
    kw = dict(dtype=self.dtype, param_dtype=self.param_dtype)
    v = layers.constrain(x.reshape(n // frames, frames, hh, ww, c), VIDEO)
    h = layers.LayerNorm(1e-5, name="norm", **kw)(v)
    h = h + jnp.asarray(layers.sincos_1d(c, np.arange(frames)), h.dtype)[None, :, None, None]
    h = h.transpose(0, 2, 3, 1, 4).reshape(-1, frames, c)  # [B*H*W, T, C]
    h = layers.Attention(self.num_heads, zero_out=True, name="attn", **kw)(h)
    h = h.reshape(n // frames, hh, ww, frames, c).transpose(0, 3, 1, 2, 4)
    return x + h.reshape(n, hh, ww, c)
