"""4D fitting task (tasks/fit4d.py): smoke run + eval + resume, scaffold loss, optimizer rows."""
import importlib.util
import json
import os

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from mfm_jax import tasks
from mfm_jax.engine import trainer
from mfm_jax.tasks import fit4d

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def get_config(arg):
  spec = importlib.util.spec_from_file_location("world4d", os.path.join(ROOT, "configs",
                                                                        "world4d.py"))
  mod = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(mod)
  return mod.get_config(arg)


@pytest.mark.slow
def test_smoke_trains_evaluates_and_resumes(tmp_path):
  config = get_config("smoke")            # the motion scaffold (16 nodes, DQB)
  task = tasks.get(config.task)(config)
  assert isinstance(task, fit4d.Fit4DTask)
  assert task.config.model.deformation.kind == "scaffold"
  # Held out: view 3 and frames f % 4 == 2 of the 4 x 8 smoke clip.
  assert len(task.train_idx) == 3 * 6 and len(task.eval_idx) == 32 - 18
  workdir = str(tmp_path / "run")
  summary = trainer.train(config, task, workdir)
  assert summary["final_step"] == 6 and summary["origin"] == "init"
  m = summary["last_metrics"]
  assert np.isfinite(m["train/loss"]) and 0 < m["train/alive"] <= config.model.capacity
  assert "train/smoothness" in m
  ev = summary["evals"][-1]
  for key in ("psnr_novel_view", "ssim_novel_view", "psnr_novel_time", "psnr_train",
              "instance_acc_novel_view"):
    assert np.isfinite(ev[f"eval/{key}"]), key
  samples = os.listdir(os.path.join(workdir, "samples"))
  for name in ("fit4d_step_000006.json", "fit4d_step_000006.md", "turntable_step_000006.gif",
               "heldout_step_000006.gif"):
    assert name in samples, name
  report = json.load(open(os.path.join(workdir, "samples", "fit4d_step_000006.json")))
  views = {(r["category"], r["view"]) for r in report["per_view"]}
  assert ("novel_view", 3) in views and ("novel_time", 0) in views
  # Resume from the workdir: the Gaussian state (alive mask included) comes back as saved.
  config2 = get_config("smoke")
  with config2.unlocked():
    config2.total_steps = 8
  summary2 = trainer.train(config2, tasks.get(config2.task)(config2), workdir)
  assert summary2["origin"] == "workdir" and summary2["start_step"] == 6
  assert summary2["final_step"] == 8


def test_hexplane_loss_and_gradients():
  config = get_config("smoke,deform=hexplane")
  task = fit4d.Fit4DTask(config)
  params = nn.meta.unbox(task.init(jax.random.key(0)))
  assert params["deform"]["plane_8_xt"].shape == (4, 4, 8)   # C x time x space
  it = task.make_iterator("train", 2, 0, 0, 1)
  batch = {k: jnp.asarray(v) for k, v in next(it).items()}
  (loss, metrics), grads = jax.jit(jax.value_and_grad(task.loss, has_aux=True))(
      params, batch, jax.random.key(0))
  assert np.isfinite(float(loss)) and "train/motion" in metrics
  assert float(jnp.abs(grads["deform"]["head_xyz"]["kernel"]).sum()) > 0   # zero-init heads
  assert float(jnp.abs(grads["gaussians"]["means"]).sum()) > 0
  mask = task.trainable_mask(params)
  assert not any(jax.tree.leaves(mask["stats"])) and all(jax.tree.leaves(mask["gaussians"]))


def test_inherit_rows_copies_optimizer_moments():
  params = {"gaussians": {"means": jnp.zeros((4, 3))}, "stats": {"alive": jnp.zeros(4)},
            "deform": {"w": jnp.zeros((4, 2))}}
  labels = {"gaussians": {"means": "train"}, "stats": {"alive": "freeze"},
            "deform": {"w": "train"}}
  tx = optax.multi_transform({"train": optax.adam(1e-2), "freeze": optax.set_to_zero()}, labels)
  state = tx.init(params)
  grads = {"gaussians": {"means": jnp.arange(12.0).reshape(4, 3)}, "stats": {"alive": jnp.zeros(4)},
           "deform": {"w": jnp.ones((4, 2))}}
  _, state = tx.update(grads, state, params)
  new = fit4d.inherit_rows(tx, state, params, jnp.asarray([0, 1, 1, 3]))
  mu = new.inner_states["train"].inner_state[0].mu
  np.testing.assert_allclose(np.asarray(mu["gaussians"]["means"][2]),
                             np.asarray(mu["gaussians"]["means"][1]))
  old_mu = state.inner_states["train"].inner_state[0].mu
  np.testing.assert_array_equal(np.asarray(mu["deform"]["w"]), np.asarray(old_mu["deform"]["w"]))


def test_transforms_folder_task_setup(tmp_path):
  """A D-NeRF folder: train / test files, random init in the cameras' box, no depth / ids."""
  import sys  # pylint: disable=g-import-not-at-top
  sys.path.insert(0, os.path.join(ROOT, "tests", "data"))
  from test_captures import write_folder  # pylint: disable=g-import-not-at-top
  from mfm_jax.render import cameras  # pylint: disable=g-import-not-at-top
  eyes = [(3.0, 0.0, 1.0), (0.0, 3.0, 1.0), (-3.0, 0.0, 1.0), (0.0, -3.0, 1.0)]
  w2cs = [np.asarray(cameras.look_at(jnp.asarray(e), jnp.zeros(3)), np.float64) for e in eyes]
  write_folder(str(tmp_path), w2cs, [0.0, 0.3, 0.6, 1.0], name="transforms_train.json")
  write_folder(str(tmp_path), w2cs[:2], [0.1, 0.9], name="transforms_test.json")
  config = get_config(f"smoke,folder={tmp_path}")
  task = fit4d.Fit4DTask(config)
  assert not task.has_depth and not task.has_instance and task.render_kw["background"] == (1, 1, 1)
  assert list(task.train_idx) == [0, 1, 2, 3] and len(task.eval_set()[1]) == 2
  params = nn.meta.unbox(jax.eval_shape(task.init, jax.random.key(0)))
  assert params["gaussians"]["means"].shape == (config.model.capacity, 3)
  assert np.abs(task.points).max() < 3.0      # inside the box around the look-at point
  ex = next(task.make_iterator("train", 2, 0, 0, 1))
  assert ex["image"].shape == (2, 8, 12, 3) and "depth" not in ex and "instance" not in ex
