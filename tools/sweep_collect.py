"""``tools/sweep.py --collect ROOT``: one table and one plot of a sweep (see that module for usage).

For every run folder ``ROOT/<name>``: the swept values, the status (the exit code written by a
local run, else what the folder holds), the last evaluation in ``eval.json``, the numbers in
``results.json`` (an ``mfm_jax.evaluate`` run) and the last train row of ``metrics.jsonl``. Writes ``ROOT/sweep_results.csv`` (every column), ``ROOT/sweep_results.md``
(swept values, status, step, eval metrics, train loss) and ``ROOT/sweep_<metric>.png``.
"""
from __future__ import annotations

import csv
import json
import math
import os
import re
from typing import Any

SKIP = ("train/batch_checksum", "train/nonfinite", "nonfinite_leaves")


def _read_json(path: str, default=None):
  try:
    with open(path, encoding="utf-8") as f:
      return json.load(f)
  except (OSError, ValueError):
    return default


def _flatten(d: Any, prefix: str = "") -> dict[str, Any]:
  if not isinstance(d, dict):
    return {prefix: json.dumps(d) if isinstance(d, list) else d}
  out: dict[str, Any] = {}
  for k, v in d.items():
    out.update(_flatten(v, f"{prefix}.{k}" if prefix else k))
  return out


def _last_train_row(workdir: str) -> dict[str, Any]:
  last: dict[str, Any] = {}
  try:
    with open(os.path.join(workdir, "metrics.jsonl"), encoding="utf-8") as f:
      for line in f:
        try:
          row = json.loads(line)
        except ValueError:      # a line being written
          continue
        if "train/loss" in row:
          last = row
  except OSError:
    pass
  return last


def _swept(root: str, names: list[str], manifest: dict | None) -> dict[str, dict[str, Any]]:
  """{run: {key: value}} of the swept values: the manifest's, else the differing config keys."""
  if manifest:
    out = {}
    for r in manifest["runs"]:
      out[r["name"]] = {k[len("config."):] if k.startswith("config.") else k: v
                        for k, v in r.get("swept", r.get("overrides", {})).items()}
    keys = {k for v in out.values() for k in v}
    varying = {k for k in keys if len({repr(v.get(k)) for v in out.values()}) > 1}
    return {n: {k: v for k, v in s.items() if k in varying or len(out) == 1}
            for n, s in out.items()}
  configs = {n: _flatten(_read_json(os.path.join(root, n, "config.json"), {})) for n in names}
  keys = sorted({k for c in configs.values() for k in c})
  varying = [k for k in keys if len({repr(c.get(k)) for c in configs.values()}) > 1]
  return {n: {k: configs[n].get(k) for k in varying} for n in names}


def gather(root: str) -> tuple[list[dict[str, Any]], list[str], list[str]]:
  """``(rows, swept keys, eval keys)``; one row per run, in the manifest's order."""
  manifest = _read_json(os.path.join(root, "sweep.json"))
  if manifest:
    names = [r["name"] for r in manifest["runs"]]
  else:
    names = sorted(n for n in os.listdir(root) if os.path.isdir(os.path.join(root, n)) and any(
        os.path.exists(os.path.join(root, n, f)) for f in ("metrics.jsonl", "eval.json",
                                                           "results.json", "sweep_run.json")))
  swept = _swept(root, names, manifest)
  swept_keys = list(dict.fromkeys(k for n in names for k in swept.get(n, {})))
  rows, eval_keys = [], []
  for n in names:
    wd = os.path.join(root, n)
    evals = _read_json(os.path.join(wd, "eval.json"), [])
    last_eval = evals[-1] if evals else {}
    train = _last_train_row(wd)
    results = _read_json(os.path.join(wd, "results.json"))   # mfm_jax.evaluate's output
    if isinstance(results, dict):
      last_eval = dict(last_eval)
      last_eval.update({f"results/{k}": v for k, v in _flatten(results).items()
                        if isinstance(v, (int, float)) and not isinstance(v, bool)})
    rc = (_read_json(os.path.join(wd, "sweep_run.json")) or {}).get("rc")
    if rc is not None:
      status = "ok" if rc == 0 else f"failed (exit {rc})"
    else:
      status = "done" if last_eval or train else "no output"
    row = {"run": n, **swept.get(n, {}), "status": status,
           "step": max(int(last_eval.get("step", 0)), int(train.get("step", 0))) or None}
    for k, v in last_eval.items():
      if k != "step":
        row[k] = v
        if k not in eval_keys:
          eval_keys.append(k)
    row.update({k: v for k, v in train.items() if k != "step" and k not in SKIP})
    rows.append(row)
  return rows, swept_keys, eval_keys


def _fmt(v: Any) -> str:
  if isinstance(v, float):
    return f"{v:.4g}"
  return "" if v is None else str(v)


def markdown(rows, columns) -> str:
  lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
  lines += ["| " + " | ".join(_fmt(r.get(c)) for c in columns) + " |" for r in rows]
  return "\n".join(lines)


def _numeric(values) -> bool:
  return all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in values)


def plot(rows, swept_keys, metric: str, x: str | None, path: str) -> str | None:
  """``metric`` against swept value ``x``, one line per combination of the other swept values."""
  pts = [r for r in rows if isinstance(r.get(metric), (int, float)) and math.isfinite(r[metric])]
  if not pts or not swept_keys:
    return None
  if x is None:
    x = next((k for k in swept_keys if _numeric([r.get(k) for r in rows])), swept_keys[0])
  if x not in swept_keys:
    raise KeyError(f"--x {x!r} is not a swept key; swept: {swept_keys}")
  import matplotlib  # pylint: disable=g-import-not-at-top
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt  # pylint: disable=g-import-not-at-top
  others = [k for k in swept_keys if k != x]
  series: dict[str, list] = {}
  for r in pts:
    label = ", ".join(f"{k}={_fmt(r.get(k))}" for k in others) or metric
    series.setdefault(label, []).append((r.get(x), r[metric]))
  numeric = _numeric([r.get(x) for r in pts])
  cats = list(dict.fromkeys(_fmt(r.get(x)) for r in pts))
  fig, ax = plt.subplots(figsize=(6, 4))
  for label, xy in series.items():
    xy = sorted(xy, key=lambda p: p[0]) if numeric else xy
    xs = [p[0] if numeric else cats.index(_fmt(p[0])) for p in xy]
    ax.plot(xs, [p[1] for p in xy], marker="o", label=label)
  if numeric:
    xs = [r[x] for r in pts]
    if min(xs) > 0 and max(xs) / min(xs) >= 20:
      ax.set_xscale("log")
  else:
    ax.set_xticks(range(len(cats)), cats, rotation=30)
  ax.set_xlabel(x)
  ax.set_ylabel(metric)
  ax.grid(alpha=0.3)
  if len(series) > 1:
    ax.legend(fontsize=8)
  fig.tight_layout()
  fig.savefig(path, dpi=100)
  plt.close(fig)
  return path


def collect(root: str, metric: str | None = None, x: str | None = None,
            log=print) -> dict[str, Any]:
  """Writes the table (Markdown + CSV) and the plot; returns their paths, rows and columns."""
  if not os.path.isdir(root):
    raise FileNotFoundError(f"--collect {root}: no such folder (copy gs:// roots here first)")
  rows, swept_keys, eval_keys = gather(root)
  if not rows:
    raise FileNotFoundError(f"--collect {root}: no runs (no sweep.json, no run folders)")
  shown_eval = [k for k in eval_keys if k not in ("eval/seconds", "eval/step")]
  md_cols = ["run", *swept_keys, "status", "step", *shown_eval, "train/loss"]
  all_cols = list(dict.fromkeys(md_cols + [k for r in rows for k in r]))
  md_path = os.path.join(root, "sweep_results.md")
  table = markdown(rows, md_cols)
  with open(md_path, "w", encoding="utf-8") as f:
    f.write(f"# Sweep {os.path.abspath(root)}\n\n{table}\n")
  csv_path = os.path.join(root, "sweep_results.csv")
  with open(csv_path, "w", encoding="utf-8", newline="") as f:
    w = csv.DictWriter(f, fieldnames=all_cols)
    w.writeheader()
    w.writerows([{c: r.get(c, "") for c in all_cols} for r in rows])
  metric = metric or (shown_eval[0] if shown_eval else "train/loss")
  png = plot(rows, swept_keys, metric, x,
             os.path.join(root, f"sweep_{re.sub(r'[^A-Za-z0-9]+', '_', metric).strip('_')}.png"))
  log(table)
  log(f"\n[sweep] wrote {md_path}, {csv_path}" + (f", {png}" if png else
                                                 f" (no plot: no run has {metric})"))
  return dict(rows=rows, columns=all_cols, markdown=md_path, csv=csv_path, plot=png,
              metric=metric)
