"""Toy regression: the engine's smallest end-to-end run (used by the engine tests).

  python -m mfm_jax.train --config configs/toy.py --workdir /tmp/toy
"""
from mfm_jax.engine.config import base_config, parse_arg


def get_config(arg=None):
  a = parse_arg(arg, steps=40, batch=16)
  c = base_config()
  c.task = "toy_regression"
  c.total_steps = a.steps
  c.batch_size = a.batch
  c.log_every = 5
  c.eval_every = 20
  c.eval_batches = 2
  c.checkpoint.every = 10
  c.optimizer.lr = 3e-3
  c.optimizer.warmup_steps = 5
  c.model.dim, c.model.hidden, c.model.out = 16, 64, 4
  c.data.num_examples = 512
  c.data.nan_index = -1               # >= 0 poisons one record (tests)
  c.loss_scale = 1.0
  return c


def get_sweep(h):
  """Learning rate x hidden width, 4 runs of seconds each (``tools/sweep.py``)::

    python tools/sweep.py --config configs/toy.py --root /tmp/toy_sweep --run local --parallel 2
    python tools/sweep.py --collect /tmp/toy_sweep --metric eval/mse_host --x optimizer.lr
  """
  return h.product([h.sweep("config.optimizer.lr", [3e-3, 1e-2]),
                    h.sweep("config.model.hidden", [32, 64])])
