"""Tests for mfm_jax.models.control: identity at init, Kronecker-shared kernels against jnp.kron,
parameter counts, condition dropping, the DiT's ``control`` argument (scan == unrolled), weight
copy from a DiT."""
import functools

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from mfm_jax.models import control, dit, peft

FAST = {"xla_backend_optimization_level": 0, "xla_llvm_disable_expensive_passes": True}
jit = functools.partial(jax.jit, compiler_options=FAST)

B, N, VIDEO = 2, 3, (4, 8, 8, 3)
SIZE = dict(width=16, depth=2, num_heads=2, patch_size=(2, 4, 4))


def _inputs(seed=0):
  rng = np.random.default_rng(seed)
  x = rng.normal(size=(B,) + VIDEO).astype(np.float32)
  conds = rng.normal(size=(B, N) + VIDEO).astype(np.float32)
  return x, np.array([10.0, 700.0], np.float32), conds, np.ones((B, N), bool)


def _branch(mode):
  return control.ControlBranch(num_conditions=N, mode=mode, kron_n=4, **SIZE)


def _random(module, *args, std=0.3, seed=0):
  abstract = nn.meta.unbox(jax.eval_shape(module.init, jax.random.key(0), *args)["params"])
  rng = np.random.default_rng(seed)
  return jax.tree.map(lambda s: jnp.asarray(rng.normal(0, std, s.shape), s.dtype), abstract)


@pytest.mark.parametrize("mode", control.MODES)
def test_fresh_branch_is_identity(mode):
  x, t, conds, present = _inputs()
  br = _branch(mode)
  params = nn.meta.unbox(jit(br.init)(jax.random.key(0), x, t, conds, present))["params"]
  res = jit(br.apply)({"params": params}, x, t, conds, present)
  assert res.shape == (SIZE["depth"], B, 2 * 2 * 2, SIZE["width"])
  np.testing.assert_array_equal(np.asarray(res), 0.0)


def test_flex_kernel_matches_kron_reference():
  layer = control.StackedDense(8, num_conditions=2, mode="flex", kron_n=2, kron_rank=1,
                               kron_scale=3.0)
  x = np.random.default_rng(1).normal(size=(2, 5, 4)).astype(np.float32)
  rng = np.random.default_rng(2)
  slow = jnp.asarray(rng.normal(size=(2, 2, 2)), jnp.float32)
  p = _random(layer, x, slow, seed=3)
  y = layer.apply({"params": p}, x, slow)
  for n in range(2):
    delta = sum(np.kron(np.asarray(slow[i]), np.asarray(p["peft_u"][n, i] @ p["peft_v"][n, i]))
                for i in range(2))
    w = np.asarray(p["kernel"]) + 3.0 * delta
    want = x[n] @ w + np.asarray(p["bias"]) + np.asarray(p["peft_bias"][n])
    np.testing.assert_allclose(np.asarray(y[n]), want, rtol=1e-5, atol=1e-5)


def test_param_counts_flex_vs_separate():
  x, t, conds, present = _inputs()
  counts = {m: peft.count_params(jax.eval_shape(_branch(m).init, jax.random.key(0), x, t, conds,
                                                present)["params"])[0] for m in control.MODES}
  # One StackedDense [din, dout]: separate N*(din*dout + dout); flex din*dout + dout plus per
  # condition k*(din/k + dout/k) fast factors and a dout bias (k = 4, rank 1).
  layer = lambda m: peft.count_params(jax.eval_shape(  # noqa: E731
      control.StackedDense(12, num_conditions=N, mode=m, kron_n=4).init, jax.random.key(0),
      jnp.zeros((N, 1, 8)), jnp.zeros((4, 4, 4)))["params"])[0]
  assert layer("separate") == N * (8 * 12 + 12)
  assert layer("flex") == 8 * 12 + 12 + N * (4 * (2 + 3) + 12)
  assert counts["flex"] < 0.6 * counts["separate"]


@pytest.mark.parametrize("mode", control.MODES)
def test_absent_conditions_contribute_nothing(mode):
  x, t, conds, _ = _inputs()
  br = _branch(mode)
  p = _random(br, *_inputs())
  f = jit(lambda c, pr: br.apply({"params": p}, x, t, c, pr))
  only0 = np.zeros((B, N), bool)
  only0[:, 0] = True
  base = np.asarray(f(conds, only0))
  other = conds.copy()
  other[:, 1:] += 5.0                         # change the absent conditions only
  np.testing.assert_allclose(np.asarray(f(other, only0)), base, atol=1e-5)
  assert np.abs(base).max() > 1e-3
  # The fused residual is the sum of the single-condition residuals.
  singles = sum(np.asarray(f(conds, np.eye(N, dtype=bool)[[n] * B])) for n in range(N))
  np.testing.assert_allclose(np.asarray(f(conds, np.ones((B, N), bool))), singles, rtol=1e-4,
                             atol=1e-4)


def test_bad_inputs_raise():
  x, t, conds, present = _inputs()
  with pytest.raises(ValueError, match="conds must be"):
    jax.eval_shape(_branch("flex").init, jax.random.key(0), x, t, conds[:, :2], present)
  with pytest.raises(ValueError, match="mode"):
    jax.eval_shape(_branch("shared").init, jax.random.key(0), x, t, conds, present)
  with pytest.raises(ValueError, match="not divisible by kron_n"):
    jax.eval_shape(control.ControlBranch(num_conditions=N, kron_n=5, **SIZE).init,
                   jax.random.key(0), x, t, conds, present)


def _dit_args(rng):
  text = rng.normal(size=(B, 3, 8)).astype(np.float32)
  return text, np.ones((B, 3), bool)


def test_dit_control_residuals_scan_equals_unrolled():
  rng = np.random.default_rng(4)
  x, t, _, _ = _inputs()
  text, mask = _dit_args(rng)
  kw = dict(out_channels=3, width=16, depth=2, num_heads=2, patch_size=(2, 4, 4))
  unrolled, scanned = dit.VideoDiT(**kw), dit.VideoDiT(**kw, scan_blocks=True)
  p = _random(unrolled, x, t, text, mask, seed=5)
  ctrl = jnp.asarray(rng.normal(size=(2, B, 8, 16)), jnp.float32)
  f = jit(lambda c: unrolled.apply({"params": p}, x, t, text, mask, control=c))
  g = jit(lambda c: scanned.apply({"params": dit.stack_blocks(p, 2)}, x, t, text, mask,
                                  control=c))
  a, b0 = np.asarray(f(ctrl)), np.asarray(f(jnp.zeros_like(ctrl)))
  np.testing.assert_allclose(b0, np.asarray(unrolled.apply({"params": p}, x, t, text, mask)),
                             atol=1e-5)
  assert np.abs(a - b0).max() > 1e-3          # the residuals change the prediction
  np.testing.assert_allclose(np.asarray(g(ctrl)), a, rtol=1e-4, atol=1e-4)
  with pytest.raises(ValueError, match="control must be"):
    unrolled.apply({"params": p}, x, t, text, mask, control=ctrl[:1])


@pytest.mark.parametrize("mode", control.MODES)
def test_init_from_dit_copies_block_weights(mode):
  rng = np.random.default_rng(6)
  x, t, conds, present = _inputs()
  text, mask = _dit_args(rng)
  d = dit.VideoDiT(out_channels=3, width=16, depth=2, num_heads=2, patch_size=(2, 4, 4))
  dp = _random(d, x, t, text, mask, seed=7)
  br = _branch(mode)
  cp = control.init_from_dit(_random(br, x, t, conds, present), dp, 2)
  q = np.asarray(dp["block_1"]["attn"]["query"]["kernel"]).reshape(16, 16)
  got = np.asarray(cp["block_1"]["query"]["kernel"])
  np.testing.assert_array_equal(got if mode == "flex" else got[2], q)
  np.testing.assert_array_equal(np.asarray(cp["t_embed"]["fc1"]["kernel"]),
                                np.asarray(dp["t_embed"]["fc1"]["kernel"]))
  with pytest.raises(KeyError, match="block_0"):
    control.init_from_dit(cp, dit.stack_blocks(dp, 2), 2)


def test_partial_branch_pads_zero_residuals():
  x, t, conds, present = _inputs()
  br = control.ControlBranch(num_conditions=N, kron_n=4, out_depth=3, **SIZE)
  p = _random(br, x, t, conds, present)
  res = np.asarray(jit(br.apply)({"params": p}, x, t, conds, present))
  assert res.shape == (3, B, 8, SIZE["width"])
  assert np.abs(res[:2]).max() > 1e-3 and not res[2].any()
  with pytest.raises(ValueError, match="out_depth"):
    jax.eval_shape(control.ControlBranch(num_conditions=N, kron_n=4, out_depth=1, **SIZE).init,
                   jax.random.key(0), x, t, conds, present)
