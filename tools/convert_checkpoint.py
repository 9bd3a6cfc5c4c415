"""Converts an external checkpoint into an orbax checkpoint that ``config.init_from`` accepts.

  python tools/convert_checkpoint.py --hf_clip /path/to/clip-vit-base-patch32 --out /tmp/clip_b32
  python tools/convert_checkpoint.py --hf_clip DIR --out OUT --scan_blocks --under encoder

``--hf_clip``: a transformers ``CLIPModel.save_pretrained`` folder (config.json and
model.safetensors), read by ``mfm_jax.convert.hf_clip``. The output is step 0 of an engine
checkpoint folder whose ``state`` item is the bare params tree (what
``engine.checkpoint.load_params`` reads: every leaf is checked against the task's model there) and
whose ``config`` item records the source and the HF config. ``--under NAME`` nests the params as
``{NAME: params}`` for a task that keeps the CLIP params below a key; ``--scan_blocks`` writes the
stacked layout of a model built with ``scan_blocks=True``.
"""
from __future__ import annotations

import argparse
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import numpy as np  # noqa: E402

from mfm_jax.convert import hf_clip  # noqa: E402
from mfm_jax.engine import checkpoint as ckpt_lib  # noqa: E402


def convert_hf_clip(src: str, out: str, scan_blocks: bool = False, under: str = "") -> dict:
  """Writes ``out`` (step 0) from the HF CLIP folder ``src``; returns the params written."""
  if os.path.isdir(out) and os.listdir(out):
    raise FileExistsError(f"--out {out} exists and is not empty; pick a new folder")
  cfg = hf_clip.read_config(src)
  model = hf_clip.model_from_config(cfg, scan_blocks=scan_blocks)
  params = hf_clip.convert(hf_clip.read_safetensors(src), model,
                           int(cfg["vision"]["num_channels"]))
  if under:
    params = {under: params}
  meta = {"source": "hf_clip", "path": os.path.abspath(src), "scan_blocks": scan_blocks,
          "under": under, "hf_config": cfg,
          "num_params": int(sum(np.size(a) for a in _leaves(params)))}
  ckpt = ckpt_lib.Checkpointer(out, max_to_keep=1, async_save=False)
  ckpt.save(0, params, config=meta)
  ckpt.close()
  return params


def _leaves(tree):
  if isinstance(tree, dict):
    for v in tree.values():
      yield from _leaves(v)
  else:
    yield tree


def main(argv=None) -> None:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--hf_clip", required=True, help="transformers CLIPModel folder")
  parser.add_argument("--out", required=True, help="output checkpoint folder (new or empty)")
  parser.add_argument("--scan_blocks", action="store_true",
                      help="stacked block layout (for models with scan_blocks=True)")
  parser.add_argument("--under", default="", help="nest the params under this key")
  args = parser.parse_args(argv)
  params = convert_hf_clip(args.hf_clip, args.out, args.scan_blocks, args.under)
  n = sum(np.size(a) for a in _leaves(params))
  print(f"wrote {args.out} (step 0): {n:,} params from {args.hf_clip}")


if __name__ == "__main__":
  main()
