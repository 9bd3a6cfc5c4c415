"""Device mesh, logical-axis rules and global batches.

Mesh axes are always ``("data", "fsdp", "context", "tensor")``; ``config.mesh.axes`` gives their
sizes, where ``-1`` means "all devices that are left" (at most one axis may say so). Axis types are
``Auto`` so that Linen's logical partitioning (``nn.with_logical_partitioning``) drives GSPMD.

Logical names used by the models: ``batch, frames, length, height, width, embed, heads, kv, mlp,
vocab, conv_in, conv_out, gaussians``. ``config.mesh.rules`` maps each to a mesh axis, a tuple of
mesh axes, or ``None`` (replicated).
"""
from __future__ import annotations

import math
from typing import Any, Mapping, Sequence

import flax.linen as nn
import jax
import numpy as np
from jax.sharding import AxisType, Mesh, NamedSharding, PartitionSpec as P

MESH_AXES = ("data", "fsdp", "context", "tensor")

# Defaults: batch over data+fsdp, weights sharded over fsdp on their embed axis, tensor
# parallelism over heads/mlp/vocab, video tokens over context.
DEFAULT_RULES = (
    ("batch", ("data", "fsdp")),
    ("embed", "fsdp"),
    ("mlp", "tensor"),
    ("heads", "tensor"),
    ("kv", None),
    ("vocab", "tensor"),
    ("length", "context"),
    ("frames", None),
    ("height", None),
    ("width", None),
    ("conv_in", None),
    ("conv_out", "tensor"),
    ("gaussians", ("data", "fsdp")),
)


def mesh_shape(axes: Mapping[str, int], num_devices: int) -> tuple[int, ...]:
  """Resolves axis sizes (``-1`` = the rest) against ``num_devices``; errors name the axis."""
  unknown = set(axes) - set(MESH_AXES)
  if unknown:
    raise ValueError(f"config.mesh.axes: unknown mesh axis {sorted(unknown)}; use {MESH_AXES}")
  sizes = [int(axes.get(a, 1)) for a in MESH_AXES]
  rest = [a for a, s in zip(MESH_AXES, sizes) if s == -1]
  if len(rest) > 1:
    raise ValueError(f"config.mesh.axes: only one axis may be -1, got {rest}")
  for a, s in zip(MESH_AXES, sizes):
    if s == 0 or s < -1:
      raise ValueError(f"config.mesh.axes.{a}={s}: sizes are positive or -1")
  known = math.prod(s for s in sizes if s != -1)
  if rest:
    if num_devices % known:
      raise ValueError(f"config.mesh.axes {dict(axes)}: {num_devices} devices are not divisible by {known}")
    sizes[MESH_AXES.index(rest[0])] = num_devices // known
  if math.prod(sizes) != num_devices:
    raise ValueError(f"config.mesh.axes {dict(axes)} needs {math.prod(sizes)} devices, have {num_devices}")
  return tuple(sizes)


def make_mesh(axes: Mapping[str, int] | None = None, devices: Sequence[Any] | None = None) -> Mesh:
  """A 4-axis mesh ``(data, fsdp, context, tensor)`` with Auto axis types."""
  devices = list(jax.devices() if devices is None else devices)
  shape = mesh_shape(axes or {"data": -1}, len(devices))
  if len(devices) == len(jax.devices()) and devices == list(jax.devices()):
    return jax.make_mesh(shape, MESH_AXES, axis_types=(AxisType.Auto,) * len(MESH_AXES))
  return Mesh(np.asarray(devices).reshape(shape), MESH_AXES,
              axis_types=(AxisType.Auto,) * len(MESH_AXES))


def rules_from_config(rules: Any | None) -> tuple[tuple[str, Any], ...]:
  """Normalises ``config.mesh.rules`` (list of pairs or dict) into a rules tuple."""
  if rules is None:
    return DEFAULT_RULES
  items = rules.items() if hasattr(rules, "items") else rules
  out = []
  for logical, physical in items:
    if isinstance(physical, list):
      physical = tuple(physical)
    for ax in (physical if isinstance(physical, tuple) else (physical,)):
      if ax is not None and ax not in MESH_AXES:
        raise ValueError(f"config.mesh.rules[{logical!r}]: unknown mesh axis {ax!r}")
    out.append((logical, physical))
  return tuple(out)


def logical_to_sharding(logical_tree: Any, mesh: Mesh, rules) -> Any:
  """Maps a tree of logical ``PartitionSpec``s (from ``nn.get_partition_spec``) to NamedShardings."""
  return nn.logical_to_mesh_sharding(logical_tree, mesh, rules)


def batch_sharding(mesh: Mesh, rules, ndim: int = 1) -> NamedSharding:
  """Sharding of a batch-leading array: the batch axis follows the ``batch`` rule."""
  spec = nn.logical_to_mesh_axes(("batch",) + (None,) * (ndim - 1), rules)
  return NamedSharding(mesh, spec)


def replicated(mesh: Mesh) -> NamedSharding:
  return NamedSharding(mesh, P())


def batch_size_per_process(global_batch: int) -> int:
  n = jax.process_count()
  if global_batch % n:
    raise ValueError(f"batch_size={global_batch} is not divisible by {n} processes")
  return global_batch // n


def global_batch(local: Mapping[str, np.ndarray], mesh: Mesh, rules) -> dict[str, jax.Array]:
  """Builds global arrays from this process's slice of the batch (leading axis = batch)."""
  out = {}
  n = jax.process_count()
  for key, value in local.items():
    value = np.asarray(value)
    if value.ndim == 0:
      raise ValueError(f"batch[{key!r}] is a scalar; every batch entry needs a leading batch axis")
    sharding = batch_sharding(mesh, rules, value.ndim)
    shape = (value.shape[0] * n,) + value.shape[1:]
    out[key] = jax.make_array_from_process_local_data(sharding, value, shape)
  return out
