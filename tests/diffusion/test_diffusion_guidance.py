"""Classifier-free guidance, guidance rescale (vs diffusers) and condition dropout."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch

from mfm_jax.diffusion import guidance

SHAPE = (4, 2, 3, 5, 6)


def outputs(seed=0):
  r = np.random.default_rng(seed)
  return (r.standard_normal(SHAPE).astype(np.float32),
          0.5 * r.standard_normal(SHAPE).astype(np.float32))


def test_cfg_scale_one_is_cond_and_formula():
  cond, uncond = outputs()
  np.testing.assert_allclose(guidance.cfg(cond, uncond, 1.0), cond, rtol=1e-6, atol=1e-6)
  np.testing.assert_allclose(guidance.cfg(cond, uncond, 0.0), uncond, rtol=1e-6)
  np.testing.assert_allclose(guidance.cfg(cond, uncond, 7.5), uncond + 7.5 * (cond - uncond),
                             rtol=1e-5, atol=1e-6)
  per_ex = guidance.cfg(cond, uncond, jnp.asarray([1.0, 2.0, 3.0, 4.0]))
  np.testing.assert_allclose(per_ex[2], uncond[2] + 3.0 * (cond[2] - uncond[2]), rtol=1e-5)
  # rescale = 1 with scale 1 changes nothing (std(cond) / std(cond) = 1).
  np.testing.assert_allclose(guidance.cfg(cond, uncond, 1.0, 1.0), cond, rtol=1e-5, atol=1e-6)
  with pytest.raises(ValueError, match="shape"):
    guidance.cfg(cond, uncond[:2], 2.0)


def _diffusers_rescale():
  # pylint: disable=g-import-not-at-top
  try:
    from diffusers.guiders import guider_utils as module
  except ImportError:  # older diffusers keep it with the Stable Diffusion pipeline
    from diffusers.pipelines.stable_diffusion import pipeline_stable_diffusion as module
  return module.rescale_noise_cfg


@pytest.mark.parametrize("phi", [0.0, 0.3, 0.7, 1.0])
def test_rescale_matches_diffusers(phi):
  cond, uncond = outputs(1)
  scale = 6.0
  guided = uncond + scale * (cond - uncond)
  # The formula (Lin et al. 2023, eq. 15-16) in NumPy; torch's std is unbiased.
  std_c = cond.std(axis=(1, 2, 3, 4), ddof=1, keepdims=True)
  std_g = guided.std(axis=(1, 2, 3, 4), ddof=1, keepdims=True)
  ref_np = phi * guided * std_c / std_g + (1 - phi) * guided
  ref = _diffusers_rescale()(torch.from_numpy(guided), torch.from_numpy(cond), phi).numpy()
  np.testing.assert_allclose(ref_np, ref, rtol=1e-5, atol=1e-6)
  np.testing.assert_allclose(guidance.cfg(cond, uncond, scale, phi), ref, rtol=1e-5, atol=1e-6)
  np.testing.assert_allclose(jax.jit(guidance.cfg)(cond, uncond, scale, phi), ref, rtol=1e-5,
                             atol=1e-6)
  per_ex = guidance.cfg(cond, uncond, scale, jnp.full((4,), phi))
  np.testing.assert_allclose(per_ex, ref, rtol=1e-5, atol=1e-6)


def test_cfg_model_fn_makes_one_doubled_call():
  cond_emb = jnp.asarray([[1.0], [2.0], [3.0]])
  null_emb = jnp.asarray([0.5])
  emb2 = guidance.concat_for_cfg(cond_emb, null_emb)  # [null; cond]
  np.testing.assert_array_equal(emb2[:, 0], [0.5, 0.5, 0.5, 1.0, 2.0, 3.0])
  calls = []

  def batched(x2, t2):
    calls.append(x2.shape)
    return jnp.sin(x2) * emb2[:, :, None] + t2[:, None, None] / 1000.0

  x = jnp.asarray(np.random.default_rng(2).standard_normal((3, 4, 2)), jnp.float32)
  t = jnp.asarray([10.0, 500.0, 900.0])
  fn = guidance.cfg_model_fn(batched, 4.0, 0.5)
  got = jax.jit(fn)(x, t)
  assert calls == [(6, 4, 2)]
  cond = jnp.sin(x) * cond_emb[:, :, None] + t[:, None, None] / 1000.0
  uncond = jnp.sin(x) * 0.5 + t[:, None, None] / 1000.0
  np.testing.assert_allclose(got, guidance.cfg(cond, uncond, 4.0, 0.5), rtol=1e-5, atol=1e-6)


def test_drop_condition_rate_and_consistency():
  b, p = 20000, 0.1
  cond = {"text": jnp.ones((b, 3, 2)), "motion": jnp.arange(b, dtype=jnp.float32) + 1.0}
  null = {"text": jnp.zeros((3, 2)), "motion": jnp.zeros(())}
  out, dropped = guidance.drop_condition(jax.random.key(0), cond, null, p, return_mask=True)
  rate = float(np.mean(dropped))
  assert abs(rate - p) < 4 * np.sqrt(p * (1 - p) / b), rate
  # Every leaf of an example is dropped together, and only dropped examples change.
  text_null = np.all(np.asarray(out["text"]) == 0, axis=(1, 2))
  np.testing.assert_array_equal(text_null, dropped)
  np.testing.assert_array_equal(np.asarray(out["motion"]) == 0, dropped)
  np.testing.assert_array_equal(np.asarray(out["motion"])[~np.asarray(dropped)],
                                np.asarray(cond["motion"])[~np.asarray(dropped)])
  # p = 0 and p = 1, and jit.
  same = jax.jit(lambda k: guidance.drop_condition(k, cond, null, 0.0))(jax.random.key(1))
  np.testing.assert_array_equal(same["motion"], cond["motion"])
  gone = guidance.drop_condition(jax.random.key(1), cond, null, 1.0)
  assert float(jnp.abs(gone["text"]).sum()) == 0.0
  with pytest.raises(ValueError, match="batch"):
    guidance.drop_condition(jax.random.key(0), {"a": jnp.ones((4, 2)), "b": jnp.ones((3,))},
                            {"a": jnp.zeros(2), "b": jnp.zeros(())}, 0.5)
  with pytest.raises(ValueError, match="p must"):
    guidance.drop_condition(jax.random.key(0), cond, null, 1.5)
