"""Tests for mfm_jax.models.clip and .contrastive: end-of-text pooling, the two towers, activations,
losses against NumPy, and sharded == unsharded (model and losses) on (4, 2) and (8, 1) meshes."""
import functools
import math

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from mfm_jax.engine import mesh as mesh_lib
from mfm_jax.models import clip, contrastive, layers, vit

FAST = {"xla_backend_optimization_level": 0, "xla_llvm_disable_expensive_passes": True}
jit = functools.partial(jax.jit, compiler_options=FAST)

B, L, V = 8, 8, 50


def _model(**kw):
  vision = vit.ViT(width=32, depth=1, num_heads=4, mlp_dim=48, patch_size=8, image_size=16,
                   pre_norm=True, patch_bias=False, activation="quick_gelu", norm_epsilon=1e-5)
  text = clip.CLIPText(vocab_size=V, width=16, depth=2, num_heads=2, mlp_dim=40, max_len=L,
                       eos_token_id=V - 1)
  return clip.CLIP(vision, text, embed_dim=12, **kw)


def _inputs(seed=0):
  rng = np.random.default_rng(seed)
  px = rng.normal(size=(B, 16, 16, 3)).astype(np.float32)
  ids = rng.integers(1, V - 1, size=(B, L)).astype(np.int32)
  ends = rng.integers(2, L, size=B)
  ids[np.arange(B), ends] = V - 1
  return px, ids


def _random_params(model, *inputs, seed=0, std=0.2):
  abstract = jax.eval_shape(model.init, jax.random.key(0), *inputs)["params"]
  rng = np.random.default_rng(seed)
  return jax.tree.map(lambda s: jnp.asarray(rng.normal(0, std, s.shape), s.dtype), abstract)


def test_eot_index_follows_hf_rule():
  ids = jnp.array([[5, 9, 7, 9, 0], [3, 1, 2, 2, 2]])
  np.testing.assert_array_equal(clip.eot_index(ids, 9), [1, 0])  # first eos; absent -> 0
  np.testing.assert_array_equal(clip.eot_index(ids, 2), [1, 0])  # legacy: argmax of the ids
  np.testing.assert_array_equal(clip.eot_index(jnp.array([[0, 4, 2, 2]]), 2), [1])


def test_mlp_activations_and_default_unchanged():
  x = np.linspace(-4, 4, 17, dtype=np.float32)[:, None]
  erf = np.vectorize(math.erf)
  refs = {"gelu": 0.5 * x * (1 + erf(x / math.sqrt(2))), "quick_gelu": x / (1 + np.exp(-1.702 * x)),
          "gelu_tanh": 0.5 * x * (1 + np.tanh(math.sqrt(2 / math.pi) * (x + 0.044715 * x ** 3)))}
  for name, ref in refs.items():
    np.testing.assert_allclose(layers.ACTIVATIONS[name](jnp.asarray(x)), ref, atol=1e-6)
  assert layers.Mlp(4).activation == "gelu_tanh"
  assert layers.EncoderBlock(2).activation == "gelu_tanh"
  assert layers.EncoderBlock(2).norm_epsilon == 1e-6
  with pytest.raises(ValueError, match="activation"):
    layers.Mlp(4, activation="relu6").init(jax.random.key(0), jnp.ones((1, 4)))


def test_clip_shapes_names_and_outputs():
  model = _model()
  px, ids = _inputs()
  variables = jit(model.init)(jax.random.key(0), px, ids)
  leaves = jax.tree.leaves(variables, is_leaf=lambda a: isinstance(a, nn.LogicallyPartitioned))
  assert all(isinstance(a, nn.LogicallyPartitioned) and len(a.names) == a.value.ndim
             for a in leaves)
  params = nn.meta.unbox(variables["params"])
  assert set(params) == {"vision", "text", "visual_projection", "text_projection", "logit_scale"}
  assert "bias" not in params["visual_projection"] and "bias" not in params["text_projection"]
  np.testing.assert_allclose(params["logit_scale"], math.log(1 / 0.07), rtol=1e-6)

  def run(p):  # one compile for the three methods
    v = {"params": p}
    return (model.apply(v, px, method=model.encode_image),
            model.apply(v, ids, method=model.encode_text), model.apply(v, px, ids))

  img, txt, out = jit(run)(params)
  assert img.shape == txt.shape == (B, 12)
  np.testing.assert_allclose(out.image, img / np.linalg.norm(img, axis=-1, keepdims=True),
                             atol=1e-6)
  np.testing.assert_allclose(np.linalg.norm(out.text, axis=-1), 1.0, atol=1e-6)
  np.testing.assert_allclose(out.scale, 1 / 0.07, rtol=1e-5)
  assert out.bias is None
  siglip = _model(logit_scale_init=math.log(10), logit_bias_init=-10.0)
  p = jax.eval_shape(siglip.init, jax.random.key(0), px, ids)["params"]
  assert p["logit_bias"].value.shape == ()


def test_text_pools_at_eot_and_is_causal():
  """The pooled feature reads the first eos; tokens after it (padding) change nothing."""
  model = _model().text
  _, ids = _inputs()
  params = nn.meta.unbox(_random_params(model, ids))
  tokens, pooled = jit(model.apply)({"params": params}, ids)
  idx = np.argmax(ids == V - 1, axis=1)
  np.testing.assert_allclose(pooled, np.asarray(tokens)[np.arange(B), idx], atol=0)
  tail = np.arange(L)[None] > idx[:, None]
  ids2 = np.where(tail, 7, ids)  # other tokens after the eos
  _, pooled2 = jit(model.apply)({"params": params}, ids2, ~tail)
  np.testing.assert_allclose(pooled2, pooled, atol=1e-6)


def _np_log_softmax(z, axis):
  z = z - z.max(axis, keepdims=True)
  return z - np.log(np.exp(z).sum(axis, keepdims=True))


def _losses_np(img, txt, scale, bias):
  logits = scale * img.astype(np.float64) @ txt.astype(np.float64).T
  n = len(logits)
  ce = -(np.trace(_np_log_softmax(logits, 1)) + np.trace(_np_log_softmax(logits, 0))) / (2 * n)
  z = logits + bias
  labels = 2 * np.eye(n) - 1
  sig = np.sum(np.log1p(np.exp(-labels * z))) / n
  return ce, sig


def test_losses_match_numpy_and_are_sharding_invariant():
  rng = np.random.default_rng(4)
  img = rng.normal(size=(B, 6)).astype(np.float32)
  txt = (img + 0.5 * rng.normal(size=(B, 6))).astype(np.float32)
  img /= np.linalg.norm(img, axis=1, keepdims=True)
  txt /= np.linalg.norm(txt, axis=1, keepdims=True)
  scale, bias = np.float32(7.0), np.float32(-3.0)

  def both(i, t, s, b):
    return contrastive.clip_loss(i, t, s), contrastive.siglip_loss(i, t, s, b)

  ref = _losses_np(img, txt, scale, bias)
  np.testing.assert_allclose(jit(both)(img, txt, scale, bias), ref, rtol=1e-5)
  for axes in ({"data": 4, "tensor": 2}, {"data": 8}):
    mesh = mesh_lib.make_mesh(axes)
    sharding = mesh_lib.batch_sharding(mesh, mesh_lib.DEFAULT_RULES, 2)
    i, t = jax.device_put((img, txt), sharding)
    assert len(i.addressable_shards) == 8 and i.addressable_shards[0].data.shape[0] < B
    np.testing.assert_allclose(jit(both)(i, t, scale, bias), ref, rtol=1e-5)
  grads = jax.grad(lambda s: sum(both(img, txt, s, bias)))(scale)
  assert np.isfinite(grads)
  acc = contrastive.retrieval_accuracy(img, txt)
  assert all(0.0 <= float(a) <= 1.0 for a in acc)


def test_clip_sharded_equals_unsharded():
  model = _model()
  px, ids = _inputs(1)
  params = _random_params(model, px, ids, std=0.1)
  mask = np.ones_like(ids, bool)
  ref = jit(model.apply)({"params": nn.meta.unbox(params)}, px, ids, mask)
  rules = mesh_lib.DEFAULT_RULES
  for axes in ({"data": 4, "tensor": 2}, {"data": 8}):
    mesh = mesh_lib.make_mesh(axes)
    p_sharding = nn.logical_to_mesh_sharding(nn.get_partition_spec(params), mesh, rules)
    p = jax.device_put(nn.meta.unbox(params), p_sharding)
    x = jax.device_put((px, ids, mask), tuple(mesh_lib.batch_sharding(mesh, rules, a.ndim)
                                              for a in (px, ids, mask)))
    with jax.set_mesh(mesh), nn.logical_axis_rules(rules):
      out = jit(lambda p, *x: model.apply({"params": p}, *x))(p, *x)
    assert len(out.image.sharding.device_set) == 8
    for a, b in zip(out[:3], ref[:3]):
      np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-5)
