"""Parity of mfm_jax.convert.sd_unet + models.unet3d with diffusers' UNet2DConditionModel
(PyTorch CPU, tiny random configs built offline, every parameter perturbed so that zero-initialised
ones matter): our U-Net with T = 1 equals it within 1e-4 in float32, over conv vs linear
proj_in/out, shared vs per-level heads, 1 vs 2 transformer blocks, text padding masks and
ControlNet residuals; with T = 2 (temporal layers at their identity init) every frame equals the
2-D U-Net on that frame. Plus the loader's failures: missing / unexpected / misshaped keys,
unsupported configs, pickled-only folders."""
import functools
import json
import os
import shutil

import jax
import numpy as np
import pytest
import torch
from diffusers import UNet2DConditionModel
from safetensors.numpy import load_file, save_file

from mfm_jax.convert import sd_unet

FAST = {"xla_backend_optimization_level": 0, "xla_llvm_disable_expensive_passes": True}
jit = functools.partial(jax.jit, compiler_options=FAST)

CONFIGS = {
    "conv_proj": dict(block_out_channels=(32, 64), layers_per_block=1, cross_attention_dim=32,
                      attention_head_dim=8, norm_num_groups=8, sample_size=16,
                      down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
                      up_block_types=("UpBlock2D", "CrossAttnUpBlock2D")),
    "linear_proj": dict(block_out_channels=(16, 32), layers_per_block=2, cross_attention_dim=24,
                        attention_head_dim=(2, 4), norm_num_groups=4, sample_size=8,
                        in_channels=3, out_channels=5, use_linear_projection=True,
                        transformer_layers_per_block=2, freq_shift=1, flip_sin_to_cos=False,
                        down_block_types=("CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
                        up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D")),
}


def _hf(name, seed=0):
  torch.manual_seed(seed)
  model = UNet2DConditionModel(**CONFIGS[name]).eval()
  with torch.no_grad():
    for p in model.parameters():  # zero-init convs (and unit norms) become non-trivial
      p.add_(0.05 * torch.randn_like(p))
  return model


def _ref(hf, x, t, text, **kw):
  """diffusers on NCHW images; x: [N, H, W, C] -> [N, H, W, C']."""
  with torch.no_grad():
    out = hf(torch.from_numpy(x.transpose(0, 3, 1, 2)), torch.from_numpy(t),
             torch.from_numpy(text), **kw).sample
  return out.numpy().transpose(0, 2, 3, 1)


def test_parity_conv_proj_from_folder(tmp_path):
  """save_pretrained folder; T = 1 parity, and T = 2 == the 2-D U-Net on each frame."""
  hf = _hf("conv_proj")
  hf.save_pretrained(tmp_path)
  model, params = sd_unet.load(str(tmp_path))
  assert model.temporal and "down_0_temporal_attn_0" in params
  np.testing.assert_array_equal(params["down_0_temporal_attn_0"]["attn"]["out"]["kernel"], 0)
  rng = np.random.default_rng(0)
  b, t = 2, 2
  x = rng.normal(size=(b, t, 16, 16, 4)).astype(np.float32)
  ts = np.array([3.0, 801.0], np.float32)
  text = rng.normal(size=(b, 7, 32)).astype(np.float32)
  apply = jit(model.apply)
  out1 = np.asarray(apply({"params": params}, x[:, :1], ts, text))
  ref1 = _ref(hf, x[:, 0], ts, text)
  err1 = np.abs(out1[:, 0] - ref1).max()
  out2 = np.asarray(apply({"params": params}, x, ts, text))
  assert out2.shape == (b, t, 16, 16, 4)
  ref2 = _ref(hf, x.reshape(b * t, 16, 16, 4), np.repeat(ts, t), np.repeat(text, t, 0))
  err2 = np.abs(out2 - ref2.reshape(out2.shape)).max()
  print(f"conv_proj: T=1 max abs diff {err1:.1e}, T=2 {err2:.1e}, |ref| {np.abs(ref1).max():.2f}")
  assert np.abs(ref1).max() > 0.5
  assert err1 < 1e-4 and err2 < 1e-4, (err1, err2)


def test_parity_linear_proj_masks_and_residuals():
  """State dict + config; per-level heads, 2 transformer blocks, text mask, ControlNet residuals."""
  hf = _hf("linear_proj")
  model, params = sd_unet.load(hf.state_dict(), hf.config, temporal=False)
  assert model.num_heads == (2, 4) and model.transformer_depth == 2
  assert not any("temporal" in k for k in params)
  rng = np.random.default_rng(1)
  b = 3
  x = rng.normal(size=(b, 8, 8, 3)).astype(np.float32)
  ts = np.array([0.0, 17.5, 999.0], np.float32)
  text = rng.normal(size=(b, 5, 24)).astype(np.float32)
  mask = np.array([[1, 1, 1, 1, 1], [1, 1, 0, 0, 0], [1, 0, 1, 0, 1]], bool)
  skips = [(16, 8), (16, 8), (16, 8), (16, 4), (32, 4), (32, 4)]  # conv_in, down_0 x3, down_1 x2
  down = [rng.normal(size=(b, s, s, c)).astype(np.float32) for c, s in skips]
  mid = rng.normal(size=(b, 4, 4, 32)).astype(np.float32)
  out = jit(model.apply)({"params": params}, x[:, None], ts, text, mask,
                         [d[:, None] for d in down], mid[:, None])
  ref = _ref(hf, x, ts, text, encoder_attention_mask=torch.from_numpy(mask),
             down_block_additional_residuals=tuple(torch.from_numpy(d.transpose(0, 3, 1, 2))
                                                   for d in down),
             mid_block_additional_residual=torch.from_numpy(mid.transpose(0, 3, 1, 2)))
  unmasked = _ref(hf, x, ts, text)
  err = np.abs(np.asarray(out)[:, 0] - ref).max()
  print(f"linear_proj: max abs diff {err:.1e}, |ref| {np.abs(ref).max():.2f}")
  assert out.shape == (b, 1, 8, 8, 5)
  assert np.abs(ref - unmasked).max() > 1e-2  # the mask and residuals do change the output
  assert err < 1e-4, err


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
  path = str(tmp_path_factory.mktemp("sd_unet"))
  _hf("conv_proj").save_pretrained(path)
  return path


def _copy(src, dst, state=None, config=None):
  os.makedirs(dst, exist_ok=True)
  shutil.copy(os.path.join(src, "config.json"), dst)
  if config is not None:
    with open(os.path.join(dst, "config.json"), "w") as f:
      json.dump(config, f)
  if state is not None:
    save_file(state, os.path.join(dst, sd_unet.WEIGHTS))
  return str(dst)


def test_missing_unexpected_and_misshaped_keys_fail_naming_them(saved, tmp_path):
  state = load_file(os.path.join(saved, sd_unet.WEIGHTS))
  key = "down_blocks.0.attentions.0.transformer_blocks.0.attn2.to_k.weight"
  bad = {k: v for k, v in state.items() if k != key}
  with pytest.raises(ValueError, match=rf"missing \['{key}'\]"):
    sd_unet.load(_copy(saved, tmp_path / "missing", bad))
  bad = dict(state, **{"mid_block.extra.weight": np.zeros(2, np.float32)})
  with pytest.raises(ValueError, match=r"unexpected \['mid_block.extra.weight'\]"):
    sd_unet.load(_copy(saved, tmp_path / "extra", bad))
  key = "up_blocks.1.resnets.0.conv1.weight"
  bad = dict(state, **{key: np.zeros((32, 96, 3, 1), np.float32)})
  with pytest.raises(ValueError, match=rf"{key} of shape \(32, 96, 3, 1\) does not fit the model.*"
                                       r"up_1_resnet_0/conv1/kernel expects \(3, 3, 96, 32\)"):
    sd_unet.load(_copy(saved, tmp_path / "shape", bad))
  key = "down_blocks.0.attentions.0.proj_in.weight"
  bad = dict(state, **{key: state[key][:, :, 0, 0]})  # linear weight where the config says conv
  with pytest.raises(ValueError, match=rf"{key} of shape \(32, 32\).*1x1 conv"):
    sd_unet.load(_copy(saved, tmp_path / "proj", bad))


def test_unsupported_config_and_files_fail_clearly(saved, tmp_path):
  with open(os.path.join(saved, "config.json")) as f:
    config = json.load(f)
  for field, value in (("class_embed_type", "timestep"), ("resnet_time_scale_shift",
                                                          "scale_shift")):
    with pytest.raises(ValueError, match=rf"{field}='{value}' is not supported"):
      sd_unet.load(_copy(saved, tmp_path / field, config={**config, field: value}))
  with pytest.raises(ValueError, match="up_block_types .* must mirror"):
    sd_unet.load(saved, {**config, "up_block_types": ["CrossAttnUpBlock2D", "UpBlock2D"]})
  folder = _copy(saved, tmp_path / "bin")
  open(os.path.join(folder, "diffusion_pytorch_model.bin"), "wb").close()
  with pytest.raises(FileNotFoundError, match="diffusion_pytorch_model.bin.*never loaded"):
    sd_unet.load(folder)
  with pytest.raises(FileNotFoundError, match="config.json"):
    sd_unet.load(str(tmp_path / "nothing"))
  with pytest.raises(ValueError, match="needs its config"):
    sd_unet.load(load_file(os.path.join(saved, sd_unet.WEIGHTS)))
