"""Samplers against diffusers' scheduler loops (the reference implementation).

The reference is diffusers' loop
``x = x_T * s.init_noise_sigma; for t in s.timesteps: x = s.step(f(s.scale_model_input(x, t), t),
t, x).prev_sample`` with the same nonlinear ``f`` written once for torch and once for jnp.
Tolerance: 1e-5 of max|x_0|, for every cell of the grid, the cosine + Euler corner included.
"""
import itertools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
from diffusers import (DDIMScheduler, DDPMScheduler, DPMSolverMultistepScheduler,
                       EulerAncestralDiscreteScheduler, EulerDiscreteScheduler,
                       FlowMatchEulerDiscreteScheduler)
import diffusers.schedulers.scheduling_ddpm as ddpm_module
import diffusers.schedulers.scheduling_euler_ancestral_discrete as ancestral_module

try:
  from diffusers.guiders.guider_utils import rescale_noise_cfg
except ImportError:  # older diffusers keep it with the Stable Diffusion pipeline
  from diffusers.pipelines.stable_diffusion.pipeline_stable_diffusion import rescale_noise_cfg

from mfm_jax.diffusion import guidance, samplers

REFS = {"ddim": DDIMScheduler, "euler": EulerDiscreteScheduler, "ddpm": DDPMScheduler,
        "euler_ancestral": EulerAncestralDiscreteScheduler,
        "dpmpp_2m": DPMSolverMultistepScheduler, "flow_euler": FlowMatchEulerDiscreteScheduler}
SCHEDS = ("linear", "scaled_linear", "squaredcos_cap_v2")
PREDS = ("epsilon", "v_prediction", "sample")
SPACINGS = ("leading", "trailing", "linspace")
# Grid cells diffusers itself refuses, and why (they are checked to raise here too).
REJECTED = {("euler_ancestral", "sample"):
            "EulerAncestralDiscreteScheduler.step raises NotImplementedError for 'sample'"}
STEPS = 10
TOL = 1e-5


def model(x, t):
  """A fixed nonlinear function of x: [B, ...] and t: [B], for torch and jnp alike.

  Rational on purpose: +, -, *, / are correctly rounded in torch and XLA alike, while sin / cos
  implementations differ by ulps, which eps-prediction at t ~ 999 amplifies ~15 times.
  """
  tt = t.reshape((-1,) + (1,) * (x.ndim - 1)) / 1000.0
  return 0.8 * x / (1.0 + 0.25 * x * x) + 0.3 * x * (1.0 - tt) - 0.2 * tt


def uncond_model(x, t):
  tt = t.reshape((-1,) + (1,) * (x.ndim - 1)) / 1000.0
  return 0.5 * x / (1.0 + 0.1 * x * x) + 0.1 * tt


def jax_model(x, t):
  assert t.shape == (x.shape[0],) and t.dtype == jnp.float32
  return model(x, t)


def x_T():
  return np.random.default_rng(0).standard_normal((2, 3, 4, 4)).astype(np.float32)


def reference(sched, x, n=STEPS, fn=model, step_kwargs=None, on_step=None):
  """diffusers' loop; ``fn(x, t)`` on torch tensors, t: [B] float32."""
  sched.set_timesteps(n)
  x = torch.from_numpy(x) * getattr(sched, "init_noise_sigma", 1.0)  # flow: none (1)
  for i, t in enumerate(sched.timesteps):
    if on_step:
      on_step(i)
    xin = sched.scale_model_input(x, t) if hasattr(sched, "scale_model_input") else x
    out = fn(xin, t.float().expand(x.shape[0]))
    kw = {k: v(i) for k, v in (step_kwargs or {}).items()}
    x = sched.step(out, t, x, **kw).prev_sample
  return x.numpy()


def rel_err(got, ref):
  return float(np.abs(np.asarray(got) - ref).max() / np.abs(ref).max())


@pytest.mark.parametrize("name", ["ddim", "euler", "dpmpp_2m"])
@pytest.mark.parametrize("sched", SCHEDS)
def test_deterministic_parity_grid(name, sched):
  errs = {}
  for pred, spacing in itertools.product(PREDS, SPACINGS):
    kw = dict(beta_schedule=sched, prediction_type=pred, timestep_spacing=spacing)
    ref = reference(REFS[name](**kw), x_T())
    got = samplers.sample(jax_model, x_T(), name=name, num_inference_steps=STEPS, **kw)
    errs[pred, spacing] = rel_err(got, ref)
  assert max(errs.values()) < TOL, errs


@pytest.mark.parametrize("shift,mu", [(1.0, None), (3.0, None), (0.5, None), (1.0, 0.7)])
def test_flow_euler_parity(shift, mu):
  """Flow matching has no beta schedule, prediction type or spacing: its grid is the shift."""
  ref_sched = FlowMatchEulerDiscreteScheduler(shift=shift, use_dynamic_shifting=mu is not None)
  orig = ref_sched.set_timesteps
  ref_sched.set_timesteps = lambda n: orig(n, mu=mu)
  ref = reference(ref_sched, x_T())
  got = samplers.sample(jax_model, x_T(), name="flow_euler", num_inference_steps=STEPS,
                        shift=shift, mu=mu)
  assert rel_err(got, ref) < TOL


def test_cosine_euler_corner_is_ill_conditioned_yet_matched():
  """Euler from sigma_max ~ 2e4 with a v output: diffusers' float32 loop is itself ~1e-4 away
  from its float64 evaluation; we match the float32 loop by repeating its roundings."""
  kw = dict(beta_schedule="squaredcos_cap_v2", prediction_type="v_prediction",
            timestep_spacing="trailing")
  sched = EulerDiscreteScheduler(**kw)
  ref = reference(sched, x_T())
  sig = sched.sigmas.numpy().astype(np.float64)
  x = x_T().astype(np.float64) * sig.max()
  for i, t in enumerate(sched.timesteps.numpy()):
    s = sig[i]
    out = model(x / (s * s + 1) ** 0.5, np.full(x.shape[0], t, np.float64))
    x0 = out * (-s / (s * s + 1) ** 0.5) + x / (s * s + 1)
    x = x + (x - x0) / s * (sig[i + 1] - s)
  assert rel_err(ref, x) > 1e-4  # the reference's own float32 rounding noise
  got = samplers.sample(jax_model, x_T(), name="euler", num_inference_steps=STEPS, **kw)
  assert rel_err(got, ref) < TOL


@pytest.mark.parametrize("name,extra,n", [
    ("ddim", dict(clip_sample=False), STEPS),
    ("ddim", dict(set_alpha_to_one=False, steps_offset=1), STEPS),
    ("ddim", dict(clip_sample_range=0.5), STEPS),
    ("euler", dict(final_sigmas_type="sigma_min"), STEPS),
    ("euler", dict(use_karras_sigmas=True), STEPS),
    ("euler", dict(steps_offset=1), STEPS),
    ("dpmpp_2m", dict(use_karras_sigmas=True), 20),
    ("dpmpp_2m", dict(final_sigmas_type="sigma_min"), 16),  # second-order final step
    ("dpmpp_2m", dict(final_sigmas_type="sigma_min", lower_order_final=False), STEPS),
    ("dpmpp_2m", dict(solver_type="heun", steps_offset=1), STEPS),
    ("dpmpp_2m", dict(solver_order=1), STEPS),
])
def test_options(name, extra, n):
  kw = dict(beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012,
            prediction_type="v_prediction", timestep_spacing="leading")
  ref = reference(REFS[name](**kw, **extra), x_T(), n=n)
  got = samplers.sample(jax_model, x_T(), name=name, num_inference_steps=n, **kw, **extra)
  assert rel_err(got, ref) < TOL


@pytest.fixture
def shared_noise(monkeypatch):
  """Feeds diffusers the noise our step i draws: normal(fold_in(key, i)).

  The key is an ``rbg`` key only because threefry takes ~2 s per compile on CPU; the
  convention holds for any key type (threefry is exercised in the objectives tests).
  """
  key = jax.random.key(7, impl="rbg")
  noises = [np.array(jax.random.normal(jax.random.fold_in(key, i), x_T().shape, jnp.float32))
            for i in range(STEPS)]
  current = [0]

  def fake_randn(shape, generator=None, device=None, dtype=None, layout=None):
    del generator, device, layout
    assert tuple(shape) == noises[0].shape
    return torch.from_numpy(noises[current[0]]).to(dtype)

  monkeypatch.setattr(ddpm_module, "randn_tensor", fake_randn)
  monkeypatch.setattr(ancestral_module, "randn_tensor", fake_randn)
  return key, noises, lambda i: current.__setitem__(0, i)


@pytest.mark.parametrize("name", ["ddpm", "euler_ancestral", "ddim"])
def test_stochastic_parity_with_shared_noise(name, shared_noise):
  key, noises, on_step = shared_noise
  extra, step_kwargs = {}, None
  if name == "ddim":
    extra = dict(eta=0.7)
    step_kwargs = dict(eta=lambda i: 0.7, variance_noise=lambda i: torch.from_numpy(noises[i]))
  configs = [("linear", "epsilon", "leading"), ("squaredcos_cap_v2", "v_prediction", "trailing"),
             ("scaled_linear", "sample", "linspace"), ("squaredcos_cap_v2", "epsilon", "linspace")]
  for sched, pred, spacing in configs:
    kw = dict(beta_schedule=sched, prediction_type=pred, timestep_spacing=spacing)
    if (name, pred) in REJECTED:
      with pytest.raises(NotImplementedError):
        reference(REFS[name](**kw), x_T())
      with pytest.raises(ValueError, match=pred):
        samplers.sample(jax_model, x_T(), name=name, rng=key, **kw)
      continue
    ref = reference(REFS[name](**kw), x_T(), step_kwargs=step_kwargs, on_step=on_step)
    got = samplers.sample(jax_model, x_T(), name=name, num_inference_steps=STEPS, rng=key,
                          **kw, **extra)
    assert rel_err(got, ref) < TOL, (kw, rel_err(got, ref))
  other = samplers.sample(jax_model, x_T(), name=name, num_inference_steps=STEPS,
                          rng=jax.random.key(8, impl="rbg"), **kw, **extra)
  assert rel_err(other, np.asarray(got)) > 10 * TOL  # the key matters


# One setting per sampler for the guidance tests (the cosine Euler corner among them).
CFG_SETTINGS = {
    "ddim": dict(beta_schedule="scaled_linear", prediction_type="v_prediction",
                 timestep_spacing="trailing"),
    "ddpm": dict(beta_schedule="linear", prediction_type="epsilon", timestep_spacing="leading"),
    "euler": dict(beta_schedule="squaredcos_cap_v2", prediction_type="sample",
                  timestep_spacing="trailing"),
    "euler_ancestral": dict(beta_schedule="scaled_linear", prediction_type="v_prediction",
                            timestep_spacing="linspace"),
    "dpmpp_2m": dict(beta_schedule="squaredcos_cap_v2", prediction_type="epsilon",
                     timestep_spacing="trailing"),
    "flow_euler": dict(shift=3.0),
}


def _batched(x2, t2):
  """The doubled-batch model ``[uncond; cond]`` of a CFG pipeline."""
  b = x2.shape[0] // 2
  return jnp.concatenate([uncond_model(x2[:b], t2[:b]), model(x2[b:], t2[b:])])


@pytest.mark.parametrize("name", samplers.SAMPLERS)
def test_guidance_with_every_sampler(name, shared_noise):
  key, _, on_step = shared_noise
  kw = dict(CFG_SETTINGS[name], name=name, num_inference_steps=STEPS,
            rng=key if name in ("ddpm", "euler_ancestral") else None)
  # Scale 1 is the conditional model.
  cond = samplers.sample(jax_model, x_T(), **kw)
  one = samplers.sample(guidance.cfg_model_fn(_batched, 1.0), x_T(), **kw)
  np.testing.assert_allclose(one, cond, rtol=1e-5, atol=1e-5 * np.abs(cond).max())
  # Scale 5 with guidance rescale 0.7 equals diffusers' loop fed rescale_noise_cfg's output.
  def torch_guided(x, t):
    c, u = model(x, t), uncond_model(x, t)
    return rescale_noise_cfg(u + 5.0 * (c - u), c, guidance_rescale=0.7)

  settings = {k: v for k, v in kw.items() if k not in ("name", "num_inference_steps", "rng")}
  ref = reference(REFS[name](**settings), x_T(), fn=torch_guided, on_step=on_step)
  got = samplers.sample(guidance.cfg_model_fn(_batched, 5.0, 0.7), x_T(), **kw)
  assert rel_err(got, ref) < TOL, rel_err(got, ref)


def test_loop_is_one_scan_compiled_once():
  traces = []

  def counted(x, t):
    traces.append(x.shape)
    return jax_model(x, t)

  kw = dict(name="dpmpp_2m", beta_schedule="scaled_linear", num_inference_steps=STEPS)
  jaxpr = str(jax.make_jaxpr(lambda x: samplers.sample(counted, x, **kw))(x_T()))
  assert jaxpr.count("scan[") == 1 and len(traces) == 1  # the body is traced once, not n times
  traces.clear()
  first = samplers.sample(counted, x_T(), **kw)
  second = samplers.sample(counted, x_T() + 1.0, **kw)  # same shapes: no new trace or compile
  assert len(traces) == 1 and rel_err(first, np.asarray(second)) > 1e-3
  # Schedules and spacings are data of the compiled loop: switching them does not retrace.
  other = samplers.sample(counted, x_T(), **dict(kw, beta_schedule="squaredcos_cap_v2",
                                                 timestep_spacing="trailing"))
  assert len(traces) == 1 and rel_err(other, np.asarray(first)) > 1e-3
  samplers.sample(counted, x_T()[:1], **kw)  # a new shape compiles again
  assert len(traces) == 2
  run = jax.jit(lambda x: samplers.sample(counted, x, **kw))
  np.testing.assert_allclose(run(x_T()), first, rtol=1e-6, atol=1e-6)
  run(x_T() + 1.0)
  assert len(traces) == 3


def test_timesteps_dtype_and_errors():
  for name, spacing in itertools.product(["ddim", "euler", "dpmpp_2m"], SPACINGS):
    ref = REFS[name](beta_schedule="scaled_linear", timestep_spacing=spacing)
    ref.set_timesteps(STEPS)
    np.testing.assert_array_equal(
        samplers.timesteps(name, beta_schedule="scaled_linear", timestep_spacing=spacing,
                           num_inference_steps=STEPS), ref.timesteps.numpy())
  # bfloat16 noise keeps its dtype.
  out = samplers.sample(jax_model, jnp.asarray(x_T(), jnp.bfloat16), name="euler",
                        num_inference_steps=STEPS)
  assert out.dtype == jnp.bfloat16 and out.shape == x_T().shape
  # flow_euler as tasks call it: prediction_type and timestep_spacing None.
  samplers.sample(jax_model, x_T(), name="flow_euler", prediction_type=None,
                  timestep_spacing=None, num_inference_steps=2, shift=3.0)
  cases = [(dict(name="heun"), "name"), (dict(name="ddim", shift=3.0), "unknown extra"),
           (dict(name="ddpm"), "rng"), (dict(name="ddim", eta=0.5), "rng"),
           (dict(name="euler", prediction_type="x0"), "prediction_type"),
           (dict(name="flow_euler", prediction_type="epsilon"), "prediction_type"),
           (dict(name="ddim", timestep_spacing="karras"), "timestep_spacing"),
           (dict(name="ddim", num_inference_steps=0), "num_inference_steps"),
           (dict(name="dpmpp_2m", solver_order=3), "solver_order"),
           (dict(name="dpmpp_2m", solver_type="bh2"), "solver_type"),
           (dict(name="dpmpp_2m", timestep_spacing="leading", steps_offset=100),
            "steps_offset")]
  for kw, match in cases:
    with pytest.raises(ValueError, match=match):
      samplers.sample(jax_model, x_T(), **kw)
