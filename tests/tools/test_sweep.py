"""tools/sweep.py: expansion (product / zip / names / checks), a 2-run local sweep of the toy
config with --parallel 2 and its collection, the emitted TPU and Slurm scripts, failing runs."""
import csv
import json
import os
import shutil
import subprocess
import sys

import pytest

from tools import sweep, sweep_collect

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
h = sweep.Hyper()


@pytest.fixture(autouse=True)
def _in_repo(monkeypatch):
  monkeypatch.chdir(ROOT)          # config paths are relative to the repository


def test_product_zip_chain():
  grid = h.product([h.sweep("config.a", [1, 2]),
                    h.zip([h.sweep("config.b", ["x", "y"]), h.sweep("config.c", [0.1, 0.2])])])
  assert grid == [{"config.a": 1, "config.b": "x", "config.c": 0.1},
                  {"config.a": 1, "config.b": "y", "config.c": 0.2},
                  {"config.a": 2, "config.b": "x", "config.c": 0.1},
                  {"config.a": 2, "config.b": "y", "config.c": 0.2}]
  assert h.chain([h.fixed("config.a", 1), h.sweep("config.a", [2])]) == [{"config.a": 1},
                                                                          {"config.a": 2}]
  with pytest.raises(ValueError, match="different lengths"):
    h.zip([h.sweep("config.a", [1, 2]), h.sweep("config.b", [1])])
  with pytest.raises(ValueError, match="set twice"):
    h.product([h.sweep("config.a", [1]), h.sweep("config.a", [2])])
  names = sweep.run_names(h.product([
      h.sweep("config.optimizer.lr", [1e-3, 3e-3]),
      h.zip([h.sweep("config.model.width", [8, 16]), h.sweep("config.model.text.width", [4, 16])]),
      h.fixed("config.model.variant", "XS/4")]))
  # constant keys are left out; keys whose last parts clash keep more of their path
  assert names == ["lr=0.001_model.width=8_text.width=4", "lr=0.001_model.width=16_text.width=16",
                   "lr=0.003_model.width=8_text.width=4", "lr=0.003_model.width=16_text.width=16"]
  assert sweep.run_names([{"config.v": "B/2"}, {"config.v": "B-2"}]) == ["v=B-2", "v=B-2_2"]
  assert sweep.format_value(True) == "true" and sweep.format_value((1, 2)) == "(1, 2)"


def test_expand_toy_sweep_and_checks():
  runs = sweep.expand("configs/toy.py:steps=5", {"config.log_every": "1"})
  assert [r.name for r in runs] == ["lr=0.003_hidden=32", "lr=0.003_hidden=64",
                                    "lr=0.01_hidden=32", "lr=0.01_hidden=64"]
  cmd = sweep.train_command(runs[1], "/tmp/r", "python")
  assert cmd == ["python", "-m", "mfm_jax.train", "--config", "configs/toy.py:steps=5",
                 "--workdir", "/tmp/r/lr=0.003_hidden=64", "--config.optimizer.lr=0.003",
                 "--config.model.hidden=64", "--config.log_every=1"]
  runs = sweep.expand("configs/toy.py", points=h.sweep("arg", ["steps=3", "steps=4,batch=8"]))
  assert [r.config for r in runs] == ["configs/toy.py:steps=3", "configs/toy.py:steps=4,batch=8"]
  with pytest.raises(KeyError, match="config.model.nope"):
    sweep.expand("configs/toy.py", points=h.sweep("config.model.nope", [1, 2]))
  with pytest.raises(ValueError, match="use 'config.a.b'"):
    sweep.expand("configs/toy.py", points=h.sweep("lr", [1, 2]))
  assert len(sweep.expand("configs/video_gen.py:smoke")) == 6


def test_local_sweep_parallel_and_collect(tmp_path):
  root = tmp_path / "toy_sweep"
  env = dict(os.environ, PYTHONPATH=ROOT, JAX_PLATFORMS="cpu",
             XLA_FLAGS="--xla_force_host_platform_device_count=1")
  p = subprocess.run(
      [sys.executable, "tools/sweep.py", "--config", "configs/toy.py:steps=6", "--root", str(root),
       "--run", "local", "--parallel", "2", "--filter", "hidden=32$", "--config.eval_every=6",
       "--config.checkpoint.every=6", "--config.log_every=3"],
      cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
  assert p.returncode == 0, p.stdout[-3000:] + p.stderr[-3000:]
  assert "2/2 runs succeeded" in p.stdout
  starts = [i for i, l in enumerate(p.stdout.splitlines()) if "[sweep] start" in l]
  assert starts == [1, 2]          # both started before either finished: 2 at a time
  names = ["lr=0.003_hidden=32", "lr=0.01_hidden=32"]
  for n in names:
    assert (root / n / "eval.json").exists() and (root / n / "train.log").exists()
  res = sweep_collect.collect(str(root), x="optimizer.lr", log=lambda *_: None)
  assert [r["run"] for r in res["rows"]] == names
  assert [r["optimizer.lr"] for r in res["rows"]] == [0.003, 0.01]
  assert all(r["status"] == "ok" and r["step"] == 6 for r in res["rows"])
  assert res["metric"] == "eval/mse" and os.path.getsize(res["plot"]) > 1000
  with open(res["csv"]) as f:
    table = list(csv.DictReader(f))
  assert [t["run"] for t in table] == names and float(table[0]["eval/mse"]) > 0
  md = open(res["markdown"]).read()
  assert "| run | optimizer.lr | status | step | eval/mse |" in md
  # without the manifest the swept values come from the runs' config.json
  os.remove(root / "sweep.json")
  rows = sweep_collect.gather(str(root))[0]
  assert [r["optimizer.lr"] for r in rows] == [0.003, 0.01]


def test_failing_run_is_reported_and_others_continue(tmp_path):
  lines = []
  ok = [sys.executable, "-c", "import time; time.sleep(0.5); print('fine')"]
  bad = [sys.executable, "-c", "import sys; print('boom: bad config'); sys.exit(3)"]
  jobs = [(n, c, str(tmp_path / n)) for n, c in (("a", bad), ("b", ok), ("c", ok))]
  results = sweep.run_local(jobs, parallel=2, poll=0.05, log=lines.append)
  assert {r["name"]: r["rc"] for r in results} == {"a": 3, "b": 0, "c": 0}
  text = "\n".join(lines)
  assert "a: FAILED (exit 3)" in text and "boom: bad config" in text
  assert json.loads((tmp_path / "a" / "sweep_run.json").read_text())["rc"] == 3
  (tmp_path / "b" / "results.json").write_text(json.dumps({"overall": 55.0, "per": {"count": 40}}))
  rows = sweep_collect.gather(str(tmp_path))[0]
  assert {r["run"]: r["status"] for r in rows} == {"a": "failed (exit 3)", "b": "ok", "c": "ok"}
  assert rows[1]["results/overall"] == 55.0 and rows[1]["results/per.count"] == 40


def _emit(tmp_path, *args):
  out = tmp_path / "script.sh"
  rc = sweep.main(["--config", "configs/toy.py", "--root", "gs://bucket/toy", "--out", str(out),
                   "--config.total_steps=7", *args])
  assert rc == 0
  text = out.read_text()
  if shutil.which("bash"):
    assert subprocess.run(["bash", "-n", str(out)]).returncode == 0, text
  return text


def test_emit_tpu_and_slurm(tmp_path):
  text = _emit(tmp_path, "--emit", "tpu", "--tpu_name", "my-tpu", "--zone", "us-west4-a",
               "--remote_setup", "source ~/venv/bin/activate")
  lines = [l for l in text.splitlines() if "gcloud" in l]
  assert len(lines) == 4
  for l in lines:
    assert ("gcloud compute tpus tpu-vm ssh my-tpu --zone us-west4-a --worker=all --command "
            '"cd ~/mfm_jax && source ~/venv/bin/activate && python3 -m mfm_jax.train '
            "--config configs/toy.py --workdir gs://bucket/toy/lr=") in l
    assert "--distributed" in l and l.endswith('--config.total_steps=7"')
  assert "--config.optimizer.lr=0.01 --config.model.hidden=64" in lines[3]
  two = _emit(tmp_path, "--emit", "tpu", "--tpu_name", "a,b")
  assert two.count("tpu-vm ssh a ") == 2 and two.count("tpu-vm ssh b ") == 2 and "wait" in two

  text = _emit(tmp_path, "--emit", "slurm", "--nodes", "2", "--gpus_per_node", "4",
               "--partition", "gpu", "--time", "1:00:00", "--max_concurrent", "2",
               "--log_dir", str(tmp_path / "logs"))
  for want in ("#SBATCH --array=0-3%2", "#SBATCH --nodes=2", "#SBATCH --ntasks-per-node=4",
               "#SBATCH --gpus-per-node=4", "#SBATCH --partition=gpu", "#SBATCH --time=1:00:00",
               f"#SBATCH --output={tmp_path / 'logs'}/%x_%A_%a.out", 'case "$SLURM_ARRAY_TASK_ID"',
               "  3) srun python3 -m mfm_jax.train --config configs/toy.py --workdir "
               "gs://bucket/toy/lr=0.01_hidden=64 --distributed --config.optimizer.lr=0.01 "
               "--config.model.hidden=64 --config.total_steps=7 ;;"):
    assert want in text, want
  assert (tmp_path / "logs").is_dir()
  text = _emit(tmp_path, "--emit", "slurm", "--slurm_launch", "explicit", "--gpus_per_node", "8",
               "--log_dir", str(tmp_path / "logs"))
  assert "#SBATCH --ntasks-per-node=1" in text and "scontrol show hostnames" in text
  assert ("--coordinator_address=$COORD --num_processes=$SLURM_NTASKS "
          "--process_id=$SLURM_PROCID'") in text and "srun bash -c 'exec python3" in text


def test_dry_run_prints_commands(capsys, tmp_path):
  assert sweep.main(["--config", "configs/toy.py", "--root", str(tmp_path), "--run", "local",
                     "--dry_run", "--python", "python"]) == 0
  out = capsys.readouterr().out.splitlines()
  assert len(out) == 4 and out[0].startswith("python -m mfm_jax.train --config configs/toy.py")
  assert not os.listdir(tmp_path)      # nothing ran, nothing written
