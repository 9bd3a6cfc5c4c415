"""Tests for mfm_jax.models.unet3d: video shapes, temporal layers = identity at init (every frame
equals the 2-D U-Net on that frame alone) and mixing frames once trained, sown attention maps,
variants, errors, and sharded (2x4 mesh, batch over data) == unsharded.
Parity with diffusers' UNet2DConditionModel lives in test_sd_unet.py."""
import functools

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from mfm_jax.engine import mesh as mesh_lib
from mfm_jax.models import unet3d

FAST = {"xla_backend_optimization_level": 0, "xla_llvm_disable_expensive_passes": True}
jit = functools.partial(jax.jit, compiler_options=FAST)

TINY = dict(out_channels=3, block_out_channels=(16, 32), layers_per_block=1,
            attention_levels=(True, False), num_heads=2, norm_groups=4)


def _inputs(b=2, t=3, side=8, seed=0):
  rng = np.random.default_rng(seed)
  return (rng.normal(size=(b, t, side, side, 3)).astype(np.float32),
          rng.uniform(0, 1000, size=(b,)).astype(np.float32),
          rng.normal(size=(b, 4, 12)).astype(np.float32))


def _noise(tree, seed, std=0.05):
  leaves, treedef = jax.tree.flatten(nn.meta.unbox(tree))
  keys = jax.random.split(jax.random.key(seed), len(leaves))
  return treedef.unflatten([std * jax.random.normal(k, a.shape) for k, a in zip(keys, leaves)])


def test_temporal_identity_at_init_then_frames_interact():
  model = unet3d.UNet3D(**TINY)
  x, t, text = _inputs()
  params = nn.meta.unbox(jit(model.init)(jax.random.key(0), x, t, text)["params"])
  tconv = params["down_0_temporal_conv_0"]
  assert tconv["kernel"].shape == (3, 16, 16) and not np.any(tconv["kernel"])
  assert not np.any(params["mid_temporal_attn_0"]["attn"]["out"]["kernel"])

  def run(p, x):
    return model.apply({"params": p}, x, t, text, mutable=["intermediates"])

  video, state = jit(run)(params, x)
  assert video.shape == (2, 3, 8, 8, 3) and video.dtype == jnp.float32
  maps = state["intermediates"]["down_0_attn_0"]["block_0"]["attn2"]["attn_maps"][0]
  assert maps.shape == (2 * 3, 2, 64, 4)  # [B*T, heads, H*W, Lt]
  np.testing.assert_allclose(maps.sum(-1), 1, rtol=1e-5)
  assert "attn_maps" in state["intermediates"]["mid_temporal_attn_0"]["attn"]
  frame = jit(lambda p, f: model.apply({"params": p}, f, t, text))
  for i in range(3):  # each frame alone (T = 1) gives the same result
    np.testing.assert_allclose(video[:, i], frame(params, x[:, i:i + 1])[:, 0], atol=1e-5)
  # Trained (non-zero) temporal layers mix frames: frame 0 now depends on frame 2.
  trained = {k: (jax.tree.map(jnp.add, v, _noise(v, 1, 0.2)) if "temporal_" in k else v)
             for k, v in params.items()}
  x2 = x.copy()
  x2[:, 2] += 1.0
  a, b = jit(run)(trained, x)[0], jit(run)(trained, x2)[0]
  assert float(jnp.abs(a[:, 0] - b[:, 0]).max()) > 1e-3
  assert float(jnp.abs(a[:, 0] - frame(trained, x[:, :1])[:, 0]).max()) > 1e-3


def test_no_temporal_layers_and_variants():
  model = unet3d.UNet3D(temporal=False, **TINY)
  x, t, text = _inputs(t=1)
  shapes = jax.eval_shape(model.init, jax.random.key(0), x, t, text)["params"]
  assert not any("temporal" in k for k in shapes)
  v = unet3d.decode_variant("SD")
  assert v["block_out_channels"] == (320, 640, 1280, 1280) and v["num_heads"] == 8
  with pytest.raises(ValueError, match="variant 'Q'"):
    unet3d.decode_variant("Q")
  with pytest.raises(ValueError, match=r"frame size \(7, 7\) is not divisible by 2\^1"):
    jax.eval_shape(model.init, jax.random.key(0), x[:, :, :7, :7], t, text)
  with pytest.raises(ValueError, match="num_heads needs one entry per level"):
    jax.eval_shape(unet3d.UNet3D(**{**TINY, "num_heads": (2, 2, 2)}).init, jax.random.key(0),
                   x, t, text)


def test_timestep_features_match_diffusers_formula():
  t = jnp.array([0.0, 5.0, 999.0])
  got = unet3d.timestep_features(t, 6, flip_sin_to_cos=False, freq_shift=1)
  freqs = np.exp(-np.log(10000) * np.arange(3) / 2)  # half - shift = 2
  args = np.array([0.0, 5.0, 999.0])[:, None] * freqs
  np.testing.assert_allclose(got, np.concatenate([np.sin(args), np.cos(args)], 1), atol=1e-5)
  flipped = unet3d.timestep_features(t, 7)
  assert flipped.shape == (3, 7) and not np.any(flipped[:, -1])
  np.testing.assert_allclose(flipped[:, 0], np.cos(np.asarray(t)), atol=1e-5)  # [cos, sin]


def test_sharded_equals_unsharded():
  """apply on a data=4 x tensor=2 mesh (batch over data, channels / heads over tensor) ==
  one device; float32 summation order differs, so rtol = atol = 1e-5."""
  model = unet3d.UNet3D(**TINY)
  x, t, text = _inputs(b=4, t=2)
  rules = mesh_lib.DEFAULT_RULES
  mesh = mesh_lib.make_mesh({"data": 4, "tensor": 2})
  variables = jit(model.init)(jax.random.key(0), x, t, text)
  params = jax.tree.map(jnp.add, nn.meta.unbox(variables["params"]),
                        _noise(variables["params"], 2))  # temporal layers active too
  apply = lambda p, *a: model.apply({"params": p}, *a)  # noqa: E731
  ref = jit(apply)(params, x, t, text)
  with jax.set_mesh(mesh), nn.logical_axis_rules(rules):
    spec = nn.get_partition_spec(variables)["params"]
    shard = nn.meta.unbox(nn.logical_to_mesh_sharding(spec, mesh, rules))
    inputs = tuple(jax.device_put(a, mesh_lib.batch_sharding(mesh, rules, a.ndim))
                   for a in (x, t, text))
    out = jit(apply, out_shardings=mesh_lib.batch_sharding(mesh, rules, 5))(
        jax.device_put(params, shard), *inputs)
  kernel = jax.device_put(params, shard)["down_1_resnet_0"]["conv1"]["kernel"]
  assert kernel.sharding.spec == jax.sharding.PartitionSpec(None, None, None, "tensor")
  assert out.sharding.spec[0] == ("data", "fsdp")
  assert float(jnp.abs(ref).max()) > 1e-2
  np.testing.assert_allclose(out, ref, rtol=1e-5, atol=1e-5)
