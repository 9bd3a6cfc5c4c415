"""Import a diffusers ``AutoencoderKL`` (Stable Diffusion VAE) ``save_pretrained`` folder.

```
from mfm_jax.convert import sd_vae
model, params = sd_vae.load(path)                  # folder: config.json + safetensors
mean, logvar = model.apply({"params": params}, images, method=model.encode)  # [B, H, W, 3]
z = vae.encode_latents(model, params, video)       # [B, T, H, W, 3] -> scaled latents
```

``encode`` gives diffusers' ``encode(x).latent_dist.mean`` / ``.logvar`` and ``decode`` its
``decode(z).sample``, in NHWC (diffusers: NCHW). ``scaling_factor`` / ``shift_factor`` come from
the config. ``load(path, temporal_downsample=True)`` builds the video model with the temporal x2
pair and fills its spatial layers; the two temporal convs keep their init (pair mean / identity,
see ``mfm_jax.models.vae``).

Rules as ``hf_clip``: the model comes from ``config.json`` (only ``DownEncoderBlock2D`` /
``UpDecoderBlock2D`` blocks, ``silu``, group norm); weights from
``diffusion_pytorch_model.safetensors`` (or its sharded index) only, never a pickle; every key
goes through the explicit table :func:`key_table`; a key the table does not know, an expected key
that is missing, and a converted leaf whose shape differs from ``jax.eval_shape`` of the model all
fail naming the key. Transforms: conv ``OIHW -> HWIO``; attention ``Linear [out, in]`` ->
``Dense [in, heads=1, out]`` (q, k, v) and ``[heads=1, in, out]`` (out); GroupNorm weight ->
``scale``.
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
from mfm_jax.models import vae

WEIGHTS = "diffusion_pytorch_model.safetensors"
DEFAULTS = dict(in_channels=3, out_channels=3, down_block_types=["DownEncoderBlock2D"],
                up_block_types=["UpDecoderBlock2D"], block_out_channels=[64],
                layers_per_block=1, act_fn="silu", latent_channels=4, norm_num_groups=32,
                scaling_factor=0.18215, shift_factor=None, use_quant_conv=True,
                use_post_quant_conv=True, mid_block_add_attention=True)

Transform = Callable[[np.ndarray], np.ndarray]


def _copy(a):
  return a


def _conv(a):  # torch Conv2d [O, I, kh, kw] -> flax [kh, kw, I, O]
  return a.transpose(2, 3, 1, 0)


def _qkv(a):  # Linear [out, in] -> Dense [in, 1, out]
  return a.T[:, None, :]


def _qkv_bias(a):  # [out] -> [1, out]
  return a[None]


def _attn_out(a):  # Linear [out, in] -> Dense [1, in, out]
  return a.T[None]


def _conv_keys(src: str, dst: tuple[str, ...]) -> dict[str, tuple[tuple[str, ...], Transform]]:
  return {f"{src}.weight": ((*dst, "kernel"), _conv), f"{src}.bias": ((*dst, "bias"), _copy)}


def _norm_keys(src: str, dst: tuple[str, ...]) -> dict[str, tuple[tuple[str, ...], Transform]]:
  return {f"{src}.weight": ((*dst, "scale"), _copy), f"{src}.bias": ((*dst, "bias"), _copy)}


def _resnet(src: str, dst: tuple[str, ...], shortcut: bool) -> dict:
  out = {}
  for n in ("norm1", "norm2"):
    out.update(_norm_keys(f"{src}.{n}", (*dst, n)))
  for n in ("conv1", "conv2") + (("conv_shortcut",) if shortcut else ()):
    out.update(_conv_keys(f"{src}.{n}", (*dst, n)))
  return out


def _mid(src: str, dst: tuple[str, ...], attention: bool) -> dict:
  out = {**_resnet(f"{src}.resnets.0", (*dst, "resnet_0"), False),
         **_resnet(f"{src}.resnets.1", (*dst, "resnet_1"), False)}
  if attention:
    a = f"{src}.attentions.0"
    out.update(_norm_keys(f"{a}.group_norm", (*dst, "attn_norm")))
    for hf, ours in (("to_q", "query"), ("to_k", "key"), ("to_v", "value")):
      out[f"{a}.{hf}.weight"] = ((*dst, "attn", ours, "kernel"), _qkv)
      out[f"{a}.{hf}.bias"] = ((*dst, "attn", ours, "bias"), _qkv_bias)
    out[f"{a}.to_out.0.weight"] = ((*dst, "attn", "out", "kernel"), _attn_out)
    out[f"{a}.to_out.0.bias"] = ((*dst, "attn", "out", "bias"), _copy)
  return out


def key_table(cfg: Mapping[str, Any]) -> dict[str, tuple[tuple[str, ...], Transform]]:
  """Every expected diffusers key -> (our param path, transform), for a :func:`read_config`."""
  chans, n = list(cfg["block_out_channels"]), int(cfg["layers_per_block"])
  attn = bool(cfg["mid_block_add_attention"])
  t: dict[str, tuple[tuple[str, ...], Transform]] = {}
  t.update(_conv_keys("encoder.conv_in", ("encoder", "conv_in")))
  prev = chans[0]
  for i, c in enumerate(chans):
    for j in range(n):
      t.update(_resnet(f"encoder.down_blocks.{i}.resnets.{j}", ("encoder", f"down_{i}_resnet_{j}"),
                       (prev if j == 0 else c) != c))
    if i < len(chans) - 1:
      t.update(_conv_keys(f"encoder.down_blocks.{i}.downsamplers.0.conv",
                          ("encoder", f"down_{i}_downsample")))
    prev = c
  t.update(_mid("encoder.mid_block", ("encoder", "mid"), attn))
  t.update(_norm_keys("encoder.conv_norm_out", ("encoder", "norm_out")))
  t.update(_conv_keys("encoder.conv_out", ("encoder", "conv_out")))
  t.update(_conv_keys("decoder.conv_in", ("decoder", "conv_in")))
  t.update(_mid("decoder.mid_block", ("decoder", "mid"), attn))
  rev = chans[::-1]
  prev = rev[0]
  for i, c in enumerate(rev):
    for j in range(n + 1):
      t.update(_resnet(f"decoder.up_blocks.{i}.resnets.{j}", ("decoder", f"up_{i}_resnet_{j}"),
                       (prev if j == 0 else c) != c))
    if i < len(rev) - 1:
      t.update(_conv_keys(f"decoder.up_blocks.{i}.upsamplers.0.conv",
                          ("decoder", f"up_{i}_upsample")))
    prev = c
  t.update(_norm_keys("decoder.conv_norm_out", ("decoder", "norm_out")))
  t.update(_conv_keys("decoder.conv_out", ("decoder", "conv_out")))
  if cfg["use_quant_conv"]:
    t.update(_conv_keys("quant_conv", ("quant_conv",)))
  if cfg["use_post_quant_conv"]:
    t.update(_conv_keys("post_quant_conv", ("post_quant_conv",)))
  return t


def read_config(path: str) -> dict[str, Any]:
  """The folder's ``config.json`` with diffusers' ``AutoencoderKL`` defaults filled in."""
  file = os.path.join(path, "config.json")
  if not os.path.isfile(file):
    raise FileNotFoundError(f"sd_vae: no config.json in {path}")
  with open(file) as f:
    raw = json.load(f)
  name = raw.get("_class_name", "AutoencoderKL")
  if name != "AutoencoderKL":
    raise ValueError(f"sd_vae: {file} has _class_name={name!r}, expected 'AutoencoderKL'")
  cfg = {k: raw[k] if raw.get(k) is not None else v for k, v in DEFAULTS.items()}
  cfg["shift_factor"] = raw.get("shift_factor")
  for key, want in (("down_block_types", "DownEncoderBlock2D"),
                    ("up_block_types", "UpDecoderBlock2D")):
    bad = [b for b in cfg[key] if b != want]
    if bad or len(cfg[key]) != len(cfg["block_out_channels"]):
      raise ValueError(f"sd_vae: {key}={cfg[key]} is not supported; expected "
                       f"{len(cfg['block_out_channels'])} x {want!r}")
  if cfg["act_fn"] not in ("silu", "swish"):
    raise ValueError(f"sd_vae: act_fn={cfg['act_fn']!r} is not supported (silu only)")
  if raw.get("latents_mean") is not None or raw.get("latents_std") is not None:
    raise ValueError("sd_vae: per-channel latents_mean / latents_std are not supported")
  return cfg


def model_from_config(cfg: Mapping[str, Any], *, temporal_downsample: bool = False,
                      dtype: Any = jnp.float32) -> vae.AutoencoderKL:
  """``vae.AutoencoderKL`` for a :func:`read_config` dict."""
  return vae.AutoencoderKL(
      in_channels=int(cfg["in_channels"]), out_channels=int(cfg["out_channels"]),
      block_out_channels=tuple(int(c) for c in cfg["block_out_channels"]),
      layers_per_block=int(cfg["layers_per_block"]),
      latent_channels=int(cfg["latent_channels"]), norm_num_groups=int(cfg["norm_num_groups"]),
      mid_attention=bool(cfg["mid_block_add_attention"]),
      use_quant_conv=bool(cfg["use_quant_conv"]),
      use_post_quant_conv=bool(cfg["use_post_quant_conv"]),
      temporal_downsample=temporal_downsample, scaling_factor=float(cfg["scaling_factor"]),
      shift_factor=float(cfg["shift_factor"] or 0.0), dtype=dtype)


def read_safetensors(path: str) -> dict[str, np.ndarray]:
  """All tensors of the folder's weights file (or its shards) as float32 numpy."""
  return common.read_safetensors(path, WEIGHTS, "sd_vae")


def abstract_params(model: vae.AutoencoderKL) -> Any:
  """Unboxed ``jax.ShapeDtypeStruct`` tree of the model's params (``jax.eval_shape``)."""
  f = model.spatial_factor
  shape = (1, 2, f, f, model.in_channels) if model.temporal_downsample else (1, f, f,
                                                                           model.in_channels)
  x = jax.ShapeDtypeStruct(shape, jnp.float32)
  return nn.meta.unbox(jax.eval_shape(model.init, jax.random.key(0), x)["params"])


def convert(state: Mapping[str, np.ndarray], model: vae.AutoencoderKL,
            cfg: Mapping[str, Any]) -> dict[str, Any]:
  """diffusers state dict -> our params (numpy float32), checked against ``jax.eval_shape``."""
  table = key_table(cfg)
  extra = sorted(k for k in state if k not in table)
  missing = sorted(k for k in table if k not in state)
  if missing or extra:
    raise ValueError(f"sd_vae: checkpoint keys do not match the model; missing {missing}, "
                     f"unexpected {extra}")
  abstract = abstract_params(model)
  params: dict[str, Any] = {}
  for key, (path, fn) in table.items():
    value = np.asarray(fn(state[key]), np.float32)
    want = abstract
    for p in path:
      want = want.get(p) if isinstance(want, Mapping) else None
      if want is None:
        raise ValueError(f"sd_vae: {key} maps to {'/'.join(path)}, which the model lacks")
    if tuple(value.shape) != tuple(want.shape):
      raise ValueError(f"sd_vae: {key} of shape {tuple(state[key].shape)} converts to "
                       f"{tuple(value.shape)}, the model expects {tuple(want.shape)} at "
                       f"{'/'.join(path)}")
    node = params
    for p in path[:-1]:
      node = node.setdefault(p, {})
    node[path[-1]] = value
  if model.temporal_downsample:  # not in a 2-D checkpoint: keep the (deterministic) init
    for side, name, init in (("encoder", "temporal_down", vae.temporal_down_init),
                             ("decoder", "temporal_up", vae.temporal_up_init)):
      a = abstract[side][name]["conv"]
      params[side][name] = {"conv": {"kernel": np.asarray(init(None, a["kernel"].shape)),
                                     "bias": np.zeros(a["bias"].shape, np.float32)}}
  check(params, abstract)
  return params


def check(params: Any, abstract: Any) -> None:
  """Fails naming every missing / extra leaf and the first leaf whose shape differs."""
  common.check_params(params, abstract, "sd_vae")


def load(path: str, *, temporal_downsample: bool = False, dtype: Any = jnp.float32
         ) -> tuple[vae.AutoencoderKL, dict[str, Any]]:
  """(model, params) from an ``AutoencoderKL.save_pretrained`` folder; params as jax float32.

  ``temporal_downsample`` builds the video model with the temporal x2 pair (left at its init);
  ``dtype`` is the compute dtype.
  """
  cfg = read_config(path)
  model = model_from_config(cfg, temporal_downsample=temporal_downsample, dtype=dtype)
  params = convert(read_safetensors(path), model, cfg)
  return model, jax.tree.map(jnp.asarray, params)
