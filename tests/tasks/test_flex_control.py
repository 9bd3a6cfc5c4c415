"""configs/flex_control.py:smoke in-process: condition batches, frozen-base train steps, the
cross-attention supervision loss against hand-made maps, the masked loss, the DiT copy, errors."""
import functools
import importlib.util
import os

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import linen as nn

from mfm_jax import tasks

FAST = {"xla_backend_optimization_level": 0, "xla_llvm_disable_expensive_passes": True}
jit = functools.partial(jax.jit, compiler_options=FAST)
ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def _config(arg="smoke"):
  spec = importlib.util.spec_from_file_location("fc", os.path.join(ROOT, "configs",
                                                                   "flex_control.py"))
  mod = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(mod)
  c = mod.get_config(arg)
  c.diffusion.num_inference_steps = 2
  return c


@pytest.fixture(scope="module")
def setup():
  c = _config()
  c.control.freeze_base = True
  task = tasks.get(c.task)(c)
  batch = next(task.make_iterator("train", 2, 0, 0, 1))
  abstract = nn.meta.unbox(jax.eval_shape(task.init, jax.random.key(0)))
  rng = np.random.default_rng(0)   # random params: no compiled init
  params = jax.tree.map(lambda s: jnp.asarray(rng.normal(0, 0.05, s.shape), s.dtype), abstract)
  return c, task, batch, params


def test_batch_has_conditions(setup):
  c, _, batch, _ = setup
  t, r = c.data.num_frames, c.data.resolution
  for name in ("cond_depth", "cond_edges", "cond_instance"):
    assert batch[name].shape == (2, t, r, r, 3)
    assert batch[name].min() >= -1.0 and batch[name].max() <= 1.0
  assert batch["obj_masks"].shape == (2, t, r, r, 4)
  assert batch["obj_tokens"].shape == (2, 4, 2)
  # Real objects have their colour word in the (word-level) caption.
  assert (batch["obj_tokens"][..., 0][batch["obj_mask"]] > 0).all()


def test_frozen_base_train_steps(setup):
  _, task, batch, params = setup
  mask = task.trainable_mask(params)
  opt = optax.multi_transform({True: optax.adam(1e-2), False: optax.set_to_zero()}, mask)
  state = opt.init(params)

  @jit
  def step(p, s, rng):
    (loss, metrics), g = jax.value_and_grad(task.loss, has_aux=True)(p, batch, rng)
    upd, s = opt.update(g, s, p)
    return optax.apply_updates(p, upd), s, loss, metrics
  p = params
  for i in range(2):
    p, state, loss, metrics = step(p, state, jax.random.key(i))
    assert np.isfinite(float(loss)) and "train/attn_loss" in metrics
  same = jax.tree.map(lambda a, b: bool(jnp.all(a == b)), params["dit"], p["dit"])
  assert all(jax.tree.leaves(same))
  moved = jax.tree.map(lambda a, b: bool(jnp.any(a != b)), params["control"], p["control"])
  assert any(jax.tree.leaves(moved))


def test_attention_loss_against_hand_made_maps(setup):
  _, task, _, _ = setup
  tp, hp, wp = task.grid
  pt, ph, pw = task.dit_args["patch_size"]
  b, k, lt = 1, 2, 6
  masks = np.zeros((b, tp * pt, hp * ph, wp * pw, k), np.float32)
  masks[:, :, :ph, :pw, 0] = 1.0                      # object 0: exactly token (., 0, 0)
  tokens = np.array([[[2, 3], [-1, -1]]], np.int32)   # object 1 has no token: not supervised
  target = np.zeros((b, tp, hp * wp), np.float32)
  target[:, :, 0] = 1.0

  def inter(obj_map):   # [B, T'*H'*W'] attention of tokens 2 and 3; others uniform
    a = np.full((b, 2, tp * hp * wp, lt), 0.1, np.float32)
    a[..., 2] = a[..., 3] = obj_map[:, None]
    return {f"block_{i}": {"cross_attn": {"attn_maps": (jnp.asarray(a),)}}
            for i in range(task.dit_args["depth"])}
  keep = jnp.ones((b,), bool)
  good = task.attention_loss(inter(target.reshape(b, -1) * 0.5), tokens, masks, keep)
  np.testing.assert_allclose(float(good), 0.0, atol=1e-6)
  bad = task.attention_loss(inter(np.roll(target, 1, -1).reshape(b, -1)), tokens, masks, keep)
  np.testing.assert_allclose(float(bad), 2.0 / (hp * wp), rtol=1e-5)   # two cells wrong of H'W'
  off = task.attention_loss(inter(np.roll(target, 1, -1).reshape(b, -1)), tokens, masks,
                            jnp.zeros((b,), bool))
  assert float(off) == 0.0


def test_masked_loss_weights_objects(setup):
  c, task, batch, params = setup
  c2 = _config()
  c2.control.mask_weight, c2.control.attn_weight = 0.0, 0.0
  plain = tasks.get(c2.task)(c2)
  c3 = _config()
  c3.control.mask_weight, c3.control.attn_weight = 50.0, 0.0
  heavy = tasks.get(c3.task)(c3)
  rng = jax.random.key(3)
  a = float(jit(plain.loss)(params, batch, rng)[0])
  b = float(jit(heavy.loss)(params, batch, rng)[0])
  assert np.isfinite(a) and np.isfinite(b) and abs(a - b) > 1e-4


def test_after_init_from_copies_dit(setup):
  _, task, _, params = setup
  out = task.after_init_from(params)
  np.testing.assert_array_equal(np.asarray(out["control"]["block_0"]["fc1"]["kernel"]),
                                np.asarray(params["dit"]["block_0"]["mlp"]["fc1"]["kernel"]))
  assert task.init_from_fresh(params)["control"]["block_0"]["fc1"]["kernel"] is True
  assert task.init_from_fresh(params)["dit"]["t_embed"]["fc1"]["kernel"] is False


def test_bad_config_raises():
  c = _config()
  c.control.conditions = ("depth", "normals")
  with pytest.raises(ValueError, match="normals"):
    tasks.get(c.task)(c)
  c = _config()
  c.data.object_weight = 4.0
  with pytest.raises(ValueError, match="object_weight"):
    tasks.get(c.task)(c)


def test_baseline_preset_differs_only_in_mode():
  a, b = _config("smoke").to_dict(), _config("smoke,baseline").to_dict()
  assert a["control"].pop("mode") == "flex" and b["control"].pop("mode") == "separate"
  assert a == b
