"""Video embeddings and conditioning: tubelets, timesteps, adaLN-Zero, 3-D positions."""
from __future__ import annotations

import math
from typing import Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from mfm_jax.models.layers.core import Dense, Dtype, fan_avg_init, matmul, named, zeros


def patchify(x: jax.Array, patch: Sequence[int]) -> jax.Array:
  """x: [B, T, H, W, C] -> [B, T/pt, H/ph, W/pw, pt*ph*pw*C] (row-major over pt, ph, pw, C)."""
  b, t, h, w, c = x.shape
  pt, ph, pw = patch
  if t % pt or h % ph or w % pw:
    raise ValueError(f"video {x.shape[1:4]} is not divisible by patch {tuple(patch)}")
  x = x.reshape(b, t // pt, pt, h // ph, ph, w // pw, pw, c)
  x = x.transpose(0, 1, 3, 5, 2, 4, 6, 7)
  return x.reshape(b, t // pt, h // ph, w // pw, pt * ph * pw * c)


def unpatchify(x: jax.Array, patch: Sequence[int]) -> jax.Array:
  """Inverse of ``patchify``: [B, T', H', W', pt*ph*pw*C] -> [B, T'*pt, H'*ph, W'*pw, C]."""
  b, t, h, w, f = x.shape
  pt, ph, pw = patch
  c = f // (pt * ph * pw)
  x = x.reshape(b, t, h, w, pt, ph, pw, c).transpose(0, 1, 4, 2, 5, 3, 6, 7)
  return x.reshape(b, t * pt, h * ph, w * pw, c)


class TubeletEmbed(nn.Module):
  """Video patchify + linear projection (a Conv3D with stride = kernel = patch).

  The kernel is stored conv-shaped ``[pt, ph, pw, C, D]`` (names ``(None, None, None, conv_in,
  embed)``) so that Conv3D checkpoints convert by a transpose only.
  """
  features: int
  patch: tuple[int, int, int]
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32
  flat: bool = True
  use_bias: bool = True

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    """x: [B, T, H, W, C] -> [B, T/pt, H/ph, W/pw, D]."""
    pt, ph, pw = self.patch
    shape = (pt, ph, pw, x.shape[-1], self.features)
    kernel = self.param("kernel", named(fan_avg_init(4, 5), (None, None, None, "conv_in",
                                                               "embed")), shape, self.param_dtype)
    p = patchify(x.astype(self.dtype), self.patch)
    y = matmul(p, kernel.reshape(-1, self.features).astype(self.dtype), 1, self.flat)
    if not self.use_bias:  # e.g. CLIP's bias-free patch embedding
      return y
    bias = self.param("bias", named(zeros, ("embed",)), (self.features,), self.param_dtype)
    return y + bias.astype(self.dtype)


def timestep_sinusoid(t: jax.Array, dim: int = 256, max_period: float = 10000.0) -> jax.Array:
  """DiT/ADM sinusoidal features ``[cos, sin]``: t: [B] float -> [B, dim] float32."""
  half = dim // 2
  freqs = jnp.exp(-math.log(max_period) * jnp.arange(half, dtype=jnp.float32) / half)
  args = t.astype(jnp.float32)[:, None] * freqs[None]
  emb = jnp.concatenate([jnp.cos(args), jnp.sin(args)], axis=-1)
  return jnp.pad(emb, ((0, 0), (0, dim % 2)))


class TimestepEmbed(nn.Module):
  """Sinusoidal timestep features followed by an MLP (Dense, SiLU, Dense).

  ``t`` is a float timestep in [0, 1000] (the DiT scale); continuous-time objectives in [0, 1]
  scale by 1000 before calling.
  """
  features: int
  freq_dim: int = 256
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, t: jax.Array) -> jax.Array:
    """t: [B] -> [B, features]."""
    kw = dict(dtype=self.dtype, param_dtype=self.param_dtype,
              kernel_init=nn.initializers.normal(0.02))
    h = Dense(self.features, (None, "embed"), name="fc1", **kw)(
        timestep_sinusoid(t, self.freq_dim))
    return Dense(self.features, ("mlp", "embed"), name="fc2", **kw)(nn.silu(h))


class AdaLNModulation(nn.Module):
  """adaLN-Zero: ``SiLU(c) -> Dense(chunks * D)``, zero-initialised, split into chunks.

  With zero init every shift/scale/gate starts at 0: ``modulate`` is then the plain norm and a
  gated residual branch adds nothing, so each block starts as the identity.
  """
  chunks: int
  features: int
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, c: jax.Array) -> list[jax.Array]:
    """c: [B, Dc] -> ``chunks`` arrays [B, 1, D] (broadcast over tokens)."""
    y = Dense(self.chunks * self.features, ("embed", "mlp"), kernel_init=zeros,
              dtype=self.dtype, param_dtype=self.param_dtype, name="proj")(nn.silu(c))
    return jnp.split(y[:, None, :], self.chunks, axis=-1)


def modulate(x: jax.Array, shift: jax.Array, scale: jax.Array) -> jax.Array:
  """x: [B, L, D]; shift, scale: [B, 1, D] -> ``x * (1 + scale) + shift``."""
  return x * (1 + scale) + shift


def sincos_1d(dim: int, pos: np.ndarray) -> np.ndarray:
  """pos: [M] -> [M, dim] (``[sin, cos]`` halves, MAE convention); dim must be even."""
  omega = 1.0 / 10000 ** (np.arange(dim // 2, dtype=np.float64) / (dim / 2.0))
  out = np.outer(pos.reshape(-1).astype(np.float64), omega)
  return np.concatenate([np.sin(out), np.cos(out)], axis=1)


def sincos_3d(dim: int, grid: Sequence[int]) -> np.ndarray:
  """Fixed 3-D sin-cos table for a (T', H', W') token grid -> [T', H', W', dim] float32.

  Channels split as ``[time | height | width]`` with ``2 * (dim // 6)`` each for height and
  width and the (even) rest for time.
  """
  if dim % 2:
    raise ValueError(f"sincos_3d needs an even width, got {dim}")
  d_hw = 2 * (dim // 6)
  d_t = dim - 2 * d_hw
  t, h, w = grid
  tt, hh, ww = np.meshgrid(np.arange(t), np.arange(h), np.arange(w), indexing="ij")
  emb = np.concatenate([sincos_1d(d_t, tt), sincos_1d(d_hw, hh), sincos_1d(d_hw, ww)], axis=1)
  return emb.reshape(t, h, w, dim).astype(np.float32)


class PosEmbed3D(nn.Module):
  """Adds 3-D position embeddings to a token grid: ``"sincos"`` (fixed) or ``"learned"``."""
  kind: str = "sincos"
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    """x: [B, T', H', W', D] -> same shape."""
    grid, d = x.shape[1:4], x.shape[-1]
    if self.kind == "sincos":
      pos = jnp.asarray(sincos_3d(d, grid))
    elif self.kind == "learned":
      pos = self.param("pos", named(nn.initializers.normal(0.02),
                                    ("frames", "height", "width", "embed")),
                       (*grid, d), self.param_dtype)
    else:
      raise ValueError(f"pos_embed must be 'sincos' or 'learned', got {self.kind!r}")
    return x + pos.astype(self.dtype)[None]
