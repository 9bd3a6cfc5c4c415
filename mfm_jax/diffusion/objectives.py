"""Diffusion training objectives: epsilon, v, x0 (``sample``) and rectified flow.

Conventions (shared with ``samplers``):

* ``model_fn(x_t, t) -> out`` with x_t: [B, ...] and t: [B] float32, the *model timestep*.
* DDPM objectives (``epsilon``, ``v_prediction``, ``sample``): t is an integer-valued float in
  [0, N) (N = ``num_train_timesteps``), drawn uniformly;
  x_t = sqrt(abar_t) x0 + sqrt(1 - abar_t) eps (diffusers' ``DDPMScheduler.add_noise``).
  Targets: eps; v = sqrt(abar_t) eps - sqrt(1 - abar_t) x0 (diffusers' ``get_velocity``); x0.
* ``flow`` (rectified flow, as diffusers' ``FlowMatchEulerDiscreteScheduler``): sigma in [0, 1],
  x_t = (1 - sigma) x0 + sigma eps, target (velocity) = eps - x0, and the model receives
  t = sigma * N. sigma ~ U(0, 1) (``time_sampling='uniform'``) or sigmoid(N(mean, std))
  (``'logit_normal'``, SD3), optionally shifted by sigma' = s sigma / (1 + (s - 1) sigma).
* The loss is the mean squared error per example over the non-batch axes, optionally restricted
  by a per-element ``mask`` (masked diffusion loss: mean over the elements where mask > 0,
  weighted by the mask) and scaled by per-example ``weights``.

All functions are jittable; schedule settings are static Python values.
"""
from __future__ import annotations

from typing import Any, Callable

import jax
import jax.numpy as jnp

from mfm_jax.diffusion import schedules

OBJECTIVES = ("epsilon", "v_prediction", "sample", "flow")
TIME_SAMPLING = ("uniform", "logit_normal")
ModelFn = Callable[[jax.Array, jax.Array], jax.Array]


def _check_objective(objective: str) -> None:
  if objective not in OBJECTIVES:
    raise ValueError(f"objective must be one of {OBJECTIVES}, got {objective!r}")


def _per_example(v: jax.Array, ndim: int) -> jax.Array:
  """[B] -> [B, 1, ..., 1] with ``ndim`` axes in all."""
  return v.reshape(v.shape[:1] + (1,) * (ndim - 1))


def coefficients(t: jax.Array, objective: str, *, num_train_timesteps: int = 1000,
                 beta_schedule: str = "linear", beta_start: float = 0.0001,
                 beta_end: float = 0.02) -> tuple[jax.Array, jax.Array]:
  """(alpha, sigma) with x_t = alpha * x0 + sigma * noise at model timestep t.

  Args:
    t: [B] model timesteps (integer-valued for DDPM objectives, sigma * N for ``flow``).
    objective: one of ``OBJECTIVES``.
    num_train_timesteps: N.
    beta_schedule: beta schedule name (DDPM objectives).
    beta_start: first beta.
    beta_end: last beta.

  Returns:
    (alpha, sigma), each [B] float32.
  """
  _check_objective(objective)
  t = jnp.asarray(t, jnp.float32)
  if objective == "flow":
    s = t / num_train_timesteps
    return 1.0 - s, s
  acp = jnp.asarray(
      schedules.alphas_cumprod(beta_schedule, num_train_timesteps, beta_start, beta_end))
  a = acp[jnp.clip(jnp.round(t).astype(jnp.int32), 0, num_train_timesteps - 1)]
  return a**0.5, (1.0 - a) ** 0.5


def add_noise(x0: jax.Array, noise: jax.Array, t: jax.Array, objective: str,
              **schedule: Any) -> jax.Array:
  """x_t = alpha_t * x0 + sigma_t * noise.

  Args:
    x0: [B, ...] clean data.
    noise: [B, ...] standard-normal noise.
    t: [B] model timesteps.
    objective: one of ``OBJECTIVES``.
    **schedule: ``num_train_timesteps``, ``beta_schedule``, ``beta_start``, ``beta_end``.

  Returns:
    x_t: [B, ...] float32.
  """
  a, s = coefficients(t, objective, **schedule)
  return _per_example(a, x0.ndim) * x0 + _per_example(s, x0.ndim) * noise


def target(x0: jax.Array, noise: jax.Array, t: jax.Array, objective: str,
           **schedule: Any) -> jax.Array:
  """The regression target of ``objective`` (eps, v, x0 or the flow velocity): [B, ...]."""
  _check_objective(objective)
  if objective == "epsilon":
    return noise
  if objective == "sample":
    return x0
  if objective == "flow":
    return noise - x0
  a, s = coefficients(t, objective, **schedule)
  return _per_example(a, x0.ndim) * noise - _per_example(s, x0.ndim) * x0


def predict_x0(out: jax.Array, x_t: jax.Array, t: jax.Array, objective: str,
               **schedule: Any) -> jax.Array:
  """The x0 implied by a model output ``out`` at (x_t, t): [B, ...]."""
  _check_objective(objective)
  if objective == "sample":
    return out
  a, s = coefficients(t, objective, **schedule)
  a, s = _per_example(a, x_t.ndim), _per_example(s, x_t.ndim)
  if objective == "epsilon":
    return (x_t - s * out) / a
  if objective == "v_prediction":
    return a * x_t - s * out
  return x_t - s * out  # flow: x0 = x_t - sigma * v


def sample_timesteps(rng: jax.Array, batch: int, objective: str, *,
                     num_train_timesteps: int = 1000, time_sampling: str = "uniform",
                     logit_mean: float = 0.0, logit_std: float = 1.0,
                     flow_shift: float = 1.0) -> jax.Array:
  """Draws training timesteps t: [B] float32 (see the module docstring)."""
  _check_objective(objective)
  if objective != "flow":
    return jax.random.randint(rng, (batch,), 0, num_train_timesteps).astype(jnp.float32)
  if time_sampling == "uniform":
    sigma = jax.random.uniform(rng, (batch,), jnp.float32)
  elif time_sampling == "logit_normal":
    sigma = jax.nn.sigmoid(logit_mean + logit_std * jax.random.normal(rng, (batch,), jnp.float32))
  else:
    raise ValueError(f"time_sampling must be one of {TIME_SAMPLING}, got {time_sampling!r}")
  if flow_shift != 1.0:
    sigma = schedules.flow_shift(sigma, flow_shift)
  return sigma * num_train_timesteps


def loss(model_fn: ModelFn, x0: jax.Array, rng: jax.Array, objective: str, *,
         num_train_timesteps: int = 1000, beta_schedule: str = "linear",
         beta_start: float = 0.0001, beta_end: float = 0.02, mask: jax.Array | None = None,
         weights: jax.Array | None = None, time_sampling: str = "uniform",
         logit_mean: float = 0.0, logit_std: float = 1.0, flow_shift: float = 1.0,
         timesteps: jax.Array | None = None,
         noise: jax.Array | None = None) -> tuple[jax.Array, dict[str, jax.Array]]:
  """Diffusion / flow-matching loss per example.

  Args:
    model_fn: ``model_fn(x_t, t) -> out`` with x_t: [B, ...] (dtype of x0), t: [B] float32.
    x0: [B, ...] clean data (latents, pixels, ...).
    rng: PRNG key for the timesteps and the noise.
    objective: one of ``OBJECTIVES``.
    num_train_timesteps: N.
    beta_schedule: beta schedule name (DDPM objectives).
    beta_start: first beta.
    beta_end: last beta.
    mask: optional per-element weights broadcastable to x0.shape (bool or float); the loss of an
      example is sum(mask * err^2) / sum(mask) (0 where the mask is empty).
    weights: optional [B] per-example loss weights.
    time_sampling: ``uniform`` or ``logit_normal`` (``flow`` only).
    logit_mean: mean of the logit-normal.
    logit_std: std of the logit-normal.
    flow_shift: timestep shift applied to the drawn sigma (``flow`` only).
    timesteps: optional [B] model timesteps to use instead of drawing them.
    noise: optional [B, ...] noise to use instead of drawing it.

  Returns:
    (loss [B] float32, aux) with aux: ``t`` [B], ``mse`` [B] (unweighted), ``x_t``, ``noise``,
    ``pred`` and ``target`` ([B, ...] float32, for tasks that need them).
  """
  _check_objective(objective)
  x0 = jnp.asarray(x0)
  if x0.ndim < 1:
    raise ValueError(f"x0 must have a batch axis, got shape {x0.shape}")
  batch = x0.shape[0]
  rng_t, rng_n = jax.random.split(rng)
  if timesteps is None:
    timesteps = sample_timesteps(rng_t, batch, objective, num_train_timesteps=num_train_timesteps,
                                 time_sampling=time_sampling, logit_mean=logit_mean,
                                 logit_std=logit_std, flow_shift=flow_shift)
  t = jnp.broadcast_to(jnp.asarray(timesteps, jnp.float32), (batch,))
  if noise is None:
    noise = jax.random.normal(rng_n, x0.shape, jnp.float32)
  elif noise.shape != x0.shape:
    raise ValueError(f"noise shape {noise.shape} must equal x0 shape {x0.shape}")
  sched = dict(num_train_timesteps=num_train_timesteps, beta_schedule=beta_schedule,
               beta_start=beta_start, beta_end=beta_end)
  x0f, noise = x0.astype(jnp.float32), noise.astype(jnp.float32)
  x_t = add_noise(x0f, noise, t, objective, **sched)
  tgt = target(x0f, noise, t, objective, **sched)
  pred = model_fn(x_t.astype(x0.dtype), t)
  if pred.shape != x0.shape:
    raise ValueError(f"model_fn returned shape {pred.shape}, expected {x0.shape}")
  err = jnp.square(pred.astype(jnp.float32) - tgt)
  axes = tuple(range(1, x0.ndim))
  if mask is None:
    mse = jnp.mean(err, axis=axes)
  else:
    m = jnp.broadcast_to(jnp.asarray(mask, jnp.float32), x0.shape)
    den = jnp.sum(m, axis=axes)
    mse = jnp.where(den > 0, jnp.sum(m * err, axis=axes) / jnp.maximum(den, 1e-12), 0.0)
  per_example = mse
  if weights is not None:
    weights = jnp.asarray(weights, jnp.float32)
    if weights.shape != (batch,):
      raise ValueError(f"weights must have shape ({batch},), got {weights.shape}")
    per_example = mse * weights
  aux = dict(t=t, mse=mse, x_t=x_t, noise=noise, pred=pred.astype(jnp.float32), target=tgt)
  return per_example, aux
