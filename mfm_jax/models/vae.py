"""KL video autoencoder (Stable-Diffusion VAE layout), applied frame by frame, optional temporal x2.

```
model = AutoencoderKL(block_out_channels=(128, 256, 512, 512), layers_per_block=2,
                      norm_num_groups=32)                           # SD VAE: spatial x8
params = model.init(rng, video)["params"]                           # video: [B, T, H, W, 3]
mean, logvar = model.apply({"params": params}, video, method=model.encode)
video_hat = model.apply({"params": params}, mean, method=model.decode)
z = encode_latents(model, params, video)        # [B, T', h, w, Z] = (mean - shift) * scale
video_hat = decode_latents(model, params, z)    # back to [B, T, H, W, 3]
```

Conventions (every one as diffusers' ``AutoencoderKL`` / ``Encoder`` / ``Decoder``, so that
``mfm_jax.convert.sd_vae`` loads its weights and the two agree within float32 rounding):

* Layout NHWC (diffusers: NCHW). Videos ``[B, T, H, W, C]`` fold T into the batch and run the 2-D
  network on every frame; 4-D inputs ``[B, H, W, C]`` are images.
* Spatial factor ``2 ** (len(block_out_channels) - 1)`` (x4 for 3 entries, x8 for 4): every block
  but the last ends with a downsample, a 3x3 stride-2 conv after zero padding (0, 1) on H and W
  (diffusers' ``Downsample2D(padding=0)``); the decoder doubles with nearest-neighbour then a 3x3
  conv (``Upsample2D``). Encoder blocks hold ``layers_per_block`` resnets, decoder blocks one more.
* ResNet block: ``x + conv2(silu(gn2(conv1(silu(gn1(x))))))``, a 1x1 ``conv_shortcut`` when the
  width changes; GroupNorm with ``norm_num_groups`` groups and eps 1e-6 everywhere.
* Mid block: resnet, single-head self-attention over the ``h * w`` positions with a GroupNorm
  before it and a residual around it (scale ``C ** -0.5``, softmax in float32), resnet.
* ``quant_conv`` (1x1, 2Z -> 2Z) after the encoder, ``post_quant_conv`` (1x1, Z -> Z) before the
  decoder. The posterior is the diagonal Gaussian ``mean, logvar = split(moments)``, logvar
  clipped to [-30, 20] (``DiagonalGaussianDistribution``).
* Latents for a diffusion model: ``(z - shift_factor) * scaling_factor`` (SD 1.x: 0.18215, 0).

Temporal x2 (``temporal_downsample=True``, off by default): the encoder halves T after its last
down block (before the mid block) with a conv over frames (kernel 3, stride 2, zero padding 1 on
each side: latent frame t sees frames 2t-1, 2t, 2t+1), initialised to the mean of frames 2t and
2t+1; the decoder, after its mid block, repeats every latent frame twice (nearest) and applies a
conv over frames (kernel 3, padding 1) initialised to the identity. Both act per pixel and per
channel position (kernels ``[3, C, C]``). T must be even. A 2-D import (``sd_vae.load``) fills
every spatial layer and leaves these two at their initialisation, so the imported model starts as
"2-D VAE per frame, then pairwise frame averaging".
"""
from __future__ import annotations

from typing import Any, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from mfm_jax.models.layers import core

LOGVAR_RANGE = (-30.0, 20.0)
NORM_EPS = 1e-6
CONV_NAMES = (None, None, "conv_in", "conv_out")
TIME_NAMES = (None, "conv_in", "conv_out")


def temporal_down_init(key, shape, dtype=jnp.float32):
  """``[3, C, C]``: taps (2t-1, 2t, 2t+1) = (0, I/2, I/2), the mean of a frame pair."""
  del key
  eye = np.eye(shape[1], shape[2], dtype=np.float32)
  return jnp.asarray(np.stack([0 * eye, 0.5 * eye, 0.5 * eye]), dtype)


def temporal_up_init(key, shape, dtype=jnp.float32):
  """``[3, C, C]``: the identity on the centre tap (a repeated frame passes unchanged)."""
  del key
  eye = np.eye(shape[1], shape[2], dtype=np.float32)
  return jnp.asarray(np.stack([0 * eye, eye, 0 * eye]), dtype)


def _conv(features: int, kernel: int, name: str | None, dtype: Any, param_dtype: Any, stride: int = 1,
          padding: Any = None) -> nn.Conv:
  p = kernel // 2 if padding is None else padding
  return nn.Conv(features, (kernel, kernel), strides=(stride, stride),
                 padding=((p, p), (p, p)) if isinstance(p, int) else p,
                 kernel_init=core.named(nn.initializers.lecun_normal(), CONV_NAMES),
                 bias_init=core.named(core.zeros, ("conv_out",)), dtype=dtype,
                 param_dtype=param_dtype, name=name)


def _norm(groups: int, name: str, dtype: Any, param_dtype: Any) -> nn.GroupNorm:
  return nn.GroupNorm(num_groups=groups, epsilon=NORM_EPS, use_fast_variance=False,
                      scale_init=core.named(core.ones, ("conv_out",)),
                      bias_init=core.named(core.zeros, ("conv_out",)), dtype=dtype,
                      param_dtype=param_dtype, name=name)


class ResnetBlock(nn.Module):
  """``x: [N, H, W, Cin] -> [N, H, W, features]`` (diffusers ``ResnetBlock2D`` without temb)."""
  features: int
  groups: int
  dtype: Any = jnp.float32
  param_dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x):
    kw = dict(dtype=self.dtype, param_dtype=self.param_dtype)
    h = nn.silu(_norm(self.groups, "norm1", **kw)(x))
    h = _conv(self.features, 3, "conv1", **kw)(h)
    h = nn.silu(_norm(self.groups, "norm2", **kw)(h))
    h = _conv(self.features, 3, "conv2", **kw)(h)
    if x.shape[-1] != self.features:
      x = _conv(self.features, 1, "conv_shortcut", **kw)(x)
    return x + h


class MidBlock(nn.Module):
  """resnet -> GroupNorm + single-head self-attention (residual) -> resnet; ``[N, H, W, C]``."""
  groups: int
  attention: bool = True
  dtype: Any = jnp.float32
  param_dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x):
    kw = dict(dtype=self.dtype, param_dtype=self.param_dtype)
    n, h, w, c = x.shape
    x = ResnetBlock(c, self.groups, name="resnet_0", **kw)(x)
    if self.attention:
      t = _norm(self.groups, "attn_norm", **kw)(x).reshape(n, h * w, c)
      t = core.Attention(1, name="attn", **kw)(t)
      x = x + t.reshape(n, h, w, c)
    return ResnetBlock(c, self.groups, name="resnet_1", **kw)(x)


class TemporalConv(nn.Module):
  """A conv over frames, per pixel: ``[B, T, H, W, C] -> [B, T', H, W, C]``.

  ``down``: kernel 3, stride 2, padding (1, 1), T' = T / 2, init ``temporal_down_init``;
  otherwise: frames repeated x2 (nearest), kernel 3, padding (1, 1), T' = 2T, init
  ``temporal_up_init``. Kernel ``[3, C, C]`` named ``(None, conv_in, conv_out)``.
  """
  down: bool
  dtype: Any = jnp.float32
  param_dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x):
    if self.down and x.shape[1] % 2:
      raise ValueError(f"{self.name}: temporal downsampling needs an even frame count, got "
                       f"T={x.shape[1]}")
    if not self.down:
      x = jnp.repeat(x, 2, axis=1)
    init = temporal_down_init if self.down else temporal_up_init
    y = nn.Conv(x.shape[-1], (3,), strides=(2 if self.down else 1,), padding=((1, 1),),
                kernel_init=core.named(init, TIME_NAMES),
                bias_init=core.named(core.zeros, ("conv_out",)), dtype=self.dtype,
                param_dtype=self.param_dtype, name="conv")(jnp.moveaxis(x, 1, 3))
    return jnp.moveaxis(y, 3, 1)  # conv over the T axis moved next to C: [B, H, W, T, C]


class Encoder(nn.Module):
  """``x: [N, H, W, in] -> moments [N', H / f, W / f, 2Z]`` (N' = N / 2 with temporal x2)."""
  block_out_channels: Sequence[int]
  layers_per_block: int
  latent_channels: int
  groups: int
  mid_attention: bool = True
  temporal_downsample: bool = False
  dtype: Any = jnp.float32
  param_dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x, num_frames: int | None = None):
    kw = dict(dtype=self.dtype, param_dtype=self.param_dtype)
    chans = tuple(self.block_out_channels)
    x = _conv(chans[0], 3, "conv_in", **kw)(x)
    for i, c in enumerate(chans):
      for j in range(self.layers_per_block):
        x = ResnetBlock(c, self.groups, name=f"down_{i}_resnet_{j}", **kw)(x)
      if i < len(chans) - 1:
        x = jnp.pad(x, ((0, 0), (0, 1), (0, 1), (0, 0)))
        x = _conv(c, 3, f"down_{i}_downsample", stride=2, padding=0, **kw)(x)
    if self.temporal_downsample:
      x = _fold(TemporalConv(True, name="temporal_down", **kw), x, num_frames)
    x = MidBlock(self.groups, self.mid_attention, name="mid", **kw)(x)
    x = nn.silu(_norm(self.groups, "norm_out", **kw)(x))
    return _conv(2 * self.latent_channels, 3, "conv_out", **kw)(x)


class Decoder(nn.Module):
  """``z: [N, h, w, Z] -> [N', h * f, w * f, out]`` (N' = 2N with temporal x2)."""
  block_out_channels: Sequence[int]
  layers_per_block: int
  out_channels: int
  groups: int
  mid_attention: bool = True
  temporal_downsample: bool = False
  dtype: Any = jnp.float32
  param_dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, z, num_frames: int | None = None):
    kw = dict(dtype=self.dtype, param_dtype=self.param_dtype)
    chans = tuple(reversed(self.block_out_channels))
    x = _conv(chans[0], 3, "conv_in", **kw)(z)
    x = MidBlock(self.groups, self.mid_attention, name="mid", **kw)(x)
    if self.temporal_downsample:
      x = _fold(TemporalConv(False, name="temporal_up", **kw), x, num_frames)
    for i, c in enumerate(chans):
      for j in range(self.layers_per_block + 1):
        x = ResnetBlock(c, self.groups, name=f"up_{i}_resnet_{j}", **kw)(x)
      if i < len(chans) - 1:
        x = jnp.repeat(jnp.repeat(x, 2, axis=1), 2, axis=2)
        x = _conv(c, 3, f"up_{i}_upsample", **kw)(x)
    x = nn.silu(_norm(self.groups, "norm_out", **kw)(x))
    return _conv(self.out_channels, 3, "conv_out", **kw)(x)


def _fold(fn, x, num_frames):
  """Applies a ``[B, T, ...]`` module to frame-folded ``x: [B * T, ...]``; returns folded."""
  if not num_frames:
    raise ValueError("temporal_downsample needs videos [B, T, H, W, C] (got frames without T)")
  y = fn(x.reshape(-1, num_frames, *x.shape[1:]))
  return y.reshape(-1, *y.shape[2:])


class AutoencoderKL(nn.Module):
  """KL autoencoder on images ``[B, H, W, C]`` or videos ``[B, T, H, W, C]`` (see module doc).

  Attributes follow diffusers' ``AutoencoderKL`` config names; ``mid_attention`` is its
  ``mid_block_add_attention``; ``temporal_downsample`` adds the temporal x2 pair.
  """
  in_channels: int = 3
  out_channels: int = 3
  block_out_channels: Sequence[int] = (64,)
  layers_per_block: int = 1
  latent_channels: int = 4
  norm_num_groups: int = 32
  mid_attention: bool = True
  use_quant_conv: bool = True
  use_post_quant_conv: bool = True
  temporal_downsample: bool = False
  scaling_factor: float = 0.18215
  shift_factor: float = 0.0
  dtype: Any = jnp.float32
  param_dtype: Any = jnp.float32

  def setup(self):
    kw = dict(dtype=self.dtype, param_dtype=self.param_dtype)
    arch = dict(block_out_channels=tuple(self.block_out_channels),
                layers_per_block=self.layers_per_block, groups=self.norm_num_groups,
                mid_attention=self.mid_attention, temporal_downsample=self.temporal_downsample)
    self.encoder = Encoder(latent_channels=self.latent_channels, **arch, **kw)
    self.decoder = Decoder(out_channels=self.out_channels, **arch, **kw)
    z = self.latent_channels
    if self.use_quant_conv:
      self.quant_conv = _conv(2 * z, 1, None, **kw)   # named by the attribute
    if self.use_post_quant_conv:
      self.post_quant_conv = _conv(z, 1, None, **kw)

  @property
  def spatial_factor(self) -> int:
    return 2 ** (len(self.block_out_channels) - 1)

  @property
  def temporal_factor(self) -> int:
    return 2 if self.temporal_downsample else 1

  def encode(self, x):
    """``x: [B, (T,) H, W, C]`` in [-1, 1] -> ``(mean, logvar)``, each ``[B, (T / tf,) h, w, Z]``."""
    video = x.ndim == 5
    if not video and x.ndim != 4:
      raise ValueError(f"AutoencoderKL.encode: expected [B, H, W, C] or [B, T, H, W, C], got "
                       f"shape {x.shape}")
    b = x.shape[0]
    t = x.shape[1] if video else None
    frames = x.reshape(-1, *x.shape[-3:])
    moments = self.encoder(frames, t)
    if self.use_quant_conv:
      moments = self.quant_conv(moments)
    mean, logvar = jnp.split(moments, 2, axis=-1)
    logvar = jnp.clip(logvar, *LOGVAR_RANGE)
    if video:
      mean, logvar = (a.reshape(b, -1, *a.shape[1:]) for a in (mean, logvar))
    return mean, logvar

  def decode(self, z):
    """``z: [B, (T',) h, w, Z]`` (unscaled) -> ``[B, (T' * tf,) H, W, out]``."""
    video = z.ndim == 5
    b = z.shape[0]
    t = z.shape[1] if video else None
    frames = z.reshape(-1, *z.shape[-3:])
    if self.use_post_quant_conv:
      frames = self.post_quant_conv(frames)
    x = self.decoder(frames, t)
    return x.reshape(b, -1, *x.shape[1:]) if video else x

  def __call__(self, x, rng: jax.Array | None = None):
    """``(reconstruction, mean, logvar)``; decodes a posterior sample when ``rng`` is given,
    else the mean."""
    mean, logvar = self.encode(x)
    z = mean if rng is None else sample(rng, mean, logvar)
    return self.decode(z), mean, logvar


def sample(rng: jax.Array, mean: jax.Array, logvar: jax.Array) -> jax.Array:
  """A draw of the diagonal Gaussian posterior: ``mean + exp(logvar / 2) * eps``."""
  return mean + jnp.exp(0.5 * logvar) * jax.random.normal(rng, mean.shape, mean.dtype)


def kl(mean: jax.Array, logvar: jax.Array) -> jax.Array:
  """KL(N(mean, exp(logvar)) || N(0, 1)) per element (diffusers sums it over C, H, W)."""
  return 0.5 * (jnp.square(mean) + jnp.exp(logvar) - 1.0 - logvar)


def encode_latents(model: AutoencoderKL, params: Any, video: jax.Array,
                   rng: jax.Array | None = None) -> jax.Array:
  """Video ``[B, T, H, W, C]`` in [-1, 1] -> diffusion latents ``[B, T', h, w, Z]``:
  ``(z - shift_factor) * scaling_factor``, z the posterior mean (or a draw with ``rng``)."""
  mean, logvar = model.apply({"params": params}, video, method=model.encode)
  z = mean if rng is None else sample(rng, mean, logvar)
  return (z - model.shift_factor) * model.scaling_factor


def decode_latents(model: AutoencoderKL, params: Any, latents: jax.Array) -> jax.Array:
  """Diffusion latents ``[B, T', h, w, Z]`` -> video ``[B, T, H, W, C]`` (not clipped)."""
  z = latents / model.scaling_factor + model.shift_factor
  return model.apply({"params": params}, z, method=model.decode)


def latent_shape(model: AutoencoderKL, video_shape: Sequence[int]) -> tuple[int, ...]:
  """``[B, T, H, W, C]`` -> the latent shape ``[B, T / tf, H / f, W / f, Z]``."""
  b, t, h, w, _ = video_shape
  f, tf = model.spatial_factor, model.temporal_factor
  if h % f or w % f or t % tf:
    raise ValueError(f"video {tuple(video_shape)} does not divide by the autoencoder's factors "
                     f"(T / {tf}, H / {f}, W / {f})")
  return (b, t // tf, h // f, w // f, model.latent_channels)
