"""What an evaluation writes into its workdir: ``results.json``, ``results.md`` and a CSV.

  results.json    {"bench", "model", "config", "summary": {...}, ...bench-specific keys}
  results.md      a Markdown table (rows: metric or group, columns: values), printed too
  <rows>.csv      one row per question (QA benches: predictions.csv) or per sample / image
                  (generation: samples.csv, fit4d: images.csv)

Tables are lists of rows (dicts); a value that is a (mean, std) pair is written "m ± s".
"""
from __future__ import annotations

import csv
import json
import math
import os
from collections.abc import Mapping, Sequence


def fmt(value, digits: int = 2) -> str:
  """A table cell: floats with `digits` decimals, (mean, std) as "m ± s", None as "-"."""
  if value is None:
    return "-"
  if isinstance(value, tuple) and len(value) == 2:
    m, s = value
    if m is None:
      return "-"
    return f"{m:.{digits}f} ± {s:.{digits}f}"
  if isinstance(value, float):
    return "inf" if math.isinf(value) else f"{value:.{digits}f}"
  return str(value)


def markdown_table(rows: Sequence[Mapping], columns: Sequence[str] | None = None,
                   digits: int = 2) -> str:
  """Rows (dicts) -> a Markdown table over `columns` (default: keys of the first row)."""
  if not rows:
    return "(no rows)"
  cols = list(columns or rows[0].keys())
  lines = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
  for r in rows:
    lines.append("| " + " | ".join(fmt(r.get(c), digits) for c in cols) + " |")
  return "\n".join(lines)


def write_csv(path: str, rows: Sequence[Mapping]) -> str:
  """Rows (dicts) -> CSV with the union of their keys (first-seen order) as the header."""
  cols: list[str] = []
  for r in rows:
    cols += [k for k in r if k not in cols]
  with open(path, "w", newline="", encoding="utf-8") as f:
    w = csv.DictWriter(f, fieldnames=cols)
    w.writeheader()
    for r in rows:
      w.writerow({k: (json.dumps(v) if isinstance(v, (dict, list)) else v)
                  for k, v in r.items()})
  return path


def _jsonable(x):
  if isinstance(x, Mapping):
    return {str(k): _jsonable(v) for k, v in x.items()}
  if isinstance(x, (list, tuple)):
    return [_jsonable(v) for v in x]
  if hasattr(x, "item") and getattr(x, "ndim", 1) == 0:
    return x.item()
  if hasattr(x, "tolist"):
    return x.tolist()
  if isinstance(x, float) and not math.isfinite(x):
    return None if math.isnan(x) else ("inf" if x > 0 else "-inf")
  return x


def write(workdir: str, results: Mapping, tables: Sequence[tuple[str, str]],
          rows: Sequence[Mapping], rows_name: str, quiet: bool = False) -> dict:
  """Writes results.json, results.md (titled tables) and `rows_name` (CSV); prints the tables.

  Args:
    workdir: created if missing.
    results: the JSON object.
    tables: [(title, markdown table)].
    rows: per-question / per-sample rows for the CSV.
    rows_name: e.g. "predictions.csv".

  Returns:
    {"json", "md", "csv"}: the paths written.
  """
  os.makedirs(workdir, exist_ok=True)
  paths = {"json": os.path.join(workdir, "results.json"),
           "md": os.path.join(workdir, "results.md"),
           "csv": os.path.join(workdir, rows_name)}
  with open(paths["json"], "w", encoding="utf-8") as f:
    json.dump(_jsonable(results), f, indent=1)
    f.write("\n")
  text = "\n\n".join(f"### {title}\n\n{table}" for title, table in tables) + "\n"
  with open(paths["md"], "w", encoding="utf-8") as f:
    f.write(text)
  write_csv(paths["csv"], rows)
  if not quiet:
    print(text, flush=True)
  return paths
