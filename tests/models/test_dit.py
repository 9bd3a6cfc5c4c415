"""Tests for mfm_jax.models.dit: shapes, adaLN-Zero, scan layout, masks, sow, sharding, FLOPs.

Compilation dominates on CPU, so every jit here uses ``FAST`` compiler options (no LLVM
optimisation: numerics are unchanged, compiles are several times faster) and most tests use
random parameters built from ``jax.eval_shape`` instead of a compiled ``init``.
"""
import functools

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from mfm_jax.engine import mesh as mesh_lib
from mfm_jax.models import dit

FAST = {"xla_backend_optimization_level": 0, "xla_llvm_disable_expensive_passes": True}
jit = functools.partial(jax.jit, compiler_options=FAST)

B, VIDEO, LT, DT = 4, (4, 16, 16, 3), 6, 16
SMALL = dict(out_channels=3, width=32, depth=2, num_heads=4, mlp_ratio=2.0, patch_size=(2, 4, 4))


def _inputs(seed=0):
  """(x, t, text, text_mask, pooled) for a batch of B; numpy, so nothing compiles here."""
  rng = np.random.default_rng(seed)
  x = rng.normal(size=(B, *VIDEO)).astype(np.float32)
  t = np.array([0.0, 10.0, 500.0, 999.0], np.float32)
  text = rng.normal(size=(B, LT, DT)).astype(np.float32)
  mask = np.arange(LT)[None] < np.array([[3], [6], [1], [4]])
  pooled = rng.normal(size=(B, DT)).astype(np.float32)
  return x, t, text, mask, pooled


def _random_params(model, seed=0, std=0.2):
  """Random (boxed) params with the model's structure, built without compiling ``init``."""
  abstract = jax.eval_shape(model.init, jax.random.key(0), *_inputs())["params"]
  rng = np.random.default_rng(seed)
  return jax.tree.map(lambda s: jnp.asarray(rng.normal(0, std, s.shape), s.dtype), abstract)


def test_decode_variant():
  assert dit.decode_variant("S/2") == dict(width=384, depth=12, num_heads=6, patch=2)
  assert dit.decode_variant("XL/4", depth=2) == dict(width=1152, depth=2, num_heads=16, patch=4)
  with pytest.raises(ValueError, match="variant"):
    dit.decode_variant("Q/2")
  with pytest.raises(ValueError, match="variant"):
    dit.decode_variant("B")


@pytest.mark.parametrize("attention", ["full", "factorized"])
def test_every_param_has_logical_names_and_scan_keeps_count(attention):
  counts = {}
  for scan in (False, True):
    model = dit.VideoDiT(**SMALL, attention=attention, scan_blocks=scan, pos_embed="learned")
    params = jax.eval_shape(model.init, jax.random.key(0), *_inputs())["params"]
    leaves = jax.tree.leaves(params, is_leaf=lambda a: isinstance(a, nn.LogicallyPartitioned))
    for leaf in leaves:
      assert isinstance(leaf, nn.LogicallyPartitioned), leaf
      assert len(leaf.names) == leaf.value.ndim
    if scan:
      stacked = jax.tree.leaves(params["blocks"],
                                is_leaf=lambda a: isinstance(a, nn.LogicallyPartitioned))
      assert all(leaf.names[0] == "layers" and leaf.value.shape[0] == SMALL["depth"]
                 for leaf in stacked)
    counts[scan] = dit.num_params(params)
  assert counts[False] == counts[True]


def test_zero_output_at_init_and_block_is_identity():
  model = dit.VideoDiT(**dict(SMALL, depth=1))
  inputs = _inputs()
  variables = jit(model.init)(jax.random.key(0), *inputs)
  out = jit(model.apply)(variables, *inputs)
  assert out.shape == (B, *VIDEO[:3], 3) and out.dtype == jnp.float32
  assert float(jnp.abs(out).max()) == 0.0

  block = dit.DiTBlock(num_heads=4, grid=(2, 4, 4), attention="factorized")
  rng = np.random.default_rng(1)
  x, c, text = (rng.normal(size=s).astype(np.float32) for s in ((B, 32, 32), (B, 32),
                                                                   (B, LT, 32)))
  bvars = jit(block.init)(jax.random.key(2), x, c, text, inputs[3])
  np.testing.assert_array_equal(jit(block.apply)(bvars, x, c, text, inputs[3]), x)


# (attention, scan_blocks, remat_policy, dtype): both attention modes, both layouts, every remat
# policy. Shapes come from eval_shape (no compile); one case is compiled against no remat.
CASES = [("full", False, "none", jnp.bfloat16), ("full", True, "full", jnp.float32),
         ("factorized", False, "dots", jnp.float32),
         ("factorized", True, "dots_no_batch", jnp.float32)]


REMAT_MARK = {"none": "", "full": "policy=None", "dots": "only_if_no_batch_dims=False",
              "dots_no_batch": "only_if_no_batch_dims=True"}


def _loss_and_grad(attention, scan, policy, dtype):
  inputs = _inputs()
  model = dit.VideoDiT(**SMALL, attention=attention, scan_blocks=scan, remat_policy=policy,
                       dtype=dtype)

  def loss(p):
    out = model.apply({"params": p}, *inputs)
    return jnp.mean(jnp.square(out - inputs[0])), out

  return jax.value_and_grad(loss, has_aux=True), nn.meta.unbox(_random_params(model))


@pytest.mark.parametrize("attention,scan,policy,dtype", CASES)
def test_shapes_and_remat(attention, scan, policy, dtype):
  fn, params = _loss_and_grad(attention, scan, policy, dtype)
  (value, out), grads = jax.eval_shape(fn, params)
  assert out.shape == (B, *VIDEO[:3], 3) and out.dtype == jnp.float32 and value.shape == ()
  assert jax.tree.map(lambda g: g.shape, grads) == jax.tree.map(lambda p: p.shape, params)
  jaxpr = str(jax.make_jaxpr(fn)(params))
  assert ("remat" in jaxpr) == (policy != "none")
  assert REMAT_MARK[policy] in jaxpr
  if dtype == jnp.bfloat16:  # run the low-precision path once
    (value, out), _ = jit(fn)(params)
    assert np.isfinite(float(value)) and float(jnp.abs(out).max()) > 0


def test_remat_gives_same_loss_and_gradients():
  fn, params = _loss_and_grad("factorized", True, "dots_no_batch", jnp.float32)
  fn_ref, _ = _loss_and_grad("factorized", True, "none", jnp.float32)
  (value, _), grads = jit(fn)(params)
  (ref_value, _), ref_grads = jit(fn_ref)(params)
  np.testing.assert_allclose(value, ref_value, rtol=1e-5)
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6),
               grads, ref_grads)


def test_scan_equals_unrolled_with_mapped_params():
  inputs = _inputs()
  unrolled = dit.VideoDiT(**SMALL, attention="factorized")
  scanned = dit.VideoDiT(**SMALL, attention="factorized", scan_blocks=True)
  params = nn.meta.unbox(_random_params(unrolled))
  stacked = dit.stack_blocks(params, SMALL["depth"])
  scan_shapes = jax.eval_shape(scanned.init, jax.random.key(0), *inputs)["params"]
  assert (jax.tree.structure(stacked) ==
          jax.tree.structure(nn.meta.unbox(scan_shapes)))
  jax.tree.map(np.testing.assert_array_equal,
               dit.unstack_blocks(stacked, SMALL["depth"]), params)
  out_u = jit(unrolled.apply)({"params": params}, *inputs)
  out_s = jit(scanned.apply)({"params": stacked}, *inputs)
  assert float(jnp.abs(out_u).max()) > 1e-2
  np.testing.assert_allclose(out_s, out_u, rtol=1e-5, atol=1e-5)
  _, state = jax.eval_shape(functools.partial(scanned.apply, mutable=["intermediates"]),
                            {"params": stacked}, *inputs)
  (cross,) = state["intermediates"]["blocks"]["cross_attn"]["attn_maps"]
  assert cross.shape == (SMALL["depth"], B, 4, 32, LT)  # stacked over blocks


def test_cross_attention_respects_text_mask_and_sows_maps():
  model = dit.VideoDiT(**SMALL, attention="factorized")
  params = {"params": nn.meta.unbox(_random_params(model))}
  x, t, text, mask, pooled = _inputs()
  apply = jit(functools.partial(model.apply, mutable=["intermediates"]))
  out, state = apply(params, x, t, text, mask, pooled)
  noise = 10.0 * np.random.default_rng(5).normal(size=text.shape).astype(np.float32)
  padded_changed = np.where(mask[..., None], text, noise)
  out2, _ = apply(params, x, t, padded_changed, mask, pooled)
  np.testing.assert_allclose(out2, out, rtol=1e-5, atol=1e-5)
  real_changed = text.copy()
  real_changed[:, 0] += 1.0  # token 0 is real in every row
  out3, _ = apply(params, x, t, real_changed, mask, pooled)
  assert float(jnp.abs(out3 - out).max()) > 1e-4

  maps = state["intermediates"]["block_0"]
  tp, hp, wp = 2, 4, 4
  (cross,) = maps["cross_attn"]["attn_maps"]
  (spatial,) = maps["spatial_attn"]["attn_maps"]
  (temporal,) = maps["temporal_attn"]["attn_maps"]
  assert cross.shape == (B, 4, tp * hp * wp, LT)           # [B, heads, Lq, Lk]
  assert spatial.shape == (B * tp, 4, hp * wp, hp * wp)    # per frame
  assert temporal.shape == (B * hp * wp, 4, tp, tp)        # per location
  np.testing.assert_allclose(cross.sum(-1), 1.0, atol=1e-5)
  assert float(np.where(mask[:, None, None, :], 0.0, cross).max()) == 0.0
  plain = jit(model.apply)(params, x, t, text, mask, pooled)  # not asked: no maps
  assert isinstance(plain, jax.Array)
  np.testing.assert_allclose(plain, out, rtol=1e-6, atol=1e-6)


def test_sharded_equals_unsharded():
  """init + apply on a data=4 x tensor=2 mesh == single device.

  Tolerance: sharding changes the float32 summation order (tensor-parallel heads/MLP partial
  sums are all-reduced across the 2 shards, per-shard matmuls tile differently), so results
  agree to accumulated float32 rounding (~1e-6 relative per op), not bitwise: rtol=atol=1e-5.
  """
  model = dit.VideoDiT(**SMALL, attention="factorized", scan_blocks=True, pos_embed="learned")
  inputs = _inputs()
  rules = mesh_lib.DEFAULT_RULES
  mesh = mesh_lib.make_mesh({"data": 4, "tensor": 2})
  noise = nn.meta.unbox(_random_params(model, seed=3, std=0.1))

  def perturbed_apply(variables, noise, *inputs):
    params = jax.tree.map(lambda p, n: p + n, nn.meta.unbox(variables["params"]), noise)
    return model.apply({"params": params}, *inputs)

  ref_vars = jit(model.init)(jax.random.key(0), *inputs)
  ref_out = jit(perturbed_apply)(ref_vars, noise, *inputs)

  with jax.set_mesh(mesh), nn.logical_axis_rules(rules):
    abstract = jax.eval_shape(model.init, jax.random.key(0), *inputs)
    var_sharding = nn.logical_to_mesh_sharding(nn.get_partition_spec(abstract), mesh, rules)
    in_sharding = tuple(mesh_lib.batch_sharding(mesh, rules, a.ndim) for a in inputs)
    variables = jit(model.init, in_shardings=(mesh_lib.replicated(mesh), *in_sharding),
                    out_shardings=var_sharding)(jax.random.key(0), *inputs)
    noise_sharding = nn.meta.unbox(var_sharding["params"])
    out = jit(perturbed_apply, in_shardings=(var_sharding, noise_sharding, *in_sharding),
              out_shardings=in_sharding[0])(variables, jax.device_put(noise, noise_sharding),
                                            *inputs)
  fc1 = nn.meta.unbox(variables["params"])["blocks"]["mlp"]["fc1"]["kernel"]
  assert fc1.sharding.spec == jax.sharding.PartitionSpec(None, "fsdp", "tensor")
  assert len(fc1.addressable_shards) == 8 and fc1.addressable_shards[0].data.shape[-1] == 32
  assert out.sharding.spec[0] == ("data", "fsdp")
  jax.tree.map(np.testing.assert_array_equal, variables, ref_vars)  # partitionable RNG
  assert float(jnp.abs(ref_out).max()) > 1e-2
  np.testing.assert_allclose(out, ref_out, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("attention", ["full", "factorized"])
def test_flops_match_xla_cost_analysis(attention):
  """Analytic matmul FLOPs vs XLA's count (which adds elementwise work: norms, softmax, GELU)."""
  args = dict(out_channels=4, width=64, depth=2, num_heads=4, mlp_ratio=4.0,
              patch_size=(1, 2, 2), attention=attention)
  video, lt, dt = (4, 16, 16, 4), 8, 32
  model = dit.VideoDiT(**args)
  spec = lambda *s: jax.ShapeDtypeStruct(s, jnp.float32)  # noqa: E731
  inputs = (spec(1, *video), spec(1), spec(1, lt, dt), jax.ShapeDtypeStruct((1, lt), jnp.bool_),
            spec(1, dt))
  params = nn.meta.unbox(jax.eval_shape(model.init, jax.random.key(0), *inputs))
  cost = jit(model.apply).lower(params, *inputs).compile().cost_analysis()
  cost = cost[0] if isinstance(cost, (list, tuple)) else cost
  analytic = dit.flops_per_example(video_shape=video, text_len=lt, text_dim=dt, **args)
  ratio = cost["flops"] / analytic
  assert 1.0 <= ratio < 1.1, (cost["flops"], analytic)  # measured 1.045-1.06
