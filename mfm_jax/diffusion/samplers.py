"""Diffusion samplers: diffusers' scheduler loops as one jitted ``lax.scan``.

``sample(model_fn, x_T, name=..., ...)`` returns what this diffusers loop returns::

  s = Scheduler(num_train_timesteps=..., beta_schedule=..., beta_start=..., beta_end=...,
                prediction_type=..., timestep_spacing=..., **extra)
  s.set_timesteps(num_inference_steps)
  x = x_T * s.init_noise_sigma
  for t in s.timesteps:
    x = s.step(model_fn(s.scale_model_input(x, t), t), t, x).prev_sample

Samplers (``name`` -> diffusers scheduler, its default ``timestep_spacing``, ``**extra`` with
diffusers' defaults):

* ``ddim``: DDIMScheduler, ``leading``; ``eta=0.0``, ``clip_sample=True``,
  ``clip_sample_range=1.0``, ``set_alpha_to_one=True``, ``steps_offset=0``.
* ``ddpm``: DDPMScheduler, ``leading``; ``variance_type='fixed_small'`` (or ``fixed_large``),
  ``clip_sample=True``, ``clip_sample_range=1.0``, ``steps_offset=0``.
* ``euler``: EulerDiscreteScheduler (s_churn = 0), ``linspace``; ``final_sigmas_type='zero'``
  (or ``sigma_min``), ``interpolation_type='linear'``, ``use_karras_sigmas=False``,
  ``steps_offset=0``.
* ``euler_ancestral``: EulerAncestralDiscreteScheduler, ``linspace``, epsilon / v_prediction
  only (as diffusers); ``steps_offset=0``.
* ``dpmpp_2m``: DPMSolverMultistepScheduler with ``algorithm_type='dpmsolver++'`` (DPM-Solver++
  (2M)), ``linspace``; ``solver_order=2``, ``solver_type='midpoint'``, ``lower_order_final=True``,
  ``euler_at_final=False``, ``final_sigmas_type='zero'``, ``use_karras_sigmas=False``,
  ``steps_offset=0``. The first step and (with these defaults) the last are first order.
* ``flow_euler``: FlowMatchEulerDiscreteScheduler; ``shift=1.0``, ``mu=None`` (given: dynamic
  shifting, sigma' = e^mu / (e^mu + 1/sigma - 1), ``shift`` ignored). The beta-schedule arguments
  do not apply; ``prediction_type`` is None or ``flow`` and ``timestep_spacing`` None or
  ``linspace``.

Deterministic: ``ddim`` (eta = 0), ``euler``, ``dpmpp_2m``, ``flow_euler``. Stochastic (need
``rng``): ``ddpm``, ``euler_ancestral``, ``ddim`` with eta > 0; step i draws
``jax.random.normal(jax.random.fold_in(rng, i), x.shape, float32)``.

Conventions.

* ``x_T``: [B, ...] standard-normal noise; the sampler multiplies it by ``init_noise_sigma``
  (1 for DDPM / DDIM / DPM-Solver / flow; sigma_max, or sqrt(sigma_max^2 + 1) with ``leading``
  spacing, for the Euler samplers). The result has x_T's dtype; the update runs in float32.
* ``model_fn(x, t) -> out``: ``x`` is the scaled model input (``scale_model_input``:
  x / sqrt(sigma^2 + 1) for the Euler samplers, x otherwise) in x_T's dtype; ``t`` is the
  scheduler's timestep value as [B] float32 (integer-valued for DDPM / DDIM / DPM-Solver,
  fractional for Euler ``linspace``, sigma * num_train_timesteps for flow). ``out`` has x's shape:
  an epsilon, v or x0 for ``prediction_type`` epsilon / v_prediction / sample (default epsilon),
  or for ``flow_euler`` the velocity d x / d sigma = noise - x0.
* ``beta_schedule``: linear, scaled_linear (Stable Diffusion), squaredcos_cap_v2 (cosine);
  ``timestep_spacing``: leading / trailing / linspace (Lin et al. 2023, table 2); None picks the
  scheduler's default above. Names and semantics are diffusers'.
* Precision: the per-step scalars are computed on the host in NumPy with diffusers' float32
  (and, where diffusers uses it, float64) arithmetic (``schedules``, ``sampler_steps``); the
  update repeats diffusers' expressions in diffusers' order and rounding (``EagerOps``), so the
  float32 result equals diffusers' float32 loop to ~1e-6 relative (tests: 1e-5 over beta
  schedule x prediction type x spacing), including the ill-conditioned cosine + Euler corner;
  with shared noise the stochastic samplers match likewise, except ``euler_ancestral``'s first
  step from the cosine sigma_max with ``linspace`` (~4e-5; see ``sampler_steps``). Checked on
  CPU; a backend without IEEE float32 division (TPU) cannot match the ill-conditioned corner so
  closely.
* Classifier-free guidance and guidance rescale wrap the model: pass
  ``guidance.cfg_model_fn(model_fn_batched, scale, rescale)`` as ``model_fn``; every sampler
  sees one guided output per step, as a diffusers pipeline feeds its scheduler.
* Compilation: every argument other than ``model_fn``, ``x_T`` and ``rng`` is a static Python
  value. Inside a ``jax.jit`` trace, ``sample`` adds its scan to that trace. Called outside any
  trace, it jits the whole loop itself with the step tables as data, cached on (model_fn, the
  settings that change the code: sampler, prediction type, clipping, ...; shapes): a second
  call with the same ``model_fn`` object and shapes reuses the executable without retracing,
  also across beta schedules and spacings. As with ``jax.jit(model_fn)``, arrays the model_fn
  closes over are then captured as constants; for large parameters call ``sample`` inside your
  own jit with the parameters as arguments.
"""
from __future__ import annotations

import functools
from typing import Any, Callable

import jax
import jax.numpy as jnp
import numpy as np

from mfm_jax.diffusion import sampler_steps
from mfm_jax.diffusion import schedules
from mfm_jax.diffusion.sampler_steps import EagerOps, Plan

__all__ = ["DETERMINISTIC", "EagerOps", "PREDICTION_TYPES", "Plan", "SAMPLERS", "make_plan",
           "sample", "timesteps"]

ModelFn = Callable[[jax.Array, jax.Array], jax.Array]
PREDICTION_TYPES = ("epsilon", "v_prediction", "sample")
SAMPLERS = ("ddim", "ddpm", "euler", "euler_ancestral", "dpmpp_2m", "flow_euler")
DETERMINISTIC = ("ddim", "euler", "dpmpp_2m", "flow_euler")

_DEFAULT_SPACING = {"ddim": "leading", "ddpm": "leading", "euler": "linspace",
                    "euler_ancestral": "linspace", "dpmpp_2m": "linspace",
                    "flow_euler": "linspace"}
_EXTRA_DEFAULTS = {
    "ddim": dict(eta=0.0, clip_sample=True, clip_sample_range=1.0, set_alpha_to_one=True,
                 steps_offset=0),
    "ddpm": dict(variance_type="fixed_small", clip_sample=True, clip_sample_range=1.0,
                 steps_offset=0),
    "euler": dict(final_sigmas_type="zero", interpolation_type="linear", use_karras_sigmas=False,
                  steps_offset=0),
    "euler_ancestral": dict(steps_offset=0),
    "dpmpp_2m": dict(solver_order=2, solver_type="midpoint", lower_order_final=True,
                     euler_at_final=False, final_sigmas_type="zero", use_karras_sigmas=False,
                     steps_offset=0),
    "flow_euler": dict(shift=1.0, mu=None),
}


def make_plan(name: str, *, num_train_timesteps: int = 1000, beta_schedule: str = "linear",
              beta_start: float = 0.0001, beta_end: float = 0.02,
              prediction_type: str | None = None, timestep_spacing: str | None = None,
              num_inference_steps: int = 50, **extra: Any) -> Plan:
  """Resolves a sampler's settings into host tables (see ``sample`` for the arguments).

  Plans are cached per settings and shared: treat the returned tables as read-only.
  """
  key = (name, num_train_timesteps, beta_schedule, beta_start, beta_end, prediction_type,
         timestep_spacing, num_inference_steps, tuple(sorted(extra.items())))
  try:
    hash(key)
  except TypeError:  # an unhashable extra value: resolve without the cache
    return _make_plan(*key)
  return _cached_plan(*key)


def _make_plan(name, num_train_timesteps, beta_schedule, beta_start, beta_end, prediction_type,
               timestep_spacing, num_inference_steps, extra_items) -> Plan:
  if name not in SAMPLERS:
    raise ValueError(f"name must be one of {SAMPLERS}, got {name!r}")
  extra = dict(extra_items)
  allowed = _EXTRA_DEFAULTS[name]
  unknown = sorted(set(extra) - set(allowed))
  if unknown:
    raise ValueError(f"unknown extra argument(s) {unknown} for sampler {name!r}; "
                     f"allowed: {sorted(allowed)}")
  opts = {**allowed, **extra}
  spacing = timestep_spacing or _DEFAULT_SPACING[name]
  if name == "flow_euler":
    if prediction_type not in (None, "flow"):
      raise ValueError(f"flow_euler needs prediction_type 'flow' (a velocity) or None, "
                       f"got {prediction_type!r}")
    if spacing != "linspace":
      raise ValueError(f"flow_euler has no timestep_spacing {timestep_spacing!r}; use None")
    return sampler_steps.flow_euler(num_train_timesteps, num_inference_steps, opts["shift"],
                                    opts["mu"])
  prediction_type = prediction_type or "epsilon"
  if prediction_type not in PREDICTION_TYPES:
    raise ValueError(f"prediction_type must be one of {PREDICTION_TYPES} for sampler {name!r}, "
                     f"got {prediction_type!r}")
  if spacing not in schedules.TIMESTEP_SPACINGS:
    raise ValueError(f"timestep_spacing must be one of {schedules.TIMESTEP_SPACINGS}, "
                     f"got {timestep_spacing!r}")
  acp = schedules.alphas_cumprod(beta_schedule, num_train_timesteps, beta_start, beta_end)
  n = num_inference_steps
  if name in ("ddim", "ddpm"):
    ts = schedules.discrete_timesteps(spacing, n, num_train_timesteps, opts["steps_offset"])
    _check_offset(ts, num_train_timesteps, opts["steps_offset"])
    fn = sampler_steps.ddim if name == "ddim" else sampler_steps.ddpm
    return fn(acp, ts, prediction_type, n, **opts)
  if name == "dpmpp_2m":
    plan = sampler_steps.dpmpp_2m(acp, spacing, prediction_type, n,
                                  cosine=beta_schedule == "squaredcos_cap_v2", **opts)
    _check_offset(plan.tables["t"], num_train_timesteps, opts["steps_offset"])
    return plan
  fn = sampler_steps.euler if name == "euler" else sampler_steps.euler_ancestral
  return fn(acp, spacing, prediction_type, n, **opts)


_cached_plan = functools.lru_cache(maxsize=256)(_make_plan)


def _check_offset(ts, num_train_timesteps, steps_offset):
  if ts.max() >= num_train_timesteps:
    raise ValueError(f"steps_offset={steps_offset} pushes timestep {int(ts.max())} "
                     f"past num_train_timesteps={num_train_timesteps}")


def timesteps(name: str, **settings: Any) -> np.ndarray:
  """The timesteps ``model_fn`` sees, in sampling order: [n] float32 (same args as ``sample``)."""
  return make_plan(name, **settings).tables["t"].copy()


def scale_model_input(plan: Plan, x32: jax.Array, row: dict) -> jax.Array:
  """diffusers' ``scale_model_input`` for one row of the plan's tables (float32)."""
  return EagerOps(x32).div(x32, row["in_div"]) if plan.scale_input else x32


def _loop(model_fn: ModelFn, x_T: jax.Array, rng: jax.Array | None, plan: Plan,
          pre_step: Callable[[jax.Array, dict], jax.Array] | None = None) -> jax.Array:
  """The sampling loop: one ``lax.scan`` over the plan's tables.

  ``pre_step(x32, row) -> x32``, when given, moves the float32 sample before each step's model
  call (e.g. guidance by an energy gradient, ``attention_guidance.py``); ``row`` holds the step's
  table entries and its index ``"i"``.
  """
  dtype, batch = x_T.dtype, x_T.shape[0]
  xs = {k: jnp.asarray(v, jnp.float32) for k, v in plan.tables.items()}
  xs["i"] = jnp.arange(plan.tables["t"].shape[0], dtype=jnp.int32)

  def body(carry, row):
    x, prev = carry
    x32 = x.astype(jnp.float32)
    if pre_step is not None:
      x = pre_step(x32, row).astype(dtype)
      x32 = x.astype(jnp.float32)
    model_in = scale_model_input(plan, x32, row)
    out = model_fn(model_in.astype(dtype), jnp.broadcast_to(row["t"], (batch,)))
    if out.shape != x.shape:
      raise ValueError(f"model_fn returned shape {out.shape}, expected {x.shape}")
    out = out.astype(jnp.float32)
    noise = None
    if plan.stochastic:
      noise = jax.random.normal(jax.random.fold_in(rng, row["i"]), x.shape, jnp.float32)
    x_prev, prev = plan.step(EagerOps(out), x32, out, row, noise, prev)
    return (x_prev.astype(dtype), prev), None

  x = (x_T.astype(jnp.float32) * jnp.asarray(plan.init_noise_sigma, jnp.float32)).astype(dtype)
  prev = jnp.zeros(x.shape, jnp.float32) if plan.multistep else None
  (x, _), _ = jax.lax.scan(body, (x, prev), xs)
  return x


@functools.partial(jax.jit, static_argnames=("model_fn", "step", "flags"))
def _jitted_loop(x_T, rng, tables, init_noise_sigma, *, model_fn, step, flags):
  """``_loop`` with the tables as data: one executable per (model_fn, step code, shapes)."""
  return _loop(model_fn, x_T, rng, Plan(init_noise_sigma, tables, step, *flags))


def _tracing() -> bool:
  """True inside a jax transformation's trace (where a fresh array is a tracer)."""
  return isinstance(jnp.zeros((), jnp.int32), jax.core.Tracer)


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
    prediction_type: epsilon / v_prediction / sample (None: epsilon); None or ``flow`` for
      ``flow_euler``.
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
                   **extra)  # validates every setting before anything is traced
  if plan.stochastic and rng is None:
    raise ValueError(f"sampler {name!r} with these settings is stochastic: pass rng")
  x_T = jnp.asarray(x_T)
  if x_T.ndim < 1:
    raise ValueError(f"x_T must have a batch axis, got shape {x_T.shape}")
  rng = rng if plan.stochastic else None
  if not _tracing():
    try:
      hash(model_fn)
    except TypeError:
      pass  # an unhashable model_fn: run the scan uncached
    else:
      return _jitted_loop(x_T, rng, plan.tables, np.float32(plan.init_noise_sigma),
                          model_fn=model_fn, step=plan.step,
                          flags=(plan.scale_input, plan.stochastic, plan.multistep))
  return _loop(model_fn, x_T, rng, plan)
