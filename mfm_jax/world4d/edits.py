"""Language-selected edits of a Gaussian scene: select by feature similarity, then delete /
extract / recolour / redirect (MorphoSim).

Pure functions of activated Gaussians (the dict ``scene.activate`` returns, plus ``alive`` [N]):
``means [N,3]``, ``scales [N,3]``, ``quats [N,4]``, ``opacities [N]``, ``colors [N,3]`` in [0, 1],
``features [N,F]``. Shapes never change: deleting is ``alive = 0``, so an edited scene renders
with the same compiled rasteriser.

Selection: each Gaussian's feature is decoded to the teacher's embedding space (``decode``, e.g.
the feature field's text head applied per Gaussian) and compared with the query's text
embedding by cosine similarity; Gaussians at or above ``threshold`` (and alive) are selected.
Where unrelated phrases are not near-orthogonal in the teacher space, ``relevancy`` scores the
query against negative phrases instead (threshold 0.5: closer to the query than to any negative).

Redirect gives the selected Gaussians a new trajectory on top of the fitted motion: at time
fraction ``s`` in [0, 1] of the clip they are displaced by ``s * distance * direction`` (a straight
push that starts at the first frame), applied to the deformed means at render time.
"""
from __future__ import annotations

from typing import Any, Callable, Mapping

import jax
import jax.numpy as jnp

from mfm_jax.world4d import commands as commands_lib

Array = Any


def select(decoded: Array, query: Array, alive: Array, threshold: float) -> Array:
  """Cosine-similarity selection.

  Args:
    decoded: [N, E] per-Gaussian embeddings (teacher space).
    query: [E] the text query's embedding.
    alive: [N] 0/1 (or bool) slots in use.
    threshold: minimum cosine similarity.

  Returns:
    [N] bool, True = selected.
  """
  if decoded.ndim != 2 or query.shape != decoded.shape[-1:]:
    raise ValueError(f"select: decoded must be [N, E] and query [E], got {decoded.shape} and "
                     f"{query.shape}")
  d = decoded / jnp.maximum(jnp.linalg.norm(decoded, axis=-1, keepdims=True), 1e-12)
  q = query / jnp.maximum(jnp.linalg.norm(query), 1e-12)
  return (d @ q >= threshold) & (jnp.asarray(alive) > 0)


def relevancy(decoded: Array, query: Array, negatives: Array, temperature: float = 0.1) -> Array:
  """Relevancy of each Gaussian to a query against canonical negative phrases (LERF, Kerr et al.
  2023, pairwise form): ``min_k sigmoid((cos(d, q) - cos(d, n_k)) / temperature)``; >= 0.5 iff
  the Gaussian's embedding is closer to the query than to every negative. For teacher spaces
  where unrelated phrases are far from orthogonal (a small CLIP text tower: cosines of 0.6-0.8
  between "background" and object descriptions), where a fixed cosine threshold cannot work.

  Args:
    decoded: [N, E] per-Gaussian embeddings; query: [E]; negatives: [K, E], K >= 1.

  Returns:
    [N] float in (0, 1).
  """
  if decoded.ndim != 2 or query.shape != decoded.shape[-1:] or negatives.ndim != 2 or \
      negatives.shape[-1] != decoded.shape[-1] or negatives.shape[0] < 1:
    raise ValueError(f"relevancy: decoded must be [N, E], query [E] and negatives [K>=1, E], got "
                     f"{decoded.shape}, {query.shape}, {negatives.shape}")
  unit = lambda x: x / jnp.maximum(jnp.linalg.norm(x, axis=-1, keepdims=True), 1e-12)  # noqa
  d = unit(decoded)
  margin = d @ unit(query) - (d @ unit(negatives).T).max(-1)
  return jax.nn.sigmoid(margin / temperature)


def delete(gaussians: Mapping[str, Array], selected: Array) -> dict:
  """The selected Gaussians leave the scene (alive = 0)."""
  out = dict(gaussians)
  out["alive"] = jnp.where(selected, 0.0, jnp.asarray(gaussians["alive"], jnp.float32))
  return out


def extract(gaussians: Mapping[str, Array], selected: Array) -> dict:
  """Only the selected Gaussians stay."""
  out = dict(gaussians)
  out["alive"] = jnp.where(selected, jnp.asarray(gaussians["alive"], jnp.float32), 0.0)
  return out


def recolour(gaussians: Mapping[str, Array], selected: Array, rgb, mode: str = "assign") -> dict:
  """New colours for the selected Gaussians: ``assign`` rgb, ``add`` rgb (clipped to [0, 1]) or
  ``multiply`` by rgb (a tint). Others keep their colours exactly."""
  if mode not in commands_lib.RECOLOUR_MODES:
    raise ValueError(f"recolour mode {mode!r} is not one of {commands_lib.RECOLOUR_MODES}")
  colors = jnp.asarray(gaussians["colors"])
  rgb = jnp.asarray(rgb, colors.dtype)
  new = {"assign": jnp.broadcast_to(rgb, colors.shape),
         "add": jnp.clip(colors + rgb, 0.0, 1.0),
         "multiply": colors * rgb}[mode]
  out = dict(gaussians)
  out["colors"] = jnp.where(selected[:, None], new, colors)
  return out


def displace(means: Array, selected: Array, direction, distance: float,
             time_fraction: float | Array) -> Array:
  """Deformed means [N, 3] at one time, with the selected pushed along ``direction``."""
  direction = jnp.asarray(direction, means.dtype)
  direction = direction / jnp.maximum(jnp.linalg.norm(direction), 1e-12)
  shift = jnp.asarray(time_fraction, means.dtype) * distance * direction
  return jnp.where(selected[:, None], means + shift, means)


def apply(gaussians: Mapping[str, Array], command: commands_lib.Command,
          selected: Array) -> tuple[dict, Callable[[Array, Array], Array]]:
  """Applies a parsed command to the selected Gaussians.

  Returns:
    (edited Gaussians, ``move(means_t, time_fraction) -> means_t``): the function to apply to
    the deformed means at render time (identity unless the command is a redirect with a
    direction; ``towards`` needs the other object's position and is resolved by the caller).
  """
  op = command.operation
  identity = lambda means, s: means  # noqa: E731
  if op == "delete":
    return delete(gaussians, selected), identity
  if op == "extract":
    return extract(gaussians, selected), identity
  if op == "recolour":
    return recolour(gaussians, selected, command.args["rgb"], command.args["mode"]), identity
  if op == "redirect":
    if "direction" not in command.args:
      raise ValueError(f"redirect towards {command.args.get('towards')!r}: resolve the target "
                       "object's position and pass a direction")
    dist = command.args.get("distance") or 1.0
    return dict(gaussians), lambda means, s: displace(means, selected, command.args["direction"],
                                                      dist, s)
  raise ValueError(f"unknown operation {op!r}; expected one of {commands_lib.OPERATIONS}")
