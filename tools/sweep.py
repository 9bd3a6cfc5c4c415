"""Hyper-parameter sweeps: expand a config's ``get_sweep(h)``, run it, launch it, collect it.

A config file defines, next to ``get_config``, a sweep in the big_vision style::

  def get_sweep(h):
    return h.product([h.sweep("config.optimizer.lr", [1e-3, 3e-3]),
                      h.zip([h.sweep("config.model.depth", [2, 4]),
                             h.sweep("config.model.width", [64, 128])])])

``h.sweep(key, values)`` is a list of one-key dicts; ``h.product`` (cartesian) and ``h.zip``
(element-wise) combine lists; ``h.chain`` concatenates; ``h.fixed(key, v)`` is one dict. Keys are
``config.a.b`` overrides (``--config.a.b=v`` for ``mfm_jax.train``), ``arg`` (replaces the text
after ``:`` in ``--config file.py:arg``) or ``name`` (the run's name; by default it is made from
the swept values, e.g. ``lr=0.001_depth=2``). Every override is checked against ``get_config``
before anything starts. Extra ``--config.k=v`` flags apply to every run.

  # local, 2 runs at a time, a log per run in ROOT/<name>/train.log; a failed run is reported
  python tools/sweep.py --config configs/toy.py --root /tmp/toy_sweep --run local --parallel 2
  # the commands only
  python tools/sweep.py --config configs/toy.py --root /tmp/toy_sweep --run local --dry_run
  # Cloud TPU VMs: one `gcloud compute tpus tpu-vm ssh NAME --worker=all --command "..."` per run
  # (--distributed on every worker); several --tpu_name (comma-separated) share the runs
  python tools/sweep.py --config configs/video_gen.py:b --root gs://bucket/vsweep --emit tpu \\
      --tpu_name my-v5e-64 --zone us-west4-a --remote_setup "source ~/venv/bin/activate"
  # Slurm: an sbatch array script, one array task per run, srun one JAX process per GPU
  python tools/sweep.py --config configs/video_gen.py:b --root /shared/vsweep --emit slurm \\
      --nodes 2 --gpus_per_node 8 --partition gpu --time 24:00:00
  sbatch vsweep.slurm.sh
  # one table (Markdown + CSV) of every run's last eval and final train metrics, and a plot
  python tools/sweep.py --collect /tmp/toy_sweep --metric eval/mse_host --x optimizer.lr

``--collect`` reads ``ROOT/<run>/eval.json`` (last entry), ``results.json`` (eval sweeps) and
``metrics.jsonl`` (last train row),
takes the swept values from ``ROOT/sweep.json`` (written by ``--run``/``--emit`` when ROOT is
local) or else from the runs' ``config.json`` (the keys that differ), and writes
``ROOT/sweep_results.{md,csv}`` and ``ROOT/sweep_<metric>.png`` (one line per combination of the
other swept values). For gs:// roots, copy them first (``gsutil -m rsync -r``).
"""
from __future__ import annotations

import argparse
import hashlib
import importlib.util
import itertools
import json
import os
import re
import shlex
import sys
import time
from typing import Any

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:
  sys.path.insert(0, ROOT)

from tools import sweep_emit  # noqa: E402  pylint: disable=g-import-not-at-top
from tools import sweep_collect  # noqa: E402  pylint: disable=g-import-not-at-top

SPECIAL = ("arg", "name")


class Hyper:
  """The ``h`` handed to ``get_sweep``: builds lists of override dicts."""

  @staticmethod
  def sweep(key: str, values) -> list[dict[str, Any]]:
    return [{key: v} for v in values]

  @staticmethod
  def fixed(key: str, value) -> list[dict[str, Any]]:
    return [{key: value}]

  @staticmethod
  def product(sweeps) -> list[dict[str, Any]]:
    """Cartesian product; the first list varies slowest."""
    out = []
    for combo in itertools.product(*sweeps):
      out.append(_merge(combo))
    return out

  @staticmethod
  def zip(sweeps) -> list[dict[str, Any]]:
    sweeps = [list(s) for s in sweeps]
    if len({len(s) for s in sweeps}) > 1:
      raise ValueError(f"h.zip: lists of different lengths {[len(s) for s in sweeps]}")
    return [_merge(combo) for combo in zip(*sweeps)]

  @staticmethod
  def chain(sweeps) -> list[dict[str, Any]]:
    return [dict(d) for s in sweeps for d in s]


def _merge(dicts) -> dict[str, Any]:
  out: dict[str, Any] = {}
  for d in dicts:
    both = set(out) & set(d)
    if both:
      raise ValueError(f"sweep: key {sorted(both)} is set twice in one run")
    out.update(d)
  return out


class Run:
  """One training run: ``config`` ("path[:arg]"), ``overrides`` ({"config.a.b": v}), ``name``."""

  def __init__(self, name: str, config: str, overrides: dict[str, Any], swept: dict[str, Any]):
    self.name, self.config, self.overrides, self.swept = name, config, overrides, swept

  def flags(self) -> list[str]:
    return [f"--{k}={format_value(v)}" for k, v in self.overrides.items()]

  def to_json(self) -> dict[str, Any]:
    return dict(name=self.name, config=self.config, overrides=self.overrides, swept=self.swept)


def format_value(v: Any) -> str:
  """A value as ``--config.k=`` text that ml_collections' flag parser reads back."""
  if isinstance(v, bool):
    return "true" if v else "false"
  if isinstance(v, (list, tuple)):
    return repr(tuple(v))
  return str(v)


def _name_piece(v: Any) -> str:
  if isinstance(v, float):
    v = f"{v:g}"
  elif isinstance(v, (list, tuple)):
    v = "-".join(map(str, v))
  return re.sub(r"[^A-Za-z0-9.=+-]+", "-", format_value(v)).strip("-") or "x"


def short_keys(keys: list[str]) -> dict[str, str]:
  """``config.optimizer.lr`` -> ``lr``, with more of the path where the last parts collide."""
  parts = {k: k.split(".")[1:] if k.startswith("config.") else [k] for k in keys}
  n = {k: 1 for k in keys}
  while True:
    short = {k: ".".join(p[-n[k]:]) for k, p in parts.items()}
    clash = [k for k in keys if list(short.values()).count(short[k]) > 1
             and n[k] < len(parts[k])]
    if not clash:
      return short
    for k in clash:
      n[k] += 1


def run_names(points: list[dict[str, Any]]) -> list[str]:
  """Names from the values that vary across the sweep; unique, file- and shell-friendly."""
  keys = [k for k in dict.fromkeys(k for p in points for k in p) if k != "name"]
  varying = [k for k in keys if len({repr(p.get(k)) for p in points}) > 1]
  short = short_keys(varying)
  names, seen = [], {}
  for p in points:
    name = p.get("name") or "_".join(
        _name_piece(p[k]) if k == "arg" else f"{short[k]}={_name_piece(p[k])}"
        for k in varying if k in p) or "run"
    if len(name) > 100:
      name = name[:90] + "-" + hashlib.sha1(name.encode()).hexdigest()[:8]
    seen[name] = seen.get(name, 0) + 1
    names.append(name if seen[name] == 1 else f"{name}_{seen[name]}")
  return names


def load_config_module(path: str):
  spec = importlib.util.spec_from_file_location(
      "sweep_config_" + hashlib.sha1(os.path.abspath(path).encode()).hexdigest()[:8], path)
  if spec is None or not os.path.exists(path):
    raise FileNotFoundError(f"--config {path}: no such config file")
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module


def _has_key(config, dotted: str) -> bool:
  node = config
  for part in dotted.split("."):
    try:
      node = node[part]
    except (KeyError, TypeError, AttributeError):
      return False
  return True


def expand(config_spec: str, common: dict[str, Any] | None = None, points=None,
           validate: bool = True) -> list[Run]:
  """Runs of ``get_sweep(Hyper())`` in ``config_spec``'s file (or of ``points``), checked."""
  path, _, base_arg = config_spec.partition(":")
  module = load_config_module(path)
  if points is None:
    if not hasattr(module, "get_sweep"):
      raise AttributeError(f"{path} has no get_sweep(h)")
    points = module.get_sweep(Hyper())
  points = [dict(p) for p in points]
  if not points:
    raise ValueError(f"{path}: get_sweep returned no runs")
  runs = []
  configs: dict[str, Any] = {}
  for name, p in zip(run_names(points), points):
    bad = [k for k in p if k not in SPECIAL and not k.startswith("config.")]
    if bad:
      raise ValueError(f"sweep keys {bad}: use 'config.a.b', 'arg' or 'name'")
    arg = p.get("arg", base_arg)
    overrides = {k: v for k, v in p.items() if k.startswith("config.")}
    overrides.update(common or {})
    if validate:
      if arg not in configs:
        configs[arg] = module.get_config(arg or None)
      unknown = [k for k in overrides if not _has_key(configs[arg], k[len("config."):])]
      if unknown:
        raise KeyError(f"run {name}: {unknown} not in {path}:{arg} (get_config)")
    swept = {k: v for k, v in p.items() if k != "name"}
    runs.append(Run(name, f"{path}:{arg}" if arg else path, overrides, swept))
  return runs


def train_command(run: Run, root: str, python: str = sys.executable,
                  extra: tuple[str, ...] = ()) -> list[str]:
  return [python, "-m", "mfm_jax.train", "--config", run.config, "--workdir",
          f"{root.rstrip('/')}/{run.name}", *extra, *run.flags()]


def write_manifest(root: str, config_spec: str, runs: list[Run], mode: str) -> str | None:
  if "://" in root:
    return None
  os.makedirs(root, exist_ok=True)
  path = os.path.join(root, "sweep.json")
  with open(path, "w", encoding="utf-8") as f:
    json.dump(dict(config=config_spec, mode=mode, created=time.strftime("%Y-%m-%d %H:%M:%S"),
                   runs=[r.to_json() for r in runs]), f, indent=2, default=str)
  return path


def _tail(path: str, n: int = 15) -> str:
  try:
    with open(path, encoding="utf-8", errors="replace") as f:
      return "".join(f.readlines()[-n:])
  except OSError:
    return ""


def run_local(jobs: list[tuple[str, list[str], str]], parallel: int = 1, env=None, cwd=None,
              gpus_per_run: int = 0, poll: float = 0.2, log=print) -> list[dict[str, Any]]:
  """Runs ``(name, command, workdir)`` jobs, ``parallel`` at a time, each logging to
  ``workdir/train.log``. A non-zero exit is reported with the log's tail; the others go on."""
  import subprocess  # pylint: disable=g-import-not-at-top
  env = dict(os.environ if env is None else env)
  env["PYTHONPATH"] = os.pathsep.join(filter(None, [ROOT, env.get("PYTHONPATH")]))
  queue, running, results = list(jobs), {}, []
  free_slots = list(range(max(parallel, 1)))
  total = len(jobs)
  try:
    while queue or running:
      while queue and free_slots:
        name, cmd, workdir = queue.pop(0)
        slot = free_slots.pop(0)
        os.makedirs(workdir, exist_ok=True)
        logf = open(os.path.join(workdir, "train.log"), "w", encoding="utf-8")
        run_env = dict(env)
        if gpus_per_run:
          run_env["CUDA_VISIBLE_DEVICES"] = ",".join(
              str(slot * gpus_per_run + i) for i in range(gpus_per_run))
        proc = subprocess.Popen(cmd, stdout=logf, stderr=subprocess.STDOUT, env=run_env, cwd=cwd)
        running[proc] = (name, workdir, logf, slot, time.time())
        log(f"[sweep] start {name} (pid {proc.pid})")
      for proc in list(running):
        rc = proc.poll()
        if rc is None:
          continue
        name, workdir, logf, slot, t0 = running.pop(proc)
        logf.close()
        free_slots.append(slot)
        res = dict(name=name, rc=rc, seconds=round(time.time() - t0, 1),
                   log=os.path.join(workdir, "train.log"))
        results.append(res)
        with open(os.path.join(workdir, "sweep_run.json"), "w", encoding="utf-8") as f:
          json.dump(res, f)
        status = "ok" if rc == 0 else f"FAILED (exit {rc})"
        log(f"[sweep] {len(results)}/{total} {name}: {status} in {res['seconds']} s")
        if rc:
          log(f"[sweep] last lines of {res['log']}:\n{_tail(res['log'])}")
      if running:
        time.sleep(poll)
  except KeyboardInterrupt:
    for proc, (name, *_) in running.items():
      log(f"[sweep] interrupted: stopping {name} (pid {proc.pid})")
      proc.terminate()
    for proc in running:
      proc.wait()
    raise
  return results


def _parser() -> argparse.ArgumentParser:
  p = argparse.ArgumentParser(description="Expand, run, launch and collect config sweeps.")
  p.add_argument("--config", help="config file with get_sweep(h), optionally :arg")
  p.add_argument("--root", help="parent of the runs' workdirs (ROOT/<name>); may be gs://")
  p.add_argument("--run", choices=("local",), help="run the sweep on this machine")
  p.add_argument("--parallel", type=int, default=1, help="local runs at a time")
  p.add_argument("--gpus_per_run", type=int, default=0, help="local: CUDA_VISIBLE_DEVICES slots")
  p.add_argument("--emit", choices=("tpu", "slurm"), help="write a launch script")
  p.add_argument("--out", help="launch script path (default: <sweep>.<tpu|slurm>.sh)")
  p.add_argument("--collect", metavar="ROOT", help="table + plot of a finished sweep")
  p.add_argument("--metric", help="collect: metric to plot (default: the first eval metric)")
  p.add_argument("--x", help="collect: swept key on the x axis (default: the first numeric)")
  p.add_argument("--filter", help="only runs whose name matches this regex")
  p.add_argument("--dry_run", action="store_true", help="print the commands / script only")
  p.add_argument("--python", default="", help="python on the target (default: this one locally,"
                 " python3 in emitted scripts)")
  sweep_emit.add_flags(p)
  return p


def main(argv: list[str] | None = None) -> int:
  args, rest = _parser().parse_known_args(argv)
  bad = [a for a in rest if not a.startswith("--config.")]
  if bad:
    print(f"sweep: unknown arguments {bad}", file=sys.stderr)
    return 2
  if args.collect:
    sweep_collect.collect(args.collect, metric=args.metric, x=args.x)
    return 0
  if not (args.config and args.root and (args.run or args.emit)):
    print("sweep: need --config, --root and one of --run local / --emit tpu|slurm "
          "(or --collect ROOT)", file=sys.stderr)
    return 2
  common = dict(a[2:].split("=", 1) for a in rest)
  runs = expand(args.config, common)
  if args.filter:
    runs = [r for r in runs if re.search(args.filter, r.name)]
  print(f"[sweep] {len(runs)} runs of {args.config}: " + ", ".join(r.name for r in runs),
        file=sys.stderr if args.dry_run else sys.stdout)
  if args.emit:
    text = sweep_emit.script(args.emit, runs, args, train_command, args.python or "python3")
    if args.dry_run:
      print(text)
      return 0
    out = args.out or f"{os.path.basename(args.root.rstrip('/'))}.{args.emit}.sh"
    with open(out, "w", encoding="utf-8") as f:
      f.write(text)
    os.chmod(out, 0o755)
    if args.emit == "slurm":
      os.makedirs(sweep_emit.log_dir(args), exist_ok=True)
    write_manifest(args.root, args.config, runs, args.emit)
    launch = "sbatch" if args.emit == "slurm" else "bash"
    print(f"[sweep] wrote {out}: {launch} {out}")
    return 0
  jobs = [(r.name, train_command(r, args.root, args.python or sys.executable),
           os.path.join(args.root, r.name)) for r in runs]
  if args.dry_run:
    for _, cmd, _ in jobs:
      print(shlex.join(cmd))
    return 0
  write_manifest(args.root, args.config, runs, "local")
  results = run_local(jobs, args.parallel, gpus_per_run=args.gpus_per_run)
  failed = [r for r in results if r["rc"]]
  print(f"[sweep] {len(results) - len(failed)}/{len(results)} runs succeeded"
        + ("; failed: " + ", ".join(f"{r['name']} (exit {r['rc']}, {r['log']})" for r in failed)
           if failed else ""))
  print(f"[sweep] table: python tools/sweep.py --collect {args.root}")
  return 1 if failed else 0


if __name__ == "__main__":
  sys.exit(main())
