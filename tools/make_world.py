"""Writes a world split as mp4 videos plus MMWorld- and VLM4D-schema JSON.

  python tools/make_world.py --out /tmp/world --size smoke
  python tools/make_world.py --out /tmp/world4 --size small --views 4 --seed 1

Same bytes for the same arguments (see mfm_jax/data/world/export.py).
"""
from __future__ import annotations

import argparse
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from mfm_jax.data.world import export  # noqa: E402  pylint: disable=g-import-not-at-top


def main(argv=None) -> None:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--out", required=True, help="output folder")
  parser.add_argument("--size", default="smoke", choices=sorted(export.SIZES))
  parser.add_argument("--views", type=int, default=1, help="orbit views K")
  parser.add_argument("--seed", type=int, default=0, help="base seed")
  parser.add_argument("--workers", type=int, default=0,
                      help="processes (0: all cores)")
  args = parser.parse_args(argv)
  counts = export.export(args.out, args.size, args.views, args.seed,
                         num_workers=args.workers or None)
  print(f"wrote {args.out}: {counts}")


if __name__ == "__main__":
  main()
