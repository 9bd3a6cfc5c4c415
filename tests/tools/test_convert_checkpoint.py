"""tools/convert_checkpoint.py: HF CLIP folder -> orbax checkpoint -> ``load_params`` (the
``config.init_from`` path) gives back the converted leaves, sharded on a (4, 2) mesh."""
import json
import os

import flax.linen as nn
import jax
import numpy as np
import pytest
import torch
from transformers import CLIPConfig, CLIPModel

from mfm_jax.convert import hf_clip
from mfm_jax.engine import checkpoint as ckpt_lib
from mfm_jax.engine import mesh as mesh_lib
from tools import convert_checkpoint


@pytest.fixture(scope="module")
def hf_dir(tmp_path_factory):
  path = str(tmp_path_factory.mktemp("hf_clip"))
  torch.manual_seed(0)
  cfg = CLIPConfig(
      text_config=dict(vocab_size=32, hidden_size=16, intermediate_size=32, num_hidden_layers=2,
                       num_attention_heads=2, max_position_embeddings=8, eos_token_id=31,
                       bos_token_id=30, pad_token_id=31),
      vision_config=dict(hidden_size=16, intermediate_size=24, num_hidden_layers=2,
                         num_attention_heads=2, image_size=16, patch_size=8),
      projection_dim=8)
  CLIPModel(cfg).save_pretrained(path)
  return path


@pytest.mark.parametrize("scan", [False, True])
def test_convert_then_load_params_round_trip(hf_dir, tmp_path, scan):
  out = str(tmp_path / "ckpt")
  argv = ["--hf_clip", hf_dir, "--out", out] + (["--scan_blocks"] if scan else [])
  convert_checkpoint.main(argv)
  model, params = hf_clip.load(hf_dir, scan_blocks=scan)
  cfg = hf_clip.read_config(hf_dir)
  boxed = jax.eval_shape(model.init, jax.random.key(0), np.zeros((1, 16, 16, 3), np.float32),
                         np.zeros((1, 8), np.int32))["params"]
  rules = mesh_lib.DEFAULT_RULES
  mesh = mesh_lib.make_mesh({"data": 4, "tensor": 2})
  shardings = nn.logical_to_mesh_sharding(nn.get_partition_spec(boxed), mesh, rules)
  loaded = ckpt_lib.load_params(out, nn.meta.unbox(boxed), shardings)
  flat = jax.tree_util.tree_leaves_with_path(params)
  assert len(flat) == len(jax.tree.leaves(loaded))
  jax.tree.map(np.testing.assert_array_equal, loaded, params)
  fc1 = loaded["text"]["encoder"]["blocks" if scan else "block_0"]["mlp"]["fc1"]["kernel"]
  assert "tensor" in fc1.sharding.spec and len(fc1.addressable_shards) == 8
  with open(os.path.join(out, "0", "config", "metadata")) as f:
    meta = json.load(f)
  assert meta["source"] == "hf_clip" and meta["hf_config"] == json.loads(json.dumps(cfg))
  with pytest.raises(FileExistsError, match="not empty"):
    convert_checkpoint.main(argv)


def test_under_nests_params_and_mismatch_fails(hf_dir, tmp_path):
  out = str(tmp_path / "nested")
  written = convert_checkpoint.convert_hf_clip(hf_dir, out, under="encoder")
  abstract = jax.tree.map(lambda a: jax.ShapeDtypeStruct(a.shape, a.dtype), written)
  mesh = mesh_lib.make_mesh({"data": 8})
  loaded = ckpt_lib.load_params(out, abstract, jax.tree.map(lambda _: mesh_lib.replicated(mesh),
                                                            abstract))
  jax.tree.map(np.testing.assert_array_equal, loaded, written)
  with pytest.raises(ValueError, match="missing"):
    ckpt_lib.load_params(out, abstract["encoder"], jax.tree.map(
        lambda _: mesh_lib.replicated(mesh), abstract["encoder"]))
