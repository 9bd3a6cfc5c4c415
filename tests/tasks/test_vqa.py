"""The vqa task on world_qa/smoke: a few jitted steps and the per-type evaluation through the
engine, plain vs graph parameters, and the loss on a (data 4, tensor 2) mesh == one device."""
import json
import os

import flax.linen as nn
import jax
import numpy as np

from configs import vqa_graph
from mfm_jax import tasks
from mfm_jax.data import world_qa_pipeline as qa
from mfm_jax.engine import mesh as mesh_lib
from mfm_jax.engine import trainer


def _config(arg="smoke"):
  c = vqa_graph.get_config(arg)
  c.checkpoint.async_save = False
  return c


def test_smoke_config_trains_and_evaluates(tmp_path):
  c = _config()
  summary = trainer.train(c, tasks.get(c.task)(c), str(tmp_path))
  assert summary["final_step"] == c.total_steps == 4
  ev = summary["evals"][-1]
  assert ev["eval/questions"] == c.eval.max_questions
  assert ev["eval/acc_random"] == 25.0 and 0 <= ev["eval/acc"] <= 100
  assert np.isfinite(ev["eval/ce"]) and 0 <= ev["eval/accuracy"] <= 1
  with open(tmp_path / "vqa" / "step_000004.json") as f:
    report = json.load(f)
  assert report["graph"] is True and len(report["predictions"]) == c.eval.max_questions
  assert set(report["model"]["per_type"]) <= set(qa.TYPES)
  for t, s in report["model"]["per_type"].items():
    assert ev[f"eval/acc_{t.lower().replace(' ', '_')}"] == s["accuracy"]
  assert "overall" in (tmp_path / "vqa" / "step_000004.txt").read_text()


def test_plain_has_no_gates_and_graph_starts_plain():
  graph_task = tasks.get("vqa")(_config())
  plain_task = tasks.get("vqa")(_config("smoke,plain"))
  gp = nn.meta.unbox(jax.jit(graph_task.init)(jax.random.key(0)))
  pp = nn.meta.unbox(jax.jit(plain_task.init)(jax.random.key(0)))
  gates = [k for k in gp["encoder"] if k.startswith("gate_")]
  assert len(gates) == graph_task.config.model.depth and not any(
      k.startswith("gate_") for k in pp["encoder"])
  batch = next(graph_task.make_iterator("train", 8, 0, 0, 1))
  shared = {**gp, "encoder": {k: v for k, v in gp["encoder"].items() if k not in gates}}
  # same seed -> the same initial weights: the two runs differ only by the gates
  assert jax.tree.structure(shared) == jax.tree.structure(pp)
  assert all(np.array_equal(x, y) for x, y in zip(jax.tree.leaves(shared), jax.tree.leaves(pp)))
  np.testing.assert_allclose(jax.jit(graph_task.logits)(gp, batch),
                             jax.jit(plain_task.logits)(shared, batch), rtol=1e-6, atol=1e-6)


def test_sharded_loss_equals_unsharded():
  c = _config()
  task = tasks.get(c.task)(c)
  rules = mesh_lib.DEFAULT_RULES
  params = jax.jit(task.init)(jax.random.key(1))
  # non-zero gates, so the graph prior takes part in the comparison
  params = jax.tree.map(lambda x: x, params)
  gate = params["encoder"]["gate_0"]["gate"]
  params["encoder"]["gate_0"]["gate"] = gate.replace_boxed(
      np.full((len(qa.CHANNELS), c.model.num_heads), 0.7, np.float32))
  local = next(task.make_iterator("train", 8, 0, 0, 1))
  ref = jax.jit(task.loss)(nn.meta.unbox(params), local, jax.random.key(0))
  mesh = mesh_lib.make_mesh({"data": 4, "tensor": 2})
  p_sh = nn.logical_to_mesh_sharding(nn.get_partition_spec(params), mesh, rules)
  sharded = jax.device_put(nn.meta.unbox(params), p_sh)
  batch = mesh_lib.global_batch(local, mesh, rules)
  with jax.set_mesh(mesh), nn.logical_axis_rules(rules):
    out = jax.jit(task.loss)(sharded, batch, jax.random.key(0))
  assert len(batch["adjacency"].sharding.device_set) == 8
  assert float(ref[0]) > 0.5
  np.testing.assert_allclose(out[0], ref[0], rtol=1e-5, atol=1e-6)
  for k in ref[1]:
    np.testing.assert_allclose(out[1][k], ref[1][k], rtol=1e-5, atol=1e-6)


def test_config_args():
  c = vqa_graph.get_config("plain,world=small,steps=10,batch=16,width=64,depth=2")
  assert (c.model.graph, c.data.builder_config, c.total_steps, c.batch_size) == (
      False, "small", 10, 16)
  assert (c.model.width, c.model.depth) == (64, 2)
  assert vqa_graph.get_config().model.graph and os.path.basename(vqa_graph.__file__) == \
      "vqa_graph.py"
