"""Vision Transformers: an image encoder (ViT, CLIP's vision tower) and a video encoder.

``ViT``: patch embedding (a ``TubeletEmbed`` with a one-frame tubelet, kernel ``[1, p, p, C, D]``),
optional CLS token, learned positions ``[1 + N, D]`` (CLS first, then the patch grid row-major, the
HF / OpenAI CLIP layout), optional ``pre_norm`` (CLIP's ``pre_layrnorm``), pre-LN blocks, a final
LayerNorm over all tokens (for CLS pooling this equals CLIP's ``post_layernorm`` of the CLS token),
and CLS or mean pooling. At another resolution the patch positions are resized with PyTorch's
bicubic kernel (``F.interpolate(mode="bicubic", align_corners=False)``, as in HF's
``interpolate_pos_encoding``); the CLS position is kept.

``VideoViT``: tubelet embedding ``(pt, ph, pw)``; the spatial position table has the ``ViT`` layout
(so image weights inflate) plus a zero-initialised temporal table ``[T', D]``. ``attention="joint"``
attends over all T'*N tokens at once; ``"factorized"`` is ViViT's factorised encoder: spatial
blocks within each frame, a per-frame pooled token (CLS or mean), then temporal blocks over the T'
frame tokens.

Variants decode from one table (the ViT paper's sizes): ``decode_variant("B/32")`` ->
``dict(width=768, depth=12, num_heads=12, mlp_dim=3072, patch=32)``.
"""
from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from mfm_jax.models import layers
from mfm_jax.models import peft as peft_lib

# name -> (width, depth, num_heads, mlp_dim)
VARIANTS = {
    "Ti": (192, 12, 3, 768),
    "S": (384, 12, 6, 1536),
    "M": (512, 12, 8, 2048),
    "B": (768, 12, 12, 3072),
    "L": (1024, 24, 16, 4096),
    "H": (1280, 32, 16, 5120),
}


def decode_variant(variant: str, **overrides: int) -> dict[str, int]:
  """``"B/32"`` -> ``dict(width, depth, num_heads, mlp_dim, patch)``; non-None overrides win."""
  name, sep, patch = variant.partition("/")
  if name not in VARIANTS or not sep or not patch.isdigit():
    raise ValueError(f"ViT variant {variant!r}: expected '<{'|'.join(VARIANTS)}>/<patch>', "
                     "e.g. 'B/32'")
  out = dict(zip(("width", "depth", "num_heads", "mlp_dim"), VARIANTS[name]), patch=int(patch))
  out.update({k: v for k, v in overrides.items() if v is not None})
  return out


def bicubic_matrix(n_in: int, n_out: int) -> np.ndarray:
  """[n_out, n_in] weights of torch's 1-D bicubic resize (A = -0.75, ``align_corners=False``).

  Same source index, index guard and border clamping as ATen's ``upsample_bicubic2d`` (no
  antialiasing, also when shrinking), so a separable 2-D resize with these matrices reproduces
  ``F.interpolate(x, size, mode="bicubic", align_corners=False)``.
  """
  a = -0.75
  c1 = lambda x: ((a + 2) * x - (a + 3)) * x * x + 1  # noqa: E731  |x| <= 1
  c2 = lambda x: ((a * x - 5 * a) * x + 8 * a) * x - 4 * a  # noqa: E731  1 < |x| < 2
  w = np.zeros((n_out, n_in), np.float64)
  scale = n_in / n_out
  for i in range(n_out):
    src = scale * (i + 0.5) - 0.5
    x0 = min(int(np.floor(src)), n_in - 1)
    t = min(max(src - x0, 0.0), 1.0)
    for k, c in zip(range(-1, 3), (c2(t + 1), c1(t), c1(1 - t), c2(2 - t))):
      w[i, min(max(x0 + k, 0), n_in - 1)] += c
  return w


def resize_positions(pos: jax.Array, grid_in: tuple[int, int],
                     grid_out: tuple[int, int]) -> jax.Array:
  """Bicubic resize of a position grid: pos: [h*w, D] -> [h'*w', D] (row-major grids)."""
  if tuple(grid_in) == tuple(grid_out):
    return pos
  (hi, wi), (ho, wo) = grid_in, grid_out
  mh = jnp.asarray(bicubic_matrix(hi, ho), jnp.float32)
  mw = jnp.asarray(bicubic_matrix(wi, wo), jnp.float32)
  p = pos.reshape(hi, wi, -1).astype(jnp.float32)
  out = jnp.einsum("ih,hwd,jw->ijd", mh, p, mw, precision=jax.lax.Precision.HIGHEST)
  return out.reshape(ho * wo, -1).astype(pos.dtype)


class Transformer(nn.Module):
  """A stack of pre-LN ``layers.EncoderBlock``s (no final norm).

  Attributes:
    scan_blocks: ``nn.scan`` over blocks; params stacked under ``blocks`` on a leading axis named
      ``"layers"``. Otherwise ``block_0 .. block_{depth-1}``.
    remat_policy: ``none | full | dots | dots_no_batch`` (see ``layers.remat``).
    peft: ``peft.PeftConfig`` of the blocks' attention adapters (None: none); the tower's
      ``peft.SharedFactors`` output comes in as the ``shared`` call argument (broadcast to every
      block, also under ``nn.scan``).
  """
  depth: int
  num_heads: int
  mlp_dim: int | None = None
  causal: bool = False
  activation: str = "gelu_tanh"
  norm_epsilon: float = 1e-6
  scan_blocks: bool = False
  remat_policy: str = "none"
  dtype: Any = jnp.float32
  param_dtype: Any = jnp.float32
  flat: bool = True
  peft: peft_lib.PeftConfig | None = None

  @nn.compact
  def __call__(self, x: jax.Array, mask: jax.Array | None = None,
               shared: dict[str, jax.Array] | None = None) -> jax.Array:
    """x: [B, L, D]; mask: [B, L] bool key padding (True = real); shared: the tower's
    ``peft.SharedFactors`` output (KAdaptation slow factors) or None -> [B, L, D]."""
    kw = dict(num_heads=self.num_heads, mlp_dim=self.mlp_dim, causal=self.causal,
              activation=self.activation, norm_epsilon=self.norm_epsilon, dtype=self.dtype,
              param_dtype=self.param_dtype, flat=self.flat, peft=self.peft)
    if self.scan_blocks:
      block = layers.remat(layers.EncoderBlock, self.remat_policy, prevent_cse=False)
      stack = nn.scan(block, variable_axes={"params": 0, "intermediates": 0},
                      split_rngs={"params": True, "dropout": True},
                      in_axes=(nn.broadcast, nn.broadcast, nn.broadcast),
                      length=self.depth, metadata_params={nn.PARTITION_NAME: "layers"})
      x, _ = stack(scanned=True, name="blocks", **kw)(x, mask, None, shared)
    else:
      block = layers.remat(layers.EncoderBlock, self.remat_policy)
      for i in range(self.depth):
        x = block(name=f"block_{i}", **kw)(x, mask, None, shared)
    return layers.constrain(x, ("batch", "length", "embed"))


def _pool(x: jax.Array, pooling: str) -> jax.Array:
  """x: [B, L, D] (CLS first when ``pooling == "cls"``) -> [B, D]."""
  if pooling == "cls":
    return x[:, 0]
  if pooling == "mean":
    return x.mean(1)
  raise ValueError(f"pooling must be 'cls' or 'mean', got {pooling!r}")


class _Base(nn.Module):
  """Shared attributes and pieces of ``ViT`` and ``VideoViT``.

  Attributes:
    width, depth, num_heads, mlp_dim: transformer sizes (``mlp_dim`` default 4 * width).
    image_size: the image side the stored position grid ``image_size // patch`` was made for.
    pooling: ``"cls"`` (a CLS token, first) or ``"mean"`` (mean of the tokens, no CLS).
    pre_norm: a LayerNorm before the blocks (CLIP's ``pre_layrnorm``).
    patch_bias: bias in the patch / tubelet embedding (CLIP has none).
    activation, norm_epsilon: MLP activation (``layers.ACTIVATIONS``) and LayerNorm epsilon.
    scan_blocks, remat_policy: as in ``Transformer``.
    flat: 2-D matmuls in the hot paths (faster on CPU).
    peft: ``peft.PeftConfig`` (None: no adapters). When set, the tower creates the KAdaptation
      slow factors once (``peft.SharedFactors``, params under ``peft_shared``) and passes them to
      every block of every transformer it runs (``shared``); LoRA needs nothing shared.
  """
  width: int = 768
  depth: int = 12
  num_heads: int = 12
  mlp_dim: int | None = None
  image_size: int = 224
  pooling: str = "cls"
  pre_norm: bool = False
  patch_bias: bool = True
  activation: str = "gelu_tanh"
  norm_epsilon: float = 1e-6
  scan_blocks: bool = False
  remat_policy: str = "none"
  dtype: Any = jnp.float32
  param_dtype: Any = jnp.float32
  flat: bool = True
  peft: peft_lib.PeftConfig | None = None

  @classmethod
  def from_variant(cls, variant: str, **kwargs: Any):
    """``ViT.from_variant("B/32", image_size=224)``: the table's sizes, ``kwargs`` override.

    For ``VideoViT`` the patch p gives ``tubelet=(2, p, p)`` unless ``tubelet`` is passed.
    """
    sizes = {k: kwargs.pop(k) for k in ("width", "depth", "num_heads", "mlp_dim") if k in kwargs}
    v = decode_variant(variant, **sizes)
    patch = v.pop("patch")
    if issubclass(cls, VideoViT):
      kwargs.setdefault("tubelet", (2, patch, patch))
    else:
      kwargs.setdefault("patch_size", patch)
    return cls(**v, **kwargs)

  def _kw(self) -> dict[str, Any]:
    return dict(dtype=self.dtype, param_dtype=self.param_dtype)

  def _transformer(self, name: str, depth: int) -> Transformer:
    return Transformer(depth, self.num_heads, self.mlp_dim or 4 * self.width,
                       activation=self.activation, norm_epsilon=self.norm_epsilon,
                       scan_blocks=self.scan_blocks, remat_policy=self.remat_policy,
                       flat=self.flat, peft=self.peft, name=name, **self._kw())

  def _shared(self) -> dict[str, jax.Array] | None:
    """The tower's KAdaptation slow factors (created once; None without ``peft``)."""
    if self.peft is None:
      return None
    return peft_lib.SharedFactors(self.peft, self.param_dtype, name="peft_shared")()

  def _norm(self, name: str) -> layers.LayerNorm:
    return layers.LayerNorm(self.norm_epsilon, name=name, **self._kw())

  def _spatial_tokens(self, tok: jax.Array, patch: tuple[int, int]
                      ) -> tuple[jax.Array, jax.Array | None]:
    """Adds positions to patch embeddings.

    Args:
      tok: [B', h, w, D] patch embeddings.
      patch: (ph, pw), to size the stored grid ``image_size // patch``.

    Returns:
      patches: [B', h*w, D] with (resized) positions; cls: [1, 1, D] CLS token plus its
      position, or None with mean pooling.
    """
    b, h, w, d = tok.shape
    if self.pooling not in ("cls", "mean"):
      raise ValueError(f"pooling must be 'cls' or 'mean', got {self.pooling!r}")
    grid = (self.image_size // patch[0], self.image_size // patch[1])
    n_cls = int(self.pooling == "cls")
    pos = self.param("pos_embedding", layers.named(nn.initializers.normal(0.02), (None, "embed")),
                     (n_cls + grid[0] * grid[1], d), self.param_dtype)
    patch_pos = resize_positions(pos[n_cls:], grid, (h, w))
    x = tok.reshape(b, h * w, d) + patch_pos.astype(self.dtype)[None]
    x = layers.constrain(x, ("batch", "length", "embed"))
    if not n_cls:
      return x, None
    cls = self.param("cls", layers.named(nn.initializers.normal(0.02), ("embed",)), (d,),
                     self.param_dtype)
    return x, (cls + pos[0]).astype(self.dtype)[None, None]


def _prepend(cls: jax.Array | None, x: jax.Array) -> jax.Array:
  """cls: [1, 1, D] or None; x: [B, L, D] -> [B, (1 +) L, D]."""
  if cls is None:
    return x
  return jnp.concatenate([jnp.broadcast_to(cls, (x.shape[0], 1, x.shape[-1])), x], axis=1)


class ViT(_Base):
  """Image encoder (see the module docstring; shared attributes in ``_Base``).

  Attributes:
    patch_size: square patch side p.
  """
  patch_size: int = 16

  @nn.compact
  def __call__(self, images: jax.Array) -> tuple[jax.Array, jax.Array]:
    """Encodes images.

    Args:
      images: [B, H, W, C] float; H, W divisible by ``patch_size`` (any size: positions are
        resized when the grid differs from ``image_size // patch_size``).

    Returns:
      tokens: [B, (1 +) N, D] final-normed tokens (CLS first with ``pooling="cls"``).
      pooled: [B, D].
    """
    p = self.patch_size
    tok = layers.TubeletEmbed(self.width, (1, p, p), flat=self.flat, use_bias=self.patch_bias,
                              name="patch_embed", **self._kw())(images[:, None])[:, 0]
    x, cls = self._spatial_tokens(tok, (p, p))
    x = _prepend(cls, x)
    if self.pre_norm:
      x = self._norm("pre_norm")(x)
    x = self._transformer("encoder", self.depth)(x, shared=self._shared())
    x = self._norm("final_norm")(x)
    return x, _pool(x, self.pooling)


class VideoViT(_Base):
  """Video encoder over tubelet tokens (see the module docstring).

  Attributes:
    tubelet: (pt, ph, pw) tubelet size.
    num_frames: frames of the temporal position table's capacity (T' = num_frames // pt).
    attention: ``"joint"`` or ``"factorized"`` (spatial ``depth`` blocks per frame, then
      ``temporal_depth`` blocks over frame tokens).
    temporal_depth: blocks of the temporal transformer (factorised only).
  """
  tubelet: tuple[int, int, int] = (2, 16, 16)
  num_frames: int = 8
  attention: str = "joint"
  temporal_depth: int = 4

  @nn.compact
  def __call__(self, video: jax.Array) -> tuple[jax.Array, jax.Array]:
    """Encodes videos.

    Args:
      video: [B, T, H, W, C] float; T, H, W divisible by the tubelet, T <= num_frames.

    Returns:
      tokens: final-normed; joint: [B, (1 +) T'*N, D]; factorized: [B, (1 +) T', D] (the
        temporal tokens).
      pooled: [B, D].
    """
    if self.attention not in ("joint", "factorized"):
      raise ValueError(f"attention must be 'joint' or 'factorized', got {self.attention!r}")
    pt, ph, pw = self.tubelet
    tok = layers.TubeletEmbed(self.width, tuple(self.tubelet), flat=self.flat,
                              use_bias=self.patch_bias, name="patch_embed", **self._kw())(video)
    b, t, h, w, d = tok.shape
    t_cap = self.num_frames // pt
    if t > t_cap:
      raise ValueError(f"VideoViT: {t} tubelets in time exceed num_frames // pt = {t_cap}")
    t_pos = self.param("temporal_pos_embedding", layers.named(layers.zeros, (None, "embed")),
                       (t_cap, d), self.param_dtype)[:t].astype(self.dtype)
    x, cls = self._spatial_tokens(tok.reshape(b * t, h, w, d), (ph, pw))  # [B*T', N, D]
    shared = self._shared()  # one set of slow factors for the spatial and temporal blocks

    if self.attention == "joint":
      x = layers.constrain(x.reshape(b, t, h * w, d), ("batch", "frames", "length", "embed"))
      x = _prepend(cls, (x + t_pos[None, :, None]).reshape(b, t * h * w, d))
      if self.pre_norm:
        x = self._norm("pre_norm")(x)
      x = self._transformer("encoder", self.depth)(x, shared=shared)
    else:
      x = _prepend(cls, x)  # [B*T', (1 +) N, D]
      if self.pre_norm:
        x = self._norm("pre_norm")(x)
      x = self._transformer("spatial", self.depth)(x, shared=shared)
      frames = _pool(self._norm("spatial_norm")(x), self.pooling).reshape(b, t, d)
      t_cls = None
      if cls is not None:
        t_cls = self.param("temporal_cls", layers.named(nn.initializers.normal(0.02), ("embed",)),
                           (d,), self.param_dtype).astype(self.dtype)[None, None]
      x = _prepend(t_cls, layers.constrain(frames + t_pos[None], ("batch", "frames", "embed")))
      x = self._transformer("temporal", self.temporal_depth)(x, shared=shared)
    x = self._norm("final_norm")(x)
    return x, _pool(x, self.pooling)
