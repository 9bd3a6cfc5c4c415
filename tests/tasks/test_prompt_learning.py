"""Prompt learning (CoOp / CoCoOp / CPL): the prompt table and context insertion against the
existing ``CLIPText`` token path, the CoCoOp meta-net, the CPL negative choice and greedy
u-solver against hand computations and brute force, and the smoke config through the trainer
(only the prompt params move; base / new / harmonic-mean evaluation)."""
import itertools
import json
import os

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from configs import cpl as cpl_config
from configs import encoder_pretrain
from mfm_jax import tasks
from mfm_jax.data import tokenizer as tokenizer_lib
from mfm_jax.engine import checkpoint as ckpt_lib
from mfm_jax.engine import trainer
from mfm_jax.models import counterfactual as cf
from mfm_jax.models import prompts
from mfm_jax.tasks import encoders
from mfm_jax.tasks import prompt_learning as pl


def _quick(c, steps):
  c.total_steps = c.eval_every = c.checkpoint.every = steps
  c.checkpoint.async_save = False
  return c


def _flat(tree):
  return {jax.tree_util.keystr(k): np.asarray(v)
          for k, v in jax.tree_util.tree_leaves_with_path(tree)}


def _ckpt_params(workdir):
  return ckpt_lib.read_latest_state(os.path.join(workdir, "checkpoints"))[1]["params"]


@pytest.fixture(scope="module")
def coop():
  """A smoke CoOp task and random (non-trivial) unboxed params."""
  task = pl.PromptLearningTask(cpl_config.get_config("smoke,method=coop"))
  return task, nn.meta.unbox(jax.jit(task.init)(jax.random.key(0)))


def test_prompt_table_layout():
  tok = tokenizer_lib.WordTokenizer(["a", "big", "cube", "red"], max_len=10)
  t = prompts.prompt_table(tok, ["red cube", "cube"], n_ctx=2)
  # ids: BOS 1, EOS 2, PAD 0; words a 4, big 5, cube 6, red 7.
  np.testing.assert_array_equal(t.token_ids, [[1, 0, 0, 7, 6, 2], [1, 0, 0, 6, 2, 0]])
  np.testing.assert_array_equal(t.ctx_index, [[-1, 0, 1, -1, -1, -1], [-1, 0, 1, -1, -1, -1]])
  np.testing.assert_array_equal(t.mask, [[1, 1, 1, 1, 1, 1], [1, 1, 1, 1, 1, 0]])
  np.testing.assert_array_equal(t.eos_index, [5, 4])
  np.testing.assert_array_equal(prompts.context_ids(tok, "a big"), [4, 5])
  with pytest.raises(ValueError, match="init_words"):
    prompts.context_ids(tok, "a photo")
  with pytest.raises(ValueError, match="max_text_len"):
    prompts.prompt_table(tok, ["red cube"], n_ctx=8)


def test_context_insertion_equals_clip_text_on_an_extended_vocabulary(coop):
  """Random ctx vectors appended to the token table as ids V..V+M-1: the existing CLIPText on
  [BOS, V.., name, EOS, PAD.. (full max_len)] must give the prompted features exactly."""
  task, params = coop
  clip, model = params["clip"], task.model
  table = task.train_classes.table
  m, d = task.n_ctx, model.text.width
  ctx = jax.random.normal(jax.random.key(3), (m, d))
  encode = jax.jit(lambda p, c: prompts.encode_prompts(model, p, table, c))
  got = encode(clip, ctx)                                                  # [C, E]
  v = clip["text"]["token_embedding"].shape[0]
  ext = {**clip, "text": {**clip["text"], "token_embedding": jnp.concatenate(
      [clip["text"]["token_embedding"], ctx])}}
  ref_model = model.clone(text=model.text.clone(vocab_size=v + m))
  ids = np.zeros((table.num_classes, task.tokenizer.max_len), np.int32)
  mask = np.zeros(ids.shape, bool)
  length = table.token_ids.shape[1]
  ids[:, :length] = np.where(table.ctx_index >= 0, v + table.ctx_index, table.token_ids)
  mask[:, :length] = table.mask
  ids[~mask] = task.tokenizer.pad_id
  want = jax.jit(lambda p: encoders.encode_text(ref_model, p, jnp.asarray(ids),
                                                jnp.asarray(mask)))(ext)
  np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)
  # CoCoOp's per-image context: row b is the CoOp encoding with ctx[b].
  batch_ctx = jnp.stack([ctx, ctx * 0.5 + 1.0])
  per_image = encode(clip, batch_ctx)                                      # [2, C, E]
  np.testing.assert_allclose(per_image[0], got, rtol=1e-5, atol=1e-5)
  np.testing.assert_allclose(per_image[1], encode(clip, batch_ctx[1]), rtol=1e-5, atol=1e-5)
  assert np.abs(per_image[0] - per_image[1]).max() > 1e-5


def test_init_words_context_reproduces_the_hand_prompt(coop):
  """ctx = embedding of "a" (data.prompt "a {}"): CoOp's logits == the zero-shot hand prompt's."""
  task, params = coop
  assert task.n_ctx == 1
  np.testing.assert_allclose(params["prompt"]["ctx"], params["clip"]["text"]["token_embedding"][
      task.init_ids], rtol=0, atol=0)
  zs = pl.PromptLearningTask(cpl_config.get_config("smoke,method=zeroshot"))
  pixels = jax.random.normal(jax.random.key(1), (4, 16, 16, 3))
  for classes in task.eval_classes.values():
    got = jax.jit(lambda p, x, c=classes: task.logits(p, x, c))(params, pixels)
    want = jax.jit(lambda p, x, c=classes: zs.logits(p, x, c))(params, pixels)
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4)
  # after_init_from re-reads the (loaded) token table.
  moved = {**params, "clip": {**params["clip"], "text": {
      **params["clip"]["text"], "token_embedding": params["clip"]["text"]["token_embedding"] + 1}}}
  np.testing.assert_allclose(task.after_init_from(moved)["prompt"]["ctx"],
                             params["prompt"]["ctx"] + 1, rtol=1e-6)


def test_cocoop_meta_net_bias_per_image():
  learner = prompts.PromptLearner(n_ctx=3, width=16, conditional=True)
  feats = jax.random.normal(jax.random.key(0), (2, 64))
  variables = learner.init(jax.random.key(1), feats)
  p = nn.meta.unbox(variables)["params"]
  assert p["ctx"].shape == (3, 16)
  assert p["linear1"]["kernel"].shape == (64, 4) and p["linear2"]["kernel"].shape == (4, 16)
  out = learner.apply(variables, feats)                                     # [2, 3, 16]
  bias = out - p["ctx"][None]
  want = jax.nn.relu(feats @ p["linear1"]["kernel"] + p["linear1"]["bias"]) @ p["linear2"][
      "kernel"] + p["linear2"]["bias"]
  np.testing.assert_allclose(bias, jnp.broadcast_to(want[:, None], bias.shape), rtol=1e-5,
                             atol=1e-6)
  assert not np.allclose(bias[0], bias[1], atol=1e-4)                      # per image
  plain = prompts.PromptLearner(n_ctx=3, width=16)
  assert set(nn.meta.unbox(plain.init(jax.random.key(1)))["params"]) == {"ctx"}


def test_negative_is_the_most_similar_other_class():
  feats = jnp.array([[1.0, 0.0], [0.8, 0.6], [0.0, 1.0], [-1.0, 0.1]])
  # cosines: 0-1 .8, 0-2 0, 0-3 -.995; 1-2 .6, 1-3 -.74; 2-3 .0995
  got = cf.most_similar_other(feats * jnp.array([[2.0], [1.0], [3.0], [1.0]]),
                              jnp.array([0, 1, 2, 3, 0]))
  np.testing.assert_array_equal(got, [1, 0, 1, 2, 1])


def test_greedy_swap_hand_example():
  x = jnp.full((1, 5), 0.5)
  v = jnp.array([[0.9, 0.1, 0.7, 0.3, 0.2]])
  v_neg = jnp.array([[0.3, 0.3, 0.2, 0.3, 0.2]])
  # contributions 0.5 * (v - v_neg) = [.30, -.10, .25, 0, 0], margin .45:
  # swap d0 -> .15 > 0; then d2 -> -.10 <= 0: flipped after 2 swaps.
  u = cf.greedy_swap(x, v, v_neg)
  np.testing.assert_array_equal(u, [[1, 0, 1, 0, 0]])
  v_cf = cf.counterfactual(v, v_neg, u)
  assert float((x * v_cf).sum()) <= float((x * v_neg).sum()) < float((x * v).sum())
  # Already wrong (margin <= 0): nothing to swap.
  np.testing.assert_array_equal(cf.greedy_swap(x, v_neg, v), np.zeros((1, 5)))


def test_greedy_swap_is_minimal_by_brute_force():
  rng = np.random.default_rng(0)
  d = 7
  for trial in range(40):
    x, v, w = (rng.normal(size=d) for _ in range(3))
    same = rng.random(d) < 0.3
    w = np.where(same, v, w)                                               # v == v_neg there
    u = np.asarray(cf.greedy_swap(*(jnp.asarray(a[None], jnp.float32) for a in (x, v, w))))[0]
    assert np.all(u[same] == 0) and set(np.unique(u)) <= {0.0, 1.0}
    margin = lambda mask: float(np.sum((1 - mask) * x * (v - w)))      # noqa: E731
    if margin(np.zeros(d)) <= 0:
      assert u.sum() == 0
      continue
    flips = [k for k in range(d + 1) for s in itertools.combinations(range(d), k)
             if margin(np.isin(np.arange(d), s).astype(float)) <= 1e-6]
    if flips:
      assert margin(u) <= 1e-6, trial
      assert u.sum() == min(flips), trial                                   # fewest swaps
    else:
      np.testing.assert_array_equal(u, (x * (v - w) > 0).astype(float))


def test_contrastive_real_vs_counterfactual_formula():
  x = jnp.array([[1.0, 0.0], [0.6, 0.8]])
  v = jnp.array([[2.0, 0.0], [0.0, 1.0]])
  v_cf = jnp.array([[0.0, 3.0], [0.6, 0.8]])
  got = cf.contrastive_real_vs_counterfactual(x, v, v_cf, 10.0)
  real, fake = np.array([1.0, 0.8]), np.array([0.0, 1.0])
  want = -np.log(np.exp(10 * real) / (np.exp(10 * real) + np.exp(10 * fake)))
  np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)


@pytest.fixture(scope="module")
def pretrained(tmp_path_factory):
  workdir = tmp_path_factory.mktemp("clip_smoke_pl")
  trainer.train(_quick(encoder_pretrain.get_config("smoke"), 2),
                tasks.get("contrastive")(encoder_pretrain.get_config("smoke")), str(workdir))
  return workdir


def test_cpl_smoke_trains_only_the_prompt(pretrained, tmp_path):
  config = _quick(cpl_config.get_config("smoke,method=cpl"), 3)
  config.init_from = os.path.join(pretrained, "checkpoints")
  task = tasks.get(config.task)(config)
  summary = trainer.train(config, task, str(tmp_path))
  assert summary["origin"] == "init_from"
  m = summary["last_metrics"]
  for k in ("train/ce", "train/cf_contrastive", "train/u_l1"):
    assert np.isfinite(m[k]), k
  assert 0.0 <= m["train/u_l1"] <= 1.0
  trainable, total = task.param_counts()
  # ctx [1, 32] + meta-net 32 -> 2 -> 32 (E = 32, hidden E // 16).
  assert trainable == 32 + (32 * 2 + 2) + (2 * 32 + 32) == summary["trainable_params"]
  ev = summary["evals"][-1]
  for s in ("base", "new"):
    assert 0.0 <= ev[f"eval/{s}_accuracy"] <= 1.0 and ev[f"eval/{s}_examples"] > 0
  np.testing.assert_allclose(ev["eval/harmonic_mean"], pl.harmonic_mean(
      ev["eval/base_accuracy"], ev["eval/new_accuracy"]))
  with open(os.path.join(tmp_path, "eval", "prompt_learning_000003.json")) as f:
    assert json.load(f)["eval/trainable_params"] == trainable
  before, after = _flat(_ckpt_params(pretrained)), _flat(_ckpt_params(tmp_path))
  changed = {k for k in after if k not in before or not np.array_equal(after[k], before[k])}
  assert changed and all(k.startswith("['prompt']") for k in changed)
  assert {k for k in after if k.startswith("['prompt']")} == changed        # every prompt leaf


@pytest.mark.parametrize("method", ["coop", "cocoop"])
def test_prompt_methods_jitted_steps_move_only_the_prompt(coop, method):
  task = pl.PromptLearningTask(cpl_config.get_config(f"smoke,method={method}"))
  params = nn.meta.unbox(jax.jit(task.init)(jax.random.key(0)))
  batch = next(task.make_iterator("train", 4, 0, 0, 1))
  grad_fn = jax.jit(jax.grad(lambda p: task.loss(p, batch, jax.random.key(0))[0]))
  g = _flat(grad_fn(params))
  mask = _flat(task.mask)
  assert all(np.abs(g[k]).max() == 0 for k in g if not mask[k])
  assert np.abs(g["['prompt']['ctx']"]).max() > 0
  if method == "cocoop":    # the bias adds to every ctx vector (ReLU units may be dead)
    assert np.abs(g["['prompt']['linear2']['bias']"]).max() > 0
  assert any("linear1" in k for k in mask if mask[k]) == (method == "cocoop")


def test_cpl_sharded_loss_equals_unsharded():
  """The CPL loss (CoCoOp context, counterfactual solver, contrastive term) and its gradient on a
  (4, 2) data x tensor mesh equal the single-device values."""
  from mfm_jax.engine import mesh as mesh_lib   # pylint: disable=g-import-not-at-top
  task = pl.PromptLearningTask(cpl_config.get_config("smoke,method=cpl"))
  boxed = jax.jit(task.init)(jax.random.key(0))
  rng = np.random.default_rng(0)
  params = jax.tree.map(lambda a: (np.asarray(a) + rng.normal(0, 0.05, a.shape)).astype(a.dtype),
                        nn.meta.unbox(boxed))
  batch = next(task.make_iterator("train", 8, 0, 0, 1))
  loss_grad = jax.value_and_grad(lambda p, b: task.loss(p, b, jax.random.key(1))[0])
  ref_loss, ref_grad = jax.jit(loss_grad)(params, batch)
  rules = mesh_lib.DEFAULT_RULES
  mesh = mesh_lib.make_mesh({"data": 4, "tensor": 2})
  with jax.set_mesh(mesh), nn.logical_axis_rules(rules):
    p_sh = nn.logical_to_mesh_sharding(nn.get_partition_spec(boxed), mesh, rules)
    b = mesh_lib.global_batch(batch, mesh, rules)
    loss, grad = jax.jit(loss_grad)(jax.device_put(params, p_sh), b)
  assert len(jax.tree.leaves(b)[0].sharding.device_set) == 8
  np.testing.assert_allclose(loss, ref_loss, rtol=1e-5)
  jax.tree.map(lambda x, y: np.testing.assert_allclose(x, y, rtol=1e-4, atol=1e-6),
               grad, ref_grad)
  assert np.abs(_flat(ref_grad)["['prompt']['ctx']"]).max() > 0
