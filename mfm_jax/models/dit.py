"""Video DiT: a diffusion transformer over tubelet tokens, conditioned on time and text.

Conditioning follows DiT (Peebles & Xie, 2023) and PixArt-alpha: the timestep embedding plus the
pooled text embedding drive adaLN-Zero modulation (shift / scale / gate) of every attention and
MLP branch; text tokens enter through cross-attention in every block (its output projection is
zero-initialised, so with the zero gates every block starts as the identity); the final layer is
zero-initialised, so the model outputs exactly zero at init.

Attention is ``"full"`` (one self-attention over all T'*H'*W' tokens) or ``"factorized"``
(spatial attention within each frame, then temporal attention per spatial location, each with its
own adaLN-Zero branch).

Variants decode from one table: ``decode_variant("B/2")`` ->
``dict(width=768, depth=12, num_heads=12, patch=2)`` (``patch`` = spatial patch size).
"""
from __future__ import annotations

import math
from typing import Any, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from mfm_jax.models import layers

# name -> (width, depth, num_heads)
VARIANTS = {
    "XS": (128, 4, 4),
    "Ti": (192, 12, 3),
    "S": (384, 12, 6),
    "B": (768, 12, 12),
    "L": (1024, 24, 16),
    "XL": (1152, 28, 16),
}


def decode_variant(variant: str, *, width: int | None = None, depth: int | None = None,
                   num_heads: int | None = None) -> dict[str, int]:
  """``"S/2"`` -> ``dict(width, depth, num_heads, patch)``; explicit arguments override."""
  name, sep, patch = variant.partition("/")
  if name not in VARIANTS or not sep or not patch.isdigit():
    raise ValueError(f"DiT variant {variant!r}: expected '<{'|'.join(VARIANTS)}>/<patch>', "
                     "e.g. 'S/2'")
  w, d, h = VARIANTS[name]
  return dict(width=width or w, depth=depth or d, num_heads=num_heads or h, patch=int(patch))


class DiTBlock(nn.Module):
  """One DiT block on a flattened token grid.

  Attributes:
    grid: the token grid (T', H', W'); L = T' * H' * W'.
    scanned: return ``(x, None)`` (the ``nn.scan`` carry form) instead of ``x``.
  """
  num_heads: int
  grid: tuple[int, int, int]
  mlp_ratio: float = 4.0
  attention: str = "full"
  cross_attention: bool = True
  dtype: Any = jnp.float32
  param_dtype: Any = jnp.float32
  flat: bool = True
  scanned: bool = False
  cross_peft: Any = None

  @nn.compact
  def __call__(self, x: jax.Array, c: jax.Array, text: jax.Array | None,
               text_mask: jax.Array | None, text_values: jax.Array | None = None,
               control: jax.Array | None = None):
    """x: [B, L, D]; c: [B, D]; text: [B, Lt, D]; text_mask: [B, Lt] bool; text_values:
    [B, Lt, D] values of the cross-attention (None = ``text``); control: [B, L, D] residual
    tokens added to the block's output (a control branch; None = none) -> [B, L, D]."""
    b, l, d = x.shape
    t, h, w = self.grid
    kw = dict(dtype=self.dtype, param_dtype=self.param_dtype)
    if self.attention == "full":
      branches = ("attn",)
    elif self.attention == "factorized":
      branches = ("spatial_attn", "temporal_attn")
    else:
      raise ValueError(f"attention must be 'full' or 'factorized', got {self.attention!r}")
    x = layers.constrain(x, ("batch", "length", "embed"))
    mods = layers.AdaLNModulation(3 * (len(branches) + 1), d, name="adaln", **kw)(c)

    def norm(name):
      return layers.LayerNorm(use_scale=False, use_bias=False, name=name, **kw)

    for i, name in enumerate(branches):
      shift, scale, gate = mods[3 * i:3 * i + 3]
      y = layers.modulate(norm(f"norm_{name}")(x), shift, scale)
      attn = layers.Attention(self.num_heads, flat=self.flat, name=name, **kw)
      if name == "attn":
        y = attn(y)
      elif name == "spatial_attn":  # [B*T', H'W', D]
        y = attn(y.reshape(b * t, h * w, d)).reshape(b, l, d)
      else:  # temporal: [B*H'W', T', D]
        y = y.reshape(b, t, h * w, d).transpose(0, 2, 1, 3).reshape(b * h * w, t, d)
        y = attn(y).reshape(b, h * w, t, d).transpose(0, 2, 1, 3).reshape(b, l, d)
      x = x + gate * y
    if self.cross_attention:
      y = layers.LayerNorm(name="norm_cross", **kw)(x)
      x = x + layers.Attention(self.num_heads, zero_out=True, flat=self.flat,
                               peft=self.cross_peft, name="cross_attn", **kw)(
                                   y, text, mask=text_mask, value_context=text_values)
    shift, scale, gate = mods[-3:]
    y = layers.modulate(norm("norm_mlp")(x), shift, scale)
    x = x + gate * layers.Mlp(int(d * self.mlp_ratio), flat=self.flat, name="mlp", **kw)(y)
    if control is not None:
      x = x + control.astype(x.dtype)
    x = layers.constrain(x, ("batch", "length", "embed"))
    return (x, None) if self.scanned else x


class VideoDiT(nn.Module):
  """Diffusion transformer for video (pixels or latents).

  Attributes:
    out_channels: channels of the prediction (e.g. C for eps / v, 2C with a learned variance).
    width, depth, num_heads, mlp_ratio: transformer size (see ``VARIANTS``).
    patch_size: tubelet (pt, ph, pw).
    attention: ``"full"`` or ``"factorized"`` (spatial then temporal in each block).
    cross_attention: text tokens through cross-attention in every block.
    scan_blocks: ``nn.scan`` over blocks; params stacked under ``blocks`` on a leading axis with
      logical name ``"layers"`` (unmapped -> replicated). Otherwise ``block_0 .. block_{n-1}``.
    remat_policy: ``none | full | dots | dots_no_batch`` (see ``layers.remat``).
    pos_embed: ``"sincos"`` (fixed 3-D table) or ``"learned"``.
    flat: 2-D matmuls in the hot paths (faster on CPU); False keeps batched einsums.
    motion_levels: L > 0 adds a motion-intensity embedding (Mojito): a zero-initialised table
      ``motion_embed`` [L + 1, D] indexed by the call's ``motion_level`` (levels 0 .. L-1, L = the
      null level) and added to the timestep embedding; 0 = off (no parameter).
    cross_peft: a ``peft.PeftConfig`` with method ``lora`` (or None): LoRA on the cross-attention
      projections of every block (Discffusion); parameters ``peft_*`` under ``cross_attn``.
  """
  out_channels: int
  width: int = 384
  depth: int = 12
  num_heads: int = 6
  mlp_ratio: float = 4.0
  patch_size: tuple[int, int, int] = (1, 2, 2)
  attention: str = "full"
  cross_attention: bool = True
  scan_blocks: bool = False
  remat_policy: str = "none"
  pos_embed: str = "sincos"
  dtype: Any = jnp.float32
  param_dtype: Any = jnp.float32
  flat: bool = True
  motion_levels: int = 0
  cross_peft: Any = None

  @nn.compact
  def __call__(self, x: jax.Array, t: jax.Array, text: jax.Array | None = None,
               text_mask: jax.Array | None = None,
               pooled: jax.Array | None = None,
               motion_level: jax.Array | None = None,
               text_values: jax.Array | None = None,
               control: jax.Array | None = None) -> jax.Array:
    """Predicts the diffusion target.

    Args:
      x: [B, T, H, W, C] noisy video (pixels or latents); T, H, W divisible by the patch.
      t: [B] float timesteps in [0, 1000].
      text: [B, Lt, Dt] text token features (required with ``cross_attention``).
      text_mask: [B, Lt] bool, True = real token (default: all real).
      pooled: [B, Dt] pooled text embedding, added to the timestep embedding (optional).
      motion_level: [B] int in [0, motion_levels] (``motion_levels`` = null); None = null.
      text_values: [B, S, Lt, Dt] S token sequences aligned with ``text`` whose projections,
        averaged over S, are the cross-attention values while the keys come from ``text``
        (StructureDiffusion); None = plain cross-attention.
      control: [depth, B, L, D] residual tokens added after each block (L = T'*H'*W' tokens of
        ``x``), e.g. a control branch's outputs (``models/control.py``); None = no control.

    Returns:
      [B, T, H, W, out_channels] float32.
    """
    b = x.shape[0]
    d = self.width
    kw = dict(dtype=self.dtype, param_dtype=self.param_dtype)
    tok = layers.TubeletEmbed(d, tuple(self.patch_size), flat=self.flat, name="patch_embed",
                              **kw)(x)
    tok = layers.PosEmbed3D(self.pos_embed, name="pos_embed", **kw)(tok)
    grid = tuple(tok.shape[1:4])
    tok = tok.reshape(b, -1, d)

    c = layers.TimestepEmbed(d, name="t_embed", **kw)(t)
    if pooled is not None:
      p = layers.Dense(d, ("embed", "mlp"), name="pooled_fc1", **kw)(pooled)
      c = c + layers.Dense(d, ("mlp", "embed"), name="pooled_fc2", **kw)(nn.silu(p))
    if self.motion_levels:
      table = self.param("motion_embed", layers.named(layers.zeros, (None, "embed")),
                         (self.motion_levels + 1, d), self.param_dtype)
      level = (jnp.full((b,), self.motion_levels, jnp.int32) if motion_level is None
               else jnp.asarray(motion_level, jnp.int32))
      c = c + jnp.take(table, level, axis=0).astype(c.dtype)
    ctx = mask = vals = None
    if self.cross_peft is not None and getattr(self.cross_peft, "method", "none") not in (
        "none", "lora"):
      raise ValueError(f"VideoDiT.cross_peft: only LoRA is supported, got "
                       f"{self.cross_peft.method!r}")
    if self.cross_attention:
      if text is None:
        raise ValueError("VideoDiT(cross_attention=True) needs text tokens [B, Lt, Dt]")
      text_proj = layers.Mlp(d, d, flat=self.flat, name="text_proj", **kw)
      ctx = layers.constrain(text_proj(text), ("batch", "length", "embed"))
      mask = jnp.ones(text.shape[:2], bool) if text_mask is None else text_mask.astype(bool)
      if text_values is not None:
        if text_values.ndim != 4 or text_values.shape[0] != b or (
            text_values.shape[2:] != text.shape[1:]):
          raise ValueError(f"text_values must be [B, S, Lt, Dt] = [{b}, S, "
                           f"{', '.join(map(str, text.shape[1:]))}], got {text_values.shape}")
        vals = text_proj(text_values).mean(axis=1)   # linear maps after: mean of outputs
        vals = layers.constrain(vals, ("batch", "length", "embed"))

    if control is not None and control.shape != (self.depth,) + tok.shape:
      raise ValueError(f"control must be [depth, B, L, D] = {(self.depth,) + tok.shape}, got "
                       f"{control.shape}")
    block_kw = dict(num_heads=self.num_heads, grid=grid, mlp_ratio=self.mlp_ratio,
                    attention=self.attention, cross_attention=self.cross_attention,
                    flat=self.flat, cross_peft=self.cross_peft, **kw)
    if self.scan_blocks:
      block = layers.remat(DiTBlock, self.remat_policy, prevent_cse=False)
      extra = () if control is None else (control,)   # scanned over its leading depth axis
      stack = nn.scan(block, variable_axes={"params": 0, "intermediates": 0, "attn_logits": 0},
                      split_rngs={"params": True}, in_axes=(nn.broadcast,) * 4 + (0,) * len(extra),
                      length=self.depth, metadata_params={nn.PARTITION_NAME: "layers"})
      tok, _ = stack(scanned=True, name="blocks", **block_kw)(tok, c, ctx, mask, vals, *extra)
    else:
      block = layers.remat(DiTBlock, self.remat_policy)
      for i in range(self.depth):
        extra = () if control is None else (control[i],)
        tok = block(name=f"block_{i}", **block_kw)(tok, c, ctx, mask, vals, *extra)

    shift, scale = layers.AdaLNModulation(2, d, name="final_adaln", **kw)(c)
    y = layers.modulate(layers.LayerNorm(use_scale=False, use_bias=False, name="final_norm",
                                         **kw)(tok), shift, scale)
    pt, ph, pw = self.patch_size
    y = layers.Dense(pt * ph * pw * self.out_channels, ("embed", None), kernel_init=layers.zeros,
                     flat=self.flat, name="final_proj", **kw)(y)
    y = layers.unpatchify(y.reshape(b, *grid, -1), self.patch_size)
    return y.astype(jnp.float32)


def unstack_blocks(params: dict[str, Any], depth: int) -> dict[str, Any]:
  """Scanned layout (``blocks`` stacked on axis 0) -> ``block_0 .. block_{depth-1}``."""
  out = {k: v for k, v in params.items() if k != "blocks"}
  for i in range(depth):
    out[f"block_{i}"] = jax.tree.map(lambda a, i=i: a[i], params["blocks"])
  return out


def stack_blocks(params: dict[str, Any], depth: int) -> dict[str, Any]:
  """``block_0 .. block_{depth-1}`` -> scanned layout (``blocks`` stacked on axis 0)."""
  out = {k: v for k, v in params.items() if not k.startswith("block_")}
  out["blocks"] = jax.tree.map(lambda *a: jnp.stack(a),
                               *[params[f"block_{i}"] for i in range(depth)])
  return out


def flops_per_example(*, video_shape: Sequence[int], width: int, depth: int,
                      patch_size: Sequence[int], out_channels: int, text_len: int = 0,
                      text_dim: int = 0, mlp_ratio: float = 4.0, attention: str = "full",
                      cross_attention: bool = True, pooled: bool = True, freq_dim: int = 256,
                      **unused_model_args) -> int:
  """Analytic forward matmul FLOPs (2*m*n*k) of one example, attention scores/values included.

  Elementwise work (norms, softmax, GELU, modulation) is not counted. A train step is ~3x this.

  Args:
    video_shape: (T, H, W, C) of one input video.
    width, depth, patch_size, out_channels, mlp_ratio, attention, cross_attention: as in
      ``VideoDiT``; other model args (num_heads, scan_blocks, remat_policy, dtype, ...) do not
      change the count and are accepted and ignored.
    text_len, text_dim: Lt and Dt of the text tokens (and pooled embedding).
    pooled: whether a pooled text embedding is passed.
  """
  del unused_model_args
  t, h, w, c = video_shape
  pt, ph, pw = patch_size
  tp, hp, wp = t // pt, h // ph, w // pw
  n, p, d, m = tp * hp * wp, pt * ph * pw, width, int(width * mlp_ratio)
  lt = text_len if cross_attention else 0
  flops = 2 * n * p * c * d                     # tubelet embedding
  flops += 2 * (freq_dim * d + d * d)           # timestep MLP
  if pooled:
    flops += 2 * (text_dim * d + d * d)         # pooled text MLP
  flops += 2 * lt * (text_dim * d + d * d)      # text token projection (once)
  if attention == "full":
    attn = 2 * n * d * 4 * d + 4 * n * n * d    # q, k, v, out + scores, values
  else:
    attn = 2 * (2 * n * d * 4 * d) + 4 * n * (hp * wp) * d + 4 * n * tp * d
  branches = 1 if attention == "full" else 2
  block = 2 * d * 3 * (branches + 1) * d        # adaLN-Zero modulation
  block += attn + 2 * n * d * m * 2             # self-attention + MLP
  if cross_attention:
    block += 2 * n * d * d * 2 + 2 * lt * d * d * 2 + 4 * n * lt * d
  flops += depth * block
  flops += 2 * d * 2 * d + 2 * n * d * p * out_channels  # final layer
  return int(flops)


def num_params(params: Any) -> int:
  """Total number of parameters in a (possibly boxed) parameter tree."""
  return sum(math.prod(a.shape) for a in jax.tree.leaves(nn.meta.unbox(params)))
