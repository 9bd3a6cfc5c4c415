"""Benchmark a config's train step: compile time, median step time, examples/s, achieved
TFLOP/s and MFU against a matmul rate measured in the same run; ``--vs-torch`` times the same
video DiT in PyTorch (eager and ``torch.compile``) with the same shapes and prints the ratio.

  python tools/bench.py --config configs/video_gen.py --steps 20 [--vs-torch] [--write]
  python tools/bench.py --config configs/video_gen.py:unet --steps 10 --sample_videos 8

``--sample_videos N`` also times the task's ``sample`` (its sampler, steps and CFG from the
config) on N validation captions: median seconds per call and per video after one compiling call
(``--sample_reps`` timed calls). ``--write`` appends the rows to BENCHMARKS.md with the exact
command.
"""
from __future__ import annotations

import datetime
import os
import platform
import shlex
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from absl import app, flags  # noqa: E402
from ml_collections import config_flags  # noqa: E402

_CONFIG = config_flags.DEFINE_config_file("config", None, "Config file (path[:arg]).")
_STEPS = flags.DEFINE_integer("steps", 20, "Timed steps (after warm-up).")
_WARMUP = flags.DEFINE_integer("warmup", 3, "Untimed steps after compilation.")
_VS_TORCH = flags.DEFINE_bool("vs_torch", False, "Also time the same DiT in PyTorch.")
_WRITE = flags.DEFINE_bool("write", False, "Append the result rows to BENCHMARKS.md.")
_SAMPLE = flags.DEFINE_integer("sample_videos", 0, "Also time sampling this many videos (0: no).")
_SAMPLE_REPS = flags.DEFINE_integer("sample_reps", 3, "Timed sampling calls (after compiling).")


def bench_jax(config, steps: int, warmup: int, sample_videos: int = 0,
              sample_reps: int = 3) -> dict:
  import flax.linen as nn
  import jax
  import numpy as np
  from mfm_jax import tasks
  from mfm_jax.engine import flops as flops_lib
  from mfm_jax.engine import mesh as mesh_lib
  from mfm_jax.engine import optim
  from mfm_jax.engine import state as state_lib
  from mfm_jax.engine import trainer

  task = tasks.get(config.task)(config)
  mesh = mesh_lib.make_mesh(config.mesh.axes)
  rules = mesh_lib.rules_from_config(config.mesh.get("rules"))
  with jax.set_mesh(mesh), nn.logical_axis_rules(rules):
    tx, sched = optim.make_optimizer(config.optimizer, config.total_steps)
    rng = jax.random.key(0)
    target, shardings = state_lib.abstract_state(task.init, tx, rng, mesh, rules, ema=False)
    state = state_lib.create_sharded(task.init, tx, rng, shardings, ema=False)
    local = next(task.make_iterator("train", config.batch_size, 0, 0, 1))
    batch = mesh_lib.global_batch(local, mesh, rules)
    step_fn = trainer.make_train_step(task, tx, sched, rng, config)
    jitted = jax.jit(step_fn, in_shardings=(shardings, jax.tree.map(lambda x: x.sharding, batch)),
                     out_shardings=(shardings, mesh_lib.replicated(mesh)), donate_argnums=(0,))
    t = time.perf_counter()
    compiled = jitted.lower(state, batch).compile()
    compile_s = time.perf_counter() - t
    for _ in range(warmup):
      state, m = compiled(state, batch)
    jax.block_until_ready(state)
    times = []
    for _ in range(steps):
      t = time.perf_counter()
      state, m = compiled(state, batch)
      jax.block_until_ready(state)
      times.append(time.perf_counter() - t)
    sample_out = bench_sample(task, state.params, sample_videos, sample_reps) if sample_videos \
        else {}
  step_s = float(np.median(times))
  fpe = task.flops_per_example()
  flops_step = 3 * fpe * config.batch_size if fpe else None
  peak = flops_lib.measure_matmul_flops()
  out = {"compile_s": compile_s, "step_s": step_s, "examples_per_s": config.batch_size / step_s,
         "peak_matmul_tflops": peak / 1e12, "devices": jax.device_count(),
         "device_kind": jax.devices()[0].device_kind, **sample_out}
  if flops_step:
    achieved = flops_step / step_s / jax.device_count()
    out.update(gflop_per_step=flops_step / 1e9, tflops_per_device=achieved / 1e12,
               mfu=achieved / peak)
  return out


def bench_sample(task, params, n: int, reps: int) -> dict:
  """Median wall time of ``task.sample`` on n validation captions (one compiling call first)."""
  import jax
  import numpy as np
  from mfm_jax.data import pipeline
  examples = pipeline.load_examples(task.config.data, task.config.eval.split, n)
  ids, mask = (jax.numpy.asarray(a) for a in task.tokenizer.encode([e["caption"]
                                                                    for e in examples]))
  shape = getattr(task, "model_shape", getattr(task, "video_shape", None))
  noise = jax.random.normal(jax.random.key(0), (len(examples),) + tuple(shape))
  t = time.perf_counter()
  jax.block_until_ready(task.sample(params, ids, mask, noise))
  first = time.perf_counter() - t
  times = []
  for _ in range(reps):
    t = time.perf_counter()
    jax.block_until_ready(task.sample(params, ids, mask, noise))
    times.append(time.perf_counter() - t)
  call = float(np.median(times))
  return {"sample_videos": len(examples), "sample_compile_s": first - call, "sample_s": call,
          "sample_s_per_video": call / len(examples)}


def main(argv):
  del argv
  config = _CONFIG.value
  res = bench_jax(config, _STEPS.value, _WARMUP.value, _SAMPLE.value, _SAMPLE_REPS.value)
  rows = [("jax", res["step_s"])]
  print(f"JAX: compile {res['compile_s']:.1f} s | step {1e3 * res['step_s']:.1f} ms (median of "
        f"{_STEPS.value}) | {res['examples_per_s']:.1f} ex/s | "
        f"{res.get('tflops_per_device', 0) * 1e3:.1f} GFLOP/s/device | MFU "
        f"{100 * res.get('mfu', 0):.1f}% of a measured {res['peak_matmul_tflops'] * 1e3:.0f} "
        f"GFLOP/s matmul")
  if "sample_s" in res:
    c = config.diffusion
    print(f"sampling: {res['sample_videos']} videos x {c.num_inference_steps} {c.sampler} steps "
          f"(CFG {c.guidance_scale}) in {res['sample_s']:.2f} s (median of {_SAMPLE_REPS.value}; "
          f"compile {res['sample_compile_s']:.1f} s) = {res['sample_s_per_video']:.3f} s/video")
  if _VS_TORCH.value:
    from tools import torch_dit  # pylint: disable=g-import-not-at-top
    for compiled in (False, True):
      times = torch_dit.time_train_step(config, steps=_STEPS.value, warmup=_WARMUP.value,
                                        compile=compiled)
      import numpy as np  # pylint: disable=g-import-not-at-top
      t = float(np.median(times))
      name = "torch.compile" if compiled else "torch eager"
      rows.append((name, t))
      print(f"{name}: step {1e3 * t:.1f} ms | JAX/{name} time ratio {res['step_s'] / t:.2f}")
  if _WRITE.value:
    cmd = "python " + " ".join(shlex.quote(a) for a in sys.argv)
    with open(os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
                           "BENCHMARKS.md"), "a") as f:
      f.write(f"\n### {datetime.date.today()} — `{cmd}`\n\n")
      f.write(f"Machine: {platform.processor() or platform.machine()}, {os.cpu_count()} cores, "
              f"{res['devices']} x {res['device_kind']}. Compile {res['compile_s']:.1f} s, "
              f"{res.get('gflop_per_step', 0):.2f} GFLOP per step, measured matmul "
              f"{res['peak_matmul_tflops'] * 1e3:.0f} GFLOP/s.\n\n")
      f.write("| implementation | median step (ms) | examples/s | vs JAX |\n|---|---|---|---|\n")
      for name, t in rows:
        f.write(f"| {name} | {1e3 * t:.1f} | {config.batch_size / t:.1f} | "
                f"{t / res['step_s']:.2f}x |\n")
      if "mfu" in res:
        f.write(f"\nJAX: {res['tflops_per_device'] * 1e3:.1f} GFLOP/s per device, "
                f"MFU {100 * res['mfu']:.1f}%.\n")
      if "sample_s" in res:
        f.write(f"\nSampling ({config.diffusion.num_inference_steps} steps, CFG "
                f"{config.diffusion.guidance_scale}): {res['sample_s_per_video']:.3f} s per video "
                f"({res['sample_videos']} videos per call, median of {_SAMPLE_REPS.value}).\n")


if __name__ == "__main__":
  flags.mark_flags_as_required(["config"])
  app.run(main)
