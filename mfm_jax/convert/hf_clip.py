"""Import a transformers ``CLIPModel`` checkpoint (``save_pretrained`` folder) into ``models.clip``.

```
from mfm_jax.convert import hf_clip
model, params = hf_clip.load(path)
model.apply({"params": params}, pixel_values, method=model.encode_image)  # [B, H, W, C] -> [B, E]
model.apply({"params": params}, input_ids, method=model.encode_text)      # [B, L] int -> [B, E]
```

The two calls equal HF's ``get_image_features`` / ``get_text_features`` (the projected pooled
features, before normalisation). Images are NHWC here (HF: NCHW); another resolution than the
config's ``image_size`` resizes the position grid as HF's ``interpolate_pos_encoding=True``.

Rules: the model comes from the folder's ``config.json``; weights from ``model.safetensors`` (or
its sharded index) only, never a pickle; every HF key goes through the explicit table
:func:`key_table` (buffers such as ``position_ids`` are listed as ignored); a key the table does
not know, a key it expects that is missing, and a converted leaf whose shape differs from
``jax.eval_shape`` of the model all fail naming the key.
"""
from __future__ import annotations

import json
import os
import re
from typing import Any, Callable, Mapping

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from mfm_jax.convert import common
from mfm_jax.models.clip import CLIP, CLIPText
from mfm_jax.models.vit import ViT

# HF config defaults (transformers' CLIPTextConfig / CLIPVisionConfig / CLIPConfig), used for
# fields a config.json leaves out.
TEXT_DEFAULTS = dict(vocab_size=49408, hidden_size=512, intermediate_size=2048,
                     num_hidden_layers=12, num_attention_heads=8, max_position_embeddings=77,
                     hidden_act="quick_gelu", layer_norm_eps=1e-5, eos_token_id=49407)
VISION_DEFAULTS = dict(hidden_size=768, intermediate_size=3072, num_hidden_layers=12,
                       num_attention_heads=12, num_channels=3, image_size=224, patch_size=32,
                       hidden_act="quick_gelu", layer_norm_eps=1e-5)
CLIP_DEFAULTS = dict(projection_dim=512, logit_scale_init_value=2.6592)

# HF ``hidden_act`` -> ``layers.ACTIVATIONS`` key.
ACTIVATIONS = {"quick_gelu": "quick_gelu", "gelu": "gelu", "gelu_new": "gelu_tanh",
               "gelu_pytorch_tanh": "gelu_tanh", "silu": "silu"}

# HF keys that are buffers, not parameters (older checkpoints saved them).
IGNORED = re.compile(r"^(text_model|vision_model)\.embeddings\.position_ids$")

Transform = Callable[[np.ndarray, int], np.ndarray]  # (hf array, num_heads) -> our array


def _copy(a, heads):
  return a


def _linear(a, heads):  # torch Linear [out, in] -> Dense [in, out]
  return a.T


def _qkv(a, heads):  # [N*Dh, D] -> [D, N, Dh]
  return a.T.reshape(a.shape[1], heads, -1)


def _qkv_bias(a, heads):  # [N*Dh] -> [N, Dh]
  return a.reshape(heads, -1)


def _attn_out(a, heads):  # [D, N*Dh] -> [N, Dh, D]
  return a.T.reshape(heads, -1, a.shape[0])


def _patch(a, heads):  # Conv2d [D, C, p, p] -> tubelet [1, p, p, C, D]
  return a.transpose(2, 3, 1, 0)[None]


# HF block key suffix -> (our path below the block, transform)
BLOCK = {
    "layer_norm1.weight": (("norm1", "scale"), _copy),
    "layer_norm1.bias": (("norm1", "bias"), _copy),
    "layer_norm2.weight": (("norm2", "scale"), _copy),
    "layer_norm2.bias": (("norm2", "bias"), _copy),
    "self_attn.q_proj.weight": (("attn", "query", "kernel"), _qkv),
    "self_attn.q_proj.bias": (("attn", "query", "bias"), _qkv_bias),
    "self_attn.k_proj.weight": (("attn", "key", "kernel"), _qkv),
    "self_attn.k_proj.bias": (("attn", "key", "bias"), _qkv_bias),
    "self_attn.v_proj.weight": (("attn", "value", "kernel"), _qkv),
    "self_attn.v_proj.bias": (("attn", "value", "bias"), _qkv_bias),
    "self_attn.out_proj.weight": (("attn", "out", "kernel"), _attn_out),
    "self_attn.out_proj.bias": (("attn", "out", "bias"), _copy),
    "mlp.fc1.weight": (("mlp", "fc1", "kernel"), _linear),
    "mlp.fc1.bias": (("mlp", "fc1", "bias"), _copy),
    "mlp.fc2.weight": (("mlp", "fc2", "kernel"), _linear),
    "mlp.fc2.bias": (("mlp", "fc2", "bias"), _copy),
}

# HF key -> (our path, transform), outside the blocks.
TOP = {
    "text_model.embeddings.token_embedding.weight": (("text", "token_embedding"), _copy),
    "text_model.embeddings.position_embedding.weight": (("text", "pos_embedding"), _copy),
    "text_model.final_layer_norm.weight": (("text", "final_norm", "scale"), _copy),
    "text_model.final_layer_norm.bias": (("text", "final_norm", "bias"), _copy),
    "vision_model.embeddings.class_embedding": (("vision", "cls"), _copy),
    "vision_model.embeddings.patch_embedding.weight": (("vision", "patch_embed", "kernel"),
                                                       _patch),
    "vision_model.embeddings.position_embedding.weight": (("vision", "pos_embedding"), _copy),
    "vision_model.pre_layrnorm.weight": (("vision", "pre_norm", "scale"), _copy),
    "vision_model.pre_layrnorm.bias": (("vision", "pre_norm", "bias"), _copy),
    "vision_model.post_layernorm.weight": (("vision", "final_norm", "scale"), _copy),
    "vision_model.post_layernorm.bias": (("vision", "final_norm", "bias"), _copy),
    "visual_projection.weight": (("visual_projection", "kernel"), _linear),
    "text_projection.weight": (("text_projection", "kernel"), _linear),
    "logit_scale": (("logit_scale",), _copy),
}


def key_table(text_depth: int, vision_depth: int) -> dict[str, tuple[tuple[str, ...], Transform,
                                                                     str]]:
  """Every expected HF key -> (our path in the unscanned layout, transform, tower)."""
  table = {k: (p, f, p[0]) for k, (p, f) in TOP.items()}
  for tower, hf_tower, depth in (("text", "text_model", text_depth),
                                 ("vision", "vision_model", vision_depth)):
    for i in range(depth):
      for suffix, (path, f) in BLOCK.items():
        table[f"{hf_tower}.encoder.layers.{i}.{suffix}"] = (
            (tower, "encoder", f"block_{i}", *path), f, tower)
  return table


def read_config(path: str) -> dict[str, Any]:
  """The folder's ``config.json`` with HF defaults filled in (``text`` / ``vision`` / top)."""
  file = os.path.join(path, "config.json")
  if not os.path.isfile(file):
    raise FileNotFoundError(f"hf_clip: no config.json in {path}")
  with open(file) as f:
    raw = json.load(f)
  if raw.get("model_type", "clip") != "clip":
    raise ValueError(f"hf_clip: {file} has model_type={raw.get('model_type')!r}, expected 'clip'")
  cfg = {k: raw.get(k, v) for k, v in CLIP_DEFAULTS.items()}
  cfg["text"] = {**TEXT_DEFAULTS, **{k: v for k, v in raw.get("text_config", {}).items()
                                     if k in TEXT_DEFAULTS and v is not None}}
  cfg["vision"] = {**VISION_DEFAULTS, **{k: v for k, v in raw.get("vision_config", {}).items()
                                         if k in VISION_DEFAULTS and v is not None}}
  return cfg


def _side(v: Any, name: str) -> int:
  if isinstance(v, (list, tuple)):
    if len(set(v)) != 1:
      raise ValueError(f"hf_clip: non-square vision_config.{name}={v} is not supported")
    v = v[0]
  return int(v)


def _activation(act: str) -> str:
  if act not in ACTIVATIONS:
    raise ValueError(f"hf_clip: hidden_act={act!r} is not supported; known: {sorted(ACTIVATIONS)}")
  return ACTIVATIONS[act]


def model_from_config(cfg: Mapping[str, Any], *, scan_blocks: bool = False,
                      remat_policy: str = "none", dtype: Any = jnp.float32) -> CLIP:
  """``CLIP`` module for a :func:`read_config` dict."""
  t, v = cfg["text"], cfg["vision"]
  eos = t["eos_token_id"]
  eos = int(eos[0] if isinstance(eos, (list, tuple)) else eos)
  kw = dict(scan_blocks=scan_blocks, remat_policy=remat_policy, dtype=dtype)
  vision = ViT(width=v["hidden_size"], depth=v["num_hidden_layers"],
               num_heads=v["num_attention_heads"], mlp_dim=v["intermediate_size"],
               patch_size=_side(v["patch_size"], "patch_size"),
               image_size=_side(v["image_size"], "image_size"), pooling="cls", pre_norm=True,
               patch_bias=False, activation=_activation(v["hidden_act"]),
               norm_epsilon=float(v["layer_norm_eps"]), **kw)
  text = CLIPText(vocab_size=t["vocab_size"], width=t["hidden_size"],
                  depth=t["num_hidden_layers"], num_heads=t["num_attention_heads"],
                  mlp_dim=t["intermediate_size"], max_len=t["max_position_embeddings"],
                  eos_token_id=eos, activation=_activation(t["hidden_act"]),
                  norm_epsilon=float(t["layer_norm_eps"]), **kw)
  return CLIP(vision, text, embed_dim=int(cfg["projection_dim"]),
              logit_scale_init=float(cfg["logit_scale_init_value"]), dtype=dtype)


def read_safetensors(path: str) -> dict[str, np.ndarray]:
  """All tensors of the folder's weights file (or its shards) as float32 numpy."""
  return common.read_safetensors(path, "model.safetensors", "hf_clip")


def _stack(blocks: Mapping[str, Any], depth: int) -> dict[str, Any]:
  """``block_0 .. block_{depth-1}`` -> ``{"blocks": leaves stacked on axis 0}``."""
  return {"blocks": jax.tree.map(lambda *a: np.stack(a),
                                 *[blocks[f"block_{i}"] for i in range(depth)])}


def abstract_params(model: CLIP, num_channels: int = 3) -> Any:
  """Unboxed ``jax.ShapeDtypeStruct`` tree of the model's params (``jax.eval_shape``)."""
  v = model.vision
  img = jax.ShapeDtypeStruct((1, v.image_size, v.image_size, num_channels), jnp.float32)
  ids = jax.ShapeDtypeStruct((1, model.text.max_len), jnp.int32)
  return nn.meta.unbox(jax.eval_shape(model.init, jax.random.key(0), img, ids)["params"])


def convert(state: Mapping[str, np.ndarray], model: CLIP,
            num_channels: int = 3) -> dict[str, Any]:
  """HF state dict -> our params (numpy, float32), checked against ``jax.eval_shape``."""
  t, v = model.text, model.vision
  table = key_table(t.depth, v.depth)
  extra = sorted(k for k in state if k not in table and not IGNORED.match(k))
  missing = sorted(k for k in table if k not in state)
  if missing or extra:
    raise ValueError(f"hf_clip: checkpoint keys do not match the model; missing {missing}, "
                     f"unexpected {extra}")
  heads = {"text": t.num_heads, "vision": v.num_heads}
  params: dict[str, Any] = {}
  for key, (path, fn, tower) in table.items():
    try:
      value = np.asarray(fn(state[key], heads.get(tower, 0)), np.float32)
    except ValueError as e:
      raise ValueError(f"hf_clip: {key} of shape {state[key].shape} does not fit the model: "
                       f"{e}") from None
    node = params
    for p in path[:-1]:
      node = node.setdefault(p, {})
    node[path[-1]] = value
  for tower, depth in (("text", t.depth), ("vision", v.depth)):
    if getattr(model, tower).scan_blocks:
      params[tower]["encoder"] = _stack(params[tower]["encoder"], depth)
  check(params, abstract_params(model, num_channels))
  return params


def check(params: Any, abstract: Any) -> None:
  """Fails naming every missing / extra leaf and the first leaf whose shape differs."""
  common.check_params(params, abstract, "hf_clip")


def load(path: str, *, scan_blocks: bool = False, remat_policy: str = "none",
         dtype: Any = jnp.float32) -> tuple[CLIP, dict[str, Any]]:
  """(model, params) from a ``CLIPModel.save_pretrained`` folder; params are jax float32 arrays.

  ``scan_blocks`` / ``remat_policy`` / ``dtype`` (compute dtype) configure the returned model;
  the params follow its layout (stacked ``blocks`` with ``scan_blocks``).
  """
  cfg = read_config(path)
  model = model_from_config(cfg, scan_blocks=scan_blocks, remat_policy=remat_policy, dtype=dtype)
  params = convert(read_safetensors(path), model, int(cfg["vision"]["num_channels"]))
  return model, jax.tree.map(jnp.asarray, params)
