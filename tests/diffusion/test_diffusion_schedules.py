"""Beta schedules and inference tables against diffusers' schedulers."""
import itertools

import numpy as np
import pytest
from diffusers import (DDIMScheduler, DDPMScheduler, DPMSolverMultistepScheduler,
                       EulerDiscreteScheduler, FlowMatchEulerDiscreteScheduler)

from mfm_jax.diffusion import schedules


@pytest.mark.parametrize("name", schedules.BETA_SCHEDULES)
@pytest.mark.parametrize("n,start,end", [(1000, 1e-4, 0.02), (1000, 0.00085, 0.012),
                                         (37, 1e-3, 0.05)])
def test_alphas_cumprod_match_diffusers(name, n, start, end):
  ref = DDPMScheduler(num_train_timesteps=n, beta_schedule=name, beta_start=start,
                      beta_end=end)
  b = schedules.betas(name, n, start, end)
  acp = schedules.alphas_cumprod(name, n, start, end)
  assert b.dtype == np.float32 and acp.dtype == np.float32 and acp.shape == (n,)
  # torch's float32 linspace and NumPy's float64 one rounded differ by one ulp (two after the
  # square of scaled_linear).
  np.testing.assert_allclose(b, ref.betas.numpy(), rtol=5e-7, atol=0)
  np.testing.assert_allclose(acp, ref.alphas_cumprod.numpy(), rtol=2e-6, atol=0)
  if name == "squaredcos_cap_v2":  # no linspace involved: bit-exact
    np.testing.assert_array_equal(acp, ref.alphas_cumprod.numpy())
  assert np.all(np.diff(acp) < 0) and 0 < acp[-1] < acp[0] < 1
  sched = schedules.Schedule(name, n, start, end)
  np.testing.assert_array_equal(sched.alphas_cumprod, acp)
  assert hash(sched) == hash(schedules.Schedule(name, n, start, end))


def test_bad_names_raise():
  with pytest.raises(ValueError, match="beta_schedule"):
    schedules.betas("cosine")
  with pytest.raises(ValueError, match="beta_schedule"):
    schedules.Schedule(name="sigmoid")
  with pytest.raises(ValueError, match="timestep_spacing"):
    schedules.discrete_timesteps("uniform", 10)
  with pytest.raises(ValueError, match="num_inference_steps"):
    schedules.discrete_timesteps("leading", 2000)
  with pytest.raises(ValueError, match="final_sigmas_type"):
    schedules.euler_tables(schedules.alphas_cumprod(), "linspace", 10, final_sigmas_type="one")
  with pytest.raises(ValueError, match="timestep_spacing"):
    schedules.dpm_tables(schedules.alphas_cumprod(), "uniform", 10)


@pytest.mark.parametrize("spacing", schedules.TIMESTEP_SPACINGS)
def test_timestep_grids_match_diffusers(spacing):
  for name, n, offset in itertools.product(schedules.BETA_SCHEDULES, (1, 7, 50), (0, 1)):
    if spacing != "leading" and offset:
      continue
    ddim = DDIMScheduler(beta_schedule=name, timestep_spacing=spacing, steps_offset=offset)
    ddim.set_timesteps(n)
    np.testing.assert_array_equal(
        schedules.discrete_timesteps(spacing, n, 1000, offset), ddim.timesteps.numpy())
    euler = EulerDiscreteScheduler(beta_schedule=name, timestep_spacing=spacing,
                                   steps_offset=offset)
    euler.set_timesteps(n)
    ts, sig = schedules.euler_tables(schedules.alphas_cumprod(name), spacing, n, offset)
    np.testing.assert_array_equal(ts, euler.timesteps.numpy())
    np.testing.assert_allclose(sig, euler.sigmas.numpy(), rtol=2e-6, atol=0)
    dpm = DPMSolverMultistepScheduler(beta_schedule=name, timestep_spacing=spacing,
                                      steps_offset=offset)
    dpm.set_timesteps(n)
    ts, sig = schedules.dpm_tables(schedules.alphas_cumprod(name), spacing, n, offset)
    np.testing.assert_array_equal(ts, dpm.timesteps.numpy())
    np.testing.assert_allclose(sig, dpm.sigmas.numpy(), rtol=2e-6, atol=0)


def test_euler_karras_and_sigma_min_tables():
  acp = schedules.alphas_cumprod("scaled_linear", 1000, 0.00085, 0.012)
  ref = EulerDiscreteScheduler(beta_schedule="scaled_linear", beta_start=0.00085,
                               beta_end=0.012, use_karras_sigmas=True,
                               final_sigmas_type="sigma_min")
  ref.set_timesteps(20)
  ts, sig = schedules.euler_tables(acp, "linspace", 20, final_sigmas_type="sigma_min",
                                   use_karras_sigmas=True)
  np.testing.assert_allclose(ts, ref.timesteps.numpy(), rtol=1e-6, atol=1e-3)
  np.testing.assert_allclose(sig, ref.sigmas.numpy(), rtol=2e-6, atol=0)
  ref = DPMSolverMultistepScheduler(beta_schedule="scaled_linear", beta_start=0.00085,
                                    beta_end=0.012, use_karras_sigmas=True,
                                    final_sigmas_type="sigma_min")
  ref.set_timesteps(20)
  ts, sig = schedules.dpm_tables(acp, "linspace", 20, final_sigmas_type="sigma_min",
                                 use_karras_sigmas=True)
  np.testing.assert_array_equal(ts, ref.timesteps.numpy())
  np.testing.assert_allclose(sig, ref.sigmas.numpy(), rtol=2e-6, atol=0)


@pytest.mark.parametrize("shift,mu", [(1.0, None), (3.0, None), (0.5, None), (1.0, 0.8)])
def test_flow_tables_match_diffusers(shift, mu):
  ref = FlowMatchEulerDiscreteScheduler(shift=shift, use_dynamic_shifting=mu is not None)
  ref.set_timesteps(13, mu=mu)
  ts, sig = schedules.flow_tables(13, 1000, shift, mu)
  np.testing.assert_array_equal(ts, ref.timesteps.numpy())
  np.testing.assert_array_equal(sig, ref.sigmas.numpy())
