"""Per-sampler host tables and elementwise updates, in diffusers' order of operations.

``samplers.sample`` is the interface; this module holds what it runs: for each sampler a
``Plan`` with the per-step scalar tables (NumPy float32 on the host, computed as diffusers'
0-d torch tensors are) and the elementwise update ``step``, written expression by expression as
the matching diffusers ``step`` writes it.

Rounding. Every tensor-by-scalar product and quotient of an update goes through ``EagerOps``,
which keeps torch's eager rounding: each product is rounded to float32 before it is added, and
each quotient is a true division. Left alone, XLA contracts ``a * b + c`` into one fused
multiply-add and rewrites ``x / s`` (s a broadcast scalar) as ``x * (1 / s)``; both are fine
numerically, but in an ill-conditioned step the difference to torch's rounding is amplified.
The case that needs it: Euler from the cosine schedule's sigma_max ~ 2e4 with an x0-type output
(v_prediction / sample), where the first update cancels |x| ~ 2e4 down to O(sigma_next) ~ 6, so
one float32 rounding of the quotient or of the product moves the result by ~1e-3. Diffusers'
float32 loop itself sits ~4e-4 (relative) away from the same loop in float64 there; matching it
to 1e-5 means repeating its roundings, which ``EagerOps`` does (FMA stays on everywhere else,
the model included).

Tables. Host scalars repeat diffusers' float32 chains with correctly rounded NumPy ops; torch's
CPU float32 sqrt / log / exp are faithful, not correctly rounded, so single entries may differ by
one ulp, which moves results by ~1e-7. One chain is pure cancellation noise in float32:
EulerAncestral's sigma_down = sqrt(s_to^2 - sigma_up^2) at the first step from the cosine
sigma_max. It repeats diffusers' float32 operations one by one (mul, sub, div and sqrt are
correctly rounded in both), so it reproduces the same noise. A float64 chain matched diffusers
for ``trailing`` on one machine, but was 2.7e-5 away on another.
"""
from __future__ import annotations

import dataclasses
import functools
from typing import Any, Callable

import jax
import jax.numpy as jnp
import numpy as np

from mfm_jax.diffusion import schedules

_F32 = np.float32


class EagerOps:
  """Tensor-by-scalar ``mul`` / ``div`` rounded as eager torch rounds them.

  ``where(isnan(probe), nan, v)`` is the identity here (a NaN model output makes the update NaN
  anyway), but the compiler cannot see through it: a product routed through it is no longer an
  operand that an add can fuse into an FMA, and a divisor routed through it is no longer a
  broadcast scalar that XLA replaces by a reciprocal. The cost is one select per element, inside
  the same fused loop.
  """

  def __init__(self, probe: jax.Array):
    self._nan = jnp.isnan(probe)

  def mul(self, a: jax.Array, c: jax.Array) -> jax.Array:
    """a * c rounded to float32 on its own (never fused into a following add)."""
    return jnp.where(self._nan, jnp.nan, a * c)

  def div(self, a: jax.Array, c: jax.Array) -> jax.Array:
    """a / c as a correctly rounded division (not a * (1 / c))."""
    return a / jnp.where(self._nan, jnp.nan, c)


@dataclasses.dataclass(frozen=True)
class Plan:
  """A sampler resolved on the host.

  ``step(ops, x, out, row, noise, prev) -> (x_prev, prev)``: x, out [B, ...] float32, ``row`` the
  step's scalars (one entry of every table), ``noise`` [B, ...] or None, ``prev`` the multistep
  memory (the previous x0 prediction for ``dpmpp_2m``; None otherwise). ``step`` depends only on
  the settings that change the code (sampler, prediction type, clipping ...), and is the same
  object for equal such settings, so a compiled loop can be reused across schedules and spacings
  with the tables as data.
  """
  init_noise_sigma: float
  tables: dict[str, np.ndarray]  # each [n] float32; "t" is the model's timestep.
  step: Callable[..., tuple[jax.Array, Any]]
  scale_input: bool  # divide the model input by row["in_div"] (Euler's scale_model_input).
  stochastic: bool
  multistep: bool = False


def _pred_x0_eps(ops, x, out, row, prediction_type):
  """(pred_x0, pred_eps) as DDIMScheduler.step writes them (DDPM uses pred_x0)."""
  sa, sb = row["sqrt_a"], row["sqrt_b"]
  if prediction_type == "epsilon":
    return ops.div(x - ops.mul(out, sb), sa), out
  if prediction_type == "sample":
    return out, ops.div(x - ops.mul(out, sa), sb)
  return ops.mul(x, sa) - ops.mul(out, sb), ops.mul(out, sa) + ops.mul(x, sb)  # v_prediction


def ddim(acp, ts, prediction_type, n, eta, clip_sample, clip_sample_range, set_alpha_to_one,
         steps_offset):
  """DDIMScheduler (``eta`` > 0 adds noise: stochastic)."""
  del steps_offset  # already in ts
  if eta < 0:
    raise ValueError(f"eta must be >= 0, got {eta!r}")
  ts = ts.astype(np.int64)
  prev = ts - acp.shape[0] // n
  a_t = acp[ts]
  final = _F32(1.0) if set_alpha_to_one else acp[0]
  a_prev = np.where(prev >= 0, acp[np.maximum(prev, 0)], final).astype(_F32)
  b_t, b_prev = _F32(1) - a_t, _F32(1) - a_prev
  variance = (b_prev / b_t) * (_F32(1) - a_t / a_prev)
  std = _F32(eta) * variance ** _F32(0.5)
  tables = dict(t=ts.astype(_F32), sqrt_a=a_t ** _F32(0.5), sqrt_b=b_t ** _F32(0.5),
                sqrt_a_prev=a_prev ** _F32(0.5), std=std,
                dir=(_F32(1) - a_prev - std * std) ** _F32(0.5))
  step = _ddim_step(prediction_type, clip_sample, clip_sample_range, eta > 0)
  return Plan(1.0, tables, step, scale_input=False, stochastic=eta > 0)


@functools.cache
def _ddim_step(prediction_type, clip_sample, clip_sample_range, noisy):
  def step(ops, x, out, row, noise, prev):
    pred_x0, pred_eps = _pred_x0_eps(ops, x, out, row, prediction_type)
    if clip_sample:
      pred_x0 = jnp.clip(pred_x0, -clip_sample_range, clip_sample_range)
    x_prev = ops.mul(pred_x0, row["sqrt_a_prev"]) + ops.mul(pred_eps, row["dir"])
    return (x_prev + ops.mul(noise, row["std"]) if noisy else x_prev), prev
  return step


def ddpm(acp, ts, prediction_type, n, variance_type, clip_sample, clip_sample_range,
         steps_offset):
  """DDPMScheduler (ancestral sampling with fixed variances)."""
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
  step = _ddpm_step(prediction_type, clip_sample, clip_sample_range)
  return Plan(1.0, tables, step, scale_input=False, stochastic=True)


@functools.cache
def _ddpm_step(prediction_type, clip_sample, clip_sample_range):
  def step(ops, x, out, row, noise, prev):
    pred_x0, _ = _pred_x0_eps(ops, x, out, row, prediction_type)
    if clip_sample:
      pred_x0 = jnp.clip(pred_x0, -clip_sample_range, clip_sample_range)
    x_prev = ops.mul(pred_x0, row["c_x0"]) + ops.mul(x, row["c_x"])
    return x_prev + ops.mul(noise, row["std"]), prev
  return step


def _euler_init_sigma(sigmas, spacing):
  smax = sigmas.max()
  return float(smax if spacing in ("linspace", "trailing") else (smax * smax + _F32(1)) ** 0.5)


def _euler_rows(ts, sig):
  s, s_next = sig[:-1], sig[1:]
  in_div2 = s * s + _F32(1)
  return dict(t=ts, sigma=s, sigma_next=s_next, in_div=in_div2 ** _F32(0.5), in_div2=in_div2,
              c_out=-s / in_div2 ** _F32(0.5))


def _euler_x0(ops, x, out, row, prediction_type):
  if prediction_type == "sample":
    return out
  if prediction_type == "epsilon":
    return x - ops.mul(out, row["sigma"])
  return ops.mul(out, row["c_out"]) + ops.div(x, row["in_div2"])  # v_prediction


def euler(acp, spacing, prediction_type, n, final_sigmas_type, interpolation_type,
          use_karras_sigmas, steps_offset):
  """EulerDiscreteScheduler with s_churn = 0 (deterministic)."""
  if interpolation_type != "linear":
    raise ValueError(f"interpolation_type must be 'linear', got {interpolation_type!r}")
  ts, sig = schedules.euler_tables(acp, spacing, n, steps_offset, final_sigmas_type,
                                   use_karras_sigmas)
  tables = _euler_rows(ts, sig)
  tables["dt"] = tables["sigma_next"] - tables["sigma"]
  return Plan(_euler_init_sigma(sig, spacing), tables, _euler_step(prediction_type, False),
              scale_input=True, stochastic=False)


@functools.cache
def _euler_step(prediction_type, ancestral):
  def step(ops, x, out, row, noise, prev):
    derivative = ops.div(x - _euler_x0(ops, x, out, row, prediction_type), row["sigma"])
    x_prev = x + ops.mul(derivative, row["dt"])
    return (x_prev + ops.mul(noise, row["sigma_up"]) if ancestral else x_prev), prev
  return step


def euler_ancestral(acp, spacing, prediction_type, n, steps_offset):
  """EulerAncestralDiscreteScheduler (epsilon / v_prediction, as diffusers)."""
  if prediction_type == "sample":
    raise ValueError("euler_ancestral supports prediction_type 'epsilon' or 'v_prediction', "
                     "not 'sample' (as diffusers)")
  ts, sig = schedules.euler_tables(acp, spacing, n, steps_offset)
  tables = _euler_rows(ts, sig)
  # diffusers' float32 chain, op by op (each op correctly rounded, as torch's scalar mul / sub /
  # div / sqrt are): at the first step from a large sigma_max, s_to^2 - sigma_up^2 cancels, and
  # only the same roundings give the same (noisy) sigma_down.
  s_from, s_to = sig[:-1].astype(_F32), sig[1:].astype(_F32)
  sigma_up = np.sqrt(s_to * s_to * (s_from * s_from - s_to * s_to) / (s_from * s_from))
  sigma_down = np.sqrt(np.maximum(s_to * s_to - sigma_up * sigma_up, _F32(0.0)))
  tables.update(sigma_up=sigma_up.astype(_F32), dt=(sigma_down - s_from).astype(_F32))
  return Plan(_euler_init_sigma(sig, spacing), tables, _euler_step(prediction_type, True),
              scale_input=True, stochastic=True)


def _log32(v):
  """float32 log, correctly rounded (torch's float32 log differs by at most one ulp)."""
  with np.errstate(divide="ignore"):
    return np.log(v.astype(np.float64)).astype(_F32)


def _exp32(v):
  with np.errstate(over="ignore"):
    return np.exp(v.astype(np.float64)).astype(_F32)


def dpmpp_2m(acp, spacing, prediction_type, n, solver_order, solver_type, lower_order_final,
             euler_at_final, final_sigmas_type, use_karras_sigmas, steps_offset, cosine):
  """DPMSolverMultistepScheduler, algorithm_type='dpmsolver++' (DPM-Solver++(2M)).

  Step i uses the first-order update (DDIM in the data prediction) when i = 0 or when it is the
  final step and diffusers lowers it (``final_sigmas_type='zero'``, or ``lower_order_final``
  with n < 15, or ``euler_at_final``); otherwise the second-order multistep update with the
  previous step's x0 prediction, carried as ``prev``. Scalars follow diffusers' float32 0-d
  arithmetic: alpha = 1 / sqrt(sigma^2 + 1), sigma_vp = sigma * alpha,
  lambda = log(alpha) - log(sigma_vp), h = lambda_t - lambda_s0, r0 = h_0 / h.
  """
  if solver_order not in (1, 2):
    raise ValueError(f"dpmpp_2m supports solver_order 1 or 2, got {solver_order!r}")
  if solver_type not in ("midpoint", "heun"):
    raise ValueError(f"solver_type must be 'midpoint' or 'heun', got {solver_type!r}")
  ts, sig = schedules.dpm_tables(acp, spacing, n, steps_offset, final_sigmas_type,
                                 use_karras_sigmas, cosine)
  with np.errstate(divide="ignore", invalid="ignore"):
    alpha = _F32(1) / (sig * sig + _F32(1)) ** _F32(0.5)
    sigma = sig * alpha
    lam = _log32(alpha) - _log32(sigma)  # +inf at a final sigma of 0
    a_t, s_t, a_s0, s_s0 = alpha[1:], sigma[1:], alpha[:-1], sigma[:-1]
    h = lam[1:] - lam[:-1]
    expm1 = _exp32(-h) - _F32(1)
    c_0 = a_t * expm1
    h_0 = lam[:-1] - np.concatenate([[np.nan], lam[:-2]]).astype(_F32)
    inv_r0 = _F32(1) / (h_0 / h)
    c_1 = -(_F32(0.5) * c_0) if solver_type == "midpoint" else a_t * (expm1 / h + _F32(1))
  i = np.arange(n)
  lower_final = (i == n - 1) & bool(euler_at_final or (lower_order_final and n < 15)
                                    or final_sigmas_type == "zero")
  order2 = (i >= 1) & ~lower_final & (solver_order == 2)
  tables = dict(t=ts, alpha=a_s0, sigma=s_s0, c_x=s_t / s_s0, c_0=c_0,
                c_1=np.where(order2, c_1, 0).astype(_F32),
                inv_r0=np.where(order2, inv_r0, 0).astype(_F32))
  return Plan(1.0, tables, _dpm_step(prediction_type), scale_input=False, stochastic=False,
              multistep=True)


@functools.cache
def _dpm_step(prediction_type):
  def step(ops, x, out, row, noise, prev):
    del noise
    if prediction_type == "epsilon":
      x0 = ops.div(x - ops.mul(out, row["sigma"]), row["alpha"])
    elif prediction_type == "v_prediction":
      x0 = ops.mul(x, row["alpha"]) - ops.mul(out, row["sigma"])
    else:
      x0 = out
    # D1 = (1 / r0) * (x0 - x0_prev); first-order steps have c_1 = inv_r0 = 0, adding +0.
    d1 = ops.mul(x0 - prev, row["inv_r0"])
    x_prev = (ops.mul(x, row["c_x"]) - ops.mul(x0, row["c_0"])) + ops.mul(d1, row["c_1"])
    return x_prev, x0
  return step


def flow_euler(num_train_timesteps, n, shift, mu):
  """FlowMatchEulerDiscreteScheduler (deterministic; the output is the velocity)."""
  ts, sig = schedules.flow_tables(n, num_train_timesteps, shift, mu)
  return Plan(1.0, dict(t=ts, dt=sig[1:] - sig[:-1]), _flow_step, scale_input=False,
              stochastic=False)


def _flow_step(ops, x, out, row, noise, prev):
  del noise
  return x + ops.mul(out, row["dt"]), prev
