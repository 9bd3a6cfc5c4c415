"""Multiple-choice video QA on world questions (MMWorld schema), plain or graph-augmented.

Video + question + 4 options -> choice: ``mfm_jax.models.graph.GraphQA`` scores every option in
one sequence (video tubelets | object nodes | question | options) and the loss is softmax
cross-entropy over the 4 option logits. ``config.model.graph`` switches the Multimodal Graph
Transformer's gated adjacency prior on (True) or off (False: the same transformer, same tokens,
object nodes included, no prior); with the same seed both start from the same weights and see
the same batches, so the two differ only by the graph.

Evaluation (``evaluate``): every validation question once, accuracy overall and per question
type (scored by ``mfm_jax.eval.mmworld.score``, the MMWorld harness), next to two baselines that
make the numbers readable: random choice (25 % in expectation: always 4 options) and the answer
prior (pick the option text that was most often right when offered in the train split; no
video). Process 0 writes ``vqa/step_<N>.json`` (predictions and scores) and a readable table.

Config: ``configs/vqa_graph.py``. Batch fields: ``mfm_jax.data.world_qa_pipeline``.
"""
from __future__ import annotations

import json
import os
from functools import partial
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax

from mfm_jax.data import world_qa_pipeline as qa_data
from mfm_jax.engine.task import Task
from mfm_jax.eval import mmworld
from mfm_jax.models import graph as graph_lib

DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16}
INPUTS = ("video", "obj_attr", "obj_mask", "question_ids", "question_mask", "option_ids",
          "option_mask", "adjacency")


def _slug(name: str) -> str:
  return name.lower().replace(" ", "_")


class VqaTask(Task):

  def __init__(self, config):
    super().__init__(config)
    d, m = config.data, config.model
    self.tokenizers = qa_data.make_tokenizers(d)
    vocab = -(-self.tokenizers[0].vocab_size // 128) * 128   # rows shard over `tensor`
    self.model = graph_lib.GraphQA(
        vocab_size=vocab, attr_sizes=qa_data.attr_sizes(), width=m.width, depth=m.depth,
        num_heads=m.num_heads, mlp_dim=m.mlp_dim or None, tubelet=tuple(d.tubelet),
        max_text_len=max(d.question_len, d.option_len), graph=m.graph, gate_init=m.gate_init,
        gate_scale=m.get("gate_scale", 1.0),
        remat_policy=m.remat_policy, dtype=DTYPES[m.dtype])
    src = qa_data.QuestionSource(d, "validation")
    self.num_objects = int(np.asarray(src.records[0]["obj_mask"]).shape[0])
    pt, ph, pw = d.tubelet
    self.num_video = (d.num_frames // pt) * (d.resolution // ph) * (d.resolution // pw)
    self.num_tokens = graph_lib.sequence_length(self.num_video, self.num_objects,
                                                d.question_len, qa_data.NUM_OPTIONS,
                                                d.option_len)

  # --- model --------------------------------------------------------------------------------
  def dummy_batch(self, batch_size: int = 1) -> dict[str, np.ndarray]:
    d, b, k, o = self.config.data, batch_size, self.num_objects, qa_data.NUM_OPTIONS
    return {"video": np.zeros((b, d.num_frames, d.resolution, d.resolution, 3), np.float32),
            "obj_attr": np.zeros((b, k, 4), np.int32), "obj_mask": np.ones((b, k), bool),
            "question_ids": np.zeros((b, d.question_len), np.int32),
            "question_mask": np.ones((b, d.question_len), bool),
            "option_ids": np.zeros((b, o, d.option_len), np.int32),
            "option_mask": np.ones((b, o, d.option_len), bool),
            "adjacency": np.zeros((b, len(qa_data.CHANNELS), self.num_tokens, self.num_tokens),
                                  bool)}

  def init(self, rng):
    batch = self.dummy_batch()
    return self.model.init(rng, *(jnp.asarray(batch[k]) for k in INPUTS))["params"]

  def logits(self, params, batch) -> jax.Array:
    """[B, 4] option logits."""
    return self.model.apply({"params": params}, *(batch[k] for k in INPUTS))

  def loss(self, params, batch, rng):
    del rng
    logits = self.logits(params, batch)
    ce = optax.softmax_cross_entropy_with_integer_labels(logits, batch["answer"]).mean()
    acc = (jnp.argmax(logits, -1) == batch["answer"]).astype(jnp.float32).mean()
    return ce, {"train/ce": ce, "train/accuracy": acc}

  def eval_step(self, params, batch, rng):
    _, m = self.loss(params, batch, rng)
    return {"eval/ce": m["train/ce"], "eval/accuracy": m["train/accuracy"]}

  def flops_per_example(self):
    m, pt, ph, pw = self.config.model, *self.config.data.tubelet
    return graph_lib.flops_per_example(self.num_tokens, m.width, m.depth,
                                       m.mlp_dim or 4 * m.width, pt * ph * pw * 3,
                                       self.num_video)

  # --- data ---------------------------------------------------------------------------------
  def make_iterator(self, split, batch_size, seed, shard_index, shard_count):
    return qa_data.make_iterator(self.config.data, split, batch_size, seed, shard_index,
                                 shard_count, self.tokenizers)

  # --- evaluation ---------------------------------------------------------------------------
  @partial(jax.jit, static_argnums=(0,))
  def predict(self, params, batch):
    return jnp.argmax(self.logits(params, batch), -1)

  def evaluate(self, params, step, workdir) -> dict[str, Any]:
    """Per-type accuracy over every question of ``config.eval.split`` (every process reads it
    all; the jitted forward is global), with the random and answer-prior baselines."""
    e, d = self.config.eval, self.config.data
    if not e.get("per_type", True):
      return {}
    questions = qa_data.question_index(d.builder_config, d.data_dir, e.split)
    limit = int(e.get("max_questions", 0)) or len(questions)
    preds: list[dict] = []
    for batch in qa_data.all_examples(d, e.split, self.config.batch_size, self.tokenizers):
      valid = batch.pop("valid")
      choice = np.asarray(jax.device_get(self.predict(params, {k: batch[k] for k in INPUTS})))
      for qi, c, ok in zip(batch["qindex"], choice, valid):
        if ok:
          preds.append({"id": questions[qi]["id"], "response": qa_data.LABELS[int(c)],
                        "correct": int(c) == questions[qi]["answer"]})
      if len(preds) >= limit:
        break
    asked = questions[:len(preds)]
    prior = qa_data.answer_prior(qa_data.question_index(d.builder_config, d.data_dir, "train"))
    prior_preds = [{"id": q["id"], "correct": qa_data.prior_choice(q, prior) == q["answer"]}
                   for q in asked]
    model_s, prior_s = mmworld.score(asked, preds), mmworld.score(asked, prior_preds)
    results = {"eval/acc": model_s["accuracy"], "eval/acc_prior": prior_s["accuracy"],
               "eval/acc_random": 25.0, "eval/questions": len(asked)}
    for t, s in model_s["per_type"].items():
      results[f"eval/acc_{_slug(t)}"] = s["accuracy"]
      results[f"eval/acc_prior_{_slug(t)}"] = prior_s["per_type"][t]["accuracy"]
    if jax.process_index() == 0:
      out = os.path.join(workdir, "vqa")
      os.makedirs(out, exist_ok=True)
      with open(os.path.join(out, f"step_{step:06d}.json"), "w") as f:
        json.dump({"step": step, "graph": bool(self.config.model.graph), "model": model_s,
                   "answer_prior": prior_s, "predictions": preds}, f, indent=1)
      table = format_table(model_s, prior_s, "graph" if self.config.model.graph else "plain")
      with open(os.path.join(out, f"step_{step:06d}.txt"), "w") as f:
        f.write(table + "\n")
      print(table, flush=True)
    return results


def format_table(model_s: dict, prior_s: dict, name: str) -> str:
  """A readable per-type accuracy table (%) of a model and the baselines."""
  rows = [f"{'question type':<28} {'n':>5} {name:>7} {'prior':>7} {'random':>7}"]
  for t, s in model_s["per_type"].items():
    rows.append(f"{t:<28} {s['n']:>5} {s['accuracy']:>7.1f} "
                f"{prior_s['per_type'][t]['accuracy']:>7.1f} {25.0:>7.1f}")
  rows.append(f"{'overall':<28} {model_s['n']:>5} {model_s['accuracy']:>7.1f} "
              f"{prior_s['accuracy']:>7.1f} {25.0:>7.1f}")
  return "\n".join(rows)
