"""Tests for mfm_jax.models.vit: variants, torch-exact bicubic positions, shapes, scan layout,
image -> video inflation, and sharded == unsharded on (4, 2) and (8, 1) meshes.

Compilation dominates on CPU: jits use ``FAST`` compiler options (numerics unchanged) and params
come from ``jax.eval_shape`` plus NumPy noise instead of a compiled ``init``.
"""
import functools

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch

from mfm_jax.engine import mesh as mesh_lib
from mfm_jax.models import vit

FAST = {"xla_backend_optimization_level": 0, "xla_llvm_disable_expensive_passes": True}
jit = functools.partial(jax.jit, compiler_options=FAST)

B = 8
TINY = dict(width=32, depth=2, num_heads=4, mlp_dim=64, image_size=16)


def _random_params(model, *inputs, seed=0, std=0.2):
  """Random boxed params with the model's structure (no compiled init)."""
  abstract = jax.eval_shape(model.init, jax.random.key(0), *inputs)["params"]
  rng = np.random.default_rng(seed)
  return jax.tree.map(lambda s: jnp.asarray(rng.normal(0, std, s.shape), s.dtype), abstract)


def sharded_apply(model, params, inputs, axes, method=None):
  """Applies ``model`` jitted on a mesh ``axes`` with logically sharded params and batch."""
  rules = mesh_lib.DEFAULT_RULES
  mesh = mesh_lib.make_mesh(axes)
  p_sharding = nn.logical_to_mesh_sharding(nn.get_partition_spec(params), mesh, rules)
  x_sharding = tuple(mesh_lib.batch_sharding(mesh, rules, np.ndim(a)) for a in inputs)
  params = jax.device_put(nn.meta.unbox(params), p_sharding)
  inputs = jax.device_put(tuple(inputs), x_sharding)
  fn = lambda p, *x: model.apply({"params": p}, *x, method=method)  # noqa: E731
  with jax.set_mesh(mesh), nn.logical_axis_rules(rules):
    return jit(fn)(params, *inputs)


def test_decode_variant_and_from_variant():
  assert vit.decode_variant("B/32") == dict(width=768, depth=12, num_heads=12, mlp_dim=3072,
                                            patch=32)
  assert vit.decode_variant("S/16", depth=2)["depth"] == 2
  assert vit.decode_variant("L/14")["mlp_dim"] == 4096
  for bad in ("Q/16", "B", "B/x"):
    with pytest.raises(ValueError, match="variant"):
      vit.decode_variant(bad)
  m = vit.ViT.from_variant("Ti/16", depth=1)
  assert (m.width, m.depth, m.num_heads, m.patch_size) == (192, 1, 3, 16)
  v = vit.VideoViT.from_variant("S/8", attention="factorized")
  assert (v.width, v.tubelet, v.attention) == (384, (2, 8, 8), "factorized")


@pytest.mark.parametrize("grid_in,grid_out", [((4, 4), (6, 6)), ((7, 7), (3, 5)), ((3, 3), (3, 3)),
                                              ((5, 5), (2, 9))])
def test_resize_positions_equals_torch_bicubic(grid_in, grid_out):
  rng = np.random.default_rng(0)
  pos = rng.normal(size=(grid_in[0] * grid_in[1], 5)).astype(np.float32)
  ref = torch.nn.functional.interpolate(
      torch.from_numpy(pos.reshape(1, *grid_in, 5)).permute(0, 3, 1, 2), size=grid_out,
      mode="bicubic", align_corners=False).permute(0, 2, 3, 1).reshape(-1, 5).numpy()
  out = vit.resize_positions(jnp.asarray(pos), grid_in, grid_out)
  np.testing.assert_allclose(out, ref, atol=2e-6)


@pytest.mark.parametrize("pooling", ["cls", "mean"])
def test_vit_shapes_names_and_resolution(pooling):
  model = vit.ViT(**TINY, patch_size=4, pooling=pooling, pre_norm=True)
  x = np.zeros((2, 16, 16, 3), np.float32)
  params = jax.eval_shape(model.init, jax.random.key(0), x)["params"]
  leaves = jax.tree.leaves(params, is_leaf=lambda a: isinstance(a, nn.LogicallyPartitioned))
  assert all(isinstance(a, nn.LogicallyPartitioned) and len(a.names) == a.value.ndim
             for a in leaves)
  n_cls = int(pooling == "cls")
  assert params["pos_embedding"].value.shape == (n_cls + 16, 32)
  assert ("cls" in params) == (pooling == "cls") and "pre_norm" in params
  for hw in ((16, 16), (24, 32)):  # native and another resolution (positions resized)
    tokens, pooled = jax.eval_shape(model.apply, {"params": params},
                                    np.zeros((2, *hw, 3), np.float32))
    assert tokens.shape == (2, n_cls + hw[0] * hw[1] // 16, 32) and pooled.shape == (2, 32)


def test_scan_and_remat_match_unrolled():
  x = np.random.default_rng(1).normal(size=(2, 16, 16, 3)).astype(np.float32)
  plain = vit.ViT(**TINY, patch_size=8)
  params = nn.meta.unbox(_random_params(plain, x))
  scanned = vit.ViT(**TINY, patch_size=8, scan_blocks=True, remat_policy="dots")
  enc = params["encoder"]
  stacked = dict(params, encoder={"blocks": jax.tree.map(
      lambda *a: jnp.stack(a), *[enc[f"block_{i}"] for i in range(TINY["depth"])])})
  ref = jit(plain.apply)({"params": params}, x)
  out = jit(scanned.apply)({"params": stacked}, x)
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-5), out, ref)


def test_video_joint_one_frame_equals_image_vit():
  """A one-frame joint VideoViT with a ViT's weights (temporal positions 0) is that ViT."""
  x = np.random.default_rng(2).normal(size=(2, 16, 16, 3)).astype(np.float32)
  image = vit.ViT(**TINY, patch_size=4, pre_norm=True)
  params = nn.meta.unbox(_random_params(image, x))
  video = vit.VideoViT(**TINY, tubelet=(1, 4, 4), num_frames=1, pre_norm=True)
  vparams = dict(params, temporal_pos_embedding=jnp.zeros((1, 32)))
  ref = jit(image.apply)({"params": params}, x)
  out = jit(video.apply)({"params": vparams}, x[:, None])
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-5), out, ref)


@pytest.mark.parametrize("attention,pooling", [("joint", "cls"), ("factorized", "cls"),
                                               ("factorized", "mean")])
def test_video_shapes(attention, pooling):
  model = vit.VideoViT(**TINY, tubelet=(2, 8, 8), num_frames=8, attention=attention,
                       temporal_depth=1, pooling=pooling)
  x = np.zeros((2, 6, 16, 16, 3), np.float32)  # T' = 3 < capacity 4
  params = jax.eval_shape(model.init, jax.random.key(0), x)["params"]
  tokens, pooled = jax.eval_shape(model.apply, {"params": params}, x)
  n_cls = int(pooling == "cls")
  n = n_cls + (3 * 4 if attention == "joint" else 3)
  assert tokens.shape == (2, n, 32) and pooled.shape == (2, 32)
  assert ("temporal" in params) == (attention == "factorized")
  with pytest.raises(ValueError, match="num_frames"):
    jax.eval_shape(model.apply, {"params": params}, np.zeros((2, 10, 16, 16, 3), np.float32))


def test_sharded_equals_unsharded():
  """ViT and the factorised VideoViT on (data 4, tensor 2) and (data 8) meshes == one device
  (float32 summation order differs across shards: rtol = atol = 1e-5)."""
  rng = np.random.default_rng(3)
  image = vit.ViT(**TINY, patch_size=8, scan_blocks=True)
  video = vit.VideoViT(**TINY, tubelet=(2, 8, 8), num_frames=4, attention="factorized",
                       temporal_depth=1)
  for model, x in ((image, rng.normal(size=(B, 16, 16, 3))),
                   (video, rng.normal(size=(B, 4, 16, 16, 3)))):
    x = x.astype(np.float32)
    params = _random_params(model, x, std=0.1)
    ref = jit(model.apply)({"params": nn.meta.unbox(params)}, x)
    assert float(jnp.abs(ref[1]).max()) > 1e-2
    for axes in ({"data": 4, "tensor": 2}, {"data": 8}):
      out = sharded_apply(model, params, (x,), axes)
      assert len(out[1].sharding.device_set) == 8
      jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-5), out, ref)
