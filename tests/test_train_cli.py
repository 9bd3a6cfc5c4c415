"""``python -m mfm_jax.train`` as a user runs it: subprocesses, signals, restarts, two processes."""
import json
import os
import signal
import socket
import subprocess
import sys
import time

import numpy as np
import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# Subprocesses compile without LLVM optimisation (as tests/models/test_dit.py's FAST options):
# a third less CPU per smoke run; every number compared here comes from runs with the same flags.
FAST_XLA = "--xla_backend_optimization_level=0 --xla_llvm_disable_expensive_passes=true"


def _env(devices=8):
  env = dict(os.environ)
  env["XLA_FLAGS"] = f"--xla_force_host_platform_device_count={devices} {FAST_XLA}"
  env["JAX_PLATFORMS"] = "cpu"
  env["PYTHONPATH"] = ROOT
  return env


def _cmd(config, workdir, *overrides):
  return [sys.executable, "-m", "mfm_jax.train", "--config", config, "--workdir", str(workdir),
          *overrides]


def _run(config, workdir, *overrides, devices=8, timeout=600):
  p = subprocess.run(_cmd(config, workdir, *overrides), cwd=ROOT, env=_env(devices),
                     capture_output=True, text=True, timeout=timeout)
  assert p.returncode == 0, p.stderr[-3000:]
  return p


def _metrics(workdir):
  with open(os.path.join(workdir, "metrics.jsonl")) as f:
    return [json.loads(l) for l in f]


def _by_step(workdir, key):
  return {r["step"]: r[key] for r in _metrics(workdir) if key in r}


def _final_params(workdir):
  from mfm_jax.engine import checkpoint as ckpt_lib
  return ckpt_lib.read_latest_state(os.path.join(workdir, "checkpoints"))


def _wait_for(pred, proc, timeout=300):
  t = time.time()
  while time.time() - t < timeout:
    if pred():
      return True
    if proc.poll() is not None:
      return False
    time.sleep(0.01)
  return False


def _last_step(workdir):
  path = os.path.join(workdir, "metrics.jsonl")
  if not os.path.exists(path):
    return 0
  with open(path) as f:
    steps = [json.loads(l)["step"] for l in f if l.endswith("\n")]
  return max(steps, default=0)


TOY = "configs/toy.py:steps=300"
TOY_OVERRIDES = ("--config.log_every=1", "--config.checkpoint.every=150", "--config.eval_every=0",
                 "--config.model.hidden=512", "--config.model.dim=256")


def test_unknown_override_is_a_clear_error(tmp_path):
  p = subprocess.run(_cmd("configs/toy.py", tmp_path, "--config.optimizer.lrr=1"), cwd=ROOT,
                     env=_env(), capture_output=True, text=True, timeout=120)
  assert p.returncode == 2
  assert "--config.optimizer.lrr=1" in p.stderr and "'lrr'" in p.stderr and '"lr"' in p.stderr


def test_sigkill_then_restart_is_bitwise_identical(tmp_path):
  straight, killed = tmp_path / "straight", tmp_path / "killed"
  _run(TOY, straight, *TOY_OVERRIDES)
  proc = subprocess.Popen(_cmd(TOY, killed, *TOY_OVERRIDES), cwd=ROOT, env=_env(),
                          stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
  ck150 = killed / "checkpoints" / "150"
  ok = _wait_for(lambda: ck150.is_dir() and _last_step(killed) >= 160, proc)
  proc.send_signal(signal.SIGKILL)
  proc.wait()
  assert ok and proc.returncode == -signal.SIGKILL, "the run ended before it could be killed"
  assert _last_step(killed) < 300
  _run(TOY, killed, *TOY_OVERRIDES)
  s1, a = _final_params(straight)
  s2, b = _final_params(killed)
  assert s1 == s2 == 300
  for x, y in zip(*(map(np.asarray, __import__("jax").tree.leaves(t["params"])) for t in (a, b))):
    np.testing.assert_array_equal(x, y)
  # Same data order: the per-step batch checksums of steps 151..300 agree exactly.
  c1, c2 = _by_step(straight, "train/batch_checksum"), _by_step(killed, "train/batch_checksum")
  assert all(c1[s] == c2[s] for s in range(151, 301))


def test_sigterm_saves_and_resumes(tmp_path):
  proc = subprocess.Popen(_cmd(TOY, tmp_path, *TOY_OVERRIDES), cwd=ROOT, env=_env(),
                          stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
  ok = _wait_for(lambda: 20 <= _last_step(tmp_path), proc)
  proc.send_signal(signal.SIGTERM)
  out, err = proc.communicate(timeout=120)
  assert ok and proc.returncode == 0, err[-2000:]
  assert "signal" in err and "saving step" in err
  step, _ = _final_params(tmp_path)
  assert 20 <= step < 300 and step != 150
  p = _run(TOY, tmp_path, *TOY_OVERRIDES)
  assert f'"start_step": {step}' in p.stdout
  assert _final_params(tmp_path)[0] == 300


SMOKE = "configs/video_gen.py:smoke"


@pytest.mark.slow
def test_smoke_run_leaves_its_files(tmp_path):
  p = _run(SMOKE, tmp_path)
  files = set(os.listdir(tmp_path))
  assert {"checkpoints", "tensorboard", "metrics.jsonl", "config.json", "loss.png",
          "eval.json", "samples"} <= files, files
  assert any(f.startswith("events.out.tfevents") for f in os.listdir(tmp_path / "tensorboard"))
  assert any(f.endswith(".gif") for f in os.listdir(tmp_path / "samples"))
  evals = json.load(open(tmp_path / "eval.json"))
  assert evals[-1]["step"] == 6 and "eval/trajectory_error" in evals[-1]
  losses = _by_step(tmp_path, "train/loss")
  assert sorted(losses) == [2, 4, 6] and all(np.isfinite(list(losses.values())))
  assert "MFU" in p.stdout and "ETA" in p.stdout


def _free_port():
  with socket.socket() as s:
    s.bind(("localhost", 0))
    return s.getsockname()[1]


@pytest.mark.slow
def test_two_processes_match_one(tmp_path):
  one, two = tmp_path / "one", tmp_path / "two"
  over = ("--config.log_every=1", "--config.eval_every=0", "--config.checkpoint.every=100")
  _run(SMOKE, one, *over, devices=4)
  port = _free_port()
  procs = [subprocess.Popen(
      _cmd(SMOKE, two, *over, "--num_processes=2", f"--process_id={i}",
           f"--coordinator_address=localhost:{port}"),
      cwd=ROOT, env=_env(devices=2), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
      for i in range(2)]
  outs = [p.communicate(timeout=600) for p in procs]
  for p, (_, err) in zip(procs, outs):
    assert p.returncode == 0, err[-3000:]
  l1, l2 = _by_step(one, "train/loss"), _by_step(two, "train/loss")
  assert sorted(l1) == sorted(l2) == list(range(1, 7))
  # Same global batch and devices (4 = 1 x 4 = 2 x 2): only the all-reduce order differs.
  np.testing.assert_allclose([l2[s] for s in l1], [l1[s] for s in l1], rtol=1e-5)
  c1, c2 = _by_step(one, "train/batch_checksum"), _by_step(two, "train/batch_checksum")
  np.testing.assert_allclose([c2[s] for s in c1], [c1[s] for s in c1], rtol=1e-5)
