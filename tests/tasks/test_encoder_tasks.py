"""The encoder tasks end to end through ``engine.trainer.train`` on their smoke configs:
contrastive (image + CLIP loss, video + SigLIP) with retrieval eval; classify per method with
the trainable masks freezing exactly the frozen params; a contrastive checkpoint and an HF CLIP
(tiny random ``CLIPModel`` built offline, converted with ``--under clip``) restoring through
``config.init_from``; sharded == unsharded classify loss on a (4, 2) mesh."""
import os

import flax.linen as nn
import jax
import numpy as np
import pytest

from configs import encoder_pretrain, kadaptation
from mfm_jax import tasks
from mfm_jax.engine import checkpoint as ckpt_lib
from mfm_jax.engine import mesh as mesh_lib
from mfm_jax.engine import trainer
from mfm_jax.tasks import classify


def _quick(c, steps):
  c.total_steps = c.eval_every = c.checkpoint.every = steps
  c.checkpoint.async_save = False
  return c


def _run(config, workdir):
  return trainer.train(config, tasks.get(config.task)(config), str(workdir))


def _ckpt_params(workdir):
  return ckpt_lib.read_latest_state(os.path.join(workdir, "checkpoints"))[1]["params"]


def _flat(tree):
  return {jax.tree_util.keystr(k): np.asarray(v)
          for k, v in jax.tree_util.tree_leaves_with_path(tree)}


@pytest.fixture(scope="module")
def pretrained(tmp_path_factory):
  """A contrastive smoke run (2 steps): its workdir."""
  workdir = tmp_path_factory.mktemp("clip_smoke")
  summary = _run(_quick(encoder_pretrain.get_config("smoke"), 2), workdir)
  ev = summary["evals"][-1]
  for k in ("i2t_recall_at_1", "i2t_recall_at_5", "t2i_recall_at_1", "t2i_recall_at_5",
            "zeroshot_acc", "batch_contrastive_loss"):
    assert 0.0 <= ev[f"eval/{k}"] < 100.0, k
  assert ev["eval/i2t_recall_at_5"] >= ev["eval/i2t_recall_at_1"]
  assert np.isfinite(summary["last_metrics"]["train/contrastive_loss"])
  return workdir


def test_contrastive_smoke_runs_and_evaluates(pretrained):
  assert os.path.exists(os.path.join(pretrained, "eval", "retrieval_000002.json"))
  assert set(_ckpt_params(pretrained)) == {"clip"}


@pytest.mark.slow
def test_contrastive_video_siglip_smoke(tmp_path):
  summary = _run(_quick(encoder_pretrain.get_config("smoke,video,siglip"), 2), tmp_path)
  assert np.isfinite(summary["last_metrics"]["train/loss"])
  assert "eval/t2i_recall_at_1" in summary["evals"][-1]
  assert "logit_bias" in _ckpt_params(tmp_path)["clip"]


@pytest.mark.slow
@pytest.mark.parametrize("method", ["linear_probe", "full_ft", "lora", "kadaptation",
                                    "subspace"])
def test_classify_trains_exactly_the_trainable_params(pretrained, tmp_path, method):
  config = _quick(kadaptation.get_config(f"smoke,method={method}"), 3)
  config.optimizer.lr = 1e-2
  config.init_from = os.path.join(pretrained, "checkpoints")
  task = classify.ClassifyTask(config)
  summary = _run(config, tmp_path)
  assert summary["origin"] == "init_from"
  ev = summary["evals"][-1]
  assert 0.0 <= ev["eval/accuracy"] <= 1.0 and ev["eval/examples"] == 16
  trainable, total = task.param_counts()
  assert (summary["trainable_params"], summary["params"]) == (trainable, total)
  assert ev["eval/trainable_params"] == trainable < total
  before = _flat(_ckpt_params(pretrained))     # the pretrained CLIP (fresh leaves: not there)
  after = _flat(_ckpt_params(tmp_path))
  mask = _flat(task.mask)
  changed = {k for k in after if k in before and not np.array_equal(after[k], before[k])}
  frozen_clip = {k for k in before if not mask[k]}
  assert frozen_clip and not changed & frozen_clip               # frozen: bit for bit
  trainable_keys = {k for k, m in mask.items() if m}
  moved = {k for k in trainable_keys if k in before and k in changed}
  assert moved == (trainable_keys & set(before))                 # full_ft: every tower leaf
  # Fresh leaves (head, adapters, theta_d) all moved from where the run started them.
  init = _flat(nn.meta.unbox(jax.jit(task.init)(jax.random.split(jax.random.key(0))[0])))
  init.update({f"['head']{k}": v for k, v in _flat(jax.jit(task.zeroshot_head)(
      _ckpt_params(pretrained)["clip"])).items()})
  fresh = {k for k in trainable_keys if k not in before}
  assert fresh and all(not np.array_equal(after[k], init[k]) for k in fresh)
  if method in ("lora", "kadaptation"):
    assert any("peft_" in k for k in trainable_keys)
    assert sum(mask.values()) == len(trainable_keys)
  if method == "subspace":
    assert np.abs(after["['subspace']['theta_d']"]).max() > 0


def test_classify_smoke_zeroshot_head_from_prompts(tmp_path):
  config = _quick(kadaptation.get_config("smoke,method=zeroshot"), 2)
  task = classify.ClassifyTask(config)
  summary = _run(config, tmp_path)
  assert summary["trainable_params"] == 0
  params = _ckpt_params(tmp_path)
  head = jax.jit(task.zeroshot_head)(params["clip"])
  np.testing.assert_allclose(params["head"]["kernel"], head["kernel"], rtol=1e-5, atol=1e-6)
  norms = np.linalg.norm(params["head"]["kernel"], axis=0)
  np.testing.assert_allclose(norms, 1.0, rtol=1e-5)


def test_hf_clip_checkpoint_restores_into_classify(tmp_path):
  torch = pytest.importorskip("torch")
  transformers = pytest.importorskip("transformers")
  from tools import convert_checkpoint  # pylint: disable=g-import-not-at-top
  torch.manual_seed(0)
  hf_dir, out = str(tmp_path / "hf"), str(tmp_path / "converted")
  cfg = transformers.CLIPConfig(
      text_config=dict(vocab_size=320, hidden_size=32, intermediate_size=48, num_hidden_layers=2,
                       num_attention_heads=2, max_position_embeddings=96, eos_token_id=2,
                       bos_token_id=1, pad_token_id=0),
      vision_config=dict(hidden_size=32, intermediate_size=48, num_hidden_layers=2,
                         num_attention_heads=2, image_size=16, patch_size=8),
      projection_dim=16)
  transformers.CLIPModel(cfg).save_pretrained(hf_dir)
  written = convert_checkpoint.convert_hf_clip(hf_dir, out, under="clip")

  config = _quick(kadaptation.get_config("smoke,method=kadaptation"), 2)
  config.model.hf, config.init_from = hf_dir, out
  config.data.tokenizer, config.data.max_text_len = "bytes", 96
  config.peft.kadapt_n = 8
  config.optimizer.lr = 0.0                    # the checkpoint shows the restored state as is
  task = classify.ClassifyTask(config)
  summary = _run(config, tmp_path / "run")
  assert summary["origin"] == "init_from"
  params = _ckpt_params(tmp_path / "run")
  got, want = _flat(params["clip"]), _flat(written["clip"])
  assert set(want) < set(got) and all("peft_" in k for k in set(got) - set(want))
  for k, v in want.items():
    np.testing.assert_array_equal(got[k], v, err_msg=k)
  head = jax.jit(task.zeroshot_head)(jax.tree.map(np.asarray, params["clip"]))
  np.testing.assert_allclose(params["head"]["kernel"], head["kernel"], rtol=1e-5, atol=1e-6)
  random_init = nn.meta.unbox(jax.jit(task.init)(jax.random.key(0)))
  assert not np.allclose(random_init["head"]["kernel"], params["head"]["kernel"], atol=1e-3)


def test_classify_sharded_loss_equals_unsharded():
  config = kadaptation.get_config("smoke,method=kadaptation")
  config.batch_size = 8
  task = classify.ClassifyTask(config)
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
    p = jax.device_put(params, p_sh)
    b = mesh_lib.global_batch(batch, mesh, rules)
    loss, grad = jax.jit(loss_grad)(p, b)
  assert len(b["image"].sharding.device_set) == 8
  np.testing.assert_allclose(loss, ref_loss, rtol=1e-5)
  jax.tree.map(lambda x, y: np.testing.assert_allclose(x, y, rtol=1e-4, atol=1e-6),
               grad, ref_grad)
  assert max(float(np.abs(g).max()) for g in jax.tree.leaves(ref_grad)) > 0
