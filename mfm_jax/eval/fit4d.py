"""Evaluation of a 4D fit (`tasks/fit4d.py`): per-image PSNR / SSIM on held-out views and times,
per-view tables, a turntable GIF over time and ground-truth-vs-render GIFs.

Categories of an evaluated image (world clips): ``novel_view`` (a held-out view at a training
time), ``novel_time`` (a training view at a held-out time), ``novel_view_time`` (both), ``train``
(a subsample of the training images, for reference); folders: ``heldout`` (the test images) and
``train``. PSNR = -10 log10(MSE) on [0, 1] RGB; SSIM: dm-pix (11 x 11 Gaussian window, σ 1.5,
valid region, mean over channels). With instance ids, ``psnr_objects`` is the PSNR over the
pixels of objects (instance > 0: where the motion is; the static floor dominates ``psnr``) and
``instance_acc`` the pixel accuracy of the decoded instance head.

Written files (under ``workdir/samples/``): ``fit4d_step_N.json`` (every image's scores and the
summaries), ``fit4d_step_N.md`` (a table per view), ``turntable_step_N.gif`` (the camera of the
first training image orbiting the scene's look-at point once while time runs from 0 to 1) and
``heldout_step_N.gif`` (ground truth | render over time for each held-out view and view 0).
Takes the task duck-typed (``eval_set``, ``example``, ``_eval_render``, ...); imports no trainer.
"""
from __future__ import annotations

import json
import os
from typing import Any

import dm_pix as pix
import jax
import jax.numpy as jnp
import numpy as np

from mfm_jax.eval import visualize
from mfm_jax.render import cameras

CATEGORIES = ("novel_view", "novel_time", "novel_view_time", "heldout", "train")


def psnr(a: np.ndarray, b: np.ndarray) -> float:
  """PSNR in dB of images in [0, 1] (inf when equal)."""
  mse = float(np.mean((np.asarray(a, np.float64) - np.asarray(b, np.float64)) ** 2))
  return float("inf") if mse == 0 else -10.0 * np.log10(mse)


def _render_all(task, params, cap, idx, batch: int) -> dict:
  """Renders images `idx` of `cap` in fixed-size chunks (one compile) -> dict of [M, ...]."""
  outs = []
  for s in range(0, len(idx), batch):
    chunk = list(idx[s:s + batch])
    chunk += [chunk[-1]] * (batch - len(chunk))
    exs = [task.example(cap, i) for i in chunk]
    b = {k: jnp.asarray(np.stack([e[k] for e in exs])) for k in exs[0]}
    outs.append(jax.device_get(task._eval_render(params, b)))  # pylint: disable=protected-access
  return {k: np.concatenate([o[k] for o in outs])[:len(idx)] for k in outs[0]}


def _category(task, cap, i: int, heldout: bool) -> str:
  if not heldout:
    return "train"
  d = task.config.data
  if d.source != "world":
    return "heldout"
  k = int(d.heldout_every)
  nv = int(cap.views[i]) in list(d.heldout_views)
  nt = bool(k) and int(cap.frames[i]) % k == k // 2
  return "novel_view_time" if nv and nt else ("novel_view" if nv else "novel_time")


def evaluate(task, params, step: int, workdir: str) -> dict[str, Any]:
  """Scores, tables and GIFs of a fit (module docstring); returns the summary scalars."""
  e = task.config.eval
  cap, held = task.eval_set()
  train = task.train_idx[:: max(1, len(task.train_idx) // max(1, e.num_train_images))]
  train = train[: e.num_train_images]
  rows = []
  for which, c, idx in (("heldout", cap, held), ("train", task.capture, train)):
    if not len(idx):
      continue
    out = _render_all(task, params, c, np.asarray(idx), e.batch)
    gt = c.images[idx]
    ssim = np.asarray(pix.ssim(jnp.asarray(out["rgb"]), jnp.asarray(gt)))
    for j, i in enumerate(idx):
      row = dict(index=int(i), view=int(c.views[i]), frame=int(c.frames[i]),
                 time=float(c.times[i]), category=_category(task, c, i, which == "heldout"),
                 psnr=psnr(out["rgb"][j], gt[j]), ssim=float(ssim[j]))
      if c.instance is not None and (c.instance[i] > 0).any():
        fg = c.instance[i] > 0   # the objects' pixels: where the motion is
        row["psnr_objects"] = psnr(out["rgb"][j][fg], gt[j][fg])
      if "instance" in out and c.instance is not None:
        row["instance_acc"] = float(np.mean(out["instance"][j] == c.instance[i]))
      rows.append(row)
  results: dict[str, Any] = {}
  for cat in CATEGORIES:
    sel = [r for r in rows if r["category"] == cat]
    for key in ("psnr", "ssim", "psnr_objects", "instance_acc"):
      vals = [r[key] for r in sel if key in r]
      if vals:
        results[f"eval/{key}_{cat}"] = float(np.mean(vals))
  per_view = {}
  for r in rows:
    per_view.setdefault((r["category"], r["view"]), []).append(r)
  table = [{"category": c, "view": v, "images": len(rs),
            "psnr": float(np.mean([r["psnr"] for r in rs])),
            "ssim": float(np.mean([r["ssim"] for r in rs]))}
           for (c, v), rs in sorted(per_view.items())]
  if jax.process_index() == 0:
    sdir = os.path.join(workdir, "samples")
    os.makedirs(sdir, exist_ok=True)
    with open(os.path.join(sdir, f"fit4d_step_{step:06d}.json"), "w") as f:
      json.dump({"step": step, "summary": results, "per_view": table, "images": rows}, f, indent=1)
    lines = ["| category | view | images | PSNR | SSIM |", "|---|---|---|---|---|"]
    lines += [f"| {t['category']} | {t['view']} | {t['images']} | {t['psnr']:.2f} | "
              f"{t['ssim']:.3f} |" for t in table]
    with open(os.path.join(sdir, f"fit4d_step_{step:06d}.md"), "w") as f:
      f.write("\n".join(lines) + "\n")
    if e.gifs:
      results["eval/turntable_gif"] = write_turntable(task, params, step, sdir)
      results["eval/heldout_gif"] = write_heldout(task, params, step, sdir)
  return results


def _to_u8(x: np.ndarray) -> np.ndarray:
  return np.clip(np.round(np.asarray(x) * 255.0), 0, 255).astype(np.uint8)


def write_turntable(task, params, step: int, sdir: str) -> str:
  """One orbit of the first training image's camera about the look-at point, t from 0 to 1."""
  e, cap = task.config.eval, task.capture
  n = int(e.turntable_frames)
  i0 = int(task.train_idx[0])
  w2c = cameras.rotate_about_z(cap.world_to_camera[i0], cap.look_target(),
                               np.linspace(0.0, 360.0, n, endpoint=False))
  base = task.example(cap, i0)
  frames = []
  for s in range(0, n, e.batch):
    k = min(e.batch, n - s)
    sl = np.arange(s, s + e.batch).clip(max=n - 1)
    b = {key: jnp.asarray(np.stack([base[key]] * e.batch)) for key in base}
    b["world_to_camera"] = jnp.asarray(np.asarray(w2c)[sl], jnp.float32)
    b["time"] = jnp.asarray(sl / max(n - 1, 1), jnp.float32)
    rgb = task._eval_render(params, b)["rgb"]  # pylint: disable=protected-access
    frames.append(np.asarray(rgb)[:k])
  video = _to_u8(np.concatenate(frames))
  path = os.path.join(sdir, f"turntable_step_{step:06d}.gif")
  return visualize.write_video_grid(path, [video], ["turntable over time"], cols=1,
                                    scale=max(1, 192 // video.shape[2]))


def write_heldout(task, params, step: int, sdir: str) -> str:
  """Ground truth | render over time for every held-out view (and view 0)."""
  e = task.config.eval
  cap, held = task.eval_set()
  if task.config.data.source == "world":
    cap = task.capture
    views = sorted(set(task.config.data.heldout_views) | {0})
    groups = [(f"view {v}", np.flatnonzero(cap.views == v)) for v in views]
  else:
    groups = [("held-out images", np.asarray(held))]
  cells, labels = [], []
  for name, idx in groups:
    idx = idx[np.argsort(cap.times[idx], kind="stable")]
    out = _render_all(task, params, cap, idx, e.batch)
    cells += [_to_u8(cap.images[idx]), _to_u8(out["rgb"])]
    labels += [f"{name}: truth", f"{name}: render"]
  t = min(len(c) for c in cells)
  path = os.path.join(sdir, f"heldout_step_{step:06d}.gif")
  return visualize.write_video_grid(path, [c[:t] for c in cells], labels, cols=2,
                                    scale=max(1, 128 // cells[0].shape[2]))
