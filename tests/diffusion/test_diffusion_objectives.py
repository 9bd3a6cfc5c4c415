"""Training objectives: forward process and targets against diffusers, loss semantics."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
from diffusers import DDPMScheduler, FlowMatchEulerDiscreteScheduler

from mfm_jax.diffusion import objectives, schedules

B, SHAPE = 6, (6, 2, 3, 4, 5)  # [B, T, H, W, C]


def data(seed=0):
  r = np.random.default_rng(seed)
  return r.standard_normal(SHAPE).astype(np.float32), r.standard_normal(SHAPE).astype(np.float32)


@pytest.mark.parametrize("sched", schedules.BETA_SCHEDULES)
def test_ddpm_forward_process_and_targets_match_diffusers(sched):
  x0, noise = data()
  t = np.array([0, 1, 250, 500, 998, 999])
  ref = DDPMScheduler(beta_schedule=sched)
  kw = dict(beta_schedule=sched)
  tx = [torch.from_numpy(a) for a in (x0, noise)]
  ref_xt = ref.add_noise(tx[0], tx[1], torch.from_numpy(t)).numpy()
  ref_v = ref.get_velocity(tx[0], tx[1], torch.from_numpy(t)).numpy()
  tf = jnp.asarray(t, jnp.float32)
  for obj in ("epsilon", "v_prediction", "sample"):
    np.testing.assert_allclose(objectives.add_noise(x0, noise, tf, obj, **kw), ref_xt,
                               rtol=1e-5, atol=1e-6)
  np.testing.assert_allclose(objectives.target(x0, noise, tf, "v_prediction", **kw), ref_v,
                             rtol=1e-5, atol=1e-6)
  np.testing.assert_array_equal(objectives.target(x0, noise, tf, "epsilon", **kw), noise)
  np.testing.assert_array_equal(objectives.target(x0, noise, tf, "sample", **kw), x0)


@pytest.mark.parametrize("shift", [1.0, 3.0])
def test_flow_forward_process_matches_diffusers(shift):
  x0, noise = data()
  ref = FlowMatchEulerDiscreteScheduler(shift=shift)
  ref.set_timesteps(20)
  t = ref.timesteps[[0, 3, 7, 11, 15, 19]]
  ref_xt = ref.scale_noise(torch.from_numpy(x0), t, torch.from_numpy(noise)).numpy()
  tj = jnp.asarray(t.numpy())
  np.testing.assert_allclose(objectives.add_noise(x0, noise, tj, "flow"), ref_xt, rtol=1e-5,
                             atol=1e-6)
  np.testing.assert_allclose(objectives.target(x0, noise, tj, "flow"), noise - x0, rtol=1e-6)


@pytest.mark.parametrize("obj", objectives.OBJECTIVES)
def test_predict_x0_inverts_the_target(obj):
  x0, noise = data()
  t = jnp.asarray([3.0, 100.0, 400.0, 600.0, 800.0, 990.0])
  x_t = objectives.add_noise(x0, noise, t, obj)
  out = objectives.target(x0, noise, t, obj)
  np.testing.assert_allclose(objectives.predict_x0(out, x_t, t, obj), x0, rtol=1e-3, atol=2e-3)


@pytest.mark.parametrize("obj", objectives.OBJECTIVES)
def test_loss_equals_reference_computation(obj):
  """With fixed t and noise, the loss is mean((f(x_t, t) - target)^2), target from diffusers."""
  x0, noise = data()
  t = np.array([0.0, 10.0, 300.0, 555.0, 900.0, 999.0], np.float32)
  if obj == "flow":
    sig = t / 1000.0
    ref_xt = (1 - sig)[:, None, None, None, None] * x0 + sig[:, None, None, None, None] * noise
    ref_target = noise - x0
  else:
    ref = DDPMScheduler(beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012)
    ti = torch.from_numpy(t.astype(np.int64))
    tx = [torch.from_numpy(a) for a in (x0, noise)]
    ref_xt = ref.add_noise(tx[0], tx[1], ti).numpy()
    ref_target = {"epsilon": noise, "sample": x0,
                  "v_prediction": ref.get_velocity(tx[0], tx[1], ti).numpy()}[obj]

  def model_fn(x, tt):
    return jnp.tanh(x) * (1.0 + tt[:, None, None, None, None] / 1000.0)

  per_ex, aux = objectives.loss(model_fn, x0, jax.random.key(0), obj, beta_schedule="scaled_linear",
                                beta_start=0.00085, beta_end=0.012, timesteps=t, noise=noise)
  expected = np.mean((np.tanh(ref_xt) * (1 + t / 1000.0)[:, None, None, None, None]
                      - ref_target) ** 2, axis=(1, 2, 3, 4))
  assert per_ex.shape == (B,)
  np.testing.assert_allclose(per_ex, expected, rtol=1e-5)
  np.testing.assert_allclose(aux["mse"], expected, rtol=1e-5)
  np.testing.assert_array_equal(aux["t"], t)
  # An oracle that outputs the target has zero loss.
  zero, _ = objectives.loss(lambda x, tt: jnp.asarray(ref_target), x0, jax.random.key(0), obj,
                            beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012,
                            timesteps=t, noise=noise)
  np.testing.assert_allclose(zero, 0.0, atol=1e-9)


def test_mask_and_weights():
  x0, noise = data()
  t = np.full((B,), 500.0, np.float32)
  f = lambda x, t: 0.5 * x  # noqa: E731
  mask = np.zeros(SHAPE[:-1] + (1,), np.float32)
  mask[:, 0] = 1.0  # first frame only, all channels
  mask[-1] = 0.0  # an empty mask
  full, aux = objectives.loss(f, x0, jax.random.key(1), "epsilon", mask=mask,
                              timesteps=t, noise=noise)
  # Changing the output where mask == 0 does not change the loss.
  g = lambda x, t: jnp.where(jnp.asarray(mask) > 0, 0.5 * x, 1e3)  # noqa: E731
  masked, _ = objectives.loss(g, x0, jax.random.key(1), "epsilon", mask=mask,
                               timesteps=t, noise=noise)
  np.testing.assert_allclose(masked, full, rtol=1e-6)
  err = (0.5 * np.asarray(aux["x_t"]) - np.asarray(aux["noise"])) ** 2
  np.testing.assert_allclose(full[:-1], err[:-1, 0].mean(axis=(1, 2, 3)), rtol=1e-5)
  assert full[-1] == 0.0
  w = np.arange(1.0, B + 1.0, dtype=np.float32)
  weighted, aux_w = objectives.loss(f, x0, jax.random.key(1), "epsilon", mask=mask,
                                           weights=w, timesteps=t, noise=noise)
  np.testing.assert_allclose(weighted, full * w, rtol=1e-6)
  np.testing.assert_allclose(aux_w["mse"], full, rtol=1e-6)
  with pytest.raises(ValueError, match="weights"):
    objectives.loss(f, x0, jax.random.key(1), "epsilon", weights=w[:3])
  with pytest.raises(ValueError, match="objective"):
    objectives.loss(f, x0, jax.random.key(1), "x0")


def test_timestep_distributions():
  rng = jax.random.key(3)
  t = np.asarray(objectives.sample_timesteps(rng, 20000, "epsilon", num_train_timesteps=50))
  assert t.dtype == np.float32 and np.all(t == np.round(t)) and t.min() == 0 and t.max() == 49
  u = np.asarray(objectives.sample_timesteps(rng, 20000, "flow")) / 1000
  assert 0 <= u.min() and u.max() <= 1
  assert abs(u.mean() - 0.5) < 0.01 and abs(u.std() - 12**-0.5) < 0.01
  ln = np.asarray(objectives.sample_timesteps(rng, 20000, "flow", time_sampling="logit_normal"))
  ln = ln / 1000
  assert abs(np.median(ln) - 0.5) < 0.01 and np.mean(np.abs(ln - 0.5) < 0.25) > 0.7
  sh = np.asarray(objectives.sample_timesteps(rng, 20000, "flow", flow_shift=3.0)) / 1000
  np.testing.assert_allclose(sh, 3 * u / (1 + 2 * u), rtol=1e-5)
  with pytest.raises(ValueError, match="time_sampling"):
    objectives.sample_timesteps(rng, 4, "flow", time_sampling="beta")


@pytest.mark.parametrize("obj", ["v_prediction", "flow"])
def test_loss_is_jittable_and_differentiable(obj):
  x0, _ = data()
  x0 = jnp.asarray(x0, jnp.bfloat16)

  def mean_loss(w, rng):
    per_ex, _ = objectives.loss(lambda x, t: w * x.astype(jnp.float32), x0, rng, obj)
    return jnp.mean(per_ex)

  key = jax.random.key(2, impl="rbg" if obj == "flow" else "threefry2x32")
  val, grad = jax.jit(jax.value_and_grad(mean_loss))(jnp.float32(0.3), key)
  assert np.isfinite(val) and np.isfinite(grad) and grad != 0
