"""tools/aot_compile.py on fake CPU meshes: the CLI on the toy config (a fitting and a failing
sharding), and in-process on the conftest's 8 devices: fsdp=8 shards the parameters that data=8
replicates, for the toy config and the video_gen smoke config."""
import json
import os
import subprocess
import sys

import pytest

from tools import aot_compile

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
AXES = dict(data=1, fsdp=1, context=1, tensor=1)


def _cli(*args):
  env = dict(os.environ, PYTHONPATH=ROOT)
  env.pop("XLA_FLAGS", None)          # the tool sets the fake device count itself
  env.pop("JAX_PLATFORMS", None)
  return subprocess.run([sys.executable, "tools/aot_compile.py", *args], cwd=ROOT, env=env,
                        capture_output=True, text=True, timeout=300)


def test_parse_topology_and_mesh():
  t = aot_compile.parse_topology("v5e-256")
  assert (t["name"], t["chips"], t["hbm_bytes"]) == ("v5e:16x16", 256, 16 * 2 ** 30)
  assert aot_compile.parse_topology("v5litepod-8")["name"] == "v5e:2x4"
  assert aot_compile.parse_topology("v4-32")["name"] == "v4:2x2x4"       # 16 chips
  assert aot_compile.parse_topology("v5p-128")["name"] == "v5p:4x4x4"    # 64 chips
  assert aot_compile.parse_topology("v6e:4x8")["chips"] == 32
  with pytest.raises(ValueError, match="topology"):
    aot_compile.parse_topology("v9-8")
  assert aot_compile.parse_mesh("data=2,fsdp=4") == dict(AXES, data=2, fsdp=4)
  with pytest.raises(ValueError):
    aot_compile.parse_mesh("batch=8")


def test_cli_toy_fits_and_sharding_error_fails(tmp_path):
  out = tmp_path / "aot.json"
  p = _cli("--config", "configs/toy.py", "--topology", "v5e-8", "--mesh", "fsdp=8",
           "--config.model.out=8", "--json", str(out))
  assert p.returncode == 0, p.stderr[-3000:]
  assert "fake CPU mesh of 8 devices standing in for v5e-8" in p.stdout
  assert "| **total** |" in p.stdout and "FLOPs per step" in p.stdout
  rep = json.loads(out.read_text())
  assert rep["num_devices"] == 8 and rep["mesh"]["fsdp"] == 8
  for key in ("argument_bytes", "output_bytes", "temp_bytes", "total_bytes", "flops_per_device"):
    assert rep[key] > 0, key
  assert rep["params_bytes_per_device"] < rep["params_bytes_global"] / 4
  # The toy's output layer has 4 units on 'embed' -> not divisible by fsdp=8: caught at compile.
  p = _cli("--config", "configs/toy.py", "--mesh", "fsdp=8")
  assert p.returncode == 1
  assert "compilation FAILED" in p.stderr and "fsdp" in p.stderr


def _compare(config, compile_replicated=True):
  config.mesh.axes = dict(AXES, fsdp=8)
  sharded = aot_compile.compile_train_step(config)
  config.mesh.axes = dict(AXES, data=8)
  replicated = aot_compile.compile_train_step(config, compile_step=compile_replicated)
  for key in ("argument_bytes", "output_bytes", "temp_bytes", "total_bytes", "flops_per_device"):
    assert sharded[key] > 0, key
  assert replicated["params_bytes_per_device"] == replicated["params_bytes_global"]
  assert sharded["params_bytes_per_device"] < replicated["params_bytes_per_device"]
  assert sharded["opt_state_bytes_per_device"] < replicated["opt_state_bytes_per_device"]
  assert "| **total** |" in aot_compile.format_report(sharded)
  return sharded, replicated


def test_fsdp_shards_params_toy():
  from configs import toy
  c = toy.get_config()
  c.model.out = 8
  sharded, replicated = _compare(c)
  assert sharded["params_bytes_per_device"] < replicated["params_bytes_per_device"] / 4
  assert sharded["argument_bytes"] < replicated["argument_bytes"]


@pytest.mark.slow   # ~15 s of CPU: builds the smoke world and compiles the DiT step
def test_fsdp_shards_params_video_smoke():
  from configs import video_gen
  sharded, replicated = _compare(video_gen.get_config("smoke"), compile_replicated=False)
  assert sharded["params_bytes_per_device"] < replicated["params_bytes_per_device"] / 4
  assert sharded["ema_params_bytes_per_device"] > 0      # the smoke config keeps an EMA
