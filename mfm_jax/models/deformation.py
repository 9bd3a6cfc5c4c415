"""Deformation fields that move canonical 3D Gaussians to time t (MorphoSim, 4D-GS).

Written here (no kept library fits: the reference implementations are PyTorch/CUDA). Two fields,
selected by name through `make_deformation(kind, **kwargs)` (`config.model.deformation.kind`):

`HexPlaneField` ("hexplane"; HexPlane, Cao & Johnson 2023, as the deformation encoder of 4D-GS,
Wu et al. 2024): for a Gaussian at p = (x, y, z) (normalised to [-1, 1]^3 by the scene box) and
a time t in [0, 1] (mapped to [-1, 1]), six learned planes per resolution level r,
P^r_xy, P^r_xz, P^r_yz (spatial, R_r x R_r) and P^r_xt, P^r_yt, P^r_zt (space-time, R_r x R_t),
each [C, rows, cols], are sampled bilinearly (`bilinear_sample`: align-corners, so -1 and 1 are
the centres of the first and last texels; border-clamped). The six C-vectors of a level are
combined by the Hadamard **product** (the 4D-GS / K-Planes choice: a space-time plane can switch
a spatial feature on or off; `combine="sum"` adds them instead), and the levels are concatenated
(C x L). A small ReLU MLP maps that to a hidden vector, and three heads give
  Δposition [N, 3], Δrotation [N, 4] (a delta quaternion (1 + a, b, c, d), normalised when
  applied) and Δscale [N, 3] (added to the log-scales).
The heads are zero-initialised, so at init every delta is exactly the identity and t has no
effect; spatial planes start uniform in [0.1, 0.5] and space-time planes at 1 (K-Planes init).
The head outputs are multiplied by `output_scale` (0.1): under Adam that makes the heads ~10x
slower than the planes, as 4D-GS's learning rates do; without it one shared head can move or
grow every Gaussian at once by lr x width per step.

`MotionScaffold` ("scaffold"; MorphoSim's motion nodes, cf. embedded deformation / SC-GS): K
nodes with canonical centres c_k [K, 3] and, per key frame f (F = num_frames key frames at times
f / (F - 1)), a rotation q_fk (quaternion, identity at init) and a translation u_fk [3] (zero at
init). Node k's rigid motion at time t maps p to R_k (p - c_k) + c_k + u_k, i.e. rotation R_k and
translation τ_k = c_k + u_k - R_k c_k; between key frames translations are interpolated linearly
and rotations by normalised lerp. Each Gaussian is skinned to its `num_neighbors` nearest nodes
(canonical space) with Gaussian RBF weights w_k ∝ exp(-|p - c_k|² / (2 σ_k²)) (σ_k learned, as
log σ), normalised over the neighbours. Blending (`blend`):
  "dqb" (default): dual-quaternion blending (Kavan et al. 2008): each node's (R_k, τ_k) is the unit
    dual quaternion q̂_k = q_k + ε ½ (0, τ_k) q_k; q̂ = Σ w_k s_k q̂_k with s_k = ±1 putting every
    q_k in the hemisphere of the nearest neighbour's; q̂ / |q_real| is again rigid: rotation
    q_real, translation 2 q_dual q_real* — no "candy-wrapper" collapse under twists.
  "lbs": linear blend skinning, p' = Σ w_k (R_k p + τ_k); rotation: the normalised
    blend Σ w_k s_k q_k.
The key-frame motions are stored as (q - identity) / `param_scale` and u / `param_scale`
(zero at init): under Adam they then move `param_scale` (10) times faster than the other
parameters, so a node can follow an object across the scene within a short fit.
The scaffold returns the same deltas as the HexPlane field (Δscale = 0), so both plug into
`apply_deltas`. `smoothness(params)` is a second-difference penalty on the key-frame motions
(it also fills key frames that no training image constrains).
"""
from __future__ import annotations

from typing import Any, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

Array = Any


# --- quaternions (w, x, y, z) ---------------------------------------------------------------------
def quat_mul(a: Array, b: Array) -> Array:
  """Hamilton product a b; [..., 4] x [..., 4] -> [..., 4]."""
  aw, ax, ay, az = jnp.moveaxis(a, -1, 0)
  bw, bx, by, bz = jnp.moveaxis(b, -1, 0)
  return jnp.stack([aw * bw - ax * bx - ay * by - az * bz,
                    aw * bx + ax * bw + ay * bz - az * by,
                    aw * by - ax * bz + ay * bw + az * bx,
                    aw * bz + ax * by - ay * bx + az * bw], -1)


def quat_conj(q: Array) -> Array:
  return q * jnp.asarray([1.0, -1.0, -1.0, -1.0], q.dtype)


def quat_normalize(q: Array, eps: float = 1e-12) -> Array:
  return q / jnp.sqrt(jnp.sum(q * q, -1, keepdims=True) + eps)


def quat_rotate(q: Array, v: Array) -> Array:
  """Rotates v [..., 3] by the unit quaternion q [..., 4]: q (0, v) q*."""
  u, w = q[..., 1:], q[..., :1]
  t = 2.0 * jnp.cross(u, v)
  return v + w * t + jnp.cross(u, t)


def quat_from_axis_angle(axis: Array, angle: Array) -> Array:
  """Unit quaternion [..., 4] for a rotation by `angle` [...] about `axis` [..., 3]."""
  axis = axis / jnp.linalg.norm(axis, axis=-1, keepdims=True)
  half = 0.5 * jnp.asarray(angle)[..., None]
  return jnp.concatenate([jnp.cos(half), jnp.sin(half) * axis], -1)


def apply_deltas(means: Array, quats: Array, log_scales: Array, deltas: dict
                 ) -> tuple[Array, Array, Array]:
  """Canonical Gaussians + deltas -> Gaussians at time t.

  Args:
    means: [N, 3]; quats: [N, 4] (w, x, y, z); log_scales: [N, 3].
    deltas: dict(d_xyz [N, 3], d_rot [N, 4] (delta quaternion, left-multiplied), d_scale [N, 3]).

  Returns:
    (means [N, 3], quats [N, 4] normalised, log_scales [N, 3]).
  """
  q = quat_mul(quat_normalize(deltas["d_rot"]), quat_normalize(quats))
  return means + deltas["d_xyz"], q, log_scales + deltas["d_scale"]


# --- HexPlane ------------------------------------------------------------------------------------
def bilinear_sample(plane: Array, uv: Array) -> Array:
  """Samples plane [C, H, W] at uv [N, 2] in [-1, 1] (u along W, v along H) -> [N, C].

  Align-corners: u = -1 / 1 are the centres of columns 0 / W-1; outside, the border is clamped.
  """
  c, h, w = plane.shape
  x = (jnp.clip(uv[:, 0], -1.0, 1.0) + 1.0) * 0.5 * (w - 1)
  y = (jnp.clip(uv[:, 1], -1.0, 1.0) + 1.0) * 0.5 * (h - 1)
  x0 = jnp.clip(jnp.floor(x), 0, max(w - 2, 0)).astype(jnp.int32)
  y0 = jnp.clip(jnp.floor(y), 0, max(h - 2, 0)).astype(jnp.int32)
  x1, y1 = jnp.minimum(x0 + 1, w - 1), jnp.minimum(y0 + 1, h - 1)
  fx, fy = (x - x0)[:, None], (y - y0)[:, None]
  flat = plane.reshape(c, h * w).T  # [H W, C]
  g = lambda yy, xx: flat[yy * w + xx]  # noqa: E731
  return ((1 - fy) * ((1 - fx) * g(y0, x0) + fx * g(y0, x1))
          + fy * ((1 - fx) * g(y1, x0) + fx * g(y1, x1)))


PLANES = ((0, 1), (0, 2), (1, 2), (0, 3), (1, 3), (2, 3))  # xy xz yz xt yt zt (t is coordinate 3)


def _plane_init(value_range, time_plane: bool):
  def init(rng, shape, dtype=jnp.float32):
    if time_plane:
      return jnp.ones(shape, dtype)
    return jax.random.uniform(rng, shape, dtype, *value_range)
  return init


class HexPlaneField(nn.Module):
  """Six multi-resolution feature planes over (x, y, z, t) + MLP heads (module docstring).

  Attributes:
    bounds: ((x0, y0, z0), (x1, y1, z1)) the scene box mapped to [-1, 1]^3.
    resolutions: spatial plane resolution R_r per level.
    time_resolution: R_t, the time axis of the space-time planes.
    features: C per plane.
    hidden: MLP width; depth: hidden layers.
    combine: "product" or "sum" of the six planes of a level.
    output_scale: factor on the head outputs (slows the heads under Adam).
  """
  bounds: Sequence[Sequence[float]] = ((-1.0, -1.0, -1.0), (1.0, 1.0, 1.0))
  resolutions: Sequence[int] = (16, 32)
  time_resolution: int = 8
  features: int = 16
  hidden: int = 64
  depth: int = 1
  combine: str = "product"
  output_scale: float = 0.1

  def setup(self):
    if self.combine not in ("product", "sum"):
      raise ValueError(f"HexPlaneField.combine={self.combine!r}: use 'product' or 'sum'")
    planes = {}
    for r in self.resolutions:
      for a, b in PLANES:
        name = f"plane_{r}_{'xyzt'[a]}{'xyzt'[b]}"
        rows = self.time_resolution if b == 3 else r
        planes[name] = self.param(name, _plane_init((0.1, 0.5), b == 3), (self.features, rows, r))
    self.planes = planes
    self.mlp = [nn.Dense(self.hidden, name=f"mlp_{i}") for i in range(self.depth)]
    zero = dict(kernel_init=nn.initializers.zeros, bias_init=nn.initializers.zeros)
    self.head_xyz = nn.Dense(3, **zero)
    self.head_rot = nn.Dense(4, **zero)
    self.head_scale = nn.Dense(3, **zero)

  def encode(self, means: Array, t: Array) -> Array:
    """means [N, 3], t scalar or [N] in [0, 1] -> plane features [N, C x L]."""
    lo, hi = (jnp.asarray(b, means.dtype) for b in self.bounds)
    xyz = 2.0 * (means - lo) / (hi - lo) - 1.0
    tt = jnp.broadcast_to(2.0 * jnp.asarray(t, means.dtype) - 1.0, means.shape[:1])
    coords = jnp.concatenate([xyz, tt[:, None]], -1)  # [N, 4]
    levels = []
    for r in self.resolutions:
      feats = [bilinear_sample(self.planes[f"plane_{r}_{'xyzt'[a]}{'xyzt'[b]}"], coords[:, (a, b)])
               for a, b in PLANES]  # u: the first axis of the pair, v: the second
      combined = feats[0]
      for f in feats[1:]:
        combined = combined * f if self.combine == "product" else combined + f
      levels.append(combined)
    return jnp.concatenate(levels, -1)

  def __call__(self, means: Array, t: Array) -> dict:
    """means [N, 3] (canonical), t scalar or [N] in [0, 1] -> dict(d_xyz, d_rot, d_scale)."""
    h = self.encode(means, t)
    for layer in self.mlp:
      h = nn.relu(layer(h))
    s = self.output_scale
    d_rot = s * self.head_rot(h) + jnp.asarray([1.0, 0.0, 0.0, 0.0], h.dtype)
    return dict(d_xyz=s * self.head_xyz(h), d_rot=d_rot, d_scale=s * self.head_scale(h))


# --- motion scaffold -----------------------------------------------------------------------------
def node_transforms(nodes: Array, rots: Array, trans: Array) -> tuple[Array, Array]:
  """(R_k, τ_k) of nodes rotating about their centres: q [K, 4] (unit), τ = c + u - R c [K, 3]."""
  q = quat_normalize(rots)
  return q, nodes + trans - quat_rotate(q, nodes)


def blend(points: Array, weights: Array, q: Array, tau: Array, mode: str = "dqb"
          ) -> tuple[Array, Array]:
  """Blends rigid node motions at points.

  Args:
    points: [N, 3]; weights: [N, J] (rows sum to 1); q: [N, J, 4] unit rotations of each point's
      J nodes; tau: [N, J, 3] their translations (x -> R x + τ). Node 0 of each row is the
      reference for the quaternion hemisphere (the nearest node).
    mode: "dqb" (dual quaternions) or "lbs" (linear blend).

  Returns:
    (moved points [N, 3], blended unit rotation [N, 4]).
  """
  sign = jnp.where(jnp.sum(q * q[:, :1], -1, keepdims=True) < 0, -1.0, 1.0)
  q = q * sign
  w = weights[..., None]
  if mode == "lbs":
    moved = jnp.sum(w * (quat_rotate(q, points[:, None, :]) + tau), 1)
    return moved, quat_normalize(jnp.sum(w * q, 1))
  if mode != "dqb":
    raise ValueError(f"blend mode {mode!r}: use 'dqb' or 'lbs'")
  zeros = jnp.zeros(tau.shape[:-1] + (1,), tau.dtype)
  dual = 0.5 * quat_mul(jnp.concatenate([zeros, tau], -1), q)  # [N, J, 4]
  real_b, dual_b = jnp.sum(w * q, 1), jnp.sum(w * dual, 1)
  norm = jnp.sqrt(jnp.sum(real_b * real_b, -1, keepdims=True) + 1e-12)
  real_b, dual_b = real_b / norm, dual_b / norm
  t = 2.0 * quat_mul(dual_b, quat_conj(real_b))[..., 1:]
  return quat_rotate(real_b, points) + t, real_b


def interpolate_keys(keys: Array, t: Array) -> Array:
  """Linear interpolation of key-frame values keys [F, ...] at t in [0, 1] (scalar) -> [...]."""
  f = keys.shape[0]
  if f == 1:
    return keys[0]
  x = jnp.clip(jnp.asarray(t, keys.dtype), 0.0, 1.0) * (f - 1)
  i0 = jnp.clip(jnp.floor(x), 0, f - 2).astype(jnp.int32)
  a = x - i0
  return (1 - a) * keys[i0] + a * keys[i0 + 1]


class MotionScaffold(nn.Module):
  """K motion nodes with per-key-frame rigid motions; Gaussians skinned by DQB or LBS.

  Attributes:
    num_nodes: K.
    num_frames: F key frames (at times f / (F - 1)).
    num_neighbors: J nodes per Gaussian (fixed).
    init_sigma: initial RBF σ of every node.
    bounds: the scene box where node centres are initialised uniformly (tasks overwrite
      `nodes` with samples of the initial Gaussians).
    blend: "dqb" or "lbs".
    param_scale: stored key-frame motions are multiplied by this (module docstring).
  """
  num_nodes: int = 64
  num_frames: int = 16
  num_neighbors: int = 4
  init_sigma: float = 0.5
  bounds: Sequence[Sequence[float]] = ((-1.0, -1.0, -1.0), (1.0, 1.0, 1.0))
  blend: str = "dqb"
  param_scale: float = 10.0

  @nn.compact
  def __call__(self, means: Array, t: Array) -> dict:
    """means [N, 3] (canonical), t a scalar in [0, 1] -> dict(d_xyz, d_rot, d_scale)."""
    k, f = self.num_nodes, self.num_frames
    lo, hi = (jnp.asarray(b, jnp.float32) for b in self.bounds)
    nodes = self.param("nodes", lambda r, s: lo + (hi - lo) * jax.random.uniform(r, s), (k, 3))
    log_sigma = self.param("log_sigma", nn.initializers.constant(jnp.log(self.init_sigma)), (k,))
    identity = jnp.asarray([1.0, 0.0, 0.0, 0.0])
    rots = identity + self.param_scale * self.param("rotations", nn.initializers.zeros, (f, k, 4))
    trans = self.param_scale * self.param("translations", nn.initializers.zeros, (f, k, 3))
    q, tau = node_transforms(nodes, interpolate_keys(rots, t), interpolate_keys(trans, t))
    weights, idx = skinning_weights(means, nodes, jnp.exp(log_sigma), self.num_neighbors)
    moved, rot = blend(means, weights, q[idx], tau[idx], self.blend)
    return dict(d_xyz=moved - means, d_rot=rot, d_scale=jnp.zeros_like(means))


def skinning_weights(points: Array, nodes: Array, sigma: Array, num_neighbors: int
                     ) -> tuple[Array, Array]:
  """Nearest-node RBF weights.

  Args:
    points: [N, 3]; nodes: [K, 3]; sigma: [K] RBF widths; num_neighbors: J <= K.

  Returns:
    (weights [N, J] summing to 1, node indices [N, J], nearest first).
  """
  d2 = jnp.sum((points[:, None, :] - nodes[None]) ** 2, -1)  # [N, K]
  _, idx = jax.lax.top_k(-jax.lax.stop_gradient(d2), min(num_neighbors, nodes.shape[0]))
  d2j = jnp.take_along_axis(d2, idx, 1)
  logits = -d2j / (2.0 * sigma[idx] ** 2)
  return jax.nn.softmax(logits, -1), idx  # softmax = exp-normalised RBF, stable when far away


def smoothness(params: dict) -> Array:
  """Mean squared second difference over key frames of a scaffold's motions (0 for < 3 frames)."""
  out = jnp.zeros(())
  for key in ("translations", "rotations"):
    x = params[key]
    if x.shape[0] >= 3:
      out = out + jnp.mean((x[2:] - 2 * x[1:-1] + x[:-2]) ** 2)
  return out


class NoDeformation(nn.Module):
  """The static scene: identity deltas (kind "none")."""

  @nn.compact
  def __call__(self, means: Array, t: Array) -> dict:
    del t
    return dict(d_xyz=jnp.zeros_like(means),
                d_rot=jnp.broadcast_to(jnp.asarray([1.0, 0, 0, 0], means.dtype),
                                       means.shape[:-1] + (4,)),
                d_scale=jnp.zeros_like(means))


KINDS = {"hexplane": HexPlaneField, "scaffold": MotionScaffold, "none": NoDeformation}


def make_deformation(kind: str, **kwargs) -> nn.Module:
  """The deformation module `kind` ("hexplane", "scaffold" or "none") with its attributes."""
  if kind not in KINDS:
    raise ValueError(f"deformation kind {kind!r}: use one of {sorted(KINDS)}")
  return KINDS[kind](**kwargs)
