"""Tests for mfm_jax.models.graph: gate 0 == the plain transformer, the gated bias equals an
explicit per-head sum, shapes, option-permutation equivariance, sharded (4, 2) == unsharded."""
import functools

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from mfm_jax.engine import mesh as mesh_lib
from mfm_jax.models import graph
from mfm_jax.models import layers

FAST = {"xla_backend_optimization_level": 0, "xla_llvm_disable_expensive_passes": True}
jit = functools.partial(jax.jit, compiler_options=FAST)

B, K, LQ, O, LO, C = 8, 3, 6, 4, 4, 4
TINY = dict(vocab_size=128, attr_sizes=(8, 3, 3, 2), width=32, depth=2, num_heads=4, mlp_dim=64,
            tubelet=(2, 8, 8), max_text_len=8)
LV = 2 * 2 * 2                                 # video [B, 4, 16, 16, 3] in (2, 8, 8) tubelets
L = graph.sequence_length(LV, K, LQ, O, LO)


def _inputs(seed=0):
  rng = np.random.default_rng(seed)
  qmask = np.arange(LQ)[None] < rng.integers(3, LQ + 1, (B, 1))
  omask = np.arange(LO)[None, None] < rng.integers(2, LO + 1, (B, O, 1))
  return (rng.uniform(-1, 1, (B, 4, 16, 16, 3)).astype(np.float32),
          rng.integers(0, 2, (B, K, 4)).astype(np.int32),
          np.arange(K)[None] < rng.integers(1, K + 1, (B, 1)),
          rng.integers(4, 128, (B, LQ)).astype(np.int32), qmask,
          rng.integers(4, 128, (B, O, LO)).astype(np.int32), omask,
          rng.random((B, C, L, L)) < 0.2)


def _params(model, inputs, seed=1, std=0.2):
  """Random params with the model's structure (gates included, non-zero)."""
  abstract = jax.eval_shape(model.init, jax.random.key(0), *inputs)["params"]
  rng = np.random.default_rng(seed)
  return jax.tree.map(lambda s: jnp.asarray(rng.normal(0, std, s.shape), s.dtype), abstract)


def _without_gates(params):
  p = nn.meta.unbox(params)
  return {**p, "encoder": {k: v for k, v in p["encoder"].items() if not k.startswith("gate_")}}


def test_gate_zero_is_the_plain_transformer():
  inputs = _inputs()
  g_model, p_model = graph.GraphQA(**TINY, graph=True), graph.GraphQA(**TINY, graph=False)
  params = nn.meta.unbox(_params(g_model, inputs))
  assert sorted(k for k in params["encoder"] if k.startswith("gate_")) == ["gate_0", "gate_1"]
  assert params["encoder"]["gate_0"]["gate"].shape == (C, 4)
  plain = jit(p_model.apply)({"params": _without_gates(params)}, *inputs[:-1])
  zero = jax.tree.map(jnp.zeros_like, params["encoder"]["gate_0"])
  zeroed = {**params, "encoder": {**params["encoder"], "gate_0": zero, "gate_1": zero}}
  np.testing.assert_allclose(jit(g_model.apply)({"params": zeroed}, *inputs), plain,
                             rtol=1e-6, atol=1e-6)
  gated = jit(g_model.apply)({"params": params}, *inputs)
  assert float(jnp.abs(gated - plain).max()) > 1e-3   # a non-zero gate changes the answer
  # A fresh init has zero gates: the graph model starts as the plain transformer.
  init = g_model.init(jax.random.key(0), *inputs)["params"]
  init = nn.meta.unbox(init)
  assert all(float(jnp.abs(v["gate"]).max()) == 0 for k, v in init["encoder"].items()
             if k.startswith("gate_"))
  np.testing.assert_allclose(g_model.apply({"params": init}, *inputs),
                             p_model.apply({"params": _without_gates(init)}, *inputs[:-1]),
                             rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("scale", [1.0, 3.0])
def test_gated_bias_is_the_per_head_sum_on_the_logits(scale):
  """One block: GraphGate + EncoderBlock == EncoderBlock(bias = s * sum_c gate[c, h] A_c)."""
  rng = np.random.default_rng(2)
  x = rng.normal(size=(2, 5, 16)).astype(np.float32)
  adj = rng.random((2, 3, 5, 5)) < 0.5
  gate = rng.normal(size=(3, 2)).astype(np.float32)
  stack = graph.GraphTransformer(depth=1, num_heads=2, mlp_dim=32, gate_scale=scale)
  params = nn.meta.unbox(stack.init(jax.random.key(0), x, None, adj)["params"])
  params["gate_0"]["gate"] = jnp.asarray(gate)
  out = stack.apply({"params": params}, x, None, adj)
  bias = scale * np.einsum("cn,bcqk->bnqk", gate, adj.astype(np.float32))
  block = layers.EncoderBlock(num_heads=2, mlp_dim=32)
  ref = block.apply({"params": params["block_0"]}, x, None, jnp.asarray(bias))
  np.testing.assert_allclose(out, ref, rtol=1e-6, atol=1e-6)
  # ... and the bias reaches the attention logits: the sown maps are softmax(qk/sqrt(d) + bias).
  _, inter = stack.apply({"params": params}, x, None, adj, mutable=["intermediates"])
  maps = jax.tree.leaves(inter)[0]
  p = params["block_0"]["attn"]
  h = layers.LayerNorm().apply({"params": params["block_0"]["norm1"]}, x)
  q = jnp.einsum("bld,dnh->bnlh", h, p["query"]["kernel"]) + p["query"]["bias"][None, :, None]
  k = jnp.einsum("bld,dnh->bnlh", h, p["key"]["kernel"]) + p["key"]["bias"][None, :, None]
  logits = jnp.einsum("bnqh,bnkh->bnqk", q, k) / np.sqrt(8) + bias
  np.testing.assert_allclose(maps, jax.nn.softmax(logits, -1), rtol=1e-5, atol=1e-6)


def test_shapes_and_errors():
  inputs = _inputs()
  model = graph.GraphQA(**TINY)
  out = jax.eval_shape(model.init_with_output, jax.random.key(0), *inputs)[0]
  assert out.shape == (B, O) and out.dtype == jnp.float32
  bad = inputs[:-1] + (inputs[-1][..., :-1, :-1],)
  with pytest.raises(ValueError, match="adjacency is over"):
    jax.eval_shape(model.init, jax.random.key(0), *bad)
  with pytest.raises(ValueError, match="needs an adjacency"):
    jax.eval_shape(model.init, jax.random.key(0), *inputs[:-1], None)
  # graph=False ignores the adjacency entirely (no gate parameters).
  params = jax.eval_shape(graph.GraphQA(**TINY, graph=False).init, jax.random.key(0),
                          *inputs[:-1])["params"]
  assert not any(k.startswith("gate_") for k in params["encoder"])
  long = inputs[:3] + (np.zeros((B, 9), np.int32), np.ones((B, 9), bool)) + inputs[5:]
  with pytest.raises(ValueError, match="max_text_len"):
    jax.eval_shape(model.init, jax.random.key(0), *long)


def test_permuting_options_permutes_scores():
  inputs = list(_inputs(3))
  model = graph.GraphQA(**TINY)
  params = {"params": nn.meta.unbox(_params(model, inputs))}
  # Make the adjacency treat options alike: drop every link that involves an option token.
  adj = inputs[-1].copy()
  start = L - O * LO
  adj[:, :, start:, :] = adj[:, :, :, start:] = False
  inputs[-1] = adj
  perm = np.array([2, 0, 3, 1])
  swapped = list(inputs)
  swapped[5], swapped[6] = inputs[5][:, perm], inputs[6][:, perm]
  out = jit(model.apply)(params, *inputs)
  np.testing.assert_allclose(jit(model.apply)(params, *swapped), out[:, perm], rtol=1e-5,
                             atol=1e-5)


def test_sharded_loss_equals_unsharded():
  """(data 4, tensor 2): batch over 4 devices, heads / mlp / vocab over 2 -> same CE loss."""
  inputs = _inputs(4)
  labels = np.random.default_rng(5).integers(0, O, B)
  model = graph.GraphQA(**TINY)
  params = _params(model, inputs, std=0.1)

  def loss(p, *x):
    logits = model.apply({"params": p}, *x)
    return optax.softmax_cross_entropy_with_integer_labels(logits, labels).mean(), logits

  ref = jit(loss)(nn.meta.unbox(params), *inputs)
  rules = mesh_lib.DEFAULT_RULES
  mesh = mesh_lib.make_mesh({"data": 4, "tensor": 2})
  p_sh = nn.logical_to_mesh_sharding(nn.get_partition_spec(params), mesh, rules)
  x_sh = tuple(mesh_lib.batch_sharding(mesh, rules, np.ndim(a)) for a in inputs)
  sharded = jax.device_put(nn.meta.unbox(params), p_sh), jax.device_put(tuple(inputs), x_sh)
  with jax.set_mesh(mesh), nn.logical_axis_rules(rules):
    out = jit(loss)(sharded[0], *sharded[1])
  assert len(out[1].sharding.device_set) == 8
  assert float(ref[0]) > 0.1
  np.testing.assert_allclose(out[0], ref[0], rtol=1e-5, atol=1e-6)
  np.testing.assert_allclose(out[1], ref[1], rtol=1e-5, atol=1e-5)


def test_flops_per_example_counts_blocks():
  f1 = graph.flops_per_example(100, 64, 1, 256, 384, 32)
  f2 = graph.flops_per_example(100, 64, 2, 256, 384, 32)
  assert f2 - f1 == 2 * 100 * (4 * 64 * 64 + 2 * 64 * 256) + 4 * 100 * 100 * 64
