"""Train state and its sharded creation.

``TrainState`` holds ``step``, ``params``, ``opt_state``, optional ``ema_params`` and the count of
updates skipped for non-finite values. It is created with ``jax.eval_shape`` (no memory) to get
its structure, its shardings come from the params' logical axis names, and a jitted init writes it
straight into those shardings.
"""
from __future__ import annotations

from typing import Any, Callable

import flax
import flax.linen as nn
import jax
import jax.numpy as jnp
import optax
from jax.sharding import NamedSharding, PartitionSpec as P


@flax.struct.dataclass
class TrainState:
  step: jax.Array
  params: Any
  opt_state: Any
  ema_params: Any
  nonfinite_count: jax.Array

  @classmethod
  def create(cls, params, tx: optax.GradientTransformation, ema: bool) -> "TrainState":
    return cls(step=jnp.zeros((), jnp.int32), params=params, opt_state=tx.init(params),
               ema_params=jax.tree.map(jnp.copy, params) if ema else None,
               nonfinite_count=jnp.zeros((), jnp.int32))


def unbox_abstract(tree: Any) -> Any:
  """Unboxes ``nn.Partitioned`` leaves without a sharding constraint (safe outside jit)."""
  is_box = lambda x: isinstance(x, nn.meta.AxisMetadata)
  return jax.tree.map(lambda x: x.unbox(apply_constraint=False) if is_box(x) else x, tree,
                      is_leaf=is_box)


def param_logical_specs(init_fn: Callable[[jax.Array], Any], rng: jax.Array) -> tuple[Any, Any]:
  """``(abstract unboxed params, tree of logical PartitionSpecs)`` from a boxed init function."""
  boxed = jax.eval_shape(init_fn, rng)
  specs = nn.get_partition_spec(boxed)
  return unbox_abstract(boxed), specs


def state_shardings(abstract_state: TrainState, tx, param_specs: Any, mesh, rules) -> TrainState:
  """NamedShardings for every leaf of ``abstract_state``; optimizer moments follow their params."""
  param_sh = nn.logical_to_mesh_sharding(param_specs, mesh, rules)
  rep = NamedSharding(mesh, P())
  # A moment shaped like its param shares its sharding; factored moments (adafactor) and
  # counters are replicated. Frozen params (a trainable mask: optax.multi_transform) have an
  # empty ``MaskedNode`` in the state of the partition they are not in; it stays as it is.
  masked = lambda x: isinstance(x, optax.MaskedNode)  # noqa: E731

  def moment(leaf, p, sh):
    if masked(leaf):
      return leaf
    return sh if tuple(leaf.shape) == tuple(p.shape) else rep

  opt_sh = optax.tree_map_params(
      tx, moment, abstract_state.opt_state, abstract_state.params, param_sh,
      transform_non_params=lambda _: rep,
      is_leaf=lambda x: isinstance(x, NamedSharding) or masked(x))
  return TrainState(step=rep, params=param_sh, opt_state=opt_sh,
                    ema_params=param_sh if abstract_state.ema_params is not None else None,
                    nonfinite_count=rep)


def abstract_with_sharding(abstract: Any, shardings: Any) -> Any:
  """ShapeDtypeStructs carrying shardings: the restore target for orbax."""
  return jax.tree.map(lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s),
                      abstract, shardings)


def abstract_state(init_fn, tx, rng, mesh, rules, ema: bool):
  """``(abstract state with shardings, shardings)`` without allocating anything."""
  _, param_specs = param_logical_specs(init_fn, rng)
  abstract = jax.eval_shape(lambda r: TrainState.create(nn.meta.unbox(init_fn(r)), tx, ema), rng)
  shardings = state_shardings(abstract, tx, param_specs, mesh, rules)
  return abstract_with_sharding(abstract, shardings), shardings


def create_sharded(init_fn, tx, rng, shardings, ema: bool) -> TrainState:
  """Initialises the state by a jitted init that writes straight into ``shardings``."""
  make = lambda r: TrainState.create(nn.meta.unbox(init_fn(r)), tx, ema)
  return jax.jit(make, out_shardings=shardings)(rng)
