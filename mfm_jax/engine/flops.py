"""Peak-rate bookkeeping for MFU: a table of known accelerator peaks (dense bf16 FLOP/s) and a
matmul rate measured in-process where the device is not in the table (CPU)."""
from __future__ import annotations

import time

import jax
import jax.numpy as jnp
import numpy as np

# Dense bf16 peak FLOP/s per device (chip) from the vendors' data sheets.
KNOWN_PEAKS = {
    "TPU v4": 275e12, "TPU v5 lite": 197e12, "TPU v5e": 197e12, "TPU v5p": 459e12,
    "TPU v5": 459e12, "TPU v6 lite": 918e12, "TPU v6e": 918e12,
    "NVIDIA H100": 989e12, "NVIDIA H200": 989e12, "NVIDIA A100": 312e12,
}


def known_peak(device) -> float | None:
  kind = getattr(device, "device_kind", "")
  for name in sorted(KNOWN_PEAKS, key=len, reverse=True):
    if kind.startswith(name):
      return KNOWN_PEAKS[name]
  return None


def measure_matmul_flops(n: int = 1024, reps: int = 5, dtype=jnp.float32, device=None) -> float:
  """Median FLOP/s of an ``n x n @ n x n`` matmul on one device (2 n^3 FLOPs per product)."""
  device = device or jax.devices()[0]
  a = jax.device_put(jnp.asarray(np.random.default_rng(0).standard_normal((n, n)), dtype), device)
  f = jax.jit(lambda x: x @ x)
  f(a).block_until_ready()
  times = []
  for _ in range(reps):
    t = time.perf_counter()
    f(a).block_until_ready()
    times.append(time.perf_counter() - t)
  return 2 * n ** 3 / float(np.median(times))


def peak_flops_per_device(override: float | None = None) -> tuple[float, str]:
  """``(peak FLOP/s, source)``: the override, a known peak, or a measured matmul rate."""
  if override:
    return float(override), "config"
  peak = known_peak(jax.devices()[0])
  if peak:
    return peak, "datasheet"
  return measure_matmul_flops(), "measured matmul"
