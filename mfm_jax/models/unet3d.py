"""3-D U-Net for video diffusion: a Stable-Diffusion U-Net with factorised temporal layers.

Per resolution level: ``layers_per_block`` x (``ResnetBlock`` (3x3 spatial convs, timestep
embedding) -> ``TemporalConv`` (kernel 3 over frames) -> in attention levels
``SpatialTransformer`` (self-attention, cross-attention to text tokens, GEGLU) ->
``TemporalAttention`` (self-attention over frames)), then a stride-2 downsample except at the last
level; a middle block (resnet, temporal conv, transformer, temporal attention, resnet, temporal
conv); the mirrored up path with ``layers_per_block + 1`` resnets per level, each taking the
channel concatenation ``[h, skip]`` of the matching down activation, and nearest x2 upsampling.
See ``models.unet_blocks`` for each block and its diffusers counterpart.

With ``T = 1`` it is an image U-Net, and with the temporal layers at their (identity) init it is
exactly diffusers' ``UNet2DConditionModel`` with ``down_block_types`` =
``CrossAttnDownBlock2D`` at attention levels, ``DownBlock2D`` elsewhere (mirrored ``UpBlock2D`` /
``CrossAttnUpBlock2D``), ``UNetMidBlock2DCrossAttn``, ``flip_sin_to_cos`` / ``freq_shift``
timestep features and ``TimestepEmbedding`` (width ``4 * block_out_channels[0]``). Weights of
such a model import with ``mfm_jax.convert.sd_unet``.

Variants decode from one table: ``decode_variant("SD")`` ->
``dict(block_out_channels=(320, 640, 1280, 1280), layers_per_block=2, num_heads=8,
attention_levels=(True, True, True, False))``.

Logical names: conv kernels ``(None, None, conv_in, conv_out)``, channel-wise params
``conv_out``, transformer projections ``embed / heads / kv / mlp``; activations ``(batch, height,
width, _)`` per frame and ``(batch, frames, height, width, _)`` in temporal layers.
"""
from __future__ import annotations

import math
from typing import Any, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from mfm_jax.models import layers
from mfm_jax.models import unet_blocks as ub

# name -> (block_out_channels, layers_per_block, num_heads, attention_levels)
VARIANTS = {
    "XS": ((32, 64), 1, 4, (True, False)),
    "S": ((64, 128, 256), 2, 4, (True, True, False)),
    "B": ((128, 256, 512, 512), 2, 8, (True, True, True, False)),
    "SD": ((320, 640, 1280, 1280), 2, 8, (True, True, True, False)),
}


def decode_variant(variant: str) -> dict[str, Any]:
  """``"SD"`` -> ``dict(block_out_channels, layers_per_block, num_heads, attention_levels)``."""
  if variant not in VARIANTS:
    raise ValueError(f"UNet3D variant {variant!r}: expected one of {sorted(VARIANTS)}")
  ch, n, heads, attn = VARIANTS[variant]
  return dict(block_out_channels=ch, layers_per_block=n, num_heads=heads, attention_levels=attn)


def timestep_features(t: jax.Array, dim: int, flip_sin_to_cos: bool = True,
                      freq_shift: float = 0.0, max_period: float = 10000.0) -> jax.Array:
  """diffusers ``get_timestep_embedding``: t: [B] -> [B, dim] float32.

  ``freqs_i = exp(-ln(max_period) * i / (dim / 2 - freq_shift))``; ``[sin, cos]`` halves, or
  ``[cos, sin]`` with ``flip_sin_to_cos``; an odd ``dim`` pads one zero column.
  """
  half = dim // 2
  freqs = jnp.exp(-math.log(max_period) * jnp.arange(half, dtype=jnp.float32) / (half - freq_shift))
  args = t.astype(jnp.float32)[:, None] * freqs[None]
  sin, cos = jnp.sin(args), jnp.cos(args)
  emb = jnp.concatenate([cos, sin] if flip_sin_to_cos else [sin, cos], axis=-1)
  return jnp.pad(emb, ((0, 0), (0, dim % 2)))


def _per_level(v: int | Sequence[Any], n: int, name: str) -> tuple[Any, ...]:
  v = (v,) * n if isinstance(v, (int, bool)) else tuple(v)
  if len(v) != n:
    raise ValueError(f"UNet3D.{name} needs one entry per level ({n}), got {v}")
  return v


class UNet3D(nn.Module):
  """Video (or, with T = 1, image) U-Net predicting the diffusion target.

  Attributes:
    out_channels: channels of the prediction (input channels come from ``x``).
    block_out_channels: width per level (the channel-multiplier table, e.g. (320, 640, 1280, 1280)).
    layers_per_block: resnets per down level (the up path has one more).
    attention_levels: per level, whether it has spatial transformers (and temporal attention).
    num_heads: attention heads (int or per level; the up path uses them reversed, the middle
      block the last one); head width = level channels / heads (diffusers' ``attention_head_dim``).
    transformer_depth: ``BasicTransformerBlock``s per transformer (int or per level).
    norm_groups, norm_eps: GroupNorm groups and epsilon of resnets / output norm.
    output_scale, mid_output_scale: resnet output divisors (diffusers'
      ``resnet_out_scale_factor`` / ``mid_block_scale_factor``).
    flip_sin_to_cos, freq_shift: timestep features (see ``timestep_features``).
    temporal: add the temporal conv / attention layers (False: a plain per-frame 2-D U-Net).
    remat_policy: ``none | full | dots | dots_no_batch`` on resnets and transformers.
  """
  out_channels: int = 4
  block_out_channels: Sequence[int] = (320, 640, 1280, 1280)
  layers_per_block: int = 2
  attention_levels: Sequence[bool] = (True, True, True, False)
  num_heads: int | Sequence[int] = 8
  transformer_depth: int | Sequence[int] = 1
  norm_groups: int = 32
  norm_eps: float = 1e-5
  output_scale: float = 1.0
  mid_output_scale: float = 1.0
  flip_sin_to_cos: bool = True
  freq_shift: float = 0.0
  temporal: bool = True
  remat_policy: str = "none"
  dtype: Any = jnp.float32
  param_dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array, t: jax.Array, text: jax.Array,
               text_mask: jax.Array | None = None,
               down_residuals: Sequence[jax.Array] | None = None,
               mid_residual: jax.Array | None = None) -> jax.Array:
    """Predicts the diffusion target.

    Args:
      x: [B, T, H, W, C] noisy video (pixels or latents); H, W divisible by 2^(levels - 1).
      t: [B] timesteps (any float; SD uses 0..999), or a scalar for the whole batch.
      text: [B, Lt, Dt] text token features for cross-attention.
      text_mask: [B, Lt] bool, True = real token (default: all real).
      down_residuals: ControlNet-style additions to every skip activation, in order
        (``[B, T, h, w, c]`` each, as diffusers' ``down_block_additional_residuals``).
      mid_residual: [B, T, h, w, c] added to the middle block output.

    Returns:
      [B, T, H, W, out_channels] float32.
    """
    b, frames, hh, ww, _ = x.shape
    chans = tuple(self.block_out_channels)
    levels = len(chans)
    attn = _per_level(self.attention_levels, levels, "attention_levels")
    heads = _per_level(self.num_heads, levels, "num_heads")
    depth = _per_level(self.transformer_depth, levels, "transformer_depth")
    if hh % 2 ** (levels - 1) or ww % 2 ** (levels - 1):
      raise ValueError(f"UNet3D: frame size {(hh, ww)} is not divisible by 2^{levels - 1}")
    kw = dict(dtype=self.dtype, param_dtype=self.param_dtype)
    gkw = dict(groups=self.norm_groups, eps=self.norm_eps, **kw)
    resnet = layers.remat(ub.ResnetBlock, self.remat_policy)
    transformer = layers.remat(ub.SpatialTransformer, self.remat_policy)
    per_frame = lambda a: jnp.repeat(a, frames, axis=0)  # noqa: E731  [B, ...] -> [B*T, ...]
    flat = lambda a: a.reshape(b * frames, *a.shape[2:])  # noqa: E731  [B, T, ...] -> [B*T, ...]

    t = jnp.broadcast_to(jnp.asarray(t, jnp.float32), (b,))
    temb = timestep_features(t, chans[0], self.flip_sin_to_cos, self.freq_shift)
    temb = layers.Dense(4 * chans[0], (None, "embed"), name="time_embed_1", **kw)(temb)
    temb = layers.Dense(4 * chans[0], ("mlp", "embed"), name="time_embed_2", **kw)(nn.silu(temb))
    temb = per_frame(temb)
    ctx = per_frame(text.astype(self.dtype))
    mask = None if text_mask is None else per_frame(text_mask.astype(bool))

    def stage(prefix, h, j, width, level_attn, n_heads, n_depth, scale):
      h = resnet(width, output_scale=scale, name=f"{prefix}resnet_{j}", **gkw)(h, temb)
      if self.temporal:
        h = ub.TemporalConv(name=f"{prefix}temporal_conv_{j}", **gkw)(h, frames)
      if level_attn:
        h = transformer(n_heads, n_depth, self.norm_groups, name=f"{prefix}attn_{j}", **kw)(
            h, ctx, mask)
        if self.temporal:
          h = ub.TemporalAttention(n_heads, name=f"{prefix}temporal_attn_{j}", **kw)(h, frames)
      return h

    h = ub.conv(chans[0], name="conv_in", **kw)(flat(x.astype(self.dtype)))
    skips = [h]
    for i in range(levels):
      for j in range(self.layers_per_block):
        h = stage(f"down_{i}_", h, j, chans[i], attn[i], heads[i], depth[i], self.output_scale)
        skips.append(h)
      if i < levels - 1:
        h = ub.Downsample(name=f"down_{i}_downsample", **kw)(h)
        skips.append(h)
    if down_residuals is not None:
      if len(down_residuals) != len(skips):
        raise ValueError(f"UNet3D: {len(down_residuals)} down_residuals, expected {len(skips)}")
      skips = [s + flat(r) for s, r in zip(skips, down_residuals)]

    h = resnet(chans[-1], output_scale=self.mid_output_scale, name="mid_resnet_0", **gkw)(h, temb)
    if self.temporal:
      h = ub.TemporalConv(name="mid_temporal_conv_0", **gkw)(h, frames)
    h = transformer(heads[-1], depth[-1], self.norm_groups, name="mid_attn_0", **kw)(h, ctx, mask)
    if self.temporal:
      h = ub.TemporalAttention(heads[-1], name="mid_temporal_attn_0", **kw)(h, frames)
    h = stage("mid_", h, 1, chans[-1], False, 0, 0, self.mid_output_scale)
    if mid_residual is not None:
      h = h + flat(mid_residual)

    for u, i in enumerate(reversed(range(levels))):
      for j in range(self.layers_per_block + 1):
        h = jnp.concatenate([h, skips.pop()], axis=-1)
        h = stage(f"up_{u}_", h, j, chans[i], attn[i], heads[i], depth[i], self.output_scale)
      if i > 0:
        h = ub.Upsample(name=f"up_{u}_upsample", **kw)(h)

    h = nn.silu(ub.group_norm(self.norm_groups, self.norm_eps, name="norm_out", **kw)(h))
    h = ub.conv(self.out_channels, name="conv_out", out_name=None, **kw)(h)
    return h.reshape(b, frames, hh, ww, self.out_channels).astype(jnp.float32)


def num_params(params: Any) -> int:
  """Total number of parameters in a (possibly boxed) parameter tree."""
  return sum(math.prod(a.shape) for a in jax.tree.leaves(nn.meta.unbox(params)))


def _taps(n: int, kernel: int, stride: int) -> int:
  """Multiply-adds along one axis of a conv with padding (kernel - 1) // 2 over an input of n,
  the zero padding excluded (as XLA counts): sum over outputs of the in-range taps."""
  pad = (kernel - 1) // 2
  out = (n + 2 * pad - kernel) // stride + 1
  return sum(1 for o in range(out) for j in range(kernel) if 0 <= o * stride - pad + j < n)


def flops_per_example(*, video_shape: Sequence[int], block_out_channels: Sequence[int],
                      layers_per_block: int, attention_levels: Sequence[bool],
                      out_channels: int, text_len: int = 0, text_dim: int = 0,
                      transformer_depth: int | Sequence[int] = 1, temporal: bool = True,
                      ff_mult: int = 4, **unused_model_args) -> int:
  """Analytic forward FLOPs (2 per multiply-add) of convolutions and matmuls for one example.

  Counts convs (3x3 with their zero padding excluded, 1x1 shortcuts, down / up samplers), every
  Dense (time MLP and projections, transformer q/k/v/out, GEGLU), attention scores and values,
  the temporal convs (padding frames included: a concatenation, not a conv) and temporal
  attention. Norms, activations and softmax are not counted (XLA's count adds them). A train
  step is ~3x this.

  Args:
    video_shape: (T, H, W, C) of one input (pixels or latents).
    block_out_channels, layers_per_block, attention_levels, transformer_depth, out_channels,
      temporal: as in ``UNet3D``; other model args (num_heads, norm_groups, remat_policy, dtype,
      ...) do not change the count and are accepted and ignored.
    text_len, text_dim: Lt and Dt of the text tokens for cross-attention.
  """
  del unused_model_args
  frames, hh, ww, cin = video_shape
  chans = tuple(block_out_channels)
  levels = len(chans)
  attn = _per_level(attention_levels, levels, "attention_levels")
  depth = _per_level(transformer_depth, levels, "transformer_depth")
  temb = 4 * chans[0]
  sizes = [(-(-hh // 2 ** i), -(-ww // 2 ** i)) for i in range(levels)]

  def conv(size, k, ci, co, stride=1):   # per frame; size = the input's (h, w)
    return 2 * _taps(size[0], k, stride) * _taps(size[1], k, stride) * ci * co

  def resnet(size, ci, co):
    f = conv(size, 3, ci, co) + conv(size, 3, co, co) + 2 * temb * co
    return f + (conv(size, 1, ci, co) if ci != co else 0)

  def transformer(size, c, n):
    hw = size[0] * size[1]
    block = 2 * hw * c * c * 4 + 4 * hw * hw * c                    # self-attention
    block += 2 * hw * c * c * 2 + 2 * text_len * text_dim * c * 2   # cross q, out; k, v of text
    block += 4 * hw * text_len * c
    block += 2 * hw * c * 2 * ff_mult * c + 2 * hw * ff_mult * c * c   # GEGLU
    return 2 * hw * c * c * 2 + n * block                           # proj_in / proj_out

  def temporal_layers(size, c, with_attn):
    if not temporal:
      return 0
    hw = size[0] * size[1]
    f = 2 * hw * 3 * c * c                                          # temporal conv, per frame
    return f + (2 * hw * c * c * 4 + 4 * hw * frames * c if with_attn else 0)

  def stage(size, ci, co, level_attn, n):
    f = resnet(size, ci, co) + temporal_layers(size, co, level_attn)
    return f + (transformer(size, co, n) if level_attn else 0)

  per_frame = conv(sizes[0], 3, cin, chans[0])
  skips, cur = [chans[0]], chans[0]
  for i in range(levels):
    for _ in range(layers_per_block):
      per_frame += stage(sizes[i], cur, chans[i], attn[i], depth[i])
      cur = chans[i]
      skips.append(cur)
    if i < levels - 1:
      per_frame += conv(sizes[i], 3, cur, cur, stride=2)
      skips.append(cur)
  per_frame += stage(sizes[-1], cur, cur, True, depth[-1]) + stage(sizes[-1], cur, cur, False, 0)
  for i in reversed(range(levels)):
    for _ in range(layers_per_block + 1):
      per_frame += stage(sizes[i], cur + skips.pop(), chans[i], attn[i], depth[i])
      cur = chans[i]
    if i > 0:
      per_frame += conv((2 * sizes[i][0], 2 * sizes[i][1]), 3, cur, cur)
  per_frame += conv(sizes[0], 3, cur, out_channels)
  return int(frames * per_frame + 2 * (chans[0] * temb + temb * temb))
