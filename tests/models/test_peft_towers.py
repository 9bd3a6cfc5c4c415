"""PEFT wired into the towers: ViT / VideoViT / CLIPText create ``peft.SharedFactors`` once and
pass it to every block (unrolled and under ``nn.scan``); the PEViT reference count on a real
ViT-B/32; adapted == unadapted at init; LoRA and KAdaptation masks."""
import functools

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from mfm_jax.models import peft
from mfm_jax.models.clip import CLIPText
from mfm_jax.models.vit import ViT, VideoViT

FAST = {"xla_backend_optimization_level": 0, "xla_llvm_disable_expensive_passes": True}
jit = functools.partial(jax.jit, compiler_options=FAST)
REFERENCE = peft.PeftConfig(method="kadaptation", kadapt_n=32, kadapt_fast_rank=1,
                            kadapt_slow_rank=1, targets=("query", "value"))


def _base(tree):
  """Drops every ``peft_*`` subtree: the un-adapted model's params."""
  if not isinstance(tree, dict):
    return tree
  return {k: _base(v) for k, v in tree.items() if not k.startswith(peft.PREFIX)}


def _random(abstract, seed=0, std=0.05):
  rng = np.random.default_rng(seed)
  return jax.tree.map(lambda a: jnp.asarray(rng.normal(0, std, a.shape), a.dtype),
                      nn.meta.unbox(abstract))


@pytest.mark.parametrize("scan", [False, True])
def test_vit_b32_reference_kadaptation_has_50176_adapter_params(scan):
  model = ViT.from_variant("B/32", image_size=224, peft=REFERENCE, scan_blocks=scan)
  params = jax.eval_shape(model.init, jax.random.key(0), jnp.zeros((1, 224, 224, 3)))["params"]
  trainable, total = peft.count_params(params, peft.trainable_mask(params, REFERENCE))
  assert trainable == 50_176
  plain = jax.eval_shape(ViT.from_variant("B/32", image_size=224, scan_blocks=scan).init,
                         jax.random.key(0), jnp.zeros((1, 224, 224, 3)))["params"]
  assert total - trainable == peft.count_params(plain)[0]
  assert set(nn.meta.unbox(params)["peft_shared"]) == {
      f"peft_slow_{t}_{s}" for t in ("query", "value") for s in "ab"}


CASES = {
    "vit_kadapt": (lambda p, scan: ViT(width=32, depth=2, num_heads=4, image_size=16,
                                       patch_size=8, peft=p, scan_blocks=scan),
                   (2, 16, 16, 3), peft.PeftConfig(method="kadaptation", kadapt_n=4)),
    "vit_lora": (lambda p, scan: ViT(width=32, depth=2, num_heads=4, image_size=16,
                                     patch_size=8, peft=p, scan_blocks=scan),
                 (2, 16, 16, 3), peft.PeftConfig(method="lora", lora_rank=2)),
    "video_factorized": (lambda p, scan: VideoViT(width=32, depth=1, temporal_depth=1,
                                                  num_heads=4, image_size=16, tubelet=(2, 8, 8),
                                                  num_frames=4, attention="factorized", peft=p,
                                                  scan_blocks=scan),
                         (2, 4, 16, 16, 3), peft.PeftConfig(method="kadaptation", kadapt_n=4)),
    "text_kadapt": (lambda p, scan: CLIPText(vocab_size=20, width=32, depth=2, num_heads=4,
                                             max_len=6, eos_token_id=19, peft=p,
                                             scan_blocks=scan),
                    (2, 6), peft.PeftConfig(method="kadaptation", kadapt_n=8)),
}


def _inputs(shape):
  if len(shape) == 2:
    ids = np.tile(np.array([[1, 5, 7, 19, 0, 0]], np.int32), (shape[0], 1))
    return (ids,)
  return (np.random.default_rng(0).normal(size=shape).astype(np.float32),)


@pytest.mark.parametrize("scan", [False, True])
@pytest.mark.parametrize("name", sorted(CASES))
def test_adapted_equals_unadapted_at_init_and_adapters_train(name, scan):
  make, shape, cfg = CASES[name]
  x = _inputs(shape)
  model, plain = make(cfg, scan), make(None, scan)
  params = nn.meta.unbox(jit(model.init)(jax.random.key(0), *x)["params"])
  mask = peft.trainable_mask(params, cfg)
  trainable, _ = peft.count_params(params, mask)
  assert trainable > 0
  if cfg.method == "kadaptation":
    assert "peft_shared" in params   # created once, at the tower level
    n_shared = sum(k == "peft_shared" for p, _ in jax.tree_util.tree_leaves_with_path(params)
                   for k in (getattr(q, "key", None) for q in p))
    assert n_shared == 4             # slow a, b for query and value, nowhere else
  base = _base(params)
  y = jit(lambda p: model.apply({"params": p}, *x))(params)
  y0 = jit(lambda p: plain.apply({"params": p}, *x))(base)
  for a, b in zip(y, y0):
    np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-5)
  # With random adapter values the output moves, and gradients reach the adapters.
  moved = jax.tree.map(lambda p, m, r: r if m else p, params, mask, _random(params, 1, 0.2))
  y1 = jit(lambda p: model.apply({"params": p}, *x))(moved)
  assert np.abs(np.asarray(y1[1]) - np.asarray(y0[1])).max() > 1e-4
  g = jit(jax.grad(lambda p: jnp.sum(model.apply({"params": p}, *x)[1] ** 2)))(moved)
  g_adapt = [np.abs(v).max() for v, m in zip(jax.tree.leaves(g), jax.tree.leaves(mask)) if m]
  assert max(g_adapt) > 0


def test_scanned_tower_matches_unrolled_with_kadaptation():
  cfg = peft.PeftConfig(method="kadaptation", kadapt_n=4, kadapt_scale=2.0)
  x = _inputs((2, 16, 16, 3))
  make = CASES["vit_kadapt"][0]
  unrolled, scanned = make(cfg, False), make(cfg, True)
  params = _random(jax.eval_shape(unrolled.init, jax.random.key(0), *x)["params"], 2, 0.1)
  enc = params["encoder"]
  stacked = dict(params, encoder={"blocks": jax.tree.map(lambda *a: jnp.stack(a),
                                                         enc["block_0"], enc["block_1"])})
  y = jit(lambda p: unrolled.apply({"params": p}, *x))(params)
  y_scan = jit(lambda p: scanned.apply({"params": p}, *x))(stacked)
  np.testing.assert_allclose(y[1], y_scan[1], rtol=1e-4, atol=1e-4)


def test_clip_text_last_pooling_uses_the_mask():
  model = CLIPText(vocab_size=20, width=16, depth=1, num_heads=2, max_len=6, eos_token_id=2,
                   pooling="last")
  ids = np.array([[1, 9, 17, 2, 0, 0], [1, 4, 2, 0, 0, 0]], np.int32)
  mask = ids != 0
  params = jit(model.init)(jax.random.key(0), ids, mask)["params"]
  tokens, pooled = jit(model.apply)({"params": params}, ids, mask)
  np.testing.assert_allclose(pooled, np.asarray(tokens)[[0, 1], [3, 2]], atol=0)
  with pytest.raises(ValueError, match="pooling"):
    model.init(jax.random.key(0), ids)
