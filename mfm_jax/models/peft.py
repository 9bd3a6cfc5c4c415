"""Parameter-efficient adaptation: LoRA, KAdaptation (PEViT, AAAI'23), subspace training, masks.

Adapters hook into ``layers.Attention`` (attribute ``peft``) on the projections named in
``PeftConfig.targets`` (``query | key | value | out``, default q and v). Every adapter parameter is
named with the prefix ``peft_``; :func:`trainable_mask` finds them by that prefix.

* **LoRA**: ``y = x W + (x A) B * alpha / rank`` with ``B`` zero-initialised (computed unmerged).
* **KAdaptation** (He et al., "Parameter-efficient Model Adaptation for Vision Transformers"):
  ``dW = scale * dropout(sum_i A_i (x) B_i)`` over ``n`` Kronecker factors, merged into the
  projection kernel viewed as ``[D_in, D_out]`` (for q/k/v ``[D, N*Dh]``: the head split comes
  after, no transpose). Slow ``A_i`` (``n x n``, rank ``kadapt_slow_rank`` = ``a_i b_i^T``, or full)
  are created ONCE per tower by :class:`SharedFactors` (one set per target) and passed to every
  block as the ``shared`` call argument (a broadcast argument under ``nn.scan``). Fast
  ``B_i = u_i v_i^T`` (``D_in/n x D_out/n``, rank ``kadapt_fast_rank``) live in each block.
  One zero-initialised bias per attention (``peft_bias``, width ``D_out``) is added to the output
  of EVERY adapted projection, as in the PEViT code (``MultiheadAttention.b`` is added to both the
  q and the v adapter outputs); this gives the README's count: ViT-B/32, n = 32, r = 1, q and v:
  slow 2 x 2,048 + 12 blocks x (2 x 1,536 fast + 768 bias) = 50,176.
  Deviations from the PEViT code, on purpose: (1) it zero-initialises both ``u`` and ``v``, so no
  gradient reaches the fast or slow factors (only the bias learns); by default we draw ``u``
  (LoRA-style uniform, bound ``1/sqrt(D_in/n)``) and zero ``v``, so ``dW = 0`` at init and still
  trains (``kadapt_fast_init="zeros"`` gives the reference behaviour); (2) it reshapes the
  ``[L, B, D]`` delta to ``[B*N, L, Dh]`` without a transpose, mixing batch and token axes; we
  merge ``dW`` into the kernel instead. Its scale is ``alpha / r * 5 = 128 / 4 * 5 = 160`` (our
  default) and its dropout on ``dW`` is 0.5 (ours defaults to 0).
* **Subspace** (Li et al. 2018; Aghajanyan et al. 2021): ``theta = theta0 + P theta_d``, ``P`` a
  Fastfood transform (see :mod:`mfm_jax.models.subspace`, re-exported here).

Dropout (LoRA input, KAdaptation ``dW``) is active only when a ``"dropout"`` rng is given to
``apply``; under ``nn.scan`` split that rng (``split_rngs={"params": True, "dropout": True}``).
"""
from __future__ import annotations

import dataclasses
import math
from typing import Any, Mapping, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from mfm_jax.models.subspace import Subspace, fastfood

__all__ = ["AttentionHook", "METHODS", "PREFIX", "PROJECTIONS", "PeftConfig", "SharedFactors",
           "Subspace", "count_params", "fastfood", "kadaptation_param_count", "kron_delta",
           "trainable_mask"]

PROJECTIONS = ("query", "key", "value", "out")
METHODS = ("none", "lora", "kadaptation", "subspace")
PREFIX = "peft_"
_FAST_INITS = ("u_random", "zeros")


@dataclasses.dataclass(frozen=True)
class PeftConfig:
  """Which adapter, on which attention projections, with which sizes (hashable).

  Attributes:
    method: ``none | lora | kadaptation | subspace`` (``subspace`` adds no layer adapters; the task
      builds a :class:`Subspace` from ``subspace_*``).
    targets: projections adapted in every attention, among ``query, key, value, out``.
    lora_rank, lora_alpha: LoRA rank ``r`` and ``alpha`` (update scaled by ``alpha / r``).
    lora_dropout: dropout on the LoRA branch input.
    kadapt_n: number of Kronecker factors ``n`` (slow ``A_i`` are ``n x n``).
    kadapt_fast_rank: rank ``r`` of each fast ``B_i = u_i v_i^T``.
    kadapt_slow_rank: rank of each slow ``A_i = a_i b_i^T``; None = full ``n x n``.
    kadapt_scale: multiplies ``dW`` (PEViT: 160).
    kadapt_dropout: dropout rate on ``dW`` (PEViT: 0.5).
    kadapt_bias: one zero-init bias per attention, added to every adapted projection output.
    kadapt_fast_init: ``u_random`` (``u`` uniform, ``v`` zero) or ``zeros`` (both, as PEViT).
    share_fast_qv: ``value`` uses the ``query`` fast factors with its own slow factors.
    subspace_dim, subspace_seed, subspace_local: intrinsic dimension ``d``, seed of ``P``,
      per-leaf (local) projection.
  """
  method: str = "none"
  targets: tuple[str, ...] = ("query", "value")
  lora_rank: int = 8
  lora_alpha: float = 16.0
  lora_dropout: float = 0.0
  kadapt_n: int = 32
  kadapt_fast_rank: int = 1
  kadapt_slow_rank: int | None = 1
  kadapt_scale: float = 160.0
  kadapt_dropout: float = 0.0
  kadapt_bias: bool = True
  kadapt_fast_init: str = "u_random"
  share_fast_qv: bool = False
  subspace_dim: int = 1000
  subspace_seed: int = 0
  subspace_local: bool = False

  def __post_init__(self):
    targets = (self.targets,) if isinstance(self.targets, str) else tuple(self.targets)
    object.__setattr__(self, "targets", targets)
    err = lambda msg: ValueError(f"PeftConfig: {msg}")  # noqa: E731
    if self.method not in METHODS:
      raise err(f"method={self.method!r}: use one of {'|'.join(METHODS)}")
    bad = [t for t in targets if t not in PROJECTIONS]
    if bad or not targets or len(set(targets)) != len(targets):
      raise err(f"targets={targets!r}: a non-empty set of {PROJECTIONS}")
    for name in ("lora_rank", "kadapt_n", "kadapt_fast_rank", "subspace_dim"):
      if int(getattr(self, name)) < 1:
        raise err(f"{name}={getattr(self, name)!r} must be >= 1")
    if self.kadapt_slow_rank is not None and self.kadapt_slow_rank < 1:
      raise err(f"kadapt_slow_rank={self.kadapt_slow_rank!r}: >= 1 or None (full n x n)")
    for name in ("lora_dropout", "kadapt_dropout"):
      if not 0.0 <= getattr(self, name) < 1.0:
        raise err(f"{name}={getattr(self, name)!r} must be in [0, 1)")
    if self.kadapt_fast_init not in _FAST_INITS:
      raise err(f"kadapt_fast_init={self.kadapt_fast_init!r}: use one of {_FAST_INITS}")
    if self.share_fast_qv and not {"query", "value"} <= set(targets):
      raise err("share_fast_qv needs both 'query' and 'value' in targets")

  @classmethod
  def from_dict(cls, cfg: Mapping[str, Any] | None) -> PeftConfig:
    """From a dict / ``ConfigDict`` (``None`` -> method ``none``); unknown keys raise."""
    if cfg is None:
      return cls()
    d = dict(cfg.to_dict() if hasattr(cfg, "to_dict") else cfg)
    fields = [f.name for f in dataclasses.fields(cls)]
    unknown = sorted(set(d) - set(fields))
    if unknown:
      raise ValueError(f"PeftConfig: unknown key(s) {unknown}; valid keys: {fields}")
    return cls(**d)

  def adapts(self, name: str) -> bool:
    """True if projection ``name`` gets a LoRA / KAdaptation adapter."""
    return self.method in ("lora", "kadaptation") and name in self.targets


def kron_delta(slow: jax.Array, u: jax.Array, v: jax.Array) -> jax.Array:
  """``dW = sum_i A_i (x) (u_i v_i)``.

  Args:
    slow: [n, a, c] slow factors ``A_i``.
    u: [n, P, r] and v: [n, r, K] fast factors (``B_i = u_i v_i``: [P, K]).

  Returns:
    [a*P, c*K], equal to ``sum_i jnp.kron(slow[i], u[i] @ v[i])``.
  """
  fast = jnp.einsum("ipr,irk->ipk", u, v)
  (_, a, c), (_, p, k) = slow.shape, fast.shape
  return jnp.einsum("iac,ipk->apck", slow, fast).reshape(a * p, c * k)


def _named(init, ndim: int):
  return nn.with_logical_partitioning(init, (None,) * ndim)  # small: replicated


def _uniform(bound: float):
  def init(key, shape, dtype=jnp.float32):
    return jax.random.uniform(key, shape, dtype, -bound, bound)
  return init


def _dropout(module: nn.Module, x: jax.Array, rate: float) -> jax.Array:
  if rate == 0.0 or not module.has_rng("dropout"):
    return x
  keep = jax.random.bernoulli(module.make_rng("dropout"), 1.0 - rate, x.shape)
  return jnp.where(keep, x / (1.0 - rate), 0.0).astype(x.dtype)


class SharedFactors(nn.Module):
  """The KAdaptation slow factors, created once per tower and shared by all its blocks.

  Call it in the tower and pass the result to each block: ``shared = SharedFactors(cfg,
  name="peft_shared")()``; ``block(x, ..., shared=shared)``. Returns ``{target: A [n, n, n]}`` for
  ``method == "kadaptation"`` and ``{}`` otherwise. Parameters (``U(-0.01, 0.01)``):
  ``peft_slow_{t}_a`` [n, n, s] and ``peft_slow_{t}_b`` [n, s, n] (``A_i = a_i b_i``), or
  ``peft_slow_{t}`` [n, n, n] when ``kadapt_slow_rank`` is None.
  """
  config: PeftConfig | None = None
  param_dtype: Any = jnp.float32

  @nn.compact
  def __call__(self) -> dict[str, jax.Array]:
    cfg = self.config
    if cfg is None or cfg.method != "kadaptation":
      return {}
    n, s = cfg.kadapt_n, cfg.kadapt_slow_rank
    init = _named(_uniform(0.01), 3)
    out = {}
    for t in cfg.targets:
      if s is None:
        out[t] = self.param(f"{PREFIX}slow_{t}", init, (n, n, n), self.param_dtype)
      else:
        a = self.param(f"{PREFIX}slow_{t}_a", init, (n, n, s), self.param_dtype)
        b = self.param(f"{PREFIX}slow_{t}_b", init, (n, s, n), self.param_dtype)
        out[t] = jnp.einsum("iar,irc->iac", a, b)
    return out


class AttentionHook:
  """Runs ``layers.Attention``'s projections with the configured adapter (inside its call).

  ``hook(name, dense, x, in_axes)`` returns ``dense(x)`` plus the adapter of ``name``;
  parameters are created in the attention's scope (``peft_{name}_u`` ...).
  """

  def __init__(self, module: nn.Module, config: PeftConfig | None,
               shared: Mapping[str, jax.Array] | None = None):
    self.m, self.cfg, self.shared = module, config, shared
    self._fast: dict[str, tuple[jax.Array, jax.Array]] = {}
    self._bias: jax.Array | None = None

  def __call__(self, name: str, dense: nn.Module, x: jax.Array, in_axes: int = 1) -> jax.Array:
    """x: [..., *K] -> [..., *F] (``dense`` kernel [*K, *F])."""
    cfg = self.cfg
    if cfg is None or not cfg.adapts(name):
      return dense(x)
    feats = (dense.features,) if isinstance(dense.features, int) else tuple(dense.features)
    k_shape = tuple(x.shape[x.ndim - in_axes:])
    lead, din, dout = x.shape[:x.ndim - in_axes], math.prod(k_shape), math.prod(feats)
    pdt = dense.param_dtype
    if cfg.method == "lora":
      r = cfg.lora_rank
      a = self.m.param(f"{PREFIX}{name}_lora_a", _named(_uniform(1.0 / math.sqrt(din)), 2),
                       (din, r), pdt)
      b = self.m.param(f"{PREFIX}{name}_lora_b", _named(nn.initializers.zeros, 2), (r, dout), pdt)
      h = _dropout(self.m, x.reshape(-1, din).astype(dense.dtype), cfg.lora_dropout)
      low = (h @ a.astype(dense.dtype)) @ b.astype(dense.dtype) * (cfg.lora_alpha / r)
      return dense(x) + low.reshape(*lead, *feats).astype(dense.dtype)
    # KAdaptation: merge dW into the kernel viewed as [din, dout] (no transpose).
    if self.shared is None or name not in self.shared:
      raise ValueError(
          f"{self.m.name}: KAdaptation on {name!r} needs the tower's slow factors: create "
          "peft.SharedFactors(config)() once in the tower and pass it as shared=... to each block")
    n = cfg.kadapt_n
    if din % n or dout % n:
      raise ValueError(f"{self.m.name}/{name}: kernel [{din}, {dout}] not divisible by "
                       f"kadapt_n={n}")
    fast_name = "query" if (cfg.share_fast_qv and name == "value") else name
    u, v = self._fast_params(fast_name, din // n, dout // n, pdt)
    if (u.shape[1], v.shape[2]) != (din // n, dout // n):
      raise ValueError(f"{self.m.name}: share_fast_qv needs equal q and v kernel shapes")
    delta = kron_delta(self.shared[name].astype(pdt), u, v)
    delta = _dropout(self.m, delta, cfg.kadapt_dropout) * cfg.kadapt_scale
    y = dense(x, delta=delta.reshape(k_shape + feats))
    if cfg.kadapt_bias:
      y = y + self._bias_param(dout, pdt).reshape(feats).astype(y.dtype)
    return y

  def _fast_params(self, name: str, p: int, k: int, pdt) -> tuple[jax.Array, jax.Array]:
    if name not in self._fast:
      n, r = self.cfg.kadapt_n, self.cfg.kadapt_fast_rank
      zeros = nn.initializers.zeros
      u_init = zeros if self.cfg.kadapt_fast_init == "zeros" else _uniform(1.0 / math.sqrt(p))
      u = self.m.param(f"{PREFIX}{name}_u", _named(u_init, 3), (n, p, r), pdt)
      v = self.m.param(f"{PREFIX}{name}_v", _named(zeros, 3), (n, r, k), pdt)
      self._fast[name] = (u, v)
    return self._fast[name]

  def _bias_param(self, width: int, pdt) -> jax.Array:
    if self._bias is None:
      self._bias = self.m.param(f"{PREFIX}bias", _named(nn.initializers.zeros, 1), (width,), pdt)
    elif self._bias.shape[0] != width:
      raise ValueError(f"{self.m.name}: the shared KAdaptation bias has width "
                       f"{self._bias.shape[0]} but a target projection has {width} outputs "
                       "(set kadapt_bias=False or adapt equal-width projections)")
    return self._bias


def kadaptation_param_count(width: int, depth: int, config: PeftConfig) -> int:
  """Adapter parameters of ``depth`` self-attention blocks of ``width`` (analytic)."""
  n, r, s, t = (config.kadapt_n, config.kadapt_fast_rank, config.kadapt_slow_rank,
                len(config.targets))
  slow = t * (n ** 3 if s is None else 2 * n * n * s)
  fast_sets = t - (1 if config.share_fast_qv else 0)
  per_block = fast_sets * 2 * r * width + (width if config.kadapt_bias else 0)
  return slow + depth * per_block


# --- optimiser masks and counts --------------------------------------------------------------
def _is_box(x: Any) -> bool:
  return isinstance(x, nn.meta.AxisMetadata)


def _key_name(k: Any) -> str:
  for attr in ("key", "name", "idx"):
    if hasattr(k, attr):
      return str(getattr(k, attr))
  return str(k)


def trainable_mask(params: Any, config: PeftConfig | None = None,
                   head: Sequence[str] = ()) -> Any:
  """Bool tree like ``params``: True for adapter leaves (and leaves under a ``head`` module).

  Adapter leaves are those with a ``peft_`` path component, counted only when ``config`` adds
  layer adapters (``lora`` / ``kadaptation``). ``head``: module names whose leaves also train
  (e.g. ``("head",)``; a linear probe is ``trainable_mask(params, None, head=("head",))``).
  For full fine-tuning return no mask (``Task.trainable_mask -> None``). Boxed
  (``nn.Partitioned``) leaves give one bool each. Feeds ``engine.optim.make_optimizer``.
  """
  adapters = config is not None and config.method in ("lora", "kadaptation")
  head = tuple(head)

  def leaf(path, _):
    names = [_key_name(k) for k in path]
    return bool((adapters and any(s.startswith(PREFIX) for s in names))
                or any(s in head for s in names))

  return jax.tree_util.tree_map_with_path(leaf, params, is_leaf=_is_box)


def count_params(params: Any, mask: Any = None) -> tuple[int, int]:
  """``(trainable, total)`` element counts; ``mask`` None means all trainable.

  Leaves may be arrays, ``jax.ShapeDtypeStruct`` (from ``jax.eval_shape``) or boxed.
  """
  leaves = [a.value if _is_box(a) else a for a in jax.tree.leaves(params, is_leaf=_is_box)]
  sizes = [math.prod(a.shape) for a in leaves]
  if mask is None:
    return sum(sizes), sum(sizes)
  flags = jax.tree.leaves(mask)
  if len(flags) != len(sizes):
    raise ValueError(f"count_params: mask has {len(flags)} leaves, params {len(sizes)}")
  return sum(s for s, m in zip(sizes, flags) if m), sum(sizes)
