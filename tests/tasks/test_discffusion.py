"""Task ``discffusion``: items as still videos, in-batch negatives, LoRA-only hinge training that
lowers the loss, and the smoke config end to end from a video_diffusion checkpoint (frozen base
params, trained LoRA, the evaluation JSON)."""
import functools
import importlib.util
import json
import os

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import linen as nn

from mfm_jax import tasks
from mfm_jax.data import compositional as comp
from mfm_jax.engine import checkpoint as ckpt_lib
from mfm_jax.tasks import discffusion

FAST = {"xla_backend_optimization_level": 0, "xla_llvm_disable_expensive_passes": True}
ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def _config(name, arg):
  spec = importlib.util.spec_from_file_location(f"cfg_{name}", os.path.join(ROOT, "configs",
                                                                            f"{name}.py"))
  mod = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(mod)
  return mod.get_config(arg)


def _flat(tree):
  return {jax.tree_util.keystr(k): np.asarray(v)
          for k, v in jax.tree_util.tree_leaves_with_path(nn.meta.unbox(tree))}


def test_still_video_item_example_and_wilson():
  img = np.zeros((8, 8, 3), np.uint8)
  img[:, 4:] = 255
  v = discffusion.still_video(img, 3, 4)
  assert v.shape == (3, 4, 4, 3) and v.dtype == np.float32
  np.testing.assert_allclose(v[:, :, :2], -1.0)
  np.testing.assert_allclose(v[:, :, 2:], 1.0)
  pos = comp.Sentence("large red sphere", "to the left of", "small blue cube")
  item = comp.Item(img, {}, pos, comp.negatives_of(pos, "red", "blue"), clip=7)
  task = tasks.get("discffusion")(_config("discffusion", "smoke"))
  ex = discffusion.item_example(item, task.tokenizer, 4, 16)
  assert ex["video"].shape == (4, 16, 16, 3) and int(ex["clip"]) == 7
  assert ex["text_ids"].shape == (3, task.config.data.max_text_len)
  want = task.tokenizer.encode([pos.text, item.negatives["swap"].text,
                                item.negatives["attribute"].text])[0]
  np.testing.assert_array_equal(ex["text_ids"], want)
  lo, hi = discffusion.wilson(0.5, 100)
  assert lo == pytest.approx(0.4038, abs=1e-4) and hi == pytest.approx(0.5962, abs=1e-4)


def test_in_batch_negatives_skip_the_same_clip():
  c = _config("discffusion", "smoke")
  c.discffusion.in_batch_negatives = 2
  task = tasks.get("discffusion")(c)
  ids = jnp.arange(4 * 3 * 5).reshape(4, 3, 5)
  batch = {"text_ids": ids, "text_mask": ids > 0, "clip": jnp.array([0, 0, 1, 2])}
  got_ids, got_mask, valid = task._candidates(batch)
  assert got_ids.shape == (4, 5, 5) and got_mask.shape == (4, 5, 5)
  np.testing.assert_array_equal(got_ids[:, 3], np.roll(ids[:, 0], 1, axis=0))
  np.testing.assert_array_equal(got_ids[:, 4], np.roll(ids[:, 0], 2, axis=0))
  # roll 1: video 1 gets video 0's caption (same clip 0): not a negative
  np.testing.assert_array_equal(valid, [[1, 1, 1, 1], [1, 1, 0, 1], [1, 1, 1, 1],
                                        [1, 1, 1, 1]])


def test_lora_only_hinge_training_lowers_the_loss():
  c = _config("discffusion", "smoke")
  c.discffusion.margin = 1.0
  task = tasks.get("discffusion")(c)
  batch = next(task.make_iterator("train", 8, 0, 0, 1))
  batch = {k: jnp.asarray(v) for k, v in batch.items()}
  assert batch["text_ids"].shape[:2] == (8, 3) and batch["video"].shape == (8, 4, 16, 16, 3)
  params = nn.meta.unbox(task.init(jax.random.key(0)))
  mask = task.trainable_mask(params)
  assert any(jax.tree.leaves(mask)) and not all(jax.tree.leaves(mask))
  tx = optax.masked(optax.adam(3e-3), mask)
  opt = tx.init(params)

  @functools.partial(jax.jit, compiler_options=FAST)
  def step(params, opt):
    (loss, m), g = jax.value_and_grad(task.loss, has_aux=True)(params, batch, jax.random.key(0))
    upd, opt = tx.update(g, opt, params)
    upd = jax.tree.map(lambda u, k: u if k else jnp.zeros_like(u), upd, mask)
    return optax.apply_updates(params, upd), opt, loss, m

  losses = []
  new = params
  for _ in range(4):
    new, opt, loss, m = step(new, opt)
    losses.append(float(loss))
  assert np.all(np.isfinite(losses)) and losses[-1] < losses[0], losses
  assert 0.0 <= float(m["train/acc_swap"]) <= 1.0
  before, after, train = _flat(params), _flat(new), _flat(mask)
  for k in before:
    if not train[k]:
      np.testing.assert_array_equal(after[k], before[k], err_msg=k)
  assert all("peft_" in k for k in train if train[k])


def test_other_clip_negative_comes_from_another_clip():
  exs = [{"clip": np.int32(c), "text_ids": np.full((3, 4), i), "text_mask": np.ones((3, 4), bool)}
         for i, c in enumerate([0, 0, 1, 1, 1, 2])]
  out = discffusion.with_other_clip_negative(exs)
  # item i takes the first item from another clip at or after i + 3 (cyclically)
  assert [int(o["text_ids"][3, 0]) for o in out] == [3, 4, 5, 0, 1, 2]
  assert all(o["text_ids"].shape == (4, 4) and o["text_mask"].shape == (4, 4) for o in out)
  np.testing.assert_array_equal(out[2]["text_ids"][:3], exs[2]["text_ids"])
  with pytest.raises(ValueError, match="same clip"):
    discffusion.with_other_clip_negative(exs[:2])


@pytest.mark.slow
def test_smoke_from_a_video_diffusion_checkpoint(tmp_path):
  from mfm_jax.engine import trainer
  gen = tasks.get("video_diffusion")(_config("video_gen", "smoke"))
  rng = np.random.default_rng(0)
  base = jax.tree.map(lambda a: np.asarray(rng.normal(0, 0.1, a.shape), np.float32),
                      nn.meta.unbox(jax.eval_shape(gen.init, jax.random.key(0))))
  saver = ckpt_lib.Checkpointer(str(tmp_path / "gen"), max_to_keep=1, async_save=False)
  saver.save(0, base)
  saver.close()

  c = _config("discffusion", "smoke")
  c.init_from, c.init_from_ema = str(tmp_path / "gen"), False   # a bare params tree: no EMA
  c.discffusion.bank_size, c.discffusion.item_set.max_items = 1, 8   # one eval batch
  task = tasks.get(c.task)(c)
  summary = trainer.train(c, task, str(tmp_path / "disc"))
  assert summary["origin"] == "init_from" and summary["final_step"] == 2
  assert 0 < summary["trainable_params"] < summary["params"] / 10
  _, state = ckpt_lib.read_latest_state(str(tmp_path / "disc" / "checkpoints"))
  got, want = _flat(state["params"]), _flat(base)
  lora = [k for k in got if "peft_" in k]
  assert lora and set(got) - set(lora) == set(want)
  for k in want:
    np.testing.assert_array_equal(got[k], want[k], err_msg=k)      # the base stays frozen
  assert any(np.abs(got[k]).max() > 0 for k in lora if "lora_b" in k.lower())
  with open(tmp_path / "disc" / "eval" / "discffusion_000002.json") as f:
    out = json.load(f)
  assert out["n"] == 8 and np.asarray(out["scores"]).shape == (8, 3)
  for k, v in out["accuracy"].items():
    lo, hi = out["ci95"][k]
    assert 0.0 <= lo <= v <= hi <= 1.0
  assert len(out["per_timestep"]) == 1 and len(out["per_layer"]) == c.model.depth
  assert sum(p["n"] for p in out["per_predicate"].values()) == 8
  assert summary["evals"][0]["eval/swap"] == out["accuracy"]["swap"]


def test_calibrated_score_is_zero_on_the_null_video():
  c = _config("discffusion", "smoke")
  c.discffusion.calibrate = True
  task = tasks.get("discffusion")(c)
  params = nn.meta.unbox(task.init(jax.random.key(0)))
  ids, mask = task.tokenizer.encode(["a red cube behind a blue cube", "a blue cube", "a cube"])
  ids = jnp.asarray(np.stack([ids, ids[::-1]]))
  mask = jnp.asarray(np.stack([mask, mask[::-1]]))
  video = jnp.stack([jnp.zeros((4, 16, 16, 3)), jnp.ones((4, 16, 16, 3))])
  got = np.asarray(jax.jit(task._bank_scores, compiler_options=FAST)(params, video, ids, mask))
  assert got.shape == (2, 2, 3, c.model.depth)                      # [K, B, C, Ly]
  np.testing.assert_allclose(got[:, 0], 0.0, atol=1e-6)
  assert np.abs(got[:, 1]).max() > 1e-4
