"""What every importer shares: reading safetensors (never pickles) and checking a params tree
against the model's abstract tree (also used for checkpoints, ``eval/checkpoints.py``)."""
from __future__ import annotations

import json
import os
from typing import Any

import jax
import numpy as np


def read_safetensors(path: str, filename: str, who: str) -> dict[str, np.ndarray]:
  """All tensors of ``<path>/<filename>`` (or the shards of its ``.index.json``) as float32 numpy.

  A folder with only pickled weights (``.bin``, ``.pt`` ...) fails, saying how to re-save it;
  ``who`` (e.g. "hf_clip") starts the message.
  """
  from safetensors.flax import load_file  # jax arrays: handles bf16, unlike the numpy loader

  single = os.path.join(path, filename)
  index = single + ".index.json"
  if os.path.isfile(single):
    files = [single]
  elif os.path.isfile(index):
    with open(index) as f:
      files = [os.path.join(path, s) for s in sorted(set(json.load(f)["weight_map"].values()))]
  else:
    pickles = [f for f in os.listdir(path) if f.endswith((".bin", ".pt", ".pth", ".ckpt"))]
    hint = (f" (found {pickles}: pickled weights are never loaded; re-save with "
            "save_pretrained(..., safe_serialization=True))") if pickles else ""
    raise FileNotFoundError(f"{who}: no {filename} in {path}{hint}")
  out = {}
  for file in files:
    out.update({k: np.asarray(v, np.float32) for k, v in load_file(file).items()})
  return out


def check_params(params: Any, abstract: Any, who: str) -> None:
  """Fails naming every missing / extra leaf and the first leaf whose shape differs."""
  src = {jax.tree_util.keystr(k): a for k, a in jax.tree_util.tree_leaves_with_path(params)}
  dst = {jax.tree_util.keystr(k): a for k, a in jax.tree_util.tree_leaves_with_path(abstract)}
  missing, extra = sorted(set(dst) - set(src)), sorted(set(src) - set(dst))
  if missing or extra:
    raise ValueError(f"{who}: params do not match the model; missing {missing}, "
                     f"unexpected {extra}")
  for k, a in dst.items():
    if tuple(src[k].shape) != tuple(a.shape):
      raise ValueError(f"{who}: param {k} has shape {tuple(src[k].shape)}, the model expects "
                       f"{tuple(a.shape)}")
