"""Engine behaviour on the toy task: sharded == unsharded, checkpoints across meshes, corrupted
checkpoint fallback, non-finite policies, optimizer and schedule choices."""
import logging
import os
import shutil

import jax
import numpy as np
import pytest

from mfm_jax import tasks
from mfm_jax.engine import checkpoint as ckpt_lib
from mfm_jax.engine import mesh as mesh_lib
from mfm_jax.engine import optim
from mfm_jax.engine import state as state_lib
from mfm_jax.engine import trainer
from configs import toy


def _config(steps=4, **mesh_axes):
  c = toy.get_config(f"steps={steps},batch=16")
  c.checkpoint.every = 2
  c.checkpoint.async_save = False
  c.eval_every = 0
  c.log_every = 1
  if mesh_axes:
    c.mesh.axes = {**dict(data=1, fsdp=1, context=1, tensor=1), **mesh_axes}
  return c


def _run(config, workdir):
  return trainer.train(config, tasks.get(config.task)(config), str(workdir))


def _params(workdir, step=None):
  """Params of a checkpoint as host numpy, independent of the mesh it was written on."""
  mngr = ckpt_lib.Checkpointer(os.path.join(workdir, "checkpoints"), read_only=True)
  step = step or mngr.latest_step()
  path = os.path.join(workdir, "checkpoints", str(step))
  import orbax.checkpoint as ocp
  ckptr = ocp.PyTreeCheckpointer()
  meta = ckptr.metadata(os.path.join(path, "state")).item_metadata.tree
  args = jax.tree.map(lambda _: ocp.RestoreArgs(restore_type=np.ndarray), meta)
  return ckptr.restore(os.path.join(path, "state"), args=ocp.args.PyTreeRestore(restore_args=args))


def _video_config(steps=1, **mesh_axes):
  from configs import video_gen
  c = video_gen.get_config("smoke")
  c.total_steps, c.eval_every, c.log_every = steps, 0, 1
  c.checkpoint.every, c.checkpoint.async_save = 1, False
  c.diffusion.cond_dropout = 0.5    # exercise the dropout path too
  c.mesh.axes = {**dict(data=1, fsdp=1, context=1, tensor=1), **mesh_axes}
  return c


@pytest.mark.parametrize("make_config", [_config, _video_config], ids=["toy", "video_dit"])
def test_sharded_step_equals_unsharded(tmp_path, make_config):
  # (data=4, tensor=2): batch split over 4, heads / mlp split over 2 -> different reduction
  # order, so equality is up to float32 rounding of sums (rtol 1e-5, atol 1e-6 for params that
  # start at zero, like the DiT's adaLN-Zero gates).
  _run(make_config(steps=1, data=4, tensor=2), tmp_path / "sharded")
  c1 = make_config(steps=1, data=1)
  one = jax.devices()[:1]
  orig = mesh_lib.make_mesh
  try:
    mesh_lib.make_mesh = lambda axes, devices=None: orig(axes, one)
    _run(c1, tmp_path / "single")
  finally:
    mesh_lib.make_mesh = orig
  a, b = _params(tmp_path / "sharded"), _params(tmp_path / "single")
  assert int(a["step"]) == int(b["step"]) == 1
  jax.tree.map(lambda x, y: np.testing.assert_allclose(x, y, rtol=1e-5, atol=1e-6),
               a["params"], b["params"])
  # Guard: the step moved the params (a zero update would make the comparison vacuous).
  moved = [np.abs(x).max() for x in jax.tree.leaves(a["opt_state"]) if np.ndim(x) > 0]
  assert max(moved) > 0


def test_checkpoint_restores_on_another_mesh(tmp_path):
  config = _config(steps=2, data=8)
  _run(config, tmp_path)
  saved = _params(tmp_path)
  task = tasks.get(config.task)(config)
  mesh = mesh_lib.make_mesh({"data": 2, "tensor": 4})
  tx, _ = optim.make_optimizer(config.optimizer, config.total_steps)
  import flax.linen as nn
  with jax.set_mesh(mesh), nn.logical_axis_rules(mesh_lib.DEFAULT_RULES):
    target, _ = state_lib.abstract_state(task.init, tx, jax.random.key(0), mesh,
                                         mesh_lib.DEFAULT_RULES, ema=False)
    ck = ckpt_lib.Checkpointer(str(tmp_path / "checkpoints"), read_only=True)
    state, step = ck.restore(target)
  assert step == 2
  kernel = state.params["fc1"]["kernel"]
  assert kernel.sharding.mesh.shape["tensor"] == 4
  assert kernel.sharding.spec == jax.sharding.PartitionSpec("fsdp", "tensor")
  assert kernel.addressable_shards[0].data.shape == (16, 16)
  jax.tree.map(lambda x, y: np.testing.assert_array_equal(np.asarray(x), y),
               state.params, saved["params"])


def test_corrupted_latest_checkpoint_falls_back(tmp_path, caplog):
  config = _config(steps=4)
  _run(config, tmp_path)
  ck_dir = tmp_path / "checkpoints"
  assert sorted(int(p) for p in os.listdir(ck_dir) if p.isdigit()) == [2, 4]
  good = _params(tmp_path, 2)
  # Corrupt step 4: truncate every data file of its state item.
  for root, _, files in os.walk(ck_dir / "4" / "state"):
    for f in files:
      with open(os.path.join(root, f), "wb") as fh:
        fh.write(b"garbage")
  config.total_steps = 4
  with caplog.at_level(logging.WARNING):
    summary = _run(config, tmp_path)
  assert summary["start_step"] == 2  # resumed from the previous good step, then re-ran 3..4
  assert any("unreadable" in r.message and "/4" in r.message for r in caplog.records)
  assert good["params"] is not None


def test_nonfinite_skip_counts_and_keeps_params_finite(tmp_path):
  config = _config(steps=6)
  config.nonfinite_policy = "skip"
  config.data.num_examples = 32          # 2 batches per epoch: the poison comes back each epoch
  config.data.nan_index = 5
  summary = _run(config, tmp_path)
  # Count the poisoned batches independently, from the data stream itself.
  task = tasks.get(config.task)(config)
  it = task.make_iterator("train", 16, config.seed, 0, 1)
  poisoned = sum(bool(np.isnan(next(it)["x"]).any()) for _ in range(6))
  assert poisoned == 3
  assert summary["last_metrics"]["train/nonfinite_total"] == poisoned
  params = _params(tmp_path)["params"]
  assert all(np.isfinite(x).all() for x in jax.tree.leaves(params))


def test_nonfinite_stop_names_step_and_parameter(tmp_path):
  config = _config(steps=6)
  config.data.num_examples = 32
  config.data.nan_index = 5
  task = tasks.get(config.task)(config)
  it = task.make_iterator("train", 16, config.seed, 0, 1)
  first = next(i for i in range(1, 7) if np.isnan(next(it)["x"]).any())
  with pytest.raises(trainer.NonFiniteError, match=rf"step {first}:.*worst parameter \['fc1'\]"):
    _run(config, tmp_path)
  # Nothing non-finite was saved: every checkpoint on disk is finite.
  ck = tmp_path / "checkpoints"
  for s in [p for p in os.listdir(ck) if p.isdigit()]:
    assert all(np.isfinite(x).all() for x in jax.tree.leaves(_params(tmp_path, int(s))["params"]))


@pytest.mark.parametrize("name", ["adamw", "lion", "adafactor", "sgd"])
def test_optimizers_reduce_loss(tmp_path, name):
  config = _config(steps=30)
  config.checkpoint.every = 1000
  config.optimizer.name = name
  config.optimizer.lr = {"adamw": 3e-3, "lion": 3e-4, "adafactor": 1e-2, "sgd": 3e-2}[name]
  config.optimizer.ema_decay = 0.9 if name == "adamw" else 0.0
  summary = _run(config, tmp_path)
  first = [e for e in _read(tmp_path) if "train/loss" in e][0]["train/loss"]
  assert summary["last_metrics"]["train/loss"] < 0.9 * first


def _read(workdir):
  import json
  with open(os.path.join(workdir, "metrics.jsonl")) as f:
    return [json.loads(l) for l in f]


def test_schedule_warmup_then_cosine():
  c = optim.default_config()
  c.lr, c.warmup_steps, c.schedule = 1.0, 10, "cosine"
  s = optim.make_schedule(c, 110)
  assert float(s(0)) == 0.0 and abs(float(s(10)) - 1.0) < 1e-6
  assert abs(float(s(60)) - 0.5) < 1e-6 and float(s(110)) < 1e-6


def test_decay_mask_only_kernels():
  params = {"dense": {"kernel": np.zeros((2, 2)), "bias": np.zeros(2)}}
  assert optim.decay_mask("ndim>=2")(params) == {"dense": {"kernel": True, "bias": False}}


def test_trainable_mask_freezes_params():
  c = optim.default_config()
  params = {"a": np.ones(3, np.float32), "b": np.ones(3, np.float32)}
  tx, _ = optim.make_optimizer(c, 10, trainable_mask={"a": True, "b": False})
  grads = {"a": np.ones(3, np.float32), "b": np.ones(3, np.float32)}
  st = tx.init(params)
  for _ in range(3):
    upd, st = tx.update(grads, st, params)
  assert np.all(np.asarray(upd["b"]) == 0) and np.all(np.asarray(upd["a"]) != 0)



def test_init_from_takes_params_or_ema_params(tmp_path):
  src = _config(steps=4)
  src.optimizer.ema_decay = 0.5
  _run(src, tmp_path / "src")
  saved = _params(tmp_path / "src")
  assert max(float(np.abs(a - b).max()) for a, b in zip(
      jax.tree.leaves(saved["params"]), jax.tree.leaves(saved["ema_params"]))) > 1e-6
  abstract = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype), saved["params"])
  mesh = mesh_lib.make_mesh({"data": 8})
  shardings = jax.tree.map(lambda _: mesh_lib.replicated(mesh), abstract)
  for ema, key in ((False, "params"), (True, "ema_params")):
    got = ckpt_lib.load_params(str(tmp_path / "src" / "checkpoints"), abstract, shardings, ema=ema)
    jax.tree.map(lambda x, y: np.testing.assert_array_equal(np.asarray(x), y), got, saved[key])
  # The trainer passes config.init_from_ema through.
  c = _config(steps=4)
  c.init_from, c.init_from_ema = str(tmp_path / "src" / "checkpoints"), True
  c.optimizer.lr = 0.0
  _run(c, tmp_path / "dst")
  jax.tree.map(np.testing.assert_array_equal, _params(tmp_path / "dst")["params"],
               saved["ema_params"])
  plain = _config(steps=2)
  _run(plain, tmp_path / "plain")
  with pytest.raises(ValueError, match="holds no EMA params"):
    ckpt_lib.load_params(str(tmp_path / "plain" / "checkpoints"), abstract, shardings, ema=True)
