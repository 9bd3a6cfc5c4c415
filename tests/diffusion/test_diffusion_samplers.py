"""Samplers against diffusers' scheduler loops (the reference implementation).

The reference is diffusers' loop
``x = x_T * s.init_noise_sigma; for t in s.timesteps: x = s.step(f(s.scale_model_input(x, t), t),
t, x).prev_sample`` with the same nonlinear ``f`` written once for torch and once for jnp.

Tolerance: 1e-5 of max|x_0|. One corner is ill-conditioned in float32 for *any* implementation:
the Euler samplers with the cosine schedule starting at t = 999 (sigma_max ~ 2e4) and an x0-type
output (v_prediction / sample): the first step maps |x| ~ 6e4 to O(sigma_next), so one rounding
is amplified ~1e4 times. XLA contracts a*b+c into an FMA and rewrites x/s as x*(1/s), torch rounds
every op, hence ~1e-3 there. For that corner the in-process check is loose and
``test_ill_conditioned_corner_exact_arithmetic`` reruns it in a subprocess with FMA and the
reciprocal rewrite switched off, where it agrees to 1e-5 like the rest.
"""
import itertools
import json
import os
import pathlib
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
from diffusers import (DDIMScheduler, DDPMScheduler, EulerAncestralDiscreteScheduler,
                       EulerDiscreteScheduler, FlowMatchEulerDiscreteScheduler)
import diffusers.schedulers.scheduling_ddpm as ddpm_module
import diffusers.schedulers.scheduling_euler_ancestral_discrete as ancestral_module

from mfm_jax.diffusion import samplers

REFS = {"ddim": DDIMScheduler, "euler": EulerDiscreteScheduler, "ddpm": DDPMScheduler,
        "euler_ancestral": EulerAncestralDiscreteScheduler}
SCHEDS = ("linear", "scaled_linear", "squaredcos_cap_v2")
PREDS = ("epsilon", "v_prediction", "sample")
SPACINGS = ("leading", "trailing", "linspace")
STEPS = 10
TOL = 1e-5


def model(x, t, lib):
  """A fixed nonlinear function of x: [B, ...] and t: [B]; lib is torch or jnp.

  Rational on purpose: +, -, *, / are correctly rounded in torch and XLA alike, while sin / cos
  implementations differ by ulps, which eps-prediction at t ~ 999 amplifies ~15 times.
  """
  del lib
  tt = t.reshape((-1,) + (1,) * (x.ndim - 1)) / 1000.0
  return 0.8 * x / (1.0 + 0.25 * x * x) + 0.3 * x * (1.0 - tt) - 0.2 * tt


def jax_model(x, t):
  assert t.shape == (x.shape[0],) and t.dtype == jnp.float32
  return model(x, t, jnp)


def x_T():
  return np.random.default_rng(0).standard_normal((2, 3, 4, 4)).astype(np.float32)


def reference(sched, x, n=STEPS, step_kwargs=None, on_step=None):
  sched.set_timesteps(n)
  x = torch.from_numpy(x) * getattr(sched, "init_noise_sigma", 1.0)
  for i, t in enumerate(sched.timesteps):
    if on_step:
      on_step(i)
    xin = sched.scale_model_input(x, t) if hasattr(sched, "scale_model_input") else x
    out = model(xin, t.float().expand(x.shape[0]), torch)
    kw = {k: v(i) for k, v in (step_kwargs or {}).items()}
    x = sched.step(out, t, x, **kw).prev_sample
  return x.numpy()


def rel_err(got, ref):
  return float(np.abs(np.asarray(got) - ref).max() / np.abs(ref).max())


def ill_conditioned(name, sched, pred, spacing):
  return (name.startswith("euler") and sched == "squaredcos_cap_v2" and pred != "epsilon"
          and spacing != "leading")


@pytest.mark.parametrize("name", ["ddim", "euler"])
@pytest.mark.parametrize("sched", SCHEDS)
def test_deterministic_parity_grid(name, sched):
  for pred, spacing in itertools.product(PREDS, SPACINGS):
    kw = dict(beta_schedule=sched, prediction_type=pred, timestep_spacing=spacing)
    ref = reference(REFS[name](**kw), x_T())
    got = samplers.sample(jax_model, x_T(), name=name, num_inference_steps=STEPS, **kw)
    tol = 5e-3 if ill_conditioned(name, sched, pred, spacing) else TOL
    assert rel_err(got, ref) < tol, (kw, rel_err(got, ref))


@pytest.mark.parametrize("shift,mu", [(1.0, None), (3.0, None), (0.5, None), (1.0, 0.7)])
def test_flow_euler_parity(shift, mu):
  ref_sched = FlowMatchEulerDiscreteScheduler(shift=shift, use_dynamic_shifting=mu is not None)
  orig = ref_sched.set_timesteps
  ref_sched.set_timesteps = lambda n: orig(n, mu=mu)
  ref = reference(ref_sched, x_T())
  got = samplers.sample(jax_model, x_T(), name="flow_euler", num_inference_steps=STEPS,
                        shift=shift, mu=mu)
  assert rel_err(got, ref) < TOL


@pytest.mark.parametrize("extra,ref_kw", [
    (dict(clip_sample=False), {}),
    (dict(set_alpha_to_one=False, steps_offset=1), {}),
    (dict(clip_sample_range=0.5), {}),
])
def test_ddim_options(extra, ref_kw):
  kw = dict(beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012)
  ref = reference(DDIMScheduler(**kw, **extra, **ref_kw), x_T())
  got = samplers.sample(jax_model, x_T(), name="ddim", num_inference_steps=STEPS, **kw, **extra)
  assert rel_err(got, ref) < TOL


@pytest.mark.parametrize("extra", [dict(final_sigmas_type="sigma_min"),
                                   dict(use_karras_sigmas=True),
                                   dict(steps_offset=1)])
def test_euler_options(extra):
  kw = dict(beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012,
            prediction_type="v_prediction", timestep_spacing="leading")
  ref = reference(EulerDiscreteScheduler(**kw, **extra), x_T())
  got = samplers.sample(jax_model, x_T(), name="euler", num_inference_steps=STEPS, **kw, **extra)
  assert rel_err(got, ref) < TOL


def _noises(key, shape):
  return [np.array(jax.random.normal(jax.random.fold_in(key, i), shape, jnp.float32))
          for i in range(STEPS)]


@pytest.mark.parametrize("name", ["ddpm", "euler_ancestral", "ddim"])
def test_stochastic_parity_with_shared_noise(name, monkeypatch):
  """Step i draws normal(fold_in(rng, i)); diffusers is fed the same noise.

  The key is an ``rbg`` key only because threefry takes ~2 s per compile on CPU; the
  convention holds for any key type (threefry is exercised in the objectives tests).
  """
  key = jax.random.key(7, impl="rbg")
  noises = _noises(key, x_T().shape)
  current = [0]

  def fake_randn(shape, generator=None, device=None, dtype=None, layout=None):
    del generator, device, layout
    assert tuple(shape) == noises[0].shape
    return torch.from_numpy(noises[current[0]]).to(dtype)

  monkeypatch.setattr(ddpm_module, "randn_tensor", fake_randn)
  monkeypatch.setattr(ancestral_module, "randn_tensor", fake_randn)
  extra, step_kwargs = {}, None
  if name == "ddim":
    extra = dict(eta=0.7)
    step_kwargs = dict(eta=lambda i: 0.7, variance_noise=lambda i: torch.from_numpy(noises[i]))
  configs = [("linear", "epsilon", "leading"), ("squaredcos_cap_v2", "v_prediction", "trailing"),
             ("scaled_linear", "v_prediction" if name == "euler_ancestral" else "sample",
              "linspace"), ("squaredcos_cap_v2", "epsilon", "linspace")]
  for sched, pred, spacing in configs:
    kw = dict(beta_schedule=sched, prediction_type=pred, timestep_spacing=spacing)
    ref = reference(REFS[name](**kw), x_T(), step_kwargs=step_kwargs,
                    on_step=lambda i: current.__setitem__(0, i))
    run = jax.jit(lambda x, k, kw=kw: samplers.sample(
        jax_model, x, name=name, num_inference_steps=STEPS, rng=k, **kw, **extra))
    got = run(x_T(), key)
    tol = 5e-3 if ill_conditioned(name, sched, pred, spacing) else TOL
    assert rel_err(got, ref) < tol, (kw, rel_err(got, ref))
  other = run(x_T(), jax.random.key(8, impl="rbg"))
  assert rel_err(other, np.asarray(got)) > 10 * TOL  # the key matters


def _corner_errors():
  """Euler errors on the ill-conditioned corner (run in a subprocess by the test below)."""
  errs = {}
  for pred, spacing in itertools.product(PREDS[1:], SPACINGS[1:]):
    kw = dict(beta_schedule="squaredcos_cap_v2", prediction_type=pred, timestep_spacing=spacing)
    ref = reference(EulerDiscreteScheduler(**kw), x_T())
    got = samplers.sample(jax_model, x_T(), name="euler", num_inference_steps=STEPS, **kw)
    errs[f"{pred}/{spacing}"] = rel_err(got, ref)
  return errs


@pytest.mark.slow
def test_ill_conditioned_corner_exact_arithmetic():
  here = pathlib.Path(__file__).resolve()
  env = dict(os.environ, JAX_PLATFORMS="cpu",
             XLA_FLAGS="--xla_cpu_max_isa=AVX --xla_disable_hlo_passes=algsimp")
  code = (f"import sys, json; sys.path[:0] = [{str(here.parent)!r}, {str(here.parents[2])!r}]; "
          "import test_diffusion_samplers as m; print(json.dumps(m._corner_errors()))")
  proc = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True,
                        timeout=300, check=False)
  assert proc.returncode == 0, proc.stderr[-3000:]
  errs = json.loads(proc.stdout.strip().splitlines()[-1])
  assert len(errs) == 4 and max(errs.values()) < TOL, errs


def test_sample_inside_jit_and_timesteps():
  kw = dict(name="euler", beta_schedule="scaled_linear", prediction_type="epsilon",
            timestep_spacing="trailing", num_inference_steps=STEPS)
  eager = samplers.sample(jax_model, x_T(), **kw)
  jitted = jax.jit(lambda x: samplers.sample(jax_model, x, **kw))(x_T())
  np.testing.assert_allclose(np.asarray(jitted), np.asarray(eager), rtol=1e-6, atol=1e-6)
  ref = EulerDiscreteScheduler(beta_schedule="scaled_linear", timestep_spacing="trailing")
  ref.set_timesteps(STEPS)
  np.testing.assert_array_equal(samplers.timesteps(**kw), ref.timesteps.numpy())
  # bfloat16 noise keeps its dtype.
  out = samplers.sample(jax_model, jnp.asarray(x_T(), jnp.bfloat16), **kw)
  assert out.dtype == jnp.bfloat16 and out.shape == x_T().shape


def test_errors_name_the_argument():
  with pytest.raises(ValueError, match="name"):
    samplers.sample(jax_model, x_T(), name="heun")
  with pytest.raises(ValueError, match="unknown extra"):
    samplers.sample(jax_model, x_T(), name="ddim", shift=3.0)
  with pytest.raises(ValueError, match="rng"):
    samplers.sample(jax_model, x_T(), name="ddpm")
  with pytest.raises(ValueError, match="rng"):
    samplers.sample(jax_model, x_T(), name="ddim", eta=0.5)
  with pytest.raises(ValueError, match="prediction_type"):
    samplers.sample(jax_model, x_T(), name="euler", prediction_type="x0")
  with pytest.raises(ValueError, match="prediction_type"):
    samplers.sample(jax_model, x_T(), name="flow_euler", prediction_type="epsilon")
  with pytest.raises(ValueError, match="sample"):
    samplers.sample(jax_model, x_T(), name="euler_ancestral", prediction_type="sample",
                    rng=jax.random.key(0))
  with pytest.raises(ValueError, match="timestep_spacing"):
    samplers.sample(jax_model, x_T(), name="ddim", timestep_spacing="karras")
  with pytest.raises(ValueError, match="num_inference_steps"):
    samplers.sample(jax_model, x_T(), name="ddim", num_inference_steps=0)
