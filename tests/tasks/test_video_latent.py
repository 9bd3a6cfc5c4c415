"""video_diffusion in the latent space of a frozen autoencoder (``config.latent``): the
autoencoder loads from an ``autoencoder`` checkpoint, the scale is 1 / std of the train latents,
the train step encodes without touching the autoencoder, samples decode to pixels, and the smoke
config trains and evaluates end to end through the engine."""
import functools
import importlib.util
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import linen as nn

from mfm_jax import tasks
from mfm_jax.data import pipeline
from mfm_jax.engine import checkpoint as ckpt_lib
from mfm_jax.engine import trainer

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
FAST = {"xla_backend_optimization_level": 0, "xla_llvm_disable_expensive_passes": True}
jit = functools.partial(jax.jit, compiler_options=FAST)


def _config(name, arg):
  spec = importlib.util.spec_from_file_location(name, os.path.join(ROOT, "configs", f"{name}.py"))
  mod = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(mod)
  return mod.get_config(arg)


@pytest.fixture(scope="module")
def vae_run(tmp_path_factory):
  """An ``autoencoder`` checkpoint (random smoke-size params + the run config), as a run saves."""
  config = _config("vae", "smoke")
  task = tasks.get(config.task)(config)
  params = jax.tree.map(np.asarray, nn.meta.unbox(jit(task.init)(jax.random.key(5))))
  workdir = str(tmp_path_factory.mktemp("vae_run"))
  ckpt = ckpt_lib.Checkpointer(os.path.join(workdir, "checkpoints"), async_save=False)
  ckpt.save(4, params, config=config)
  ckpt.close()
  return workdir, task.model, params


def _latent_config(vae_dir, arg="smoke,latent"):
  c = _config("video_gen", f"{arg},vae={vae_dir}")
  c.latent.scale_examples = 8
  c.diffusion.num_inference_steps = 2
  return c


def test_latent_task_shapes_scale_and_inputs(vae_run):
  vae_dir, model, vparams = vae_run
  c = _latent_config(vae_dir)
  task = tasks.get(c.task)(c)
  assert task.video_shape == (4, 16, 16, 3) and task.model_shape == (4, 8, 8, 4)
  assert task.dit_args["out_channels"] == 4
  # scale = 1 / std of the posterior means of the first 8 train clips, recomputed here
  ex = pipeline.load_examples(c.data, "train", 8)
  mean, _ = model.apply({"params": vparams}, jnp.asarray(np.stack([e["video"] for e in ex])),
                        method=model.encode)
  assert task.vae.scaling_factor == pytest.approx(1 / np.std(np.asarray(mean, np.float64)),
                                                  rel=1e-4)
  params = nn.meta.unbox(jit(task.init)(jax.random.key(0)))
  assert set(params) == {"text", "dit", "vae"}
  for a, b in zip(jax.tree.leaves(params["vae"]), jax.tree.leaves(vparams)):
    np.testing.assert_array_equal(np.asarray(a), b)   # the loaded autoencoder, unchanged
  mask = task.trainable_mask(params)
  assert not any(jax.tree.leaves(mask["vae"])) and all(jax.tree.leaves(mask["dit"]))
  # inputs: scaled posterior mean (no rng) or a draw; the object weight pooled to the latent grid
  video = jnp.asarray(np.stack([e["video"] for e in ex[:2]]))
  weight = jnp.asarray(np.random.default_rng(0).uniform(1, 5, (2, 4, 16, 16, 1)), jnp.float32)
  model_input = jit(task.model_input)
  z, w = model_input(params, {"video": video, "loss_weight": weight})
  np.testing.assert_allclose(np.asarray(z), np.asarray(mean[:2]) * task.vae.scaling_factor,
                             rtol=1e-4, atol=1e-5)
  assert w.shape == (2, 4, 8, 8, 1)
  np.testing.assert_allclose(float(w[0, 1, 2, 3, 0]), float(weight[0, 1, 4:6, 6:8].mean()),
                             rtol=1e-6)
  z2, _ = model_input(params, {"video": video}, jax.random.key(1))
  assert 0 < float(jnp.abs(z2 - z).max())
  # no gradient reaches the autoencoder through the encoded batch
  batch = next(task.make_iterator("train", 2, 0, 0, 1))
  grads = jit(jax.grad(lambda p: task.loss(p, batch, jax.random.key(2))[0]))(params)
  assert all(float(jnp.abs(g).max()) == 0 for g in jax.tree.leaves(grads["vae"]))
  assert float(jnp.abs(grads["dit"]["final_proj"]["kernel"]).max()) > 0
  # samples start from latent noise and come back as pixel videos in [-1, 1]
  ids, tmask = task.tokenizer.encode(["a red cube"])
  vid = task.sample(params, jnp.asarray(ids), jnp.asarray(tmask),
                    jax.random.normal(jax.random.key(0), (1,) + task.model_shape))
  assert vid.shape == (1, 4, 16, 16, 3) and float(jnp.abs(vid).max()) <= 1.0


def test_latent_unet_backbone(vae_run):
  """``:latent,unet``: the U-Net sees the latents and predicts latent channels; the autoencoder
  gets no gradient; samples decode to pixels."""
  vae_dir, _, _ = vae_run
  c = _latent_config(vae_dir, "smoke,latent,unet")
  task = tasks.get(c.task)(c)
  assert task.model_shape == (4, 8, 8, 4) and task.unet.out_channels == 4
  params = nn.meta.unbox(jit(task.init)(jax.random.key(0)))
  assert set(params) == {"text", "unet", "vae"}
  batch = next(task.make_iterator("train", 2, 0, 0, 1))
  loss, grads = jit(jax.value_and_grad(lambda p: task.loss(p, batch, jax.random.key(2))[0]))(
      params)
  assert np.isfinite(float(loss))
  assert all(float(jnp.abs(g).max()) == 0 for g in jax.tree.leaves(grads["vae"]))
  assert max(float(jnp.abs(g).max()) for g in jax.tree.leaves(grads["unet"])) > 0
  ids, tmask = task.tokenizer.encode(["a red cube"])
  vid = task.sample(params, jnp.asarray(ids), jnp.asarray(tmask),
                    jax.random.normal(jax.random.key(0), (1,) + task.model_shape))
  assert vid.shape == (1, 4, 16, 16, 3)


@pytest.mark.slow
def test_latent_smoke_trains_and_evaluates(vae_run, tmp_path):
  """Through the engine: the optimizer's mask keeps the autoencoder fixed; evaluation samples
  latents, decodes them to pixel videos (the GIF) and scores the reconstructions' floor."""
  vae_dir, _, vparams = vae_run
  c = _latent_config(vae_dir)
  c.total_steps, c.eval_every, c.checkpoint.every, c.eval.num_videos = 3, 3, 3, 2
  task = tasks.get(c.task)(c)
  workdir = str(tmp_path / "run")
  summary = trainer.train(c, task, workdir)
  assert summary["final_step"] == 3 and np.isfinite(summary["last_metrics"]["train/loss"])
  ev = summary["evals"][-1]
  for key in ("eval/diffusion_loss", "eval/trajectory_error",
              "eval/trajectory_error_of_reconstructions", "eval/latent_scale_factor"):
    assert np.isfinite(ev[key]), key
  assert os.path.getsize(os.path.join(workdir, "samples", "step_000003.gif")) > 0
  _, state = ckpt_lib.read_latest_state(os.path.join(workdir, "checkpoints"))
  for a, b in zip(jax.tree.leaves(state["params"]["vae"]), jax.tree.leaves(vparams)):
    np.testing.assert_array_equal(a, b)   # frozen through the optimizer


def test_latent_config_errors(vae_run, tmp_path):
  c = _latent_config("")
  with pytest.raises(ValueError, match="exactly one of vae_workdir"):
    tasks.get(c.task)(c)
  c = _latent_config(vae_run[0])
  c.latent.posterior = "mode"
  with pytest.raises(ValueError, match="latent.posterior"):
    tasks.get(c.task)(c)
  c = _latent_config(str(tmp_path / "nothing"))
  with pytest.raises(FileNotFoundError):
    tasks.get(c.task)(c)
  c = _latent_config(vae_run[0])
  c.latent.scale_factor = 0.5
  assert tasks.get(c.task)(c).vae.scaling_factor == 0.5
  # a video whose frames do not divide by the autoencoder's factor fails early, naming it
  c.data.resolution = 15
  with pytest.raises(ValueError, match="does not divide"):
    tasks.get(c.task)(c)
