"""Metric writers (process 0 only): TensorBoard events (tensorboardX, no TensorFlow), a
``metrics.jsonl`` with one JSON object per logged step, ``config.json``, a loss-curve PNG, and a
progress line with step, loss, steps/s, examples/s, TFLOP/s per device, MFU and ETA.

Throughput excludes the first (compiling) step and time spent in evaluation and checkpointing:
the loop calls :meth:`Progress.pause` around them.
"""
from __future__ import annotations

import json
import logging
import math
import os
import time
from typing import Any, Mapping

import jax
import numpy as np

log = logging.getLogger(__name__)


def _scalar(v: Any) -> float | int | str:
  if isinstance(v, (str, bool)):
    return v
  v = np.asarray(v)
  return v.item() if v.size == 1 else float(v.mean())


class MetricWriter:
  """Writes scalars to TensorBoard and ``metrics.jsonl``. No-op on processes other than 0."""

  def __init__(self, workdir: str, enabled: bool | None = None):
    self.workdir = workdir
    self.enabled = jax.process_index() == 0 if enabled is None else enabled
    self._tb = None
    if self.enabled:
      os.makedirs(workdir, exist_ok=True)
      from tensorboardX import SummaryWriter  # pylint: disable=g-import-not-at-top
      self._tb = SummaryWriter(os.path.join(workdir, "tensorboard"))
      self._jsonl = open(os.path.join(workdir, "metrics.jsonl"), "a", encoding="utf-8")

  def write_config(self, config) -> None:
    if self.enabled:
      with open(os.path.join(self.workdir, "config.json"), "w", encoding="utf-8") as f:
        f.write(config.to_json_best_effort(indent=2) if hasattr(config, "to_json_best_effort")
                else json.dumps(config, indent=2))

  def write_scalars(self, step: int, scalars: Mapping[str, Any]) -> None:
    if not self.enabled:
      return
    row = {"step": int(step)}
    for k, v in scalars.items():
      v = _scalar(v)
      row[k] = v
      if isinstance(v, (int, float)) and not isinstance(v, bool):
        self._tb.add_scalar(k, v, int(step))
    self._jsonl.write(json.dumps(row) + "\n")
    self._jsonl.flush()

  def write_image(self, step: int, tag: str, image: np.ndarray) -> None:
    """``image: [H, W, 3] uint8``."""
    if self.enabled:
      self._tb.add_image(tag, image, int(step), dataformats="HWC")

  def close(self) -> None:
    if self.enabled:
      self._tb.flush()
      self._tb.close()
      self._jsonl.close()


def read_metrics(workdir: str) -> list[dict[str, Any]]:
  path = os.path.join(workdir, "metrics.jsonl")
  if not os.path.exists(path):
    return []
  with open(path, encoding="utf-8") as f:
    return [json.loads(line) for line in f if line.strip()]


def append_eval_json(workdir: str, row: Mapping[str, Any]) -> str:
  """Adds one evaluation to ``workdir/eval.json`` (a list, one entry per evaluated step)."""
  path = os.path.join(workdir, "eval.json")
  rows = []
  if os.path.exists(path):
    with open(path, encoding="utf-8") as f:
      rows = [r for r in json.load(f) if r.get("step") != row.get("step")]
  rows.append({k: _scalar(v) for k, v in row.items()})
  tmp = path + ".tmp"
  with open(tmp, "w", encoding="utf-8") as f:
    json.dump(sorted(rows, key=lambda r: r["step"]), f, indent=2)
  os.replace(tmp, path)
  return path


def plot_curves(workdir: str, keys=("train/loss",), out_name: str = "loss.png") -> str | None:
  """Plots the logged curves of ``keys`` into ``workdir/out_name``; returns its path."""
  rows = read_metrics(workdir)
  import matplotlib  # pylint: disable=g-import-not-at-top
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt  # pylint: disable=g-import-not-at-top
  series = {k: [(r["step"], r[k]) for r in rows if isinstance(r.get(k), (int, float))] for k in keys}
  series = {k: v for k, v in series.items() if v}
  if not series:
    return None
  fig, axes = plt.subplots(1, len(series), figsize=(5 * len(series), 3.5), squeeze=False)
  for ax, (k, pts) in zip(axes[0], series.items()):
    steps, vals = zip(*pts)
    ax.plot(steps, vals, lw=1)
    ax.set_xlabel("step")
    ax.set_title(k)
    if min(vals) > 0 and max(vals) / max(min(vals), 1e-12) > 20:
      ax.set_yscale("log")
    ax.grid(alpha=0.3)
  fig.tight_layout()
  path = os.path.join(workdir, out_name)
  fig.savefig(path, dpi=100)
  plt.close(fig)
  return path


class Progress:
  """Throughput and ETA bookkeeping; ``line()`` formats the progress line."""

  def __init__(self, total_steps: int, start_step: int, global_batch: int,
               flops_per_step: float | None, peak_flops_per_device: float | None):
    self.total = total_steps
    self.global_batch = global_batch
    self.flops_per_step = flops_per_step
    self.peak = peak_flops_per_device
    self.ndev = jax.device_count()
    self._t0 = None           # wall time when timing started (after the first, compiling step)
    self._steps0 = start_step
    self._paused = 0.0
    self._pause_t = None
    self.step = start_step

  def start(self, step: int) -> None:
    """Call after the first (compiling) step has finished."""
    self._t0, self._steps0, self._paused = time.perf_counter(), step, 0.0

  def pause(self) -> None:
    self._pause_t = time.perf_counter()

  def resume(self) -> None:
    if self._pause_t is not None:
      self._paused += time.perf_counter() - self._pause_t
      self._pause_t = None

  def rates(self, step: int) -> dict[str, float]:
    self.step = step
    if self._t0 is None or step <= self._steps0:
      return {}
    dt = time.perf_counter() - self._t0 - self._paused
    sps = (step - self._steps0) / max(dt, 1e-9)
    out = {"perf/steps_per_sec": sps, "perf/examples_per_sec": sps * self.global_batch,
           "perf/eta_sec": (self.total - step) / max(sps, 1e-9)}
    if self.flops_per_step:
      tflops = self.flops_per_step * sps / self.ndev / 1e12
      out["perf/tflops_per_device"] = tflops
      if self.peak:
        out["perf/mfu"] = tflops * 1e12 / self.peak
    return out

  def line(self, step: int, loss: float, rates: Mapping[str, float]) -> str:
    parts = [f"step {step}/{self.total}", f"loss {loss:.4f}"]
    if rates:
      parts += [f"{rates['perf/steps_per_sec']:.2f} steps/s",
                f"{rates['perf/examples_per_sec']:.1f} ex/s"]
      if "perf/tflops_per_device" in rates:
        parts.append(f"{rates['perf/tflops_per_device'] * 1e3:.1f} GFLOP/s/dev")
      if "perf/mfu" in rates:
        parts.append(f"MFU {100 * rates['perf/mfu']:.1f}%")
      parts.append(f"ETA {format_seconds(rates['perf/eta_sec'])}")
    return " | ".join(parts)


def format_seconds(s: float) -> str:
  if not math.isfinite(s):
    return "?"
  s = int(s)
  return f"{s // 3600:d}:{s % 3600 // 60:02d}:{s % 60:02d}"
