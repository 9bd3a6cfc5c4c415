"""JAX (Flax) params of the video-diffusion task -> the PyTorch modules of ``tools/torch_dit``.

``key_table`` lists, for every torch parameter, the JAX leaves it is made of (path and shape)
and how: Dense kernels ``[in, out]`` transpose to ``nn.Linear`` weights ``[out, in]``; attention
kernels ``[D, N, Dh]`` flatten and concatenate into the fused ``qkv`` / ``kv`` weights; out
kernels ``[N, Dh, D]`` flatten; the tubelet kernel ``[pt, ph, pw, C, D]`` flattens in patchify
order. ``load_jax_params`` checks every leaf's shape and fails naming every missing or
unexpected key, in the spirit of ``mfm_jax/convert``.
"""
from __future__ import annotations

import math
from typing import Any, Callable

import numpy as np
import torch

# torch name -> ([(JAX path, JAX shape), ...], numpy arrays -> value of the torch shape)
Row = tuple[list[tuple[tuple[str, ...], tuple[int, ...]]], Callable[[list[np.ndarray]], Any]]


def key_table(model: torch.nn.Module) -> dict[str, Row]:
  """Every torch parameter name -> the JAX leaves (path, shape) it is made of and how."""
  rows: dict[str, Row] = {}

  def dense(tn, jp, lin):
    rows[tn + ".weight"] = ([(jp + ("kernel",), (lin.in_features, lin.out_features))],
                            lambda a: a[0].T)
    rows[tn + ".bias"] = ([(jp + ("bias",), (lin.out_features,))], lambda a: a[0])

  def norm(tn, jp, d):
    rows[tn + ".weight"] = ([(jp + ("scale",), (d,))], lambda a: a[0])
    rows[tn + ".bias"] = ([(jp + ("bias",), (d,))], lambda a: a[0])

  def mlp(tn, jp, m):
    dense(tn + ".fc1", jp + ("fc1",), m.fc1)
    dense(tn + ".fc2", jp + ("fc2",), m.fc2)

  def attn(tn, jp, a):
    n, dh = a.num_heads, a.head_dim
    groups = [("q", ["query"]), ("kv", ["key", "value"])] if a.cross else [
        ("qkv", ["query", "key", "value"])]
    for tname, jnames in groups:
      din = getattr(a, tname).in_features
      rows[f"{tn}.{tname}.weight"] = (
          [(jp + (j, "kernel"), (din, n, dh)) for j in jnames],
          lambda a: np.concatenate([k.reshape(k.shape[0], -1).T for k in a]))
      rows[f"{tn}.{tname}.bias"] = ([(jp + (j, "bias"), (n, dh)) for j in jnames],
                                    lambda a: np.concatenate([b.reshape(-1) for b in a]))
    d = a.out.out_features
    rows[tn + ".out.weight"] = ([(jp + ("out", "kernel"), (n, dh, d))],
                                lambda a: a[0].reshape(-1, a[0].shape[-1]).T)
    rows[tn + ".out.bias"] = ([(jp + ("out", "bias"), (d,))], lambda a: a[0])

  tx = model.text
  v, d = tx.embedding.weight.shape
  rows["text.embedding.weight"] = ([(("text", "embedding"), (v, d))], lambda a: a[0])
  if tx.patch_proj is not None:
    dense("text.patch_proj", ("text", "patch_proj"), tx.patch_proj)
  rows["text.pos_embedding"] = ([(("text", "pos_embedding"), tuple(tx.pos_embedding.shape))],
                                lambda a: a[0])
  for i, blk in enumerate(tx.blocks):
    tn, jp = f"text.blocks.{i}", ("text", f"block_{i}")
    norm(tn + ".norm1", jp + ("norm1",), d)
    attn(tn + ".attn", jp + ("attn",), blk.attn)
    norm(tn + ".norm2", jp + ("norm2",), d)
    mlp(tn + ".mlp", jp + ("mlp",), blk.mlp)
  norm("text.final_norm", ("text", "final_norm"), d)

  dit = model.dit
  width = dit.patch_embed.out_features
  kshape = (*dit.patch, dit.patch_embed.in_features // math.prod(dit.patch), width)
  rows["dit.patch_embed.weight"] = ([(("dit", "patch_embed", "kernel"), kshape)],
                                    lambda a: a[0].reshape(-1, a[0].shape[-1]).T)
  rows["dit.patch_embed.bias"] = ([(("dit", "patch_embed", "bias"), (width,))], lambda a: a[0])
  mlp("dit.t_embed", ("dit", "t_embed"), dit.t_embed)
  dense("dit.pooled_fc1", ("dit", "pooled_fc1"), dit.pooled_fc1)
  dense("dit.pooled_fc2", ("dit", "pooled_fc2"), dit.pooled_fc2)
  if dit.text_proj is not None:
    mlp("dit.text_proj", ("dit", "text_proj"), dit.text_proj)
  for i, blk in enumerate(dit.blocks):
    tn, jp = f"dit.blocks.{i}", ("dit", f"block_{i}")
    dense(tn + ".adaln", jp + ("adaln", "proj"), blk.adaln)
    for name in blk.branches:
      attn(f"{tn}.attn.{name}", jp + (name,), blk.attn[name])
    if blk.cross_attention:
      norm(tn + ".norm_cross", jp + ("norm_cross",), width)
      attn(tn + ".cross_attn", jp + ("cross_attn",), blk.cross_attn)
    mlp(tn + ".mlp", jp + ("mlp",), blk.mlp)
  dense("dit.final_adaln", ("dit", "final_adaln", "proj"), dit.final_adaln)
  dense("dit.final_proj", ("dit", "final_proj"), dit.final_proj)
  return rows


def _flatten(tree: Any, prefix: tuple[str, ...] = ()) -> dict[tuple[str, ...], np.ndarray]:
  if hasattr(tree, "unbox"):  # a boxed (LogicallyPartitioned) leaf
    tree = tree.unbox()
  if not hasattr(tree, "items"):
    return {prefix: np.asarray(tree, np.float32)}
  out = {}
  for k, v in tree.items():
    out.update(_flatten(v, prefix + (str(k),)))
  return out


def jax_to_torch_state(model: torch.nn.Module, params: Any) -> dict[str, torch.Tensor]:
  """A JAX tree shaped like ``task.init``'s params (or grads) -> {torch name: tensor}.

  Raises:
    KeyError: naming every missing and every unexpected JAX key.
    ValueError: naming a leaf whose shape differs from what the torch model needs.
  """
  flat = _flatten(params)
  if ("dit", "blocks") in {k[:2] for k in flat}:  # scan_blocks layout -> block_i
    for k in [k for k in flat if k[:2] == ("dit", "blocks")]:
      for i, a in enumerate(flat.pop(k)):
        flat[("dit", f"block_{i}") + k[2:]] = a
  table = key_table(model)
  names = dict(model.named_parameters())
  if set(table) != set(names):
    raise AssertionError(f"key_table out of sync with the torch model: "
                         f"{sorted(set(table) ^ set(names))}")
  missing, used, out = [], set(), {}
  for tname, (sources, convert) in table.items():
    arrays = []
    for path, shape in sources:
      if path not in flat:
        missing.append("/".join(path))
        continue
      if flat[path].shape != shape:
        raise ValueError(f"JAX param {'/'.join(path)} has shape {flat[path].shape}, torch "
                         f"{tname} needs {shape}")
      arrays.append(flat[path])
      used.add(path)
    if len(arrays) == len(sources):
      value = np.array(convert(arrays), np.float32, order="C")  # a C-contiguous copy
      if value.shape != tuple(names[tname].shape):
        raise ValueError(f"{tname}: converted {value.shape} != torch {tuple(names[tname].shape)}")
      out[tname] = torch.from_numpy(value)
  extra = sorted("/".join(k) for k in set(flat) - used)
  if missing or extra:
    raise KeyError(f"JAX params do not match the torch model: missing {missing}, "
                   f"unexpected {extra}")
  return out


def load_jax_params(model: torch.nn.Module, params: Any) -> torch.nn.Module:
  """Copies ``{"text": ..., "dit": ...}`` (from ``task.init``, boxed or unboxed) into ``model``."""
  state = jax_to_torch_state(model, params)
  with torch.no_grad():
    for name, p in model.named_parameters():
      p.copy_(state[name])
  return model
