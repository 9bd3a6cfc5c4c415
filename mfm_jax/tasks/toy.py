"""A tiny regression task: the smallest complete Task, used to test the engine and as a template.

Data: ``x ~ N(0, 1)^D`` per example index, ``y = sin(x @ w*)``, from a grain ``MapDataset``.
Model: a 2-layer MLP with logical axis names. Config: ``configs/toy.py``.
"""
from __future__ import annotations

from typing import Any

import flax.linen as nn
import grain
import jax
import jax.numpy as jnp
import numpy as np

from mfm_jax.engine.task import Task


class Mlp(nn.Module):
  hidden: int
  out: int

  @nn.compact
  def __call__(self, x):  # x: [B, D] -> [B, out]
    dense = lambda n, names, name: nn.Dense(
        n, name=name, kernel_init=nn.with_logical_partitioning(nn.initializers.lecun_normal(), names),
        bias_init=nn.with_logical_partitioning(nn.initializers.zeros, names[1:]))
    h = nn.gelu(dense(self.hidden, ("embed", "mlp"), "fc1")(x))
    h = nn.with_logical_constraint(h, ("batch", "mlp"))
    return dense(self.out, ("mlp", "embed"), "fc2")(h)


def _example(index: int, dim: int, out: int, seed: int, nan_index: int = -1
             ) -> dict[str, np.ndarray]:
  w = np.random.default_rng(seed).standard_normal((dim, out)).astype(np.float32) / np.sqrt(dim)
  x = np.random.default_rng([seed, index]).standard_normal(dim).astype(np.float32)
  if index == nan_index:  # a poisoned record, for testing the non-finite policies
    x[0] = np.nan
  return {"x": x, "y": np.sin(x @ w).astype(np.float32)}


def batched_stream(ds: grain.MapDataset, batch_size: int, shard_index: int, shard_count: int,
                   seed: int, train: bool) -> grain.DatasetIterator:
  """Global order -> global batches split by process: process i gets rows [i*b, (i+1)*b) of
  every global batch, so the union over processes equals a one-process run's global batch."""
  if train:
    ds = ds.shuffle(seed=seed).repeat(None)
  ds = ds.batch(batch_size, drop_remainder=train)[shard_index::shard_count]
  return iter(ds.to_iter_dataset())


class ToyRegressionTask(Task):

  def _model(self):
    return Mlp(self.config.model.hidden, self.config.model.out)

  def init(self, rng):
    return self._model().init(rng, jnp.zeros((1, self.config.model.dim)))["params"]

  def loss(self, params, batch, rng):
    del rng
    pred = self._model().apply({"params": params}, batch["x"])
    loss = jnp.mean((pred - batch["y"]) ** 2) * self.config.get("loss_scale", 1.0)
    return loss, {"train/mse": loss}

  def flops_per_example(self):
    m = self.config.model
    return 2.0 * (m.dim * m.hidden + m.hidden * m.out)

  def make_iterator(self, split, batch_size, seed, shard_index, shard_count):
    m, n = self.config.model, self.config.data.get("num_examples", 1024)
    offset = 0 if split == "train" else 10_000_000
    nan_index = self.config.data.get("nan_index", -1)
    ds = grain.MapDataset.range(n).map(
        lambda i: _example(i + offset, m.dim, m.out, seed, nan_index))
    return batched_stream(ds, batch_size, shard_index, shard_count, seed, split == "train")

  def evaluate(self, params, step, workdir) -> dict[str, Any]:
    del workdir
    it = self.make_iterator("validation", 64, self.config.seed, 0, 1)
    b = next(it)
    pred = self._model().apply({"params": params}, jnp.asarray(b["x"]))
    return {"eval/mse_host": float(jnp.mean((pred - b["y"]) ** 2)), "eval/step": step}
