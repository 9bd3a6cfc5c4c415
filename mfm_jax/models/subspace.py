"""Subspace training: ``theta = theta0 + P theta_d`` with a seeded Fastfood projection ``P``.

``P`` ([D, d], D = number of parameters in the subspace, d = intrinsic dimension) is never stored:
it is the Fastfood transform (Le et al. 2013; used for intrinsic dimension by Li et al. 2018 and
Aghajanyan et al. 2021), regenerated inside ``jit`` from the seed. With ``L = 2^ceil(log2 d)`` and
``K = ceil(D / L)`` blocks, block ``k`` maps ``theta_d`` (zero-padded to ``L``) to

    y_k = H G_k Pi_k H B_k theta_d / (sqrt(L) |g_k|)

(``H`` the unnormalised Walsh-Hadamard transform, ``B_k`` random signs, ``Pi_k`` a random
permutation, ``G_k = diag(g_k)`` Gaussian). Every column of each block has norm exactly 1, so
``P = sqrt(L / D) [y_0; ...; y_{K-1}][:D]`` has columns of norm exactly 1 when ``L`` divides ``D``
and squared norm 1 in expectation otherwise (the last block is truncated). Cost per call:
``O(D log L)`` time and ``O(D)`` memory (sign, permutation, gain and two ``[K, L]`` buffers), never
``D x d``. Written here because no kept library offers a JAX Fastfood transform.

``local=True`` is the per-leaf variant: ``theta_d`` is split into one slice per parameter leaf,
sized in proportion to the leaf (largest remainder; leaves that get 0 dims stay at ``theta0``), and
each leaf has its own Fastfood ``P_l`` (seed folded with the leaf index): ``P`` is block-diagonal.
"""
from __future__ import annotations

import math
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np


def _next_pow2(n: int) -> int:
  return 1 << max(0, (n - 1).bit_length())


def fwht(x: jax.Array) -> jax.Array:
  """Unnormalised Walsh-Hadamard transform over the last axis (length a power of two)."""
  n = x.shape[-1]
  lead, h = x.shape[:-1], 1
  while h < n:
    y = x.reshape(*lead, n // (2 * h), 2, h)
    x = jnp.stack([y[..., 0, :] + y[..., 1, :], y[..., 0, :] - y[..., 1, :]], axis=-2)
    h *= 2
  return x.reshape(*lead, n)


def fastfood(theta_d: jax.Array, rows: int, key: jax.Array) -> jax.Array:
  """``P @ theta_d`` for the Fastfood ``P`` [rows, d] defined by ``key`` (module docstring).

  Args:
    theta_d: [d] float vector.
    rows: D, the output length.
    key: PRNG key that fixes ``P``.

  Returns:
    [rows] float32.
  """
  d = theta_d.shape[0]
  n = _next_pow2(d)
  k = -(-rows // n)
  kb, kp, kg = jax.random.split(key, 3)
  sign = jax.random.rademacher(kb, (k, n), jnp.float32)
  perm = jnp.argsort(jax.random.bits(kp, (k, n)), axis=-1)
  g = jax.random.normal(kg, (k, n), jnp.float32)
  norm = jax.lax.rsqrt(n * jnp.sum(g * g, axis=-1, keepdims=True)) * math.sqrt(n / rows)
  x = jnp.pad(theta_d.astype(jnp.float32), (0, n - d))
  y = fwht(sign * x[None, :])
  y = jnp.take_along_axis(y, perm, axis=-1) * g
  return (fwht(y) * norm).reshape(-1)[:rows]


def _allocate(dim: int, sizes: list[int]) -> list[int]:
  """``dim`` split over leaves in proportion to ``sizes`` (largest remainder), each <= size."""
  total = sum(sizes)
  if not 1 <= dim <= total:
    raise ValueError(f"Subspace: dim={dim} must be in [1, {total}] (parameters in the subspace)")
  exact = [dim * s / total for s in sizes]
  out = [min(int(math.floor(e)), s) for e, s in zip(exact, sizes)]
  order = sorted(range(len(sizes)), key=lambda i: out[i] - exact[i])
  i = 0
  while sum(out) < dim:
    j = order[i % len(order)]
    if out[j] < sizes[j]:
      out[j] += 1
    i += 1
  return out


@jax.tree_util.register_pytree_node_class
class Subspace:
  """``theta = theta0 + P theta_d`` over the float leaves of a parameter tree.

  Usage::

    subspace = Subspace(theta0, dim=d, seed=s, local=False)
    theta_d = subspace.init()            # zeros [d]: expand(theta_d) == theta0
    params = subspace.expand(theta_d)    # inside the jitted loss; grads flow to theta_d

  A pytree (``theta0`` is its only child), so it can be an argument of ``jit``; ``theta0`` may be
  abstract (``jax.ShapeDtypeStruct``) when the real one is passed to ``expand(theta_d, theta0)``.

  Args:
    theta0: the frozen parameter tree (unboxed).
    dim: intrinsic dimension ``d``.
    seed: fixes ``P``.
    local: one ``theta_d`` slice and Fastfood ``P_l`` per leaf (module docstring).
    mask: optional bool tree like ``theta0``; False leaves stay at ``theta0``. Non-float leaves
      always do.
  """

  def __init__(self, theta0: Any, dim: int, seed: int = 0, local: bool = False,
               mask: Any = None):
    leaves, treedef = jax.tree.flatten(theta0)
    flags = [True] * len(leaves) if mask is None else [bool(m) for m in jax.tree.leaves(mask)]
    if len(flags) != len(leaves):
      raise ValueError(f"Subspace: mask has {len(flags)} leaves, theta0 {len(leaves)}")
    sel = tuple(i for i, (a, f) in enumerate(zip(leaves, flags))
                if f and jnp.issubdtype(a.dtype, jnp.inexact))
    sizes = [int(np.prod(leaves[i].shape)) for i in sel]
    if not sel:
      raise ValueError("Subspace: no float leaves selected")
    dims = _allocate(int(dim), sizes) if local else [int(dim)]
    if not local and int(dim) > sum(sizes):
      raise ValueError(f"Subspace: dim={dim} exceeds the {sum(sizes)} parameters in the subspace")
    self.theta0 = theta0
    self._aux = (int(dim), int(seed), bool(local), sel, tuple(sizes), tuple(dims), treedef)

  # pytree protocol: theta0 is the child, the layout is static.
  def tree_flatten(self):
    return (self.theta0,), self._aux

  @classmethod
  def tree_unflatten(cls, aux, children):
    obj = object.__new__(cls)
    obj.theta0, obj._aux = children[0], aux
    return obj

  @property
  def dim(self) -> int:
    return self._aux[0]

  @property
  def seed(self) -> int:
    return self._aux[1]

  @property
  def local(self) -> bool:
    return self._aux[2]

  @property
  def leaf_dims(self) -> tuple[int, ...]:
    """Columns of each selected leaf's ``P_l`` (local), or ``(dim,)`` (global)."""
    return self._aux[5]

  def init(self) -> jax.Array:
    """``theta_d`` zeros [d] (float32)."""
    return jnp.zeros((self.dim,), jnp.float32)

  def _deltas(self, theta_d: jax.Array) -> dict[int, jax.Array]:
    """{leaf index: flat float32 ``(P theta_d)`` for that leaf}."""
    dim, seed, local, sel, sizes, dims, _ = self._aux
    if theta_d.shape != (dim,):
      raise ValueError(f"Subspace: theta_d must have shape ({dim},), got {theta_d.shape}")
    key = jax.random.key(seed)
    if not local:
      flat = fastfood(theta_d, sum(sizes), key)
      offsets = np.cumsum([0] + list(sizes))
      return {i: flat[offsets[j]:offsets[j + 1]] for j, i in enumerate(sel)}
    out, start = {}, 0
    for j, i in enumerate(sel):
      if dims[j]:
        part = jax.lax.dynamic_slice_in_dim(theta_d, start, dims[j])
        out[i] = fastfood(part, sizes[j], jax.random.fold_in(key, i))
        start += dims[j]
    return out

  def project(self, theta_d: jax.Array) -> Any:
    """``P theta_d`` as a tree like ``theta0`` (float32; zeros outside the subspace)."""
    leaves, treedef = jax.tree.flatten(self.theta0)
    deltas = self._deltas(theta_d)
    return jax.tree.unflatten(treedef, [
        deltas[i].reshape(a.shape) if i in deltas else jnp.zeros(a.shape, jnp.float32)
        for i, a in enumerate(leaves)])

  def expand(self, theta_d: jax.Array, theta0: Any = None) -> Any:
    """``theta0 + P theta_d`` in each leaf's dtype (``theta0`` defaults to the stored one)."""
    theta0 = self.theta0 if theta0 is None else theta0
    leaves, treedef = jax.tree.flatten(theta0)
    if treedef != self._aux[6]:
      raise ValueError("Subspace.expand: theta0 has another structure than at construction")
    deltas = self._deltas(theta_d)
    return jax.tree.unflatten(treedef, [
        (a + deltas[i].reshape(a.shape)).astype(a.dtype) if i in deltas else a
        for i, a in enumerate(leaves)])
