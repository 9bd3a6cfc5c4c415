"""Language edits of a fitted 4D scene (a fit4d workdir): select by text, edit, render, measure.

  python tools/edit4d.py --workdir /tmp/world4d --command "remove the purple sphere" --out DIR
  python tools/edit4d.py --workdir /tmp/world4d --command "make the orange sphere blue" \
      --command "move the orange sphere to the left" --out DIR [--threshold 0.5] [--by text]
      [--clip-checkpoint CONTRASTIVE_WORKDIR] [--negatives background] [--no-truth]

For each command: ``DIR/<slug>.json`` (the report of `mfm_jax.world4d.measure.run_edit`: the
selection and its precision / recall against the world's truth, mask pixels before / after,
PSNRs against the frozen twin without the object or against the unedited render) and
``DIR/<slug>.gif``: one row per view over time, cells truth | before | after (| twin without
the object, for a delete; | the clip re-rendered with the object moved, for a redirect).
``DIR/summary.json`` lists every report. The query teacher: the fit's own teacher over the
clip's descriptions (deterministic), or CLIP with --clip-checkpoint (the fit must have been
trained with a CLIP teacher; `mfm_jax.world4d.teachers`). With --negatives the selection score
is the relevancy against those phrases (`world4d.edits.relevancy`), not the plain cosine.
"""
from __future__ import annotations

import argparse
import json
import os
import re
import shlex
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import numpy as np  # noqa: E402

from mfm_jax.eval import visualize  # noqa: E402
from mfm_jax.world4d import apply as apply_lib  # noqa: E402
from mfm_jax.world4d import measure  # noqa: E402
from mfm_jax.world4d import teachers  # noqa: E402


def slug(text: str) -> str:
  return re.sub(r"[^a-z0-9]+", "_", text.lower()).strip("_")[:60]


def _u8(x) -> np.ndarray:
  return np.clip(np.round(np.asarray(x) * 255.0), 0, 255).astype(np.uint8)


def write_gif(path: str, cap, renders: dict, twin_label: str = "twin without it") -> str:
  """Rows = views, columns = truth | before | after (| twin), each over time."""
  cells, labels = [], []
  for v in np.unique(cap.views):
    idx = np.flatnonzero(cap.views == v)
    idx = idx[np.argsort(cap.times[idx], kind="stable")]
    cols = [("truth", cap.images[idx]), ("before", renders["before"]["rgb"][idx]),
            ("after", renders["after"]["rgb"][idx])]
    if "twin" in renders:
      cols.append((twin_label, renders["twin"][idx]))
    for name, video in cols:
      cells.append(_u8(video))
      labels.append(f"view {v}: {name}")
  return visualize.write_video_grid(path, cells, labels, cols=len(cols),
                                    scale=max(1, 128 // cells[0].shape[2]), fps=4.0)


def main(argv=None) -> list[dict]:
  p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
  p.add_argument("--workdir", required=True, help="a fit4d training workdir")
  p.add_argument("--command", action="append", required=True, help="an instruction (repeatable)")
  p.add_argument("--out", required=True, help="output folder")
  p.add_argument("--threshold", type=float, default=0.5, help="cosine similarity threshold")
  p.add_argument("--by", default="text", choices=("text", "instance"))
  p.add_argument("--clip-checkpoint", default="", help="contrastive workdir: CLIP query teacher")
  p.add_argument("--negatives", default="",
                 help="comma-separated negative phrases (e.g. background): select by relevancy "
                 "against them (edits.relevancy) instead of plain cosine; --threshold 0.5")
  p.add_argument("--no-truth", action="store_true", help="skip the world-truth measurements")
  args = p.parse_args(argv)
  os.makedirs(args.out, exist_ok=True)
  t0 = time.time()
  fs = apply_lib.load_fitted(args.workdir)
  negatives = [n.strip() for n in args.negatives.split(",") if n.strip()]
  teacher = teachers.query_teacher(fs.task.config, fs.task.capture.descriptions,
                                   args.clip_checkpoint or None, negatives)
  reports = []
  for instruction in args.command:
    t1 = time.time()
    rep, renders = measure.run_edit(fs, instruction, teacher, args.threshold, args.by,
                                    with_truth=not args.no_truth)
    name = slug(instruction)
    label = "truth moved" if rep["command"]["operation"] == "redirect" else "twin without it"
    rep["gif"] = write_gif(os.path.join(args.out, f"{name}.gif"), fs.task.capture, renders, label)
    rep["seconds"] = round(time.time() - t1, 1)
    with open(os.path.join(args.out, f"{name}.json"), "w") as f:
      json.dump(rep, f, indent=1)
    reports.append(rep)
    print(json.dumps({k: v for k, v in rep.items() if not isinstance(v, dict)}, indent=None))
  summary = dict(cmd="python tools/edit4d.py " + " ".join(shlex.quote(a) for a in (
      argv if argv is not None else sys.argv[1:])), seconds=round(time.time() - t0, 1),
                 reports=reports)
  with open(os.path.join(args.out, "summary.json"), "w") as f:
    json.dump(summary, f, indent=1)
  return reports


if __name__ == "__main__":
  main()
