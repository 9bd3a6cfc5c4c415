"""Tests for the DiT's cross-attention hooks used by StructureDiffusion and Discffusion:
separate value sequences (``text_values``), sown logits (``attn_logits``) and LoRA on the
cross-attention (``cross_peft``)."""
import functools

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from mfm_jax.models import dit, peft
from mfm_jax.models.layers import core

FAST = {"xla_backend_optimization_level": 0, "xla_llvm_disable_expensive_passes": True}
jit = functools.partial(jax.jit, compiler_options=FAST)
B, VIDEO, LT, DT = 2, (2, 8, 8, 3), 5, 16
SMALL = dict(out_channels=3, width=32, depth=2, num_heads=4, mlp_ratio=2.0, patch_size=(1, 4, 4))


def _inputs(seed=0):
  rng = np.random.default_rng(seed)
  x = rng.normal(size=(B, *VIDEO)).astype(np.float32)
  t = np.array([10.0, 700.0], np.float32)
  text = rng.normal(size=(B, LT, DT)).astype(np.float32)
  mask = np.arange(LT)[None] < np.array([[3], [5]])
  return x, t, text, mask


def _params(model, *args, seed=0, std=0.2, **kw):
  abstract = jax.eval_shape(functools.partial(model.init, **kw), jax.random.key(0), *args)
  rng = np.random.default_rng(seed)
  return jax.tree.map(lambda s: jnp.asarray(rng.normal(0, std, s.shape), s.dtype),
                      nn.meta.unbox(abstract["params"]))


def test_value_context_is_the_values_and_the_mean_of_outputs():
  rng = np.random.default_rng(1)
  x = rng.normal(size=(B, 6, 16)).astype(np.float32)
  ctx = rng.normal(size=(B, LT, 16)).astype(np.float32)
  vals = rng.normal(size=(3, B, LT, 16)).astype(np.float32)
  attn = core.Attention(4)
  params = _params(attn, x, ctx)
  f = lambda **kw: attn.apply({"params": params}, x, ctx, **kw)  # noqa: E731
  np.testing.assert_allclose(f(value_context=ctx), f(), rtol=1e-6, atol=1e-6)
  # StructureDiffusion averages the outputs of several value sequences under one set of keys;
  # the value and output maps are affine, so that is the output of the mean sequence.
  each = np.mean([f(value_context=v) for v in vals], axis=0)
  np.testing.assert_allclose(f(value_context=vals.mean(0)), each, rtol=1e-5, atol=1e-5)
  assert float(np.abs(each - f()).max()) > 1e-3
  with pytest.raises(ValueError, match="value_context"):
    f(value_context=vals[0, :, :3])


@pytest.mark.parametrize("scan", [False, True])
def test_text_values_in_dit(scan):
  model = dit.VideoDiT(**SMALL, scan_blocks=scan)
  x, t, text, mask = _inputs()
  params = {"params": _params(model, x, t, text, mask)}
  rng = np.random.default_rng(2)
  same = np.stack([text, text], 1)
  other = np.stack([text, rng.normal(size=text.shape).astype(np.float32)], 1)
  apply = jit(model.apply)
  plain = apply(params, x, t, text, mask)
  np.testing.assert_allclose(apply(params, x, t, text, mask, text_values=same), plain,
                             rtol=1e-5, atol=1e-5)
  changed = apply(params, x, t, text, mask, text_values=other)
  assert float(jnp.abs(changed - plain).max()) > 1e-3
  with pytest.raises(ValueError, match="text_values"):
    model.apply(params, x, t, text, mask, text_values=text)


@pytest.mark.parametrize("scan", [False, True])
def test_logits_sown_only_when_asked(scan):
  model = dit.VideoDiT(**SMALL, scan_blocks=scan)
  x, t, text, mask = _inputs()
  params = {"params": _params(model, x, t, text, mask)}
  out, state = jit(functools.partial(model.apply, mutable=["attn_logits"]))(
      params, x, t, text, mask)
  _, maps = jit(functools.partial(model.apply, mutable=["intermediates"]))(
      params, x, t, text, mask)
  if scan:
    (logits,) = state["attn_logits"]["blocks"]["cross_attn"]["logits"]
    (probs,) = maps["intermediates"]["blocks"]["cross_attn"]["attn_maps"]
    assert logits.shape == (SMALL["depth"], B, 4, 8, LT)
  else:
    (logits,) = state["attn_logits"]["block_1"]["cross_attn"]["logits"]
    (probs,) = maps["intermediates"]["block_1"]["cross_attn"]["attn_maps"]
    assert logits.shape == (B, 4, 8, LT)
  np.testing.assert_allclose(jax.nn.softmax(logits, -1), probs, rtol=1e-5, atol=1e-6)
  row0 = logits[:, 0] if scan else logits[0]
  assert float(row0[..., 3:].max()) == float(jnp.finfo(jnp.float32).min)  # row 0 pads keys 3, 4
  np.testing.assert_allclose(out, jit(model.apply)(params, x, t, text, mask), atol=1e-6)


def test_cross_lora_params_start_as_identity_and_train():
  cfg = peft.PeftConfig(method="lora", targets=("query", "key", "value"), lora_rank=2)
  base = dit.VideoDiT(**SMALL)
  lora = dit.VideoDiT(**SMALL, cross_peft=cfg)
  x, t, text, mask = _inputs()
  variables = jax.jit(lora.init)(jax.random.key(0), x, t, text, mask)
  params = nn.meta.unbox(variables["params"])
  names = {"/".join(str(getattr(k, "key", k)) for k in path)
           for path, _ in jax.tree_util.tree_leaves_with_path(params)}
  adapted = sorted(n for n in names if "peft" in n)
  assert adapted and all("cross_attn" in n for n in adapted)
  base_params = jax.eval_shape(base.init, jax.random.key(0), x, t, text, mask)["params"]
  assert len(jax.tree.leaves(base_params)) + len(adapted) == len(jax.tree.leaves(params))
  # LoRA's B factor starts at zero: the adapted model equals the base on the shared params.
  rng = np.random.default_rng(3)
  params = jax.tree_util.tree_map_with_path(
      lambda p, v: v if "peft" in str(p) else jnp.asarray(rng.normal(0, 0.2, v.shape), v.dtype),
      params)
  base_only = _drop_peft(params)
  np.testing.assert_allclose(jit(lora.apply)({"params": params}, x, t, text, mask),
                             jit(base.apply)({"params": base_only}, x, t, text, mask),
                             rtol=1e-5, atol=1e-5)
  with pytest.raises(ValueError, match="only LoRA"):
    dit.VideoDiT(**SMALL, cross_peft=peft.PeftConfig(method="kadaptation")).init(
        jax.random.key(0), x, t, text, mask)


def _drop_peft(tree):
  if isinstance(tree, dict):
    return {k: _drop_peft(v) for k, v in tree.items() if not k.startswith("peft")}
  return tree
