"""Noise schedules and the host-side timestep / sigma tables of the samplers.

Everything here is NumPy on the host: the tables are computed once per (static) setting, at trace
time, and enter the jitted graph as float32 constants. They follow diffusers' schedulers
(``DDPMScheduler``, ``DDIMScheduler``, ``EulerDiscreteScheduler``, ``DPMSolverMultistepScheduler``,
``FlowMatchEulerDiscreteScheduler``) formula by formula *and* precision by precision, since that
is what "the same sampler" means for a checkpoint trained with diffusers:

* betas are float32 (diffusers: ``torch.linspace(..., dtype=float32)``; the cosine betas are
  computed in float64 and rounded to float32). We evaluate the linspace in float64 and round, which
  agrees with torch's float32 linspace to within one ulp.
* ``alphas = 1 - betas`` in float32, ``alphas_cumprod`` accumulated in float64 and rounded to
  float32 (torch's CPU ``cumprod`` accumulates float32 in double). Agreement with diffusers'
  ``alphas_cumprod`` is ~1e-6 relative (the one-ulp linspace differences), exact for the cosine.
* Timestep grids use diffusers' float64 NumPy expressions; sigma interpolation is float64
  ``np.interp`` on float32 inputs, rounded to float32, as in diffusers.

Beta schedule names: ``linear``, ``scaled_linear`` (linear in sqrt(beta); Stable Diffusion) and
``squaredcos_cap_v2`` (the cosine schedule of Nichol & Dhariwal, betas capped at 0.999).
Timestep spacings (Lin et al. 2023, table 2): ``leading``, ``trailing``, ``linspace``.
"""
from __future__ import annotations

import dataclasses
import math

import numpy as np

BETA_SCHEDULES = ("linear", "scaled_linear", "squaredcos_cap_v2")
TIMESTEP_SPACINGS = ("leading", "trailing", "linspace")


def _check_num_train(num_train_timesteps: int) -> int:
  if int(num_train_timesteps) != num_train_timesteps or num_train_timesteps < 2:
    raise ValueError(
        f"num_train_timesteps must be an integer >= 2, got {num_train_timesteps!r}")
  return int(num_train_timesteps)


def betas(name: str = "linear", num_train_timesteps: int = 1000, beta_start: float = 0.0001,
          beta_end: float = 0.02) -> np.ndarray:
  """Returns the betas of a named schedule, as diffusers defines them.

  Args:
    name: one of ``BETA_SCHEDULES``.
    num_train_timesteps: N, the number of training timesteps.
    beta_start: first beta (``linear``, ``scaled_linear``; unused by the cosine schedule).
    beta_end: last beta (``linear``, ``scaled_linear``; unused by the cosine schedule).

  Returns:
    betas: [N] float32.
  """
  n = _check_num_train(num_train_timesteps)
  if name == "linear":
    return np.linspace(beta_start, beta_end, n).astype(np.float32)
  if name == "scaled_linear":
    root = np.linspace(beta_start**0.5, beta_end**0.5, n).astype(np.float32)
    return root * root
  if name == "squaredcos_cap_v2":
    def alpha_bar(t):
      return math.cos((t + 0.008) / 1.008 * math.pi / 2) ** 2
    out = [min(1 - alpha_bar((i + 1) / n) / alpha_bar(i / n), 0.999) for i in range(n)]
    return np.asarray(out, np.float64).astype(np.float32)
  raise ValueError(f"beta_schedule must be one of {BETA_SCHEDULES}, got {name!r}")


def alphas_cumprod(name: str = "linear", num_train_timesteps: int = 1000,
                   beta_start: float = 0.0001, beta_end: float = 0.02) -> np.ndarray:
  """Returns alpha-bar_t = prod_{s<=t} (1 - beta_s): [N] float32 (see module docstring)."""
  alphas = np.float32(1.0) - betas(name, num_train_timesteps, beta_start, beta_end)
  return np.cumprod(alphas.astype(np.float64)).astype(np.float32)


@dataclasses.dataclass(frozen=True)
class Schedule:
  """A hashable beta-schedule description (usable as a static argument of ``jax.jit``)."""
  name: str = "linear"
  num_train_timesteps: int = 1000
  beta_start: float = 0.0001
  beta_end: float = 0.02

  def __post_init__(self):
    if self.name not in BETA_SCHEDULES:
      raise ValueError(f"beta_schedule must be one of {BETA_SCHEDULES}, got {self.name!r}")
    _check_num_train(self.num_train_timesteps)

  @property
  def betas(self) -> np.ndarray:
    """[N] float32."""
    return betas(self.name, self.num_train_timesteps, self.beta_start, self.beta_end)

  @property
  def alphas_cumprod(self) -> np.ndarray:
    """[N] float32."""
    return alphas_cumprod(self.name, self.num_train_timesteps, self.beta_start, self.beta_end)


def flow_shift(sigma, shift: float):
  """SD3's timestep shift sigma' = s * sigma / (1 + (s - 1) * sigma); works on NumPy or JAX."""
  return shift * sigma / (1 + (shift - 1) * sigma)


# ---------------------------------------------------------------------------------------------
# Inference timestep grids.


def _check_steps(num_inference_steps: int, num_train_timesteps: int) -> int:
  if int(num_inference_steps) != num_inference_steps or num_inference_steps < 1:
    raise ValueError(
        f"num_inference_steps must be a positive integer, got {num_inference_steps!r}")
  if num_inference_steps > num_train_timesteps:
    raise ValueError(f"num_inference_steps={num_inference_steps} cannot exceed "
                     f"num_train_timesteps={num_train_timesteps}")
  return int(num_inference_steps)


def discrete_timesteps(spacing: str, num_inference_steps: int, num_train_timesteps: int = 1000,
                       steps_offset: int = 0, *, round_linspace: bool = True) -> np.ndarray:
  """Returns the descending inference timesteps of DDPM / DDIM / Euler schedulers.

  Args:
    spacing: one of ``TIMESTEP_SPACINGS``.
    num_inference_steps: n.
    num_train_timesteps: N.
    steps_offset: added to the ``leading`` grid (diffusers' ``steps_offset``).
    round_linspace: DDPM / DDIM round the ``linspace`` grid to integers; the Euler schedulers
      keep it fractional (pass False).

  Returns:
    timesteps: [n] float64 (integer-valued unless ``round_linspace`` is False).
  """
  n_train = _check_num_train(num_train_timesteps)
  n = _check_steps(num_inference_steps, n_train)
  if spacing == "linspace":
    ts = np.linspace(0, n_train - 1, n)
    ts = ts.round() if round_linspace else ts.astype(np.float32).astype(np.float64)
    return ts[::-1].copy()
  if spacing == "leading":
    ratio = n_train // n
    return (np.arange(0, n) * ratio).round()[::-1].astype(np.float64) + steps_offset
  if spacing == "trailing":
    ratio = n_train / n
    return np.round(np.arange(n_train, 0, -ratio)).astype(np.float64) - 1
  raise ValueError(f"timestep_spacing must be one of {TIMESTEP_SPACINGS}, got {spacing!r}")


def karras_sigmas(in_sigmas: np.ndarray, n: int, rho: float = 7.0) -> np.ndarray:
  """Karras et al. (2022) sigma grid between in_sigmas[-1] and in_sigmas[0]: [n] float64."""
  sigma_min, sigma_max = float(in_sigmas[-1]), float(in_sigmas[0])
  ramp = np.linspace(0, 1, n)
  lo, hi = sigma_min ** (1 / rho), sigma_max ** (1 / rho)
  return (hi + ramp * (lo - hi)) ** rho


def sigma_to_t(sigma: np.ndarray, log_sigmas: np.ndarray) -> np.ndarray:
  """Fractional training timestep of each sigma, by interpolation in log-sigma (diffusers)."""
  log_sigma = np.log(np.maximum(sigma, 1e-10))
  dists = log_sigma - log_sigmas[:, np.newaxis]
  low = np.cumsum(dists >= 0, axis=0).argmax(axis=0).clip(max=log_sigmas.shape[0] - 2)
  high = low + 1
  w = np.clip((log_sigmas[low] - log_sigma) / (log_sigmas[low] - log_sigmas[high]), 0, 1)
  return ((1 - w) * low + w * high).reshape(sigma.shape)


def euler_tables(acp: np.ndarray, spacing: str, num_inference_steps: int, steps_offset: int = 0,
                 final_sigmas_type: str = "zero", use_karras_sigmas: bool = False):
  """Timesteps and sigmas of ``EulerDiscreteScheduler.set_timesteps`` (and the ancestral one).

  Args:
    acp: alphas_cumprod, [N] float32.
    spacing: timestep spacing.
    num_inference_steps: n.
    steps_offset: diffusers' ``steps_offset`` (``leading`` spacing only).
    final_sigmas_type: ``zero`` or ``sigma_min`` (the last sigma appended to the grid).
    use_karras_sigmas: replace the grid by Karras sigmas and re-derive timesteps from them.

  Returns:
    (timesteps [n] float32, sigmas [n + 1] float32) with sigma = sqrt((1 - acp) / acp).
  """
  n_train = acp.shape[0]
  ts = discrete_timesteps(spacing, num_inference_steps, n_train, steps_offset,
                          round_linspace=False).astype(np.float32)
  full = ((np.float32(1) - acp) / acp) ** np.float32(0.5)  # float32, as torch computes it
  sig = np.interp(ts, np.arange(0, n_train), full)
  if use_karras_sigmas:
    sig = karras_sigmas(sig, num_inference_steps)
    ts = sigma_to_t(sig, np.log(full)).astype(np.float32)
  return ts.astype(np.float32), _append_final_sigma(sig, full, final_sigmas_type)


def dpm_tables(acp: np.ndarray, spacing: str, num_inference_steps: int, steps_offset: int = 0,
               final_sigmas_type: str = "zero", use_karras_sigmas: bool = False,
               cosine: bool = False):
  """Timesteps and sigmas of ``DPMSolverMultistepScheduler.set_timesteps`` (lambda unclipped).

  Its grids differ from DDIM's: ``linspace`` and ``leading`` are laid over n + 1 points and drop
  the last one. Sigmas are the VE sigmas sqrt((1 - acp) / acp), interpolated as in diffusers.

  Args:
    acp: alphas_cumprod, [N] float32.
    spacing: timestep spacing.
    num_inference_steps: n.
    steps_offset: diffusers' ``steps_offset`` (``leading`` spacing only).
    final_sigmas_type: ``zero`` or ``sigma_min`` (the last sigma appended to the grid).
    use_karras_sigmas: Karras sigmas, timesteps re-derived from them (rounded, or truncated for
      the cosine schedule, as diffusers does).
    cosine: the beta schedule is ``squaredcos_cap_v2`` (only matters with Karras sigmas).

  Returns:
    (timesteps [n] float32, integer-valued; sigmas [n + 1] float32).
  """
  n_train = acp.shape[0]
  n = _check_steps(num_inference_steps, n_train)
  if spacing == "linspace":
    ts = np.linspace(0, n_train - 1, n + 1).round()[::-1][:-1].astype(np.int64)
  elif spacing == "leading":
    ts = (np.arange(0, n + 1) * (n_train // (n + 1))).round()[::-1][:-1].astype(np.int64)
    ts = ts + steps_offset
  elif spacing == "trailing":
    ts = np.arange(n_train, 0, -n_train / n).round().astype(np.int64) - 1
  else:
    raise ValueError(f"timestep_spacing must be one of {TIMESTEP_SPACINGS}, got {spacing!r}")
  full = ((np.float32(1) - acp) / acp) ** np.float32(0.5)  # float32, as torch computes it
  if use_karras_sigmas:
    sig = karras_sigmas(np.flip(full), n)
    ts = sigma_to_t(sig, np.log(full))
    ts = (ts if cosine else ts.round()).astype(np.int64)  # torch's int64 cast truncates
  else:
    sig = np.interp(ts, np.arange(0, n_train), full)
  return ts.astype(np.float32), _append_final_sigma(sig, full, final_sigmas_type)


def flow_tables(num_inference_steps: int, num_train_timesteps: int = 1000, shift: float = 1.0,
                mu: float | None = None):
  """Timesteps and sigmas of ``FlowMatchEulerDiscreteScheduler.set_timesteps``.

  Args:
    num_inference_steps: n.
    num_train_timesteps: N; the model's timestep is sigma * N.
    shift: static timestep shift (diffusers' ``shift``; 3.0 for SD3).
    mu: if given, dynamic shifting (diffusers' ``use_dynamic_shifting=True`` with the exponential
      time shift sigma' = e^mu / (e^mu + 1/sigma - 1)); ``shift`` is then ignored, as in diffusers.

  Returns:
    (timesteps [n] float32, sigmas [n + 1] float32), sigmas descending from 1 to 0.
  """
  n_train = _check_num_train(num_train_timesteps)
  if int(num_inference_steps) != num_inference_steps or num_inference_steps < 1:
    raise ValueError(
        f"num_inference_steps must be a positive integer, got {num_inference_steps!r}")
  if shift <= 0:
    raise ValueError(f"shift must be > 0, got {shift!r}")
  # Training grid of the constructor (float32 torch ops), giving sigma_max and sigma_min.
  train = np.linspace(1, n_train, n_train, dtype=np.float32)[::-1] / np.float32(n_train)
  if mu is None:
    train = (np.float32(shift) * train / (np.float32(1) + np.float32(shift - 1) * train))
  sigma_max, sigma_min = float(train[0]), float(train[-1])
  ts = np.linspace(sigma_max * n_train, sigma_min * n_train, int(num_inference_steps))
  sig = ts / n_train
  if mu is None:
    sig = flow_shift(sig, shift)
  else:
    sig = math.exp(mu) / (math.exp(mu) + (1 / sig - 1))
  sig = sig.astype(np.float32)
  ts = sig * np.float32(n_train)
  return ts.astype(np.float32), np.concatenate([sig, np.zeros(1, np.float32)])


def _append_final_sigma(sig: np.ndarray, full: np.ndarray, final_sigmas_type: str) -> np.ndarray:
  """Appends the sigma after the last step: 0 (``zero``) or the smallest train sigma."""
  if final_sigmas_type == "zero":
    last = 0.0
  elif final_sigmas_type == "sigma_min":
    last = full[0]
  else:
    raise ValueError(
        f"final_sigmas_type must be 'zero' or 'sigma_min', got {final_sigmas_type!r}")
  return np.concatenate([sig, [last]]).astype(np.float32)
