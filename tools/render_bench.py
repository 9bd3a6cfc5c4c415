"""Frames/s of the pure-JAX Gaussian rasteriser (mfm_jax/render/gaussians.py).

Renders a random cloud of Gaussians (a cube of side 2 seen from distance 4, splats of
a few pixels, opacities in [0.1, 0.9]) at each image size and count, forward only and
forward+backward (gradients w.r.t. all inputs of an L2 loss), and prints a Markdown
table with the exact command. Times are medians over --reps runs after compilation
and one warm-up run.

  python tools/render_bench.py [--sizes 128,256] [--counts 10000,50000] [--reps 5]
      [--tile_size 16] [--max_per_tile 1024] [--subtile_size 4] [--max_per_subtile 128]
      [--tile_batch auto] [--reps_large N]
"""
from __future__ import annotations

import argparse
import os
import platform
import shlex
import statistics
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402

from mfm_jax.render import cameras, gaussians  # noqa: E402


def make_cloud(n: int, seed: int = 0) -> dict:
  """n random Gaussians in [-1, 1]^3, each a few pixels wide at 128-256 px."""
  rng = np.random.default_rng(seed)
  return dict(
      means=rng.uniform(-1.0, 1.0, size=(n, 3)),
      scales=np.exp(rng.normal(size=(n, 3)) * 0.3) * 0.02,
      quats=rng.normal(size=(n, 4)),
      opacities=rng.uniform(0.1, 0.9, size=n),
      colors=rng.uniform(size=(n, 3)),
  )


def bench_one(size: int, n: int, reps: int, backward: bool, render_kw: dict) -> dict:
  """Median seconds per frame (and compile seconds) for one configuration."""
  cloud = {k: jnp.asarray(v, jnp.float32) for k, v in make_cloud(n).items()}
  cam = cameras.from_fov(50.0, size, size, cameras.look_at(jnp.asarray([0.0, -4.0, 1.0]),
                                                           jnp.zeros(3)))
  target = jnp.full((size, size, 3), 0.5)

  def forward(p):
    out = gaussians.render(p["means"], p["scales"], p["quats"], p["opacities"], p["colors"],
                           cam, width=size, height=size, **render_kw)
    return out["rgb"]

  def loss(p):
    return jnp.mean((forward(p) - target) ** 2)

  fn = jax.jit(jax.grad(loss) if backward else forward)
  t = time.perf_counter()
  compiled = fn.lower(cloud).compile()
  compile_s = time.perf_counter() - t
  jax.block_until_ready(compiled(cloud))
  times = []
  for _ in range(reps):
    t = time.perf_counter()
    jax.block_until_ready(compiled(cloud))
    times.append(time.perf_counter() - t)
  stats = gaussians.tile_overflow(cloud["means"], cloud["scales"], cloud["quats"],
                                  cloud["opacities"], cam, width=size, height=size,
                                  **{k: v for k, v in render_kw.items() if k != "tile_batch"})
  return dict(median_s=statistics.median(times), compile_s=compile_s,
              overflow=f"{int(stats['overflow_tiles'])}/{stats['tile_counts'].size}",
              sub_overflow=f"{int(stats['overflow_subtiles'])}/{stats['subtile_counts'].size}")


def main(argv=None) -> None:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--sizes", default="128,256")
  parser.add_argument("--counts", default="10000,50000")
  parser.add_argument("--reps", type=int, default=5)
  parser.add_argument("--reps_large", type=int, default=None,
                      help="reps for the largest size x count (default --reps)")
  parser.add_argument("--tile_size", type=int, default=16)
  parser.add_argument("--max_per_tile", type=int, default=1024)
  parser.add_argument("--subtile_size", type=int, default=4)
  parser.add_argument("--max_per_subtile", type=int, default=128)
  parser.add_argument("--tile_batch", default="auto", help="\"auto\", \"all\" (vmap) or an int")
  parser.add_argument("--modes", default="fwd,fwd+bwd")
  args = parser.parse_args(argv)
  sizes = [int(s) for s in args.sizes.split(",")]
  counts = [int(c) for c in args.counts.split(",")]
  render_kw = dict(tile_size=args.tile_size, max_per_tile=args.max_per_tile,
                   subtile_size=args.subtile_size, max_per_subtile=args.max_per_subtile,
                   tile_batch=(args.tile_batch if args.tile_batch == "auto" else
                               None if args.tile_batch == "all" else int(args.tile_batch)))
  command = "python tools/render_bench.py " + " ".join(shlex.quote(a) for a in sys.argv[1:])
  rows = []
  for size in sizes:
    for n in counts:
      for mode in args.modes.split(","):
        largest = size == max(sizes) and n == max(counts)
        reps = args.reps_large if (largest and args.reps_large) else args.reps
        r = bench_one(size, n, reps, mode == "fwd+bwd", render_kw)
        rows.append((size, n, mode, reps, r))
        print(f"# {size}x{size} N={n} {mode}: {r['median_s'] * 1e3:.1f} ms "
              f"(compile {r['compile_s']:.1f} s)", file=sys.stderr, flush=True)
  load = ", ".join(f"{x:.1f}" for x in os.getloadavg())
  print(f"`{command.strip()}` on {platform.machine()} CPU ({os.cpu_count()} cores, "
        f"load average {load} at the end), "
        f"JAX {jax.__version__}, tiles {args.tile_size} px / K_t {args.max_per_tile}, "
        f"sub-tiles {args.subtile_size} px / K_s {args.max_per_subtile}, "
        f"tile_batch {args.tile_batch}:\n")
  print("| image | Gaussians | pass | ms / frame | frames/s | reps | compile s "
        "| tiles over K_t | sub-tiles over K_s |")
  print("|---|---|---|---|---|---|---|---|---|")
  for size, n, mode, reps, r in rows:
    print(f"| {size}×{size} | {n:,} | {mode} | {r['median_s'] * 1e3:.1f} | "
          f"{1.0 / r['median_s']:.2f} | {reps} | {r['compile_s']:.1f} | "
          f"{r['overflow']} | {r['sub_overflow']} |")


if __name__ == "__main__":
  main()
