"""Parity of mfm_jax.convert.hf_clip with transformers' CLIPModel (PyTorch CPU, tiny random
configs built offline): ``encode_image`` / ``encode_text`` == ``get_image_features`` /
``get_text_features`` within 1e-4 in float32, over quick_gelu and gelu, different widths,
depths, heads, patch sizes and MLP widths, legacy (eos 2) and current end-of-text pooling,
padding masks, and position interpolation to other (also non-square) resolutions. Plus the
loader's failures: missing / unexpected keys, shape mismatches, pickled-only folders."""
import functools
import json
import os
import shutil

import jax
import numpy as np
import pytest
import torch
from safetensors.numpy import load_file, save_file
from transformers import CLIPConfig, CLIPModel

from mfm_jax.convert import hf_clip

FAST = {"xla_backend_optimization_level": 0, "xla_llvm_disable_expensive_passes": True}
jit = functools.partial(jax.jit, compiler_options=FAST)

CONFIGS = {
    "quick_gelu": dict(
        text=dict(vocab_size=64, hidden_size=32, intermediate_size=37, num_hidden_layers=2,
                  num_attention_heads=4, max_position_embeddings=10, bos_token_id=62,
                  eos_token_id=63, pad_token_id=63),
        vision=dict(hidden_size=24, intermediate_size=40, num_hidden_layers=2,
                    num_attention_heads=2, image_size=32, patch_size=8),
        projection_dim=16, sizes=[(32, 32), (48, 48), (24, 40)]),
    "gelu_legacy_eos": dict(
        text=dict(vocab_size=40, hidden_size=16, intermediate_size=24, num_hidden_layers=1,
                  num_attention_heads=2, max_position_embeddings=8, hidden_act="gelu",
                  bos_token_id=0, eos_token_id=2, pad_token_id=1),
        vision=dict(hidden_size=32, intermediate_size=20, num_hidden_layers=3,
                    num_attention_heads=4, image_size=16, patch_size=4, hidden_act="gelu"),
        projection_dim=8, sizes=[(16, 16), (24, 24)]),
}


def _save_hf(path, name, seed=0):
  """A tiny random CLIPModel (all params, LayerNorms included, perturbed) saved to ``path``."""
  c = CONFIGS[name]
  torch.manual_seed(seed)
  cfg = CLIPConfig(text_config=c["text"], vision_config=c["vision"],
                   projection_dim=c["projection_dim"])
  model = CLIPModel(cfg).eval()
  with torch.no_grad():
    for p in model.parameters():
      p.add_(0.05 * torch.randn_like(p))
  model.save_pretrained(path)
  return model


def _text_inputs(c, seed=0):
  """ids [3, L] with an eos per row (legacy: the row's largest id) and a right-padding mask."""
  t = c["text"]
  n, length, eos = 3, t["max_position_embeddings"], t["eos_token_id"]
  rng = np.random.default_rng(seed)
  ids = rng.integers(3, t["vocab_size"] - 2, size=(n, length))
  ends = np.array([length - 1, 2, 4])
  ids[:, 0] = t["bos_token_id"]
  legacy = eos == 2
  ids[np.arange(n), ends] = t["vocab_size"] - 1 if legacy else eos
  mask = np.arange(length)[None] <= ends[:, None]
  ids = np.where(mask, ids, t["pad_token_id"])
  return ids.astype(np.int64), mask


@pytest.mark.parametrize("name", sorted(CONFIGS))
def test_parity_with_transformers(name, tmp_path):
  c = CONFIGS[name]
  hf = _save_hf(tmp_path, name)
  model, params = hf_clip.load(str(tmp_path))
  v = {"params": params}
  image_fn = jit(lambda v, x: model.apply(v, x, method=model.encode_image))
  text_fn = jit(lambda v, x, m: model.apply(v, x, m, method=model.encode_text))
  rng = np.random.default_rng(1)
  errors = {}
  for h, w in c["sizes"]:
    px = rng.normal(size=(2, 3, h, w)).astype(np.float32)
    with torch.no_grad():
      ref = hf.get_image_features(torch.from_numpy(px), interpolate_pos_encoding=True)
    ref = ref.pooler_output.numpy()
    out = np.asarray(image_fn(v, px.transpose(0, 2, 3, 1)))
    assert out.shape == ref.shape == (2, c["projection_dim"])
    errors[f"image {h}x{w}"] = np.abs(out - ref).max()
  ids, mask = _text_inputs(c)
  with torch.no_grad():
    ref = hf.get_text_features(torch.from_numpy(ids)).pooler_output.numpy()
    ref_masked = hf.get_text_features(torch.from_numpy(ids), attention_mask=torch.from_numpy(
        mask.astype(np.int64))).pooler_output.numpy()
  errors["text"] = np.abs(np.asarray(text_fn(v, ids.astype(np.int32), None)) - ref).max()
  errors["text masked"] = np.abs(np.asarray(text_fn(v, ids.astype(np.int32), mask))
                                 - ref_masked).max()
  print(name, {k: f"{e:.1e}" for k, e in errors.items()})
  assert max(errors.values()) < 1e-4, errors
  np.testing.assert_allclose(params["logit_scale"], hf.logit_scale.item(), rtol=1e-6)


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
  path = str(tmp_path_factory.mktemp("hf_clip"))
  _save_hf(path, "quick_gelu")
  return path


def _copy(src, dst, state=None, config=None):
  os.makedirs(dst, exist_ok=True)
  shutil.copy(os.path.join(src, "config.json"), dst)
  if config is not None:
    with open(os.path.join(dst, "config.json"), "w") as f:
      json.dump(config, f)
  if state is not None:
    save_file(state, os.path.join(dst, "model.safetensors"))
  return dst


def test_scan_layout_loads_the_same(saved):
  model, params = hf_clip.load(saved)
  smodel, sparams = hf_clip.load(saved, scan_blocks=True, remat_policy="full")
  assert sparams["text"]["encoder"]["blocks"]["attn"]["query"]["kernel"].shape == (2, 32, 4, 8)
  px = np.random.default_rng(2).normal(size=(2, 32, 32, 3)).astype(np.float32)
  ids = _text_inputs(CONFIGS["quick_gelu"])[0].astype(np.int32)
  run = lambda m, p: m.apply({"params": p}, px, ids)  # noqa: E731
  for a, b in zip(jit(run, static_argnums=0)(model, params)[:3],
                  jit(run, static_argnums=0)(smodel, sparams)[:3]):
    np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)


def test_missing_unexpected_and_misshaped_keys_fail_naming_them(saved, tmp_path):
  state = load_file(os.path.join(saved, "model.safetensors"))
  bad = {k: v for k, v in state.items() if k != "text_projection.weight"}
  with pytest.raises(ValueError, match=r"missing \['text_projection.weight'\]"):
    hf_clip.load(_copy(saved, tmp_path / "missing", bad))
  bad = dict(state, **{"vision_model.extra.weight": np.zeros(2, np.float32),
                       "text_model.embeddings.position_ids": np.arange(10)})  # buffer: ignored
  with pytest.raises(ValueError, match=r"unexpected \['vision_model.extra.weight'\]"):
    hf_clip.load(_copy(saved, tmp_path / "extra", bad))
  with open(os.path.join(saved, "config.json")) as f:
    config = json.load(f)
  config["vision_config"]["intermediate_size"] = 41
  with pytest.raises(ValueError, match=r"\['vision'\]\['encoder'\]\['block_0'\]\['mlp'\]"
                                       r"\['fc1'\]\['bias'\] has shape \(40,\), the model "
                                       r"expects \(41,\)"):
    hf_clip.load(_copy(saved, tmp_path / "shape", state, config))
  config["vision_config"]["intermediate_size"] = 40
  config["vision_config"]["num_attention_heads"] = 5  # 24 is not divisible by 5 heads
  with pytest.raises(ValueError, match="vision_model.encoder.layers.0.self_attn.q_proj"):
    hf_clip.load(_copy(saved, tmp_path / "heads", state, config))


def test_refuses_pickles_and_missing_config(saved, tmp_path):
  folder = _copy(saved, tmp_path / "bin")
  open(os.path.join(folder, "pytorch_model.bin"), "wb").close()
  with pytest.raises(FileNotFoundError, match="pytorch_model.bin.*never loaded"):
    hf_clip.load(folder)
  with pytest.raises(FileNotFoundError, match="config.json"):
    hf_clip.load(str(tmp_path))
