"""The Task interface: what the engine needs from an experiment family.

The engine never imports ``tasks/`` or ``models/``; it is handed a Task. A Task turns
``config.model`` into a model, owns the loss, the eval step, the data it reads and what a person
wants to look at after an evaluation (samples, GIFs, tables).

Shapes: a batch is a dict of arrays with a leading global batch axis ``B``.
"""
from __future__ import annotations

import abc
from typing import Any, Iterator, Mapping

import jax
import ml_collections

Metrics = Mapping[str, jax.Array]


class Task(abc.ABC):
  """Base class. Subclasses implement ``init``, ``loss`` and ``make_iterator``."""

  def __init__(self, config: ml_collections.ConfigDict):
    self.config = config

  # --- model --------------------------------------------------------------------------------
  @abc.abstractmethod
  def init(self, rng: jax.Array) -> Any:
    """Returns the params tree, leaves boxed with logical axis names (``nn.Partitioned``).

    Called under ``jax.eval_shape`` and under ``jax.jit`` with sharded outputs, so it must be pure.
    """

  @abc.abstractmethod
  def loss(self, params: Any, batch: Mapping[str, jax.Array], rng: jax.Array
           ) -> tuple[jax.Array, Metrics]:
    """Returns ``(scalar loss, metrics)``; metrics are scalars averaged over the global batch."""

  def eval_step(self, params: Any, batch: Mapping[str, jax.Array], rng: jax.Array) -> Metrics:
    """Scalar metrics of one validation batch (averaged over batches by the engine)."""
    _, metrics = self.loss(params, batch, rng)
    return metrics

  def trainable_mask(self, params: Any) -> Any | None:
    """A bool tree like ``params`` (False = frozen), or None when everything trains."""
    del params
    return None

  def init_from_fresh(self, params: Any) -> Any | None:
    """Bool tree like ``params``: leaves a ``config.init_from`` checkpoint may lack (a new head,
    adapters), which then keep their initial values. None: the checkpoint must have every leaf."""
    del params
    return None

  def after_init_from(self, params: Any) -> Any:
    """Params after a ``config.init_from`` load (pure; jitted by the engine), e.g. a classifier
    head recomputed from the loaded text tower. Default: unchanged."""
    return params

  def after_update(self, params: Any, opt_state: Any, grads: Any, step: jax.Array,
                   rng: jax.Array, tx: Any) -> tuple[Any, Any]:
    """``(params, opt_state)`` after each applied update, inside the jitted train step (pure,
    shapes unchanged), e.g. fixed-capacity densify / prune of a Gaussian scene. ``step`` is the
    new step count, ``grads`` the raw gradients of this step, ``tx`` the optimizer (for
    ``optax.tree_map_params`` over its moments). Default: unchanged (and not traced)."""
    del grads, step, rng, tx
    return params, opt_state

  def flops_per_example(self) -> float | None:
    """Analytic forward FLOPs of one example (the engine counts a train step as 3x)."""
    return None

  # --- data ---------------------------------------------------------------------------------
  @abc.abstractmethod
  def make_iterator(self, split: str, batch_size: int, seed: int, shard_index: int,
                    shard_count: int) -> Iterator[dict[str, Any]]:
    """A checkpointable (``get_state``/``set_state``) iterator of process-local numpy batches.

    ``batch_size`` is per process. Train iterators are infinite; others end after one pass.
    """

  # --- host-side evaluation -----------------------------------------------------------------
  def evaluate(self, params: Any, step: int, workdir: str) -> dict[str, Any]:
    """Expensive evaluation outside the train step (sampling, pictures). Returns JSON-able scalars.

    Called on every process (the jitted computations are global); only process 0 writes files.
    """
    del params, step, workdir
    return {}
