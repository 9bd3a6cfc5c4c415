"""Multi-condition control branches for the video DiT (FlexEControl, TMLR'24, and a baseline).

A ControlNet-style branch beside a (frozen) ``VideoDiT``: it sees the noisy video tokens plus the
tokens of several condition maps (depth, edges, instance maps: ``data/conditions.py``) and returns
one residual per DiT block, ``[depth, B, L, D]``, which ``VideoDiT(..., control=...)`` adds after
each block. Every residual leaves through a zero-initialised projection, so a fresh branch is the
identity (the DiT's output is unchanged).

Structure (one branch, N conditions at once). With ``x`` the noisy video and ``c_n`` the maps:

  h_n   = PatchEmbed(x) + pos + CondEmbed_n(patchify(c_n))            [N, B, L, D]
  h_n   = Block_i,n(h_n, t)    (adaLN-Zero self-attention + MLP: the DiT block without
                                cross-attention, initialised from the DiT's block i)
  r_i   = sum_n present[b, n] * ZeroProj_i,n(h_n)                     [B, L, D]

``present`` [B, N] drops conditions (training drops them at random, so any subset works at
sampling): an absent condition contributes nothing. Every linear map ``W_n`` of the branch
(stem, adaLN, q, k, v, out, fc1, fc2, zero projections) is per condition ``n``:

* ``mode="flex"`` (FlexEControl): ``W_n = W + scale * sum_i A_i (x) (u_i^n v_i^n)`` - one shared
  kernel ``W`` (+ bias), KAdaptation Kronecker deltas whose slow factors ``A_i`` [n, n, n]
  (``peft.SharedFactors``, one set per kind of map) are shared by all conditions and all blocks,
  and whose fast factors ``u^n`` [n, din/n, r], ``v^n`` [n, r, dout/n] (``v`` zero-initialised)
  and a bias are per condition and per layer (``peft.kron_delta``). Parameters: ~1 branch.
* ``mode="separate"`` (per-condition baseline, Multi-ControlNet style): independent kernels
  ``W_n`` [N, din, dout] per condition. Parameters: ~N branches. Same compute as ``flex``.

The branch uses full attention over the L tokens (whatever the DiT's attention) and no text.
``init_from_dit`` copies a trained DiT's timestep/patch embeddings and block weights into the
shared (flex) or every (separate) kernel, as ControlNet copies its encoder.
"""
from __future__ import annotations

import math
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from mfm_jax.models import layers
from mfm_jax.models import peft

MODES = ("flex", "separate")
SLOTS = ("cond_embed", "adaln", "query", "key", "value", "out", "fc1", "fc2", "zero_proj")


class StackedDense(nn.Module):
  """N per-condition linear maps: x [N, ..., Din] -> [N, ..., Dout] (module docstring).

  ``slow``: the shared slow factors [n, n, n] (``mode="flex"``; None for ``separate``).
  """
  features: int
  num_conditions: int
  mode: str = "flex"
  kron_n: int = 8
  kron_rank: int = 1
  kron_scale: float = 16.0
  zero_init: bool = False
  names: tuple[str | None, str | None] = ("embed", "mlp")
  dtype: Any = jnp.float32
  param_dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array, slow: jax.Array | None = None) -> jax.Array:
    n_c, din, dout = self.num_conditions, x.shape[-1], self.features
    if x.shape[0] != n_c:
      raise ValueError(f"{self.name}: input must be [N={n_c}, ..., Din], got {x.shape}")
    pdt, zeros = self.param_dtype, nn.initializers.zeros
    if self.mode == "separate":
      init = zeros if self.zero_init else nn.initializers.variance_scaling(
          1.0, "fan_avg", "uniform", in_axis=1, out_axis=2, batch_axis=(0,))
      kernel = self.param("kernel", layers.named(init, (None,) + self.names), (n_c, din, dout),
                          pdt)
      bias = self.param("bias", layers.named(zeros, (None, self.names[1])), (n_c, dout), pdt)
    elif self.mode == "flex":
      if slow is None:
        raise ValueError(f"{self.name}: mode='flex' needs the shared slow factors")
      k = self.kron_n
      if din % k or dout % k:
        raise ValueError(f"{self.name}: kernel [{din}, {dout}] not divisible by kron_n={k}")
      init = zeros if self.zero_init else layers.fan_avg_init(1, 2)
      base = self.param("kernel", layers.named(init, self.names), (din, dout), pdt)
      bias0 = self.param("bias", layers.named(zeros, (self.names[1],)), (dout,), pdt)
      bound = 1.0 / math.sqrt(din // k)
      u = self.param(f"{peft.PREFIX}u", layers.named(
          lambda key, s, d=pdt: jax.random.uniform(key, s, d, -bound, bound), (None,) * 4),
          (n_c, k, din // k, self.kron_rank), pdt)
      v = self.param(f"{peft.PREFIX}v", layers.named(zeros, (None,) * 4),
                     (n_c, k, self.kron_rank, dout // k), pdt)
      pbias = self.param(f"{peft.PREFIX}bias", layers.named(zeros, (None, None)), (n_c, dout), pdt)
      delta = jax.vmap(peft.kron_delta, in_axes=(None, 0, 0))(slow.astype(pdt), u, v)
      kernel = base[None] + self.kron_scale * delta
      bias = bias0[None] + pbias
    else:
      raise ValueError(f"{self.name}: mode={self.mode!r}, use one of {MODES}")
    y = jnp.einsum("n...i,nio->n...o", x.astype(self.dtype), kernel.astype(self.dtype))
    return y + bias.reshape((n_c,) + (1,) * (x.ndim - 2) + (dout,)).astype(self.dtype)


class ControlBlock(nn.Module):
  """The DiT block without cross-attention, run on N condition streams with per-condition maps."""
  num_heads: int
  mlp_ratio: float = 4.0
  dense_kw: Any = None          # StackedDense fields shared by every map (a hashable tuple)

  @nn.compact
  def __call__(self, h: jax.Array, c: jax.Array, slow: dict[str, Any]) -> jax.Array:
    """h: [N, B, L, D]; c: [B, D] timestep embedding -> [N, B, L, D]."""
    n_c, b, l, d = h.shape
    kw = dict(self.dense_kw)
    dense = lambda f, name, **k: StackedDense(f, name=name, **kw, **k)  # noqa: E731
    norm = lambda z: layers.LayerNorm(use_scale=False, use_bias=False)(z)  # noqa: E731
    cn = jnp.broadcast_to(nn.silu(c)[None], (n_c,) + c.shape)
    mods = jnp.split(dense(6 * d, "adaln", zero_init=True)(cn, slow["adaln"])[:, :, None], 6, -1)
    y = norm(h) * (1 + mods[1]) + mods[0]
    heads, dh = self.num_heads, d // self.num_heads
    q, k, v = (dense(d, name)(y, slow[name]).reshape(n_c, b, l, heads, dh)
               for name in ("query", "key", "value"))
    logits = jnp.einsum("nbqhd,nbkhd->nbhqk", q, k) * dh ** -0.5
    att = jnp.einsum("nbhqk,nbkhd->nbqhd", jax.nn.softmax(logits.astype(jnp.float32), -1)
                     .astype(v.dtype), v).reshape(n_c, b, l, d)
    h = h + mods[2] * dense(d, "out")(att, slow["out"])
    y = norm(h) * (1 + mods[4]) + mods[3]
    m = nn.gelu(dense(int(d * self.mlp_ratio), "fc1")(y, slow["fc1"]), approximate=True)
    m = dense(d, "fc2", names=("mlp", "embed"))(m, slow["fc2"])
    return h + mods[5] * m


class ControlBranch(nn.Module):
  """FlexEControl (``mode="flex"``) or per-condition (``"separate"``) control branch.

  Attributes:
    num_conditions: N condition maps (each [T, H, W, cond_channels]).
    width, num_heads, mlp_ratio, patch_size: as the DiT it controls.
    depth: branch blocks; block i (a copy of DiT block i) gives the residual of DiT block i.
    out_depth: the DiT's depth (residuals of blocks >= ``depth`` are zero); None = ``depth``.
      ControlNet-style copies of the first blocks only (e.g. 2 of 4) halve the branch's cost.
    mode: ``flex`` | ``separate`` (module docstring).
    kron_n, kron_fast_rank, kron_slow_rank, kron_scale: KAdaptation sizes (``flex`` only):
      n Kronecker factors, rank of the fast / slow factors (slow None = full n x n), dW scale.
  """
  num_conditions: int
  width: int = 128
  depth: int = 4
  num_heads: int = 4
  mlp_ratio: float = 4.0
  patch_size: tuple[int, int, int] = (2, 4, 4)
  out_depth: int | None = None
  mode: str = "flex"
  kron_n: int = 8
  kron_fast_rank: int = 1
  kron_slow_rank: int | None = 1
  kron_scale: float = 16.0
  dtype: Any = jnp.float32
  param_dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array, t: jax.Array, conds: jax.Array,
               present: jax.Array) -> jax.Array:
    """Per-block residuals for the DiT.

    Args:
      x: [B, T, H, W, C] noisy video (the DiT's input).
      t: [B] timesteps in [0, 1000].
      conds: [B, N, T, H, W, Cc] condition maps (the order fixed by the caller).
      present: [B, N] bool (or 0/1 weights): which conditions are given.

    Returns:
      [out_depth, B, L, D] float32 residuals (all zero for a fresh branch).
    """
    if self.mode not in MODES:
      raise ValueError(f"ControlBranch.mode={self.mode!r}: use one of {MODES}")
    b, n_c = x.shape[0], self.num_conditions
    if conds.ndim != 6 or conds.shape[:2] != (b, n_c) or conds.shape[2:5] != x.shape[1:4]:
      raise ValueError(f"conds must be [B={b}, N={n_c}, T, H, W, Cc] with (T, H, W) = "
                       f"{x.shape[1:4]}, got {conds.shape}")
    if present.shape != (b, n_c):
      raise ValueError(f"present must be [B, N] = {(b, n_c)}, got {present.shape}")
    d = self.width
    kw = dict(dtype=self.dtype, param_dtype=self.param_dtype)
    c = layers.TimestepEmbed(d, name="t_embed", **kw)(t)
    tok = layers.TubeletEmbed(d, tuple(self.patch_size), name="patch_embed", **kw)(x)
    tok = layers.PosEmbed3D("sincos", name="pos_embed", **kw)(tok)
    tok = tok.reshape(b, -1, d)
    slow = {s: None for s in SLOTS}
    if self.mode == "flex":   # one slow set per kind of map; "query" is just the slot's name
      cfg = peft.PeftConfig(method="kadaptation", targets=("query",), kadapt_n=self.kron_n,
                            kadapt_slow_rank=self.kron_slow_rank)
      slow = {s: peft.SharedFactors(cfg, self.param_dtype, name=f"kron_slow_{s}")()["query"]
              for s in SLOTS}
    dense_kw = (("num_conditions", n_c), ("mode", self.mode), ("kron_n", self.kron_n),
                ("kron_rank", self.kron_fast_rank), ("kron_scale", self.kron_scale),
                ("dtype", self.dtype), ("param_dtype", self.param_dtype))
    cp = layers.patchify(jnp.moveaxis(conds, 1, 0).reshape((n_c * b,) + conds.shape[2:]),
                         tuple(self.patch_size))
    cp = cp.reshape(n_c, b, tok.shape[1], -1)                       # [N, B, L, P*Cc]
    h = tok[None] + StackedDense(d, name="cond_embed", **dict(dense_kw))(cp, slow["cond_embed"])
    w = jnp.moveaxis(present.astype(jnp.float32), 1, 0)[:, :, None, None]   # [N, B, 1, 1]
    outs = []
    for i in range(self.depth):
      h = ControlBlock(self.num_heads, self.mlp_ratio, dense_kw, name=f"block_{i}")(h, c, slow)
      r = StackedDense(d, zero_init=True, name=f"zero_proj_{i}", **dict(dense_kw))(
          h, slow["zero_proj"])
      outs.append((r.astype(jnp.float32) * w).sum(0))
    out_depth = self.depth if self.out_depth is None else self.out_depth
    if out_depth < self.depth:
      raise ValueError(f"ControlBranch: out_depth={out_depth} < depth={self.depth}")
    outs += [jnp.zeros_like(outs[0])] * (out_depth - self.depth)
    return jnp.stack(outs)


_BLOCK_MAP = {"adaln": ("adaln", "proj"), "query": ("attn", "query"), "key": ("attn", "key"),
              "value": ("attn", "value"), "out": ("attn", "out"), "fc1": ("mlp", "fc1"),
              "fc2": ("mlp", "fc2")}


def init_from_dit(control: dict, dit: dict, depth: int) -> dict:
  """Copies a DiT's (unboxed, unrolled ``block_i``) weights into a branch's shared kernels.

  ``t_embed`` and ``patch_embed`` are copied as they are; each block's adaLN / attention / MLP
  kernel [din, dout] (attention kernels flattened over heads) goes to the branch's ``kernel``
  (``flex``) or to every condition's slice of it (``separate``). Fast factors, slow factors,
  condition stems and zero projections keep their values. Returns a new tree.
  """
  out = jax.tree.map(lambda a: a, control)
  for name in ("t_embed", "patch_embed"):
    out[name] = jax.tree.map(lambda a: a, dit[name])
  for i in range(depth):
    if f"block_{i}" not in dit:
      raise KeyError(f"init_from_dit: the DiT has no block_{i} (scanned DiT? use "
                     f"dit.unstack_blocks first); has {sorted(dit)}")
    for slot, (mod, sub) in _BLOCK_MAP.items():
      src, dst = dit[f"block_{i}"][mod][sub], out[f"block_{i}"][slot]
      for leaf in ("kernel", "bias"):
        target = dst[leaf]
        flat_out = target.shape[-1]
        value = src[leaf].reshape(-1, flat_out) if leaf == "kernel" else src[leaf].reshape(-1)
        dst[leaf] = jnp.broadcast_to(value, target.shape).astype(target.dtype)
  return out
