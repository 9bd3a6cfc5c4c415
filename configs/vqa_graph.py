"""Multiple-choice video QA on world questions (MMWorld schema) with the Multimodal Graph
Transformer (graph adjacency prior on the attention logits, learned per-head gates).

Default: world_qa/full (5000 train / 256 validation clips: 19,350 / 986 questions; built on
first use, about 10-18 minutes on one core), 8 frames of 32 x 32 in (2, 8, 8) tubelets, a
4-block width-64 single-stream transformer over 142 tokens, 400 steps of 32; trains in about
5-8 minutes on 2 (shared) CPU cores and reports accuracy per question type next to the random
and answer-prior baselines (``<workdir>/vqa/step_000400.txt``).

  python -m mfm_jax.train --config configs/vqa_graph.py --workdir /tmp/vqa_graph
  python -m mfm_jax.train --config configs/vqa_graph.py:plain --workdir /tmp/vqa_plain  # no graph
  python -m mfm_jax.train --config configs/vqa_graph.py:smoke --workdir /tmp/smoke      # seconds
  python -m mfm_jax.train --config configs/vqa_graph.py:world=small,steps=300 --workdir /tmp/v

Arg words (comma-separated): ``smoke``; ``plain`` (model.graph=False); ``world=smoke|small|full``
(world_qa builder config); ``steps=N``, ``batch=N``, ``width=N``, ``depth=N``.
"""
import ml_collections

from mfm_jax.data import world_qa_pipeline
from mfm_jax.engine.config import base_config, parse_arg


def get_config(arg=None):
  a = parse_arg(arg, smoke=False, plain=False, world="full", steps=0, batch=0, width=0, depth=0)
  c = base_config()
  c.task = "vqa"
  c.seed = 0
  c.total_steps = 400
  c.batch_size = 32
  c.log_every = 50
  c.eval_batches = 8                      # eval/ce and eval/accuracy on 8 validation batches
  c.checkpoint.every = 400
  c.nonfinite_policy = "stop"

  c.optimizer.name = "adamw"
  c.optimizer.lr = 1e-3
  c.optimizer.warmup_steps = 50
  c.optimizer.schedule = "cosine"
  c.optimizer.end_lr_factor = 0.1
  c.optimizer.weight_decay = 0.05
  c.optimizer.clip_norm = 1.0

  c.data = world_qa_pipeline.default_data_config()
  c.data.builder_config = a.world

  c.model.graph = not a.plain             # False: the same transformer without the prior
  c.model.gate_init = 0.0                 # gates start at 0: the plain transformer at init
  c.model.gate_scale = 10.0               # bias = gate_scale * gate * A: the gate moves 10x faster
  c.model.width = 64
  c.model.depth = 4
  c.model.num_heads = 4
  c.model.mlp_dim = 256
  c.model.remat_policy = "none"
  c.model.dtype = "float32"

  c.eval = ml_collections.ConfigDict(dict(
      per_type=True, split="validation", max_questions=0))   # 0: every question

  if a.smoke:
    c.total_steps, c.batch_size, c.log_every = 4, 8, 2
    c.eval_batches, c.checkpoint.every = 1, 2
    c.optimizer.warmup_steps = 2
    c.data.builder_config = "smoke"
    c.data.num_frames, c.data.resolution, c.data.tubelet = 4, 16, (2, 8, 8)
    c.model.width, c.model.depth, c.model.num_heads, c.model.mlp_dim = 32, 2, 2, 64
    c.eval.max_questions = 16
  if a.steps:
    c.total_steps = a.steps
  if a.batch:
    c.batch_size = a.batch
  if a.width:
    c.model.width = a.width
  if a.depth:
    c.model.depth = a.depth
  c.eval_every = c.get_ref("total_steps")   # evaluate once, at the end (follows overrides)
  return c
