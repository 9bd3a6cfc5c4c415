"""Diffusion samplers: diffusers' scheduler loops as one jittable ``lax.scan``.

``sample(model_fn, x_T, name=..., ...)`` returns what this diffusers loop returns::

  s.set_timesteps(num_inference_steps)
  x = x_T * s.init_noise_sigma
  for t in s.timesteps:
    x = s.step(model_fn(s.scale_model_input(x, t), t), t, x).prev_sample

Conventions.

* ``x_T``: [B, ...] standard-normal noise; the sampler multiplies it by the scheduler's
  ``init_noise_sigma`` (1 for DDPM / DDIM / flow; sigma_max or sqrt(sigma_max^2 + 1) for Euler).
* ``model_fn(x, t) -> out``: ``x`` is the *scaled* model input (diffusers' ``scale_model_input``:
  x / sqrt(sigma^2 + 1) for the Euler samplers, x otherwise); ``t`` is the scheduler's timestep
  broadcast to [B] float32 (integer-valued for DDPM / DDIM; fractional for Euler ``linspace``;
  sigma * num_train_timesteps for flow). ``out`` has the shape of ``x`` and is an epsilon, v, x0
  (``prediction_type`` epsilon / v_prediction / sample) or, for ``flow_euler``, the velocity
  d x / d sigma = noise - x0 (``prediction_type`` ``flow``, the only one it accepts).
* All tables (timesteps, sigmas, alpha-bars and the per-step coefficients) are computed on the host
  in NumPy with diffusers' float32 / float64 arithmetic (``schedules``), then enter the scan as
  float32 constants; the elementwise update repeats diffusers' expressions in diffusers' order.
  In float32 the result matches diffusers to ~1e-6 relative (the tests ask for 1e-5). One corner
  is ill-conditioned for any float32 implementation: Euler samplers, cosine schedule from
  t = 999 (sigma_max ~ 2e4) with a v / x0 output, where the first step cancels |x| ~ 1e4 down to
  O(1); there XLA's FMA contraction and x/s -> x*(1/s) rewrite (torch rounds every op) give
  ~1e-3, and 1e-6 again with both switched off (see tests/diffusion).
* Arguments other than ``model_fn``, ``x_T`` and ``rng`` are static Python values, so
  ``sample`` can be called inside ``jax.jit`` (or wrapped with those arguments static).
* Stochastic samplers (``ddpm``, ``euler_ancestral``, ``ddim`` with ``eta > 0``) need ``rng``;
  the noise of step i is ``jax.random.normal(jax.random.fold_in(rng, i), x.shape, float32)``.

Samplers and their ``**extra`` settings (defaults are diffusers' defaults):

* ``ddim`` (DDIMScheduler; spacing ``leading``): ``eta=0.0``, ``clip_sample=True``,
  ``clip_sample_range=1.0``, ``set_alpha_to_one=True``, ``steps_offset=0``.
* ``ddpm`` (DDPMScheduler; ``leading``): ``variance_type='fixed_small'`` (or ``fixed_large``),
  ``clip_sample=True``, ``clip_sample_range=1.0``, ``steps_offset=0``.
* ``euler`` (EulerDiscreteScheduler, s_churn=0; ``linspace``): ``final_sigmas_type='zero'``
  (or ``sigma_min``), ``interpolation_type='linear'``, ``use_karras_sigmas=False``,
  ``steps_offset=0``.
* ``euler_ancestral`` (EulerAncestralDiscreteScheduler; ``linspace``; epsilon / v_prediction):
  ``steps_offset=0``.
* ``flow_euler`` (FlowMatchEulerDiscreteScheduler): ``shift=1.0``, ``mu=None`` (dynamic shifting).
  The beta-schedule arguments do not apply; ``timestep_spacing`` must be None or ``linspace``.
"""
from __future__ import annotations

import dataclasses
from typing import Any, Callable

import jax
import jax.numpy as jnp
import numpy as np

from mfm_jax.diffusion import schedules

ModelFn = Callable[[jax.Array, jax.Array], jax.Array]
PREDICTION_TYPES = ("epsilon", "v_prediction", "sample")
SAMPLERS = ("ddim", "ddpm", "euler", "euler_ancestral", "flow_euler")

_DEFAULT_SPACING = {"ddim": "leading", "ddpm": "leading", "euler": "linspace",
                    "euler_ancestral": "linspace", "flow_euler": "linspace"}
_EXTRA_DEFAULTS = {
    "ddim": dict(eta=0.0, clip_sample=True, clip_sample_range=1.0, set_alpha_to_one=True,
                 steps_offset=0),
    "ddpm": dict(variance_type="fixed_small", clip_sample=True, clip_sample_range=1.0,
                 steps_offset=0),
    "euler": dict(final_sigmas_type="zero", interpolation_type="linear", use_karras_sigmas=False,
                  steps_offset=0),
    "euler_ancestral": dict(steps_offset=0),
    "flow_euler": dict(shift=1.0, mu=None),
}
_F32 = np.float32


@dataclasses.dataclass(frozen=True)
class Plan:
  """A sampler resolved on the host: per-step tables and the elementwise update (``make_plan``)."""
  init_noise_sigma: float
  tables: dict[str, np.ndarray]  # each [n] float32; "t" is the model's timestep.
  step: Callable[..., jax.Array]  # step(x, out, row, noise) -> x_prev, row: dict of scalars.
  scale_input: bool  # divide the model input by row["in_div"].
  stochastic: bool


def _pred_x0_eps(x, out, row, prediction_type):
  """(pred_x0, pred_eps) from a DDPM-family output, as DDIMScheduler.step writes them."""
  sa, sb = row["sqrt_a"], row["sqrt_b"]
  if prediction_type == "epsilon":
    return (x - sb * out) / sa, out
  if prediction_type == "sample":
    return out, (x - sa * out) / sb
  return sa * x - sb * out, sa * out + sb * x  # v_prediction


def _ddim(acp, ts, prediction_type, n, eta, clip_sample, clip_sample_range, set_alpha_to_one,
          steps_offset):
  del steps_offset  # already in ts
  if eta < 0:
    raise ValueError(f"eta must be >= 0, got {eta!r}")
  n_train = acp.shape[0]
  ts = ts.astype(np.int64)
  prev = ts - n_train // n
  a_t = acp[ts]
  final = _F32(1.0) if set_alpha_to_one else acp[0]
  a_prev = np.where(prev >= 0, acp[np.maximum(prev, 0)], final).astype(_F32)
  b_t, b_prev = _F32(1) - a_t, _F32(1) - a_prev
  variance = (b_prev / b_t) * (_F32(1) - a_t / a_prev)
  std = _F32(eta) * variance ** _F32(0.5)
  tables = dict(t=ts.astype(_F32), sqrt_a=a_t ** _F32(0.5), sqrt_b=b_t ** _F32(0.5),
                sqrt_a_prev=a_prev ** _F32(0.5), std=std,
                dir=(_F32(1) - a_prev - std * std) ** _F32(0.5))

  def step(x, out, row, noise):
    pred_x0, pred_eps = _pred_x0_eps(x, out, row, prediction_type)
    if clip_sample:
      pred_x0 = jnp.clip(pred_x0, -clip_sample_range, clip_sample_range)
    x_prev = row["sqrt_a_prev"] * pred_x0 + row["dir"] * pred_eps
    return x_prev + row["std"] * noise if eta > 0 else x_prev

  return Plan(1.0, tables, step, scale_input=False, stochastic=eta > 0)


def _ddpm(acp, ts, prediction_type, n, variance_type, clip_sample, clip_sample_range,
          steps_offset):
  del n, steps_offset
  if variance_type not in ("fixed_small", "fixed_large"):
    raise ValueError(
        f"variance_type must be 'fixed_small' or 'fixed_large', got {variance_type!r}")
  ts = ts.astype(np.int64)
  prev = np.concatenate([ts[1:], [-1]])
  a_t = acp[ts]
  a_prev = np.where(prev >= 0, acp[np.maximum(prev, 0)], _F32(1.0)).astype(_F32)
  b_t, b_prev = _F32(1) - a_t, _F32(1) - a_prev
  cur_alpha = a_t / a_prev
  cur_beta = _F32(1) - cur_alpha
  if variance_type == "fixed_small":
    var = np.maximum((_F32(1) - a_prev) / (_F32(1) - a_t) * cur_beta, _F32(1e-20))
  else:
    var = cur_beta
  tables = dict(t=ts.astype(_F32), sqrt_a=a_t ** _F32(0.5), sqrt_b=b_t ** _F32(0.5),
                c_x0=(a_prev ** _F32(0.5) * cur_beta) / b_t,
                c_x=cur_alpha ** _F32(0.5) * b_prev / b_t,
                std=np.where(ts > 0, var ** _F32(0.5), _F32(0)).astype(_F32))

  def step(x, out, row, noise):
    pred_x0, _ = _pred_x0_eps(x, out, row, prediction_type)
    if clip_sample:
      pred_x0 = jnp.clip(pred_x0, -clip_sample_range, clip_sample_range)
    return row["c_x0"] * pred_x0 + row["c_x"] * x + row["std"] * noise

  return Plan(1.0, tables, step, scale_input=False, stochastic=True)


def _euler_init_sigma(sigmas, spacing):
  smax = sigmas.max()
  return float(smax if spacing in ("linspace", "trailing") else (smax * smax + _F32(1)) ** 0.5)


def _euler_x0(x, out, row, prediction_type):
  if prediction_type == "sample":
    return out
  if prediction_type == "epsilon":
    return x - row["sigma"] * out
  return out * row["c_out"] + x / row["in_div2"]  # v_prediction


def _euler_rows(ts, sig):
  s, s_next = sig[:-1], sig[1:]
  in_div2 = s * s + _F32(1)
  return dict(t=ts, sigma=s, sigma_next=s_next, in_div=in_div2 ** _F32(0.5), in_div2=in_div2,
              c_out=-s / in_div2 ** _F32(0.5))


def _euler(acp, spacing, prediction_type, n, final_sigmas_type, interpolation_type,
           use_karras_sigmas, steps_offset):
  if interpolation_type != "linear":
    raise ValueError(f"interpolation_type must be 'linear', got {interpolation_type!r}")
  ts, sig = schedules.euler_tables(acp, spacing, n, steps_offset, final_sigmas_type,
                                   use_karras_sigmas)
  tables = _euler_rows(ts, sig)
  tables["dt"] = tables["sigma_next"] - tables["sigma"]

  def step(x, out, row, noise):
    del noise
    pred_x0 = _euler_x0(x, out, row, prediction_type)
    derivative = (x - pred_x0) / row["sigma"]
    return x + derivative * row["dt"]

  return Plan(_euler_init_sigma(sig, spacing), tables, step, scale_input=True, stochastic=False)


def _euler_ancestral(acp, spacing, prediction_type, n, steps_offset):
  if prediction_type == "sample":
    raise ValueError("euler_ancestral supports prediction_type 'epsilon' or 'v_prediction', "
                     "not 'sample' (as diffusers)")
  ts, sig = schedules.euler_tables(acp, spacing, n, steps_offset)
  tables = _euler_rows(ts, sig)
  s_from, s_to = tables["sigma"], tables["sigma_next"]
  sigma_up = (s_to**2 * (s_from**2 - s_to**2) / s_from**2) ** _F32(0.5)
  sigma_down = (s_to**2 - sigma_up**2) ** _F32(0.5)
  tables.update(sigma_up=sigma_up, dt=sigma_down - s_from)

  def step(x, out, row, noise):
    pred_x0 = _euler_x0(x, out, row, prediction_type)
    derivative = (x - pred_x0) / row["sigma"]
    return x + derivative * row["dt"] + noise * row["sigma_up"]

  return Plan(_euler_init_sigma(sig, spacing), tables, step, scale_input=True, stochastic=True)


def _flow_euler(num_train_timesteps, n, shift, mu):
  ts, sig = schedules.flow_tables(n, num_train_timesteps, shift, mu)
  tables = dict(t=ts, dt=sig[1:] - sig[:-1])

  def step(x, out, row, noise):
    del noise
    return x + row["dt"] * out

  return Plan(1.0, tables, step, scale_input=False, stochastic=False)


def make_plan(name: str, *, num_train_timesteps: int = 1000, beta_schedule: str = "linear",
              beta_start: float = 0.0001, beta_end: float = 0.02,
              prediction_type: str | None = None, timestep_spacing: str | None = None,
              num_inference_steps: int = 50, **extra: Any) -> Plan:
  """Resolves a sampler's settings into host tables (see ``sample`` for the arguments)."""
  if name not in SAMPLERS:
    raise ValueError(f"name must be one of {SAMPLERS}, got {name!r}")
  allowed = _EXTRA_DEFAULTS[name]
  unknown = sorted(set(extra) - set(allowed))
  if unknown:
    raise ValueError(f"unknown extra argument(s) {unknown} for sampler {name!r}; "
                     f"allowed: {sorted(allowed)}")
  opts = {**allowed, **extra}
  spacing = timestep_spacing or _DEFAULT_SPACING[name]
  if name == "flow_euler":
    if prediction_type not in (None, "flow"):
      raise ValueError(f"flow_euler needs prediction_type 'flow' (a velocity), "
                       f"got {prediction_type!r}")
    if spacing != "linspace":
      raise ValueError(f"flow_euler has no timestep_spacing {timestep_spacing!r}; use None")
    return _flow_euler(num_train_timesteps, num_inference_steps, opts["shift"], opts["mu"])
  prediction_type = prediction_type or "epsilon"
  if prediction_type not in PREDICTION_TYPES:
    raise ValueError(f"prediction_type must be one of {PREDICTION_TYPES} for sampler {name!r}, "
                     f"got {prediction_type!r}")
  if spacing not in schedules.TIMESTEP_SPACINGS:
    raise ValueError(f"timestep_spacing must be one of {schedules.TIMESTEP_SPACINGS}, "
                     f"got {timestep_spacing!r}")
  acp = schedules.alphas_cumprod(beta_schedule, num_train_timesteps, beta_start, beta_end)
  if name in ("ddim", "ddpm"):
    ts = schedules.discrete_timesteps(spacing, num_inference_steps, num_train_timesteps,
                                      opts["steps_offset"])
    if ts.max() >= num_train_timesteps:
      raise ValueError(f"steps_offset={opts['steps_offset']} pushes timestep {int(ts.max())} "
                       f"past num_train_timesteps={num_train_timesteps}")
    fn = _ddim if name == "ddim" else _ddpm
    return fn(acp, ts, prediction_type, num_inference_steps, **opts)
  fn = _euler if name == "euler" else _euler_ancestral
  return fn(acp, spacing, prediction_type, num_inference_steps, **opts)


def timesteps(name: str, **settings: Any) -> np.ndarray:
  """The timesteps ``model_fn`` sees, in sampling order: [n] float32 (same args as ``sample``)."""
  return make_plan(name, **settings).tables["t"].copy()


def sample(model_fn: ModelFn, x_T: jax.Array, *, name: str, num_train_timesteps: int = 1000,
           beta_schedule: str = "linear", beta_start: float = 0.0001, beta_end: float = 0.02,
           prediction_type: str | None = None, timestep_spacing: str | None = None,
           num_inference_steps: int = 50, rng: jax.Array | None = None,
           **extra: Any) -> jax.Array:
  """Runs a sampler from noise to a sample (conventions in the module docstring).

  Args:
    model_fn: ``model_fn(x, t) -> out`` with x: [B, ...] (scaled input), t: [B] float32.
    x_T: [B, ...] standard-normal noise.
    name: one of ``SAMPLERS``.
    num_train_timesteps: N of the training schedule.
    beta_schedule: one of ``schedules.BETA_SCHEDULES`` (not used by ``flow_euler``).
    beta_start: first beta.
    beta_end: last beta.
    prediction_type: epsilon / v_prediction / sample (default epsilon); ``flow`` for
      ``flow_euler`` (its default).
    timestep_spacing: leading / trailing / linspace; None picks the scheduler's default.
    num_inference_steps: n, the number of model calls.
    rng: PRNG key; required by the stochastic samplers.
    **extra: the sampler's own settings (module docstring).

  Returns:
    x_0: [B, ...] with the dtype of x_T.
  """
  plan = make_plan(name, num_train_timesteps=num_train_timesteps, beta_schedule=beta_schedule,
                   beta_start=beta_start, beta_end=beta_end, prediction_type=prediction_type,
                   timestep_spacing=timestep_spacing, num_inference_steps=num_inference_steps,
                   **extra)
  if plan.stochastic and rng is None:
    raise ValueError(f"sampler {name!r} with these settings is stochastic: pass rng")
  x_T = jnp.asarray(x_T)
  if x_T.ndim < 1:
    raise ValueError(f"x_T must have a batch axis, got shape {x_T.shape}")
  dtype, batch = x_T.dtype, x_T.shape[0]
  xs = {k: jnp.asarray(v, jnp.float32) for k, v in plan.tables.items()}
  xs["i"] = jnp.arange(num_inference_steps, dtype=jnp.int32)

  def body(x, row):
    t = jnp.broadcast_to(row["t"], (batch,))
    out = model_fn(x / row["in_div"] if plan.scale_input else x, t)
    if out.shape != x.shape:
      raise ValueError(f"model_fn returned shape {out.shape}, expected {x.shape}")
    noise = None
    if plan.stochastic:
      noise = jax.random.normal(jax.random.fold_in(rng, row["i"]), x.shape, jnp.float32)
    x_prev = plan.step(x.astype(jnp.float32), out, row, noise)
    return x_prev.astype(dtype), None

  x = (x_T.astype(jnp.float32) * jnp.float32(plan.init_noise_sigma)).astype(dtype)
  x, _ = jax.lax.scan(body, x, xs)
  return x
