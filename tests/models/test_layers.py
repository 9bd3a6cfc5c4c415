"""Tests for mfm_jax.models.layers: shared blocks behave as documented.

Inputs and parameters come from numpy (``_params`` fills the ``eval_shape`` of ``init``) and
every jit uses ``FAST`` compiler options: on CPU the test time is almost all compilation.
"""
import functools

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from mfm_jax.models import layers


FAST = {"xla_backend_optimization_level": 0, "xla_llvm_disable_expensive_passes": True}
jit = functools.partial(jax.jit, compiler_options=FAST)


def _rand(seed, shape, std=1.0):
  return (std * np.random.default_rng(seed).normal(size=shape)).astype(np.float32)


def _params(module, *args, seed=0, std=0.2):
  """Random unboxed params with the structure of ``module.init(key, *args)``, no compile."""
  abstract = nn.meta.unbox(jax.eval_shape(module.init, jax.random.key(0), *args)["params"])
  rng = np.random.default_rng(seed)
  return jax.tree.map(lambda a: rng.normal(0, std, a.shape).astype(np.float32), abstract)


def test_patchify_roundtrip_and_tubelet_equals_conv3d():
  x = _rand(0, (2, 4, 8, 12, 3))
  p = layers.patchify(x, (2, 4, 4))
  assert p.shape == (2, 2, 2, 3, 2 * 4 * 4 * 3)
  np.testing.assert_array_equal(layers.unpatchify(p, (2, 4, 4)), x)

  embed = layers.TubeletEmbed(16, (2, 4, 4))
  params = _params(embed, x)
  y = jit(embed.apply)({"params": params}, x)
  ref = jax.lax.conv_general_dilated(
      x, params["kernel"], window_strides=(2, 4, 4), padding="VALID",
      dimension_numbers=("NTHWC", "THWIO", "NTHWC")) + params["bias"]
  assert y.shape == (2, 2, 2, 3, 16)
  np.testing.assert_allclose(y, ref, rtol=1e-5, atol=1e-5)
  with pytest.raises(ValueError, match="not divisible"):
    layers.patchify(x, (3, 4, 4))


def _attention_params(num_heads=4, d=32, dc=24, key=0):
  attn = layers.Attention(num_heads)
  x, ctx = _rand(key, (2, 6, d)), _rand(key + 1, (2, 5, dc))
  return attn, _params(attn, x, ctx, seed=key + 2, std=0.3), x, ctx


def test_attention_matches_reference_with_bias_and_mask():
  attn, params, x, ctx = _attention_params()
  bias = _rand(7, (1, 4, 6, 5))
  mask = jnp.array([[1, 1, 1, 0, 0], [1, 1, 1, 1, 1]], bool)
  y = jit(attn.apply)({"params": params}, x, ctx, bias=bias, mask=mask)
  proj = lambda a, p: jnp.einsum("bld,dnh->blnh", a, p["kernel"]) + p["bias"]  # noqa: E731
  q, k, v = proj(x, params["query"]), proj(ctx, params["key"]), proj(ctx, params["value"])
  ref = jax.nn.dot_product_attention(q, k, v, bias=bias, mask=mask[:, None, None, :])
  ref = jnp.einsum("blnh,nhd->bld", ref, params["out"]["kernel"]) + params["out"]["bias"]
  assert y.shape == (2, 6, 32)
  np.testing.assert_allclose(y, ref, rtol=1e-5, atol=1e-5)
  y_einsum = jit(layers.Attention(4, flat=False).apply)({"params": params}, x, ctx, bias=bias,
                                                        mask=mask)
  np.testing.assert_allclose(y_einsum, y, rtol=1e-5, atol=1e-5)


def test_attention_key_padding_mask_ignores_padded_keys():
  attn, params, x, ctx = _attention_params()
  mask = np.array([[1, 1, 1, 0, 0], [1, 1, 1, 1, 0]], bool)
  apply = jit(attn.apply)
  y = apply({"params": params}, x, ctx, mask=mask)
  ctx2 = np.where(mask[..., None], ctx, _rand(9, ctx.shape, 100.0))
  np.testing.assert_allclose(apply({"params": params}, x, ctx2, mask=mask), y, atol=1e-5)
  ctx3 = ctx.copy()
  ctx3[:, 0] += 1.0  # a real token: output must change
  assert np.abs(apply({"params": params}, x, ctx3, mask=mask) - y).max() > 1e-3
  empty = np.array([[0, 0, 0, 0, 0], [1, 1, 1, 1, 0]], bool)  # row 0: no real key
  y_empty = apply({"params": params}, x, ctx2, mask=empty)
  np.testing.assert_allclose(y_empty[0], np.broadcast_to(params["out"]["bias"], (6, 32)),
                             atol=1e-6)


def test_attention_causal_prefix_invariance():
  attn = layers.Attention(4)
  x = _rand(0, (2, 6, 32))
  params = _params(attn, x, std=0.3)
  apply = jit(functools.partial(attn.apply, causal=True))
  y = apply({"params": params}, x)
  x2 = x.copy()
  x2[:, 4:] = _rand(11, (2, 2, 32))
  y2 = apply({"params": params}, x2)
  np.testing.assert_allclose(y2[:, :4], y[:, :4], atol=1e-5)
  assert np.abs(y2[:, 4:] - y[:, 4:]).max() > 1e-3


def test_attention_sow_maps_only_when_mutable():
  attn, params, x, ctx = _attention_params()
  mask = np.array([[1, 1, 1, 0, 0], [1, 1, 1, 1, 1]], bool)
  y, state = jit(functools.partial(attn.apply, mutable=["intermediates"]))(
      {"params": params}, x, ctx, mask=mask)
  (maps,) = state["intermediates"]["attn_maps"]
  assert maps.shape == (2, 4, 6, 5)  # [B, heads, Lq, Lk]
  np.testing.assert_allclose(maps.sum(-1), 1.0, atol=1e-5)
  assert float(maps[0, :, :, 3:].max()) == 0.0  # padded keys get no mass
  y_plain = jit(attn.apply)({"params": params}, x, ctx, mask=mask)
  assert isinstance(y_plain, jax.Array)  # nothing else comes back when not asked
  np.testing.assert_allclose(y_plain, y, rtol=1e-6, atol=1e-6)
  _, state = jax.eval_shape(functools.partial(
      layers.Attention(4, sow_maps=False).apply, mutable=["intermediates"]),
      {"params": params}, x, ctx, mask=mask)
  assert not state.get("intermediates")


def test_layernorm_matches_flax_and_rmsnorm_unit_rms():
  x = 3.0 + _rand(0, (4, 7, 16), 2.0)
  scale, bias = 1.0 + _rand(1, (16,), 0.1), _rand(2, (16,), 0.1)
  y = jit(layers.LayerNorm().apply)({"params": {"scale": scale, "bias": bias}}, x)
  ref = jit(nn.LayerNorm(epsilon=1e-6).apply)({"params": {"scale": scale, "bias": bias}}, x)
  np.testing.assert_allclose(y, ref, rtol=1e-5, atol=1e-5)
  y = np.asarray(jit(layers.RMSNorm().apply)({"params": {"scale": np.ones(16, np.float32)}}, x))
  np.testing.assert_allclose(np.sqrt(np.mean(y ** 2, -1)), 1.0, rtol=1e-4)


def test_adaln_zero_init_and_timestep_embed():
  c = _rand(0, (3, 8))
  mod = layers.AdaLNModulation(6, 16)
  chunks = jit(mod.apply)(jit(mod.init)(jax.random.key(0), c), c)
  assert len(chunks) == 6 and all(a.shape == (3, 1, 16) for a in chunks)
  assert all(float(jnp.abs(a).max()) == 0.0 for a in chunks)

  feats = jit(layers.timestep_sinusoid, static_argnums=1)(np.array([0.0, 1.0, 999.0]), 256)
  assert feats.shape == (3, 256)
  np.testing.assert_allclose(feats[0, :128], 1.0)  # cos(0)
  temb = layers.TimestepEmbed(32)
  t = np.array([0.0, 500.0, 1000.0], np.float32)
  out = jit(temb.apply)({"params": _params(temb, t)}, t)
  assert out.shape == (3, 32) and np.abs(out[0] - out[1]).max() > 0


def test_sincos_3d_positions_are_distinct():
  table = layers.sincos_3d(64, (3, 4, 5))
  assert table.shape == (3, 4, 5, 64)
  flat = table.reshape(-1, 64)
  dists = np.linalg.norm(flat[:, None] - flat[None], axis=-1)
  assert (dists + np.eye(len(flat))).min() > 1e-3
  pe = layers.PosEmbed3D("learned")
  v = jax.eval_shape(pe.init, jax.random.key(0), jnp.zeros((1, 3, 4, 5, 64)))
  assert v["params"]["pos"].names == ("frames", "height", "width", "embed")


def test_encoder_block_and_remat_policy_names():
  block = layers.EncoderBlock(num_heads=2)
  x = _rand(0, (2, 5, 16))
  y = jit(block.apply)({"params": _params(block, x)}, x)
  assert y.shape == (2, 5, 16) and np.abs(np.asarray(y) - x).max() > 1e-3
  with pytest.raises(ValueError, match="remat_policy"):
    layers.remat(layers.EncoderBlock, "sometimes")
