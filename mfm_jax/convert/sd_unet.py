"""Import a diffusers ``UNet2DConditionModel`` (Stable-Diffusion style) into ``models.unet3d``.

```
from mfm_jax.convert import sd_unet
model, params = sd_unet.load(path)             # a save_pretrained folder
model, params = sd_unet.load(state, config)    # or a {key: array} state dict + its config dict
out = model.apply({"params": params}, x, t, text)   # x: [B, T, H, W, C] -> [B, T, H, W, C']
```

The 2-D weights fill the spatial layers; the temporal layers (``*temporal_conv_*``,
``*temporal_attn_*``) keep their identity init (zero output projections, other temporal params
from ``rng``): the inflated model equals the image U-Net on every frame until trained. With
``temporal=False`` the model has no temporal layers at all.

Supported configs: ``down_block_types`` from {CrossAttnDownBlock2D, DownBlock2D} mirrored by
``up_block_types`` (UpBlock2D / CrossAttnUpBlock2D), ``UNetMidBlock2DCrossAttn``, SiLU,
positional timestep features, default resnet time conditioning, no class / addition embeddings.
Any other value of those fields fails naming the field.

Rules (as ``hf_clip``): safetensors only (``diffusion_pytorch_model.safetensors`` or its sharded
index), never a pickle; every key goes through the explicit table :func:`key_table`; a key the
table does not know, an expected key that is missing, and a converted leaf whose shape differs
from ``jax.eval_shape`` of the model all fail naming the key. Conv kernels OIHW -> HWIO; linear
``[out, in]`` -> ``[in, out]``; 1x1-conv or linear ``proj_in`` / ``proj_out`` (after
``use_linear_projection``) -> ``[in, out]``; attention q/k/v ``[N*Dh, D]`` -> ``[D, N, Dh]``.
"""
from __future__ import annotations

import json
import os
from typing import Any, Callable, Mapping

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from mfm_jax.convert import common
from mfm_jax.models import unet_blocks as ub
from mfm_jax.models.unet3d import UNet3D

WEIGHTS = "diffusion_pytorch_model.safetensors"
DEFAULTS = dict(in_channels=4, out_channels=4, flip_sin_to_cos=True, freq_shift=0,
                down_block_types=("CrossAttnDownBlock2D",) * 3 + ("DownBlock2D",),
                up_block_types=("UpBlock2D",) + ("CrossAttnUpBlock2D",) * 3,
                block_out_channels=(320, 640, 1280, 1280), layers_per_block=2,
                mid_block_scale_factor=1.0, norm_num_groups=32, norm_eps=1e-5,
                cross_attention_dim=1280, transformer_layers_per_block=1, attention_head_dim=8,
                num_attention_heads=None, use_linear_projection=False,
                resnet_out_scale_factor=1.0, downsample_padding=1)
# field -> the values we support (diffusers defaults); anything else fails naming the field.
REQUIRED = dict(mid_block_type=("UNetMidBlock2DCrossAttn",), act_fn=("silu",),
                center_input_sample=(False,), class_embed_type=(None,),
                addition_embed_type=(None,), encoder_hid_dim=(None,), time_cond_proj_dim=(None,),
                dual_cross_attention=(False,), only_cross_attention=(False,),
                resnet_time_scale_shift=("default",), resnet_skip_time_act=(False,),
                time_embedding_type=("positional",), time_embedding_dim=(None,),
                time_embedding_act_fn=(None,), timestep_post_act=(None,), conv_in_kernel=(3,),
                conv_out_kernel=(3,), attention_type=("default",), cross_attention_norm=(None,),
                reverse_transformer_layers_per_block=(None,), num_class_embeds=(None,),
                class_embeddings_concat=(False,), mid_block_only_cross_attention=(None, False),
                downsample_padding=(1,))

Transform = Callable[[np.ndarray], np.ndarray]


def _copy(a):
  return a


def _linear(a):  # torch Linear [out, in] -> Dense [in, out]
  if a.ndim != 2:
    raise ValueError(f"expected a linear weight [out, in], got {a.shape}")
  return a.T


def _conv(a):  # torch Conv2d OIHW -> HWIO
  if a.ndim != 4:
    raise ValueError(f"expected a conv weight [O, I, kh, kw], got {a.shape}")
  return a.transpose(2, 3, 1, 0)


def _conv1x1(a):  # Conv2d [O, I, 1, 1] -> Dense [I, O]
  if a.shape[2:] != (1, 1):
    raise ValueError(f"expected a 1x1 conv weight [O, I, 1, 1], got {a.shape}")
  return a[:, :, 0, 0].T


def _qkv(heads):  # [N*Dh, D] -> [D, N, Dh]
  return lambda a: _linear(a).reshape(a.shape[1], heads, -1)


def _attn_out(heads):  # [D, N*Dh] -> [N, Dh, D]
  return lambda a: _linear(a).reshape(heads, -1, a.shape[0])


def _resnet(hf: str, ours: str, shortcut: bool) -> dict[str, tuple[tuple[str, ...], Transform]]:
  t = {}
  for n in ("norm1", "norm2"):
    t[f"{hf}.{n}.weight"] = ((ours, n, "scale"), _copy)
    t[f"{hf}.{n}.bias"] = ((ours, n, "bias"), _copy)
  names = [("conv1", "conv1", _conv), ("conv2", "conv2", _conv), ("time_emb_proj", "time_proj",
                                                                   _linear)]
  if shortcut:
    names.append(("conv_shortcut", "shortcut", _conv))
  for h, o, f in names:
    t[f"{hf}.{h}.weight"] = ((ours, o, "kernel"), f)
    t[f"{hf}.{h}.bias"] = ((ours, o, "bias"), _copy)
  return t


def _transformer(hf: str, ours: str, depth: int, heads: int,
                 linear_proj: bool) -> dict[str, tuple[tuple[str, ...], Transform]]:
  proj = _linear if linear_proj else _conv1x1
  t = {f"{hf}.norm.weight": ((ours, "norm", "scale"), _copy),
       f"{hf}.norm.bias": ((ours, "norm", "bias"), _copy)}
  for p in ("proj_in", "proj_out"):
    t[f"{hf}.{p}.weight"] = ((ours, p, "kernel"), proj)
    t[f"{hf}.{p}.bias"] = ((ours, p, "bias"), _copy)
  for k in range(depth):
    h, o = f"{hf}.transformer_blocks.{k}", (ours, f"block_{k}")
    for n in ("norm1", "norm2", "norm3"):
      t[f"{h}.{n}.weight"] = ((*o, n, "scale"), _copy)
      t[f"{h}.{n}.bias"] = ((*o, n, "bias"), _copy)
    for a in ("attn1", "attn2"):
      for hq, oq in (("to_q", "query"), ("to_k", "key"), ("to_v", "value")):
        t[f"{h}.{a}.{hq}.weight"] = ((*o, a, oq, "kernel"), _qkv(heads))
      t[f"{h}.{a}.to_out.0.weight"] = ((*o, a, "out", "kernel"), _attn_out(heads))
      t[f"{h}.{a}.to_out.0.bias"] = ((*o, f"{a}_out_bias"), _copy)
    for hq, oq in (("net.0.proj", "ff_proj"), ("net.2", "ff_out")):
      t[f"{h}.ff.{hq}.weight"] = ((*o, oq, "kernel"), _linear)
      t[f"{h}.ff.{hq}.bias"] = ((*o, oq, "bias"), _copy)
  return t


def key_table(model: UNet3D, use_linear_projection: bool = False
              ) -> dict[str, tuple[tuple[str, ...], Transform]]:
  """Every expected diffusers key -> (our param path, transform), for ``model``'s layout."""
  ch = tuple(model.block_out_channels)
  n = len(ch)
  per = lambda v: (v,) * n if isinstance(v, (int, bool)) else tuple(v)  # noqa: E731
  attn, heads, depth = per(model.attention_levels), per(model.num_heads), per(
      model.transformer_depth)
  t: dict[str, tuple[tuple[str, ...], Transform]] = {}
  for hf, ours, f in (("conv_in", "conv_in", _conv), ("conv_out", "conv_out", _conv),
                      ("time_embedding.linear_1", "time_embed_1", _linear),
                      ("time_embedding.linear_2", "time_embed_2", _linear)):
    t[f"{hf}.weight"] = ((ours, "kernel"), f)
    t[f"{hf}.bias"] = ((ours, "bias"), _copy)
  t["conv_norm_out.weight"] = (("norm_out", "scale"), _copy)
  t["conv_norm_out.bias"] = (("norm_out", "bias"), _copy)
  width = ch[0]
  for i in range(n):  # down path
    for j in range(model.layers_per_block):
      t.update(_resnet(f"down_blocks.{i}.resnets.{j}", f"down_{i}_resnet_{j}", width != ch[i]))
      width = ch[i]
      if attn[i]:
        t.update(_transformer(f"down_blocks.{i}.attentions.{j}", f"down_{i}_attn_{j}", depth[i],
                              heads[i], use_linear_projection))
    if i < n - 1:
      t[f"down_blocks.{i}.downsamplers.0.conv.weight"] = ((f"down_{i}_downsample", "conv",
                                                           "kernel"), _conv)
      t[f"down_blocks.{i}.downsamplers.0.conv.bias"] = ((f"down_{i}_downsample", "conv",
                                                         "bias"), _copy)
  for j in range(2):
    t.update(_resnet(f"mid_block.resnets.{j}", f"mid_resnet_{j}", False))
  t.update(_transformer("mid_block.attentions.0", "mid_attn_0", depth[-1], heads[-1],
                        use_linear_projection))
  for u, i in enumerate(reversed(range(n))):  # up path: every resnet has a concat shortcut
    for j in range(model.layers_per_block + 1):
      t.update(_resnet(f"up_blocks.{u}.resnets.{j}", f"up_{u}_resnet_{j}", True))
      if attn[i]:
        t.update(_transformer(f"up_blocks.{u}.attentions.{j}", f"up_{u}_attn_{j}", depth[i],
                              heads[i], use_linear_projection))
    if i > 0:
      t[f"up_blocks.{u}.upsamplers.0.conv.weight"] = ((f"up_{u}_upsample", "conv", "kernel"),
                                                      _conv)
      t[f"up_blocks.{u}.upsamplers.0.conv.bias"] = ((f"up_{u}_upsample", "conv", "bias"), _copy)
  return t


def _one(v: Any, name: str) -> Any:
  if isinstance(v, (list, tuple)):
    if len(set(v)) != 1:
      raise ValueError(f"sd_unet: per-level {name}={v} is not supported; use one value")
    v = v[0]
  return v


def model_kwargs(config: Mapping[str, Any]) -> dict[str, Any]:
  """diffusers ``UNet2DConditionModel`` config -> ``UNet3D`` keyword arguments.

  Also returns ``in_channels``, ``cross_attention_dim`` and ``use_linear_projection`` (for the
  key table and dummy inputs) under ``"_extra"``.
  """
  cfg = {**DEFAULTS, **{k: v for k, v in config.items() if k in DEFAULTS}}
  for field, allowed in REQUIRED.items():
    if config.get(field, allowed[0]) not in allowed:
      raise ValueError(f"sd_unet: config {field}={config[field]!r} is not supported "
                       f"(supported: {list(allowed)})")
  down, up = list(cfg["down_block_types"]), list(cfg["up_block_types"])
  kinds = {"CrossAttnDownBlock2D": True, "DownBlock2D": False}
  for b in down:
    if b not in kinds:
      raise ValueError(f"sd_unet: down_block_types entry {b!r} is not supported "
                       f"(supported: {sorted(kinds)})")
  attn = tuple(kinds[b] for b in down)
  mirrored = ["CrossAttnUpBlock2D" if a else "UpBlock2D" for a in reversed(attn)]
  if up != mirrored:
    raise ValueError(f"sd_unet: up_block_types {up} must mirror down_block_types {down} "
                     f"(expected {mirrored})")
  if len(cfg["block_out_channels"]) != len(down):
    raise ValueError(f"sd_unet: block_out_channels {cfg['block_out_channels']} needs one entry "
                     f"per down block ({len(down)})")
  heads = cfg["num_attention_heads"] or cfg["attention_head_dim"]  # diffusers' naming quirk
  if cfg["norm_num_groups"] is None:
    raise ValueError("sd_unet: config norm_num_groups=None is not supported")
  kw = dict(out_channels=int(cfg["out_channels"]),
            block_out_channels=tuple(int(c) for c in cfg["block_out_channels"]),
            layers_per_block=int(_one(cfg["layers_per_block"], "layers_per_block")),
            attention_levels=attn,
            num_heads=tuple(int(h) for h in heads) if isinstance(heads, (list, tuple))
            else int(heads),
            transformer_depth=tuple(int(d) for d in cfg["transformer_layers_per_block"])
            if isinstance(cfg["transformer_layers_per_block"], (list, tuple))
            else int(cfg["transformer_layers_per_block"]),
            norm_groups=int(cfg["norm_num_groups"]), norm_eps=float(cfg["norm_eps"]),
            output_scale=float(cfg["resnet_out_scale_factor"]),
            mid_output_scale=float(cfg["mid_block_scale_factor"]),
            flip_sin_to_cos=bool(cfg["flip_sin_to_cos"]), freq_shift=float(cfg["freq_shift"]))
  kw["_extra"] = dict(in_channels=int(cfg["in_channels"]),
                      cross_attention_dim=int(_one(cfg["cross_attention_dim"],
                                                   "cross_attention_dim")),
                      use_linear_projection=bool(cfg["use_linear_projection"]))
  return kw


def _dummy(model: UNet3D, in_channels: int, text_dim: int) -> tuple[jax.ShapeDtypeStruct, ...]:
  side = 2 ** (len(model.block_out_channels) - 1)
  return (jax.ShapeDtypeStruct((1, 1, side, side, in_channels), jnp.float32),
          jax.ShapeDtypeStruct((1,), jnp.float32),
          jax.ShapeDtypeStruct((1, 1, text_dim), jnp.float32))


def read_safetensors(path: str) -> dict[str, np.ndarray]:
  """All tensors of the folder's weights file (or its shards) as float32 numpy."""
  return common.read_safetensors(path, WEIGHTS, "sd_unet")


def convert(state: Mapping[str, Any], model: UNet3D, *, in_channels: int,
            cross_attention_dim: int, use_linear_projection: bool = False,
            rng: jax.Array | None = None) -> dict[str, Any]:
  """diffusers state dict -> our params (jax float32), checked against ``jax.eval_shape``.

  Temporal params come from ``model.init(rng)`` (identity init); the rest from ``state``.
  """
  table = key_table(model, use_linear_projection)
  extra = sorted(k for k in state if k not in table)
  missing = sorted(k for k in table if k not in state)
  if missing or extra:
    raise ValueError(f"sd_unet: checkpoint keys do not match the model; missing {missing}, "
                     f"unexpected {extra}")
  dummy = _dummy(model, in_channels, cross_attention_dim)
  abstract = nn.meta.unbox(jax.eval_shape(model.init, jax.random.key(0), *dummy)["params"])
  spatial = {k: v for k, v in abstract.items() if "temporal_" not in k}
  params: dict[str, Any] = {}
  for key, (path, fn) in table.items():
    a = np.asarray(state[key], np.float32)
    try:
      value = np.asarray(fn(a), np.float32)
    except ValueError as e:
      raise ValueError(f"sd_unet: {key} of shape {a.shape} does not fit the model: {e}") from None
    want = spatial
    for p in path:
      want = want.get(p, {}) if isinstance(want, dict) else {}
    if hasattr(want, "shape") and tuple(want.shape) != value.shape:
      raise ValueError(f"sd_unet: {key} of shape {a.shape} does not fit the model: it converts "
                       f"to {value.shape}, {'/'.join(path)} expects {tuple(want.shape)}")
    node = params
    for p in path[:-1]:
      node = node.setdefault(p, {})
    node[path[-1]] = value
  check(params, spatial)  # every model leaf filled, none left over
  temporal = {k: v for k, v in abstract.items() if "temporal_" in k}
  if temporal:
    params.update(_temporal_init(model, temporal, jax.random.key(0) if rng is None else rng))
  check(params, abstract)
  return jax.device_put(params)  # (jnp.asarray would compile one jit(stage) per shape)


def _temporal_init(model: UNet3D, abstract: Mapping[str, Any], rng: jax.Array) -> dict[str, Any]:
  """Each temporal layer's own (identity) init, on a 1-pixel input, in one jitted call."""
  def init(rng):
    out = {}
    for i, (name, leaves) in enumerate(sorted(abstract.items())):
      c = leaves["norm"]["scale"].shape[0]
      if "temporal_conv" in name:
        layer = ub.TemporalConv(model.norm_groups, model.norm_eps)
      else:
        layer = ub.TemporalAttention(leaves["attn"]["query"]["kernel"].shape[1])
      out[name] = nn.meta.unbox(layer.init(jax.random.fold_in(rng, i), jnp.zeros((1, 1, 1, c)),
                                           1)["params"])
    return out
  return jax.jit(init)(rng)


def check(params: Any, abstract: Any) -> None:
  """Fails naming every missing / extra leaf and the first leaf whose shape differs."""
  common.check_params(params, abstract, "sd_unet")


def read_config(path: str) -> dict[str, Any]:
  file = os.path.join(path, "config.json")
  if not os.path.isfile(file):
    raise FileNotFoundError(f"sd_unet: no config.json in {path}")
  with open(file) as f:
    raw = json.load(f)
  cls = raw.get("_class_name", "UNet2DConditionModel")
  if cls != "UNet2DConditionModel":
    raise ValueError(f"sd_unet: {file} describes a {cls}, expected UNet2DConditionModel")
  return raw


def load(path_or_state: str | os.PathLike | Mapping[str, Any],
         config: Mapping[str, Any] | None = None, *, temporal: bool = True,
         rng: jax.Array | None = None, remat_policy: str = "none",
         dtype: Any = jnp.float32) -> tuple[UNet3D, dict[str, Any]]:
  """(model, params) from a ``save_pretrained`` folder, or from a state dict and its config.

  Args:
    path_or_state: a folder with ``config.json`` + ``diffusion_pytorch_model.safetensors``, or a
      ``{diffusers key: array}`` mapping (numpy or torch CPU tensors).
    config: the diffusers config (a dict or ``model.config``); required with a state dict, and
      overrides the folder's ``config.json`` when given with a path.
    temporal: add temporal layers (identity at init from ``rng``); False: a 2-D U-Net.
    remat_policy, dtype: configure the returned model (compute dtype; params stay float32).
  """
  if isinstance(path_or_state, (str, os.PathLike)):
    path = os.fspath(path_or_state)
    cfg = dict(config) if config is not None else read_config(path)
  elif config is None:
    raise ValueError("sd_unet.load(state_dict, config): a state dict needs its config")
  else:
    cfg = dict(config)
  kw = model_kwargs(cfg)  # an unsupported config fails before any weight is read
  extra = kw.pop("_extra")
  if isinstance(path_or_state, (str, os.PathLike)):
    state = read_safetensors(os.fspath(path_or_state))
  else:
    state = {k: (v.detach().cpu().float().numpy() if hasattr(v, "detach") else np.asarray(v))
             for k, v in path_or_state.items()}
  model = UNet3D(temporal=temporal, remat_policy=remat_policy, dtype=dtype, **kw)
  return model, convert(state, model, rng=rng, **extra)
