"""Tests for mfm_jax.models.text.TextEncoder: shapes, pooling, padding/causality, sharding."""
import functools

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from mfm_jax.engine import mesh as mesh_lib
from mfm_jax.models import text

FAST = {"xla_backend_optimization_level": 0, "xla_llvm_disable_expensive_passes": True}
jit = functools.partial(jax.jit, compiler_options=FAST)

ARGS = dict(vocab_size=50, width=32, depth=2, num_heads=4, max_len=12)
IDS = np.array([[5, 6, 7, 0, 0, 0, 0, 0], [1, 2, 3, 4, 5, 6, 7, 8],
                [9, 0, 0, 0, 0, 0, 0, 0], [3, 3, 3, 3, 3, 0, 0, 0]], np.int32)
MASK = IDS > 0


def _random_params(model, seed=0, std=0.2):
  abstract = jax.eval_shape(model.init, jax.random.key(0), IDS, MASK)["params"]
  rng = np.random.default_rng(seed)
  return jax.tree.map(lambda s: jnp.asarray(rng.normal(0, std, s.shape), s.dtype), abstract)


def test_params_are_named_with_vocab_on_embedding():
  params = jax.eval_shape(text.TextEncoder(**ARGS).init, jax.random.key(0), IDS, MASK)["params"]
  leaves = jax.tree.leaves(params, is_leaf=lambda a: isinstance(a, nn.LogicallyPartitioned))
  assert all(isinstance(a, nn.LogicallyPartitioned) and len(a.names) == a.value.ndim
             for a in leaves)
  assert params["embedding"].names == ("vocab", "embed")
  assert params["embedding"].value.shape == (50, 32)
  with pytest.raises(ValueError, match="max_len"):
    text.TextEncoder(**ARGS).init(jax.random.key(0), jnp.zeros((1, 13), jnp.int32))


def test_mean_pooling_and_padding_invariance():
  model = text.TextEncoder(**ARGS)
  params = {"params": nn.meta.unbox(_random_params(model))}
  apply = jit(model.apply)
  tokens, pooled = apply(params, IDS, MASK)
  assert tokens.shape == (4, 8, 32) and pooled.shape == (4, 32)
  m = MASK[..., None].astype(np.float32)
  np.testing.assert_allclose(pooled, (np.asarray(tokens) * m).sum(1) / m.sum(1), rtol=1e-5,
                             atol=1e-6)
  ids2 = np.where(MASK, IDS, 17)  # other ids in the padded slots
  tokens2, pooled2 = apply(params, ids2, MASK)
  np.testing.assert_allclose(np.where(MASK[..., None], tokens2, 0),
                             np.where(MASK[..., None], tokens, 0), rtol=1e-5, atol=1e-5)
  np.testing.assert_allclose(pooled2, pooled, rtol=1e-5, atol=1e-5)
  ids3 = IDS.copy()
  ids3[1, 7] = 11
  bidirectional = apply(params, ids3, MASK)[0]
  assert float(jnp.abs(bidirectional[1, 0] - tokens[1, 0]).max()) > 1e-4  # sees the future


def test_causal_prefix_invariance_and_last_token_pooling():
  model = text.TextEncoder(**ARGS, causal=True, pooling="last")
  params = {"params": nn.meta.unbox(_random_params(model))}
  apply = jit(model.apply)
  tokens, pooled = apply(params, IDS, MASK)
  last = MASK.sum(1) - 1
  np.testing.assert_allclose(pooled, np.asarray(tokens)[np.arange(4), last], rtol=1e-6)
  ids2 = IDS.copy()
  ids2[1, 5] = 11
  tokens2, _ = apply(params, ids2, MASK)
  np.testing.assert_allclose(tokens2[1, :5], tokens[1, :5], rtol=1e-5, atol=1e-5)
  assert float(jnp.abs(tokens2[1, 5:] - tokens[1, 5:]).max()) > 1e-4


def test_sharded_equals_unsharded():
  """Apply on a data=4 x tensor=2 mesh (vocab, heads, mlp split over tensor) == one device.

  Tolerance: tensor-parallel partial sums change the float32 summation order (~1e-6 relative).
  """
  model = text.TextEncoder(**ARGS)
  params = _random_params(model)
  values = nn.meta.unbox(params)  # outside the rules context (unbox there adds a constraint)
  ref = jit(model.apply)({"params": values}, IDS, MASK)
  rules = mesh_lib.DEFAULT_RULES
  mesh = mesh_lib.make_mesh({"data": 4, "tensor": 2})
  with jax.set_mesh(mesh), nn.logical_axis_rules(rules):
    shardings = nn.logical_to_mesh_sharding(nn.get_partition_spec(params), mesh, rules)
    sharded = jax.device_put(values, shardings)
    batch = mesh_lib.batch_sharding(mesh, rules, 2)
    out = jit(model.apply, in_shardings=({"params": shardings}, batch, batch))(
        {"params": sharded}, IDS, MASK)
  assert sharded["embedding"].sharding.spec == jax.sharding.PartitionSpec("tensor", "fsdp")
  for a, b in zip(out, ref):
    np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-5)


def test_byte_patches_merge_ids_into_tokens():
  from mfm_jax.models import text as text_lib
  enc = text_lib.TextEncoder(vocab_size=259, width=16, depth=1, num_heads=2, max_len=12, patch=4)
  ids = jnp.asarray(np.random.default_rng(0).integers(3, 259, (2, 12)), jnp.int32)
  mask = jnp.asarray([[1] * 5 + [0] * 7, [1] * 12], bool)
  params = enc.init(jax.random.key(0), ids, mask)["params"]
  tokens, pooled = enc.apply({"params": params}, ids, mask)
  assert tokens.shape == (2, 3, 16) and pooled.shape == (2, 16)
  np.testing.assert_array_equal(text_lib.patch_mask(mask, 4), [[1, 1, 0], [1, 1, 1]])
  # Ids in a fully padded patch change nothing; ids in a partly real patch do.
  t2, p2 = enc.apply({"params": params}, ids.at[0, 9].set(7), mask)
  np.testing.assert_allclose(p2, pooled, atol=1e-6)
  t3, p3 = enc.apply({"params": params}, ids.at[0, 6].set(7), mask)
  assert np.abs(np.asarray(p3 - pooled)).max() > 1e-4
  with pytest.raises(ValueError, match="not divisible"):
    text_lib.patch_mask(jnp.ones((1, 10), bool), 4)
