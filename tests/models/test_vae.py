"""KL autoencoder (models/vae.py) and its diffusers importer (convert/sd_vae.py).

Parity with diffusers' ``AutoencoderKL`` (PyTorch CPU) on tiny random configs built offline, every
parameter perturbed (GroupNorm affine and zero biases included): ``encode`` == ``latent_dist.mean``
/ ``logvar`` and ``decode`` == ``decode(z).sample`` within 1e-4 in float32, x2 / x4 with and without
mid attention and quant convs, odd input sizes. Video encode = per-frame encode; temporal x2 shapes
and its init; the importer's failures name the key; the ``autoencoder`` task's smoke config trains
jitted steps and evaluates."""
import functools
import importlib.util
import json
import os
import shutil

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
from diffusers import AutoencoderKL as TorchAutoencoderKL
from safetensors.numpy import load_file, save_file

from mfm_jax import tasks
from mfm_jax.convert import sd_vae
from mfm_jax.engine import trainer
from mfm_jax.models import vae
from mfm_jax.tasks import autoencoder

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

FAST = {"xla_backend_optimization_level": 0, "xla_llvm_disable_expensive_passes": True}
jit = functools.partial(jax.jit, compiler_options=FAST)

CONFIGS = {
    "x2": dict(block_out_channels=(32, 64), layers_per_block=1, latent_channels=4,
               norm_num_groups=8, sample_size=32, size=(16, 16)),
    "x4_no_attn_no_quant": dict(block_out_channels=(16, 16, 32), layers_per_block=2,
                                latent_channels=3, norm_num_groups=4, sample_size=32,
                                mid_block_add_attention=False, use_quant_conv=False,
                                use_post_quant_conv=False, scaling_factor=0.5,
                                shift_factor=0.1, size=(13, 20)),
}


def _save_hf(path, name, seed=0):
  """A tiny random diffusers AutoencoderKL with every parameter perturbed, saved to ``path``."""
  c = dict(CONFIGS[name])
  c.pop("size")
  n = len(c["block_out_channels"])
  torch.manual_seed(seed)
  model = TorchAutoencoderKL(down_block_types=("DownEncoderBlock2D",) * n,
                             up_block_types=("UpDecoderBlock2D",) * n, **c).eval()
  with torch.no_grad():
    for p in model.parameters():
      p.add_(0.1 * torch.randn_like(p))
  model.save_pretrained(path, safe_serialization=True)
  return model


@pytest.mark.parametrize("name", sorted(CONFIGS))
def test_parity_with_diffusers(name, tmp_path):
  hf = _save_hf(tmp_path, name)
  model, params = sd_vae.load(str(tmp_path))
  assert model.scaling_factor == pytest.approx(hf.config.scaling_factor)
  h, w = CONFIGS[name]["size"]
  x = np.random.default_rng(1).uniform(-1, 1, size=(2, 3, h, w)).astype(np.float32)
  with torch.no_grad():
    post = hf.encode(torch.from_numpy(x)).latent_dist
    ref_mean, ref_logvar = post.mean.numpy(), post.logvar.numpy()
    z = np.random.default_rng(2).normal(size=ref_mean.shape).astype(np.float32)
    ref_dec = hf.decode(torch.from_numpy(z)).sample.numpy()
  v = {"params": params}
  mean, logvar = jit(lambda v, x: model.apply(v, x, method=model.encode))(
      v, x.transpose(0, 2, 3, 1))
  dec = jit(lambda v, z: model.apply(v, z, method=model.decode))(v, z.transpose(0, 2, 3, 1))
  nchw = lambda a: np.asarray(a).transpose(0, 3, 1, 2)  # noqa: E731
  assert nchw(mean).shape == ref_mean.shape and nchw(dec).shape == ref_dec.shape
  errors = {"mean": np.abs(nchw(mean) - ref_mean).max(),
            "logvar": np.abs(nchw(logvar) - ref_logvar).max(),
            "decode": np.abs(nchw(dec) - ref_dec).max()}
  print(name, {k: f"{e:.1e}" for k, e in errors.items()})
  assert max(errors.values()) < 1e-4, errors
  assert np.abs(ref_dec).max() > 0.1 and np.std(ref_mean) > 0.1   # a non-trivial reference
  with torch.no_grad():
    ref_kl = post.kl().numpy()                                     # summed over C, H, W
  np.testing.assert_allclose(np.asarray(vae.kl(mean, logvar)).sum((1, 2, 3)), ref_kl, rtol=1e-4)
  # Scaled latents round trip the diffusers convention z * s (after the shift).
  lat = vae.encode_latents(model, params, jnp.asarray(x.transpose(0, 2, 3, 1))[:, None])
  s, sh = hf.config.scaling_factor, hf.config.shift_factor or 0.0
  np.testing.assert_allclose(nchw(lat[:, 0]), (ref_mean - sh) * s, atol=1e-4)


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
  path = str(tmp_path_factory.mktemp("sd_vae"))
  _save_hf(path, "x2")
  return path


def test_video_encode_is_per_frame_encode(saved):
  model, params = sd_vae.load(saved)
  video = jax.random.uniform(jax.random.key(0), (2, 3, 16, 16, 3), minval=-1, maxval=1)
  v = {"params": params}
  enc = jit(lambda v, x: model.apply(v, x, method=model.encode))
  mean, logvar = enc(v, video)
  assert mean.shape == (2, 3, 8, 8, 4) == vae.latent_shape(model, video.shape)
  for t in range(3):
    m_t, l_t = enc(v, video[:, t])
    np.testing.assert_allclose(mean[:, t], m_t, atol=1e-5)
    np.testing.assert_allclose(logvar[:, t], l_t, atol=1e-5)
  out = vae.decode_latents(model, params, vae.encode_latents(model, params, video))
  assert out.shape == video.shape


def test_temporal_x2_shapes_and_init(saved):
  model2d, params2d = sd_vae.load(saved)
  model, params = sd_vae.load(saved, temporal_downsample=True)
  assert model.temporal_factor == 2
  k = params["encoder"]["temporal_down"]["conv"]["kernel"]
  assert k.shape == (3, 64, 64)
  video = jax.random.uniform(jax.random.key(1), (2, 4, 16, 16, 3), minval=-1, maxval=1)
  mean, logvar = model.apply({"params": params}, video, method=model.encode)
  assert mean.shape == (2, 2, 8, 8, 4) == vae.latent_shape(model, video.shape)
  recon = model.apply({"params": params}, mean, method=model.decode)
  assert recon.shape == video.shape
  # At its init the temporal pair averages frames 2t, 2t+1 before the 2-D mid block: a video of
  # repeated frame pairs encodes as the 2-D model encodes one frame of each pair.
  pairs = jnp.repeat(video[:, ::2], 2, axis=1)
  m3, _ = model.apply({"params": params}, pairs, method=model.encode)
  m2, _ = model2d.apply({"params": params2d}, video[:, ::2], method=model2d.encode)
  np.testing.assert_allclose(m3, m2, atol=1e-4)
  # ... and decodes each latent frame to two equal frames, as the 2-D decoder does.
  d3 = model.apply({"params": params}, m2, method=model.decode)
  d2 = model2d.apply({"params": params2d}, m2, method=model2d.decode)
  np.testing.assert_allclose(d3, jnp.repeat(d2, 2, axis=1), atol=1e-4)
  with pytest.raises(ValueError, match="even frame count"):
    model.apply({"params": params}, video[:, :3], method=model.encode)
  # Params carry logical names, temporal kernels (None, conv_in, conv_out).
  boxed = model.init(jax.random.key(0), video)["params"]
  assert boxed["encoder"]["temporal_down"]["conv"]["kernel"].names == (None, "conv_in",
                                                                       "conv_out")
  assert boxed["encoder"]["conv_in"]["kernel"].names == (None, None, "conv_in", "conv_out")


def _copy(src, dst, state=None, config=None):
  os.makedirs(dst, exist_ok=True)
  shutil.copy(os.path.join(src, "config.json"), dst)
  if config is not None:
    with open(os.path.join(dst, "config.json"), "w") as f:
      json.dump(config, f)
  if state is not None:
    save_file(state, os.path.join(dst, sd_vae.WEIGHTS))
  return dst


def test_loader_errors_name_the_key(saved, tmp_path):
  state = load_file(os.path.join(saved, sd_vae.WEIGHTS))
  key = "encoder.mid_block.attentions.0.to_k.weight"
  missing = {k: v for k, v in state.items() if k != key}
  with pytest.raises(ValueError, match=rf"missing \['{key}'\]"):
    sd_vae.load(_copy(saved, str(tmp_path / "missing"), missing))
  extra = dict(state, **{"decoder.extra.weight": np.zeros(3, np.float32)})
  with pytest.raises(ValueError, match=r"unexpected \['decoder.extra.weight'\]"):
    sd_vae.load(_copy(saved, str(tmp_path / "extra"), extra))
  bad = dict(state)
  bad["decoder.up_blocks.1.resnets.0.conv1.weight"] = np.zeros((32, 64, 3, 1), np.float32)
  with pytest.raises(ValueError, match=r"decoder.up_blocks.1.resnets.0.conv1.weight of shape "
                                       r"\(32, 64, 3, 1\).*\(3, 3, 64, 32\)"):
    sd_vae.load(_copy(saved, str(tmp_path / "shape"), bad))
  cfg = json.load(open(os.path.join(saved, "config.json")))
  with pytest.raises(ValueError, match="_class_name='UNet2DModel'"):
    sd_vae.load(_copy(saved, str(tmp_path / "cls"), state, dict(cfg, _class_name="UNet2DModel")))
  with pytest.raises(ValueError, match="AttnDownEncoderBlock2D"):
    sd_vae.load(_copy(saved, str(tmp_path / "blocks"), state, dict(
        cfg, down_block_types=["DownEncoderBlock2D", "AttnDownEncoderBlock2D"])))
  pickled = str(tmp_path / "pickled")
  _copy(saved, pickled)
  open(os.path.join(pickled, "diffusion_pytorch_model.bin"), "wb").close()
  with pytest.raises(FileNotFoundError, match="pickled weights are never loaded"):
    sd_vae.load(pickled)


def _vae_config(arg):
  spec = importlib.util.spec_from_file_location("vae_config", os.path.join(ROOT, "configs",
                                                                           "vae.py"))
  mod = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(mod)
  return mod.get_config(arg)


def test_config_variants():
  assert vae.AutoencoderKL(block_out_channels=_vae_config(None).model.block_out_channels
                           ).spatial_factor == 4
  c = _vae_config("f8,temporal")
  m = autoencoder.model_from_config(c.model)
  assert m.spatial_factor == 8 and m.temporal_factor == 2
  assert vae.latent_shape(m, (2, 4, 32, 32, 3)) == (2, 2, 4, 4, 4)
  with pytest.raises(ValueError, match="does not divide"):
    vae.latent_shape(m, (2, 3, 32, 32, 3))


@pytest.mark.slow
def test_smoke_config_trains_and_evaluates(tmp_path):
  config = _vae_config("smoke")
  task = tasks.get(config.task)(config)
  assert isinstance(task, autoencoder.AutoencoderTask)
  workdir = str(tmp_path / "run")
  summary = trainer.train(config, task, workdir)
  assert summary["final_step"] == config.total_steps == 4
  m = summary["last_metrics"]
  assert np.isfinite(m["train/loss"]) and m["train/l1"] > 0 and m["train/kl"] >= 0
  ev = summary["evals"][-1]
  assert ev["step"] == 4
  for key in ("eval/psnr", "eval/psnr_videos", "eval/l1", "eval/kl", "eval/latent_std"):
    assert np.isfinite(ev[key]) and ev[key] >= 0, key
  # PSNR here equals the definition on the held-out clips, recomputed in numpy.
  report = json.load(open(os.path.join(workdir, "samples", "step_000004.json")))
  assert report["latent_shape"] == [2, 8, 8, 4]
  assert report["per_video_psnr"] and ev["eval/psnr_videos"] == pytest.approx(
      np.mean(report["per_video_psnr"]), rel=1e-6)
  assert os.path.getsize(os.path.join(workdir, "samples", "step_000004.gif")) > 0


def test_loss_gradients_and_psnr_definition():
  config = _vae_config("smoke")
  task = autoencoder.AutoencoderTask(config)
  params = nn.meta.unbox(task.init(jax.random.key(0)))
  video = jax.random.uniform(jax.random.key(1), (2, 2, 16, 16, 3), minval=-1, maxval=1)
  (loss, metrics), grads = jit(jax.value_and_grad(task.loss, has_aux=True))(
      params, {"video": video}, jax.random.key(2))
  assert np.isfinite(float(loss)) and float(loss) >= float(metrics["train/l1"])
  for side in ("encoder", "decoder"):   # both halves learn through the posterior draw
    assert float(jnp.abs(grads[side]["conv_in"]["kernel"]).sum()) > 0, side
  other = jnp.clip(video + 0.1, -1, 1)
  mse = ((np.asarray(other) - np.asarray(video)) / 2) ** 2
  want = np.mean(-10 * np.log10(mse.reshape(4, -1).mean(1)))
  assert float(autoencoder.psnr(other, video)) == pytest.approx(want, rel=1e-5)
