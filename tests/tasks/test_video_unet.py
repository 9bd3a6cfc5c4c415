"""video_diffusion with the 3-D U-Net backbone (``model.backbone="unet"``): the config builds a
U-Net conditioned on the same text tokens, its FLOPs follow ``unet3d.flops_per_example``, the loss
is the same on a data x fsdp x tensor mesh as on one device, and the smoke config trains and
evaluates (CFG sampling, trajectory error) through the engine on that mesh."""
import functools
import importlib.util
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import linen as nn

from mfm_jax import tasks
from mfm_jax.engine import mesh as mesh_lib
from mfm_jax.engine import trainer
from mfm_jax.models import unet3d

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
FAST = {"xla_backend_optimization_level": 0, "xla_llvm_disable_expensive_passes": True}
jit = functools.partial(jax.jit, compiler_options=FAST)


def _config(arg="smoke,unet"):
  spec = importlib.util.spec_from_file_location("vg", os.path.join(ROOT, "configs",
                                                                   "video_gen.py"))
  mod = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(mod)
  c = mod.get_config(arg)
  c.diffusion.num_inference_steps = 2
  return c


def test_unet_backbone_config_params_and_flops():
  c = _config()
  task = tasks.get(c.task)(c)
  assert isinstance(task.unet, unet3d.UNet3D) and task.unet.out_channels == 3
  assert task.unet_args["block_out_channels"] == (8, 16)
  abstract = nn.meta.unbox(jax.eval_shape(task.init, jax.random.key(0)))
  assert set(abstract) == {"text", "unet"}
  # cross-attention keys / values read the text encoder's width
  assert abstract["unet"]["down_1_attn_0"]["block_0"]["attn2"]["key"]["kernel"].shape[0] == \
      c.model.text["width"]
  full = _config("unet")   # the pixel preset: FLOP-matched to the default DiT, same text tower
  ftask = tasks.get(full.task)(full)
  t = full.model.text
  text = t["depth"] * (24 * 80 * t["width"] ** 2 + 4 * 80 * 80 * t["width"])
  want = unet3d.flops_per_example(video_shape=(4, 32, 32, 3), text_len=80, text_dim=128,
                                  **ftask.unet_args) + text
  assert ftask.flops_per_example() == pytest.approx(want)
  dit = tasks.get(full.task)(_config("")).flops_per_example()
  assert 0.95 < want / dit < 1.1
  with pytest.raises(ValueError, match="model.backbone"):
    c2 = _config()
    c2.model.backbone = "vit"
    tasks.get(c2.task)(c2)
  with pytest.raises(ValueError, match="needs model.backbone='dit'"):
    jax.eval_shape(lambda p: task.denoiser(p, jnp.zeros((1, 80), jnp.int32),
                                           jnp.ones((1, 80), bool),
                                           text_values=jnp.zeros((1, 1, 80, 32))), abstract)


def test_unet_loss_sharded_equals_unsharded():
  """The loss (text encoder + U-Net + flow objective, object-weighted) on a data=2 x fsdp=2 x
  tensor=2 mesh with the logical rules equals the single-device value."""
  c = _config()
  task = tasks.get(c.task)(c)
  batch = {k: jnp.asarray(v) for k, v in next(task.make_iterator("train", 8, 0, 0, 1)).items()}
  assert "loss_weight" in batch
  params = nn.meta.unbox(jit(task.init)(jax.random.key(0)))
  loss_fn = lambda p, b: task.loss(p, b, jax.random.key(3))[0]  # noqa: E731
  want = float(jit(loss_fn)(params, batch))
  mesh = mesh_lib.make_mesh({"data": 2, "fsdp": 2, "tensor": 2})
  rules = mesh_lib.DEFAULT_RULES
  with jax.set_mesh(mesh), nn.logical_axis_rules(rules):
    spec = nn.get_partition_spec(jax.eval_shape(task.init, jax.random.key(0)))
    shard = nn.logical_to_mesh_sharding(spec, mesh, rules)
    sharded = jax.tree.map(jax.device_put, params, nn.meta.unbox(shard))
    assert any(len(a.sharding.device_set) > 1 and not a.sharding.is_fully_replicated
               for a in jax.tree.leaves(sharded))
    gbatch = mesh_lib.global_batch(jax.tree.map(np.asarray, batch), mesh, rules)
    got = float(jit(loss_fn)(sharded, gbatch))
  assert np.isfinite(want) and got == pytest.approx(want, rel=1e-4)


@pytest.mark.slow
def test_unet_smoke_trains_and_evaluates_on_a_mesh(tmp_path):
  c = _config()
  c.mesh.axes = dict(data=2, fsdp=2, context=1, tensor=2)
  c.total_steps, c.eval_every, c.checkpoint.every, c.eval.num_videos = 3, 3, 3, 2
  task = tasks.get(c.task)(c)
  summary = trainer.train(c, task, str(tmp_path))
  assert summary["final_step"] == 3 and np.isfinite(summary["last_metrics"]["train/loss"])
  ev = summary["evals"][-1]
  for key in ("eval/diffusion_loss", "eval/text_gain", "eval/trajectory_error",
              "eval/detection_rate"):
    assert np.isfinite(ev[key]), key
  assert os.path.getsize(os.path.join(str(tmp_path), "samples", "step_000003.gif")) > 0
