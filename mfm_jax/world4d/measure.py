"""Runs one language edit on a fitted scene and measures it (against the world's truth when the
fit is of a world clip). Used by ``tools/edit4d.py`` and the tests.

``run_edit(fs, instruction, ...)`` -> (report dict, renders dict). Renders (all images of the
capture, view-major, [M, H, W, ...]): ``before`` / ``after`` (rgb, alpha, decoded instance),
``sel_alpha`` (alpha of the selected Gaussians alone, before the edit: their rendered mask)
and, for a delete on a world clip, ``twin`` (`truth.render_without`).

Report fields (pixel counts are summed over all M images):
  selection: counts; precision / recall of the text selection (and of the instance-head
    selection, ``selection_by_instance``) against `truth.gaussian_labels` at t = 0; quartiles of
    the selected Gaussians' distance from the target's centre over its radius; the precision
    weighted by opacity.
  mask_pixels_decoded_before / _after: pixels whose decoded instance (the fitted instance head
    on the rendered features) is a target id; true_mask_pixels: pixels of the target in the
    world's instance maps; true_mask_still_target_after: of those, the fraction still decoded
    as the target after the edit; sel_alpha_pixels_before / _after (alpha > 0.5).
  delete: psnr_vs_twin_{all, outside_target, other_objects, revealed} (after vs the frozen
    twin: every pixel; pixels not the target's in the original; pixels of the other objects;
    the target's former pixels) and, for reference, psnr_before_vs_truth_* on the same pixel
    sets (the fit's own error), all also restricted to held-out images (``heldout_*``).
  redirect: `measure_redirect`, against `truth.render_moved` (the clip re-rendered with the
    object pushed the same way); ``shift`` the world-frame displacement at the last frame.
  sel_mask_iou: IoU of the selected Gaussians' rendered mask (alpha > 0.5, before the edit) with
    the true mask; decoded_mask_iou_before: of the decoded instance mask with it.
  selection_sweep: precision / recall / F1 of the selection score at thresholds SWEEP.
  extract: mean alpha after on the true mask and outside it (dilated 1 px), pixels outside with
    alpha > 0.5, PSNR on the true mask after vs before / vs the clip (before vs the clip too).
  recolour: psnr_outside_vs_before (pixels outside the selected Gaussians' rendered mask,
    alpha < 1/255, and outside the true target mask dilated by 1 px), changed_pixels and the
    fraction of them inside the selected mask (changed_inside_sel_mask) and inside the dilated
    true mask; mean rgb of the target's true pixels before / after, the target rgb and the
    mean |after - target| there.
"""
from __future__ import annotations

from typing import Any

import numpy as np

from mfm_jax.world4d import apply as apply_lib
from mfm_jax.world4d import commands as commands_lib
from mfm_jax.world4d import teachers
from mfm_jax.world4d import truth

CHANGED = 1.0 / 255.0


def _dilate(mask: np.ndarray, r: int = 1) -> np.ndarray:
  """Binary dilation of [..., H, W] by a (2r+1)^2 square."""
  out = mask.copy()
  h, w = mask.shape[-2:]
  pad = np.pad(mask, [(0, 0)] * (mask.ndim - 2) + [(r, r), (r, r)])
  for dy in range(2 * r + 1):
    for dx in range(2 * r + 1):
      out |= pad[..., dy:dy + h, dx:dx + w]
  return out


SWEEP = (0.3, 0.4, 0.5, 0.6, 0.7, 0.75, 0.8, 0.85, 0.9, 0.95)


def selection_sweep(scores: np.ndarray, on_target: np.ndarray, alive: np.ndarray,
                    thresholds=SWEEP) -> list[dict]:
  """Precision / recall / F1 of ``scores`` [N] >= t among alive [N] against on_target [N], per
  threshold t (the selection's quality independent of one threshold)."""
  out = []
  for t in thresholds:
    pr = truth.precision_recall((scores >= t) & alive, on_target)
    pr["f1"] = 2 * pr["true_positive"] / max(pr["selected"] + pr["true"], 1)
    out.append(dict(threshold=float(t), **pr))
  return out


def measure_redirect(r: dict, twin: dict, cap, ids: list, held: np.ndarray) -> dict:
  """A redirect against its truth ``twin`` (`truth.render_moved`; rgb / instance [M, H, W(, 3)]);
  sets r["twin"]. PSNRs of the edit (after), of the unedited fit (before: the do-nothing
  baseline) and of the fit on the original clip (its own error) on: every pixel; ``target``
  (the object's pixels in the twin; for the fit's own error, in the clip); ``outside`` (pixels of
  the object in neither); ``other_objects`` (the others' pixels, outside). Decoded-mask IoU vs the
  twin's mask; image-space centroid displacement (px) of the decoded mask (after - before)
  against the true one (twin - clip), over images where all four masks are non-empty."""
  r["twin"] = twin["rgb"]
  true_before = np.isin(cap.instance, ids)
  true_after = np.isin(twin["instance"], ids)
  outside = ~(true_before | true_after)
  sets = dict(all=np.ones_like(outside), target=true_after, outside=outside,
              other_objects=(twin["instance"] > 0) & outside)
  out = {}
  for name, m in sets.items():
    out[f"psnr_vs_moved_twin_{name}"] = truth.psnr(r["after"]["rgb"], twin["rgb"], m)
    out[f"psnr_unedited_vs_moved_twin_{name}"] = truth.psnr(r["before"]["rgb"], twin["rgb"], m)
    fit_m = true_before if name == "target" else m
    out[f"psnr_before_vs_truth_{name}"] = truth.psnr(r["before"]["rgb"], cap.images, fit_m)
    out[f"heldout_psnr_vs_moved_twin_{name}"] = truth.psnr(r["after"]["rgb"][held],
                                                           twin["rgb"][held], m[held])
  out["psnr_after_vs_before_outside"] = truth.psnr(r["after"]["rgb"], r["before"]["rgb"], outside)
  if "instance" in r["after"]:
    dec_before = np.isin(r["before"]["instance"], ids)
    dec_after = np.isin(r["after"]["instance"], ids)
    out["decoded_mask_iou_vs_moved_twin"] = truth.mask_iou(dec_after, true_after)
    out["decoded_mask_iou_unedited_vs_moved_twin"] = truth.mask_iou(dec_before, true_after)
    want = truth.centroids(true_after) - truth.centroids(true_before)
    got = truth.centroids(dec_after) - truth.centroids(dec_before)
    ok = np.isfinite(want).all(-1) & np.isfinite(got).all(-1)
    last = ok & (cap.frames == cap.frames.max())
    err = np.linalg.norm(got - want, axis=-1)
    out.update(
        centroid_images=int(ok.sum()),
        centroid_true_displacement_px=float(np.linalg.norm(want[ok], axis=-1).mean()),
        centroid_error_px=float(err[ok].mean()),
        centroid_true_displacement_px_last_frame=float(np.linalg.norm(want[last], axis=-1).mean()),
        centroid_error_px_last_frame=float(err[last].mean()),
        centroid_displacement_ratio=float(np.sum(got[ok] * want[ok]) / max(np.sum(want[ok] ** 2),
                                                                             1e-12)))
  return out


def run_edit(fs: apply_lib.FittedScene, instruction: str, teacher=None, threshold: float = 0.5,
             by: str = "text", parser=None, with_truth: bool = True,
             batch: int = 4) -> tuple[dict, dict]:
  """Parses, selects, edits, renders and measures (module docstring)."""
  task = fs.task
  cap = task.capture
  teacher = teacher or teachers.query_teacher(task.config, cap.descriptions)
  cmd = commands_lib.parse(instruction, parser)
  sel = apply_lib.select(fs, cmd.target, teacher, threshold, by=by)
  towards = None
  if cmd.operation == "redirect" and "towards" in cmd.args:
    towards = apply_lib.select(fs, commands_lib.parse_target(cmd.args["towards"]), teacher,
                               threshold, by=by).mask
  edit = apply_lib.make_edit(fs, cmd, sel.mask, towards=towards)
  idx = np.arange(len(cap))
  r = dict(before=apply_lib.render_images(fs, apply_lib.no_edit(fs), cap, idx, batch),
           after=apply_lib.render_images(fs, edit, cap, idx, batch))
  r["sel_alpha"] = apply_lib.render_images(fs, apply_lib.only(fs, sel.mask), cap, idx,
                                           batch)["alpha"]
  ids = list(sel.ids)
  alive = np.asarray(fs.params["stats"]["alive"]) > 0.5
  rep: dict[str, Any] = dict(
      instruction=instruction, step=fs.step, workdir=fs.workdir,
      command=dict(operation=cmd.operation, target=cmd.target.text,
                   attributes=dict(cmd.target.attributes),
                   args={k: v for k, v in cmd.args.items()}),
      select_by=by, threshold=threshold, target_ids=ids,
      target_descriptions=[cap.descriptions[i] for i in ids] if cap.descriptions else [],
      alive=int(alive.sum()), selected=int(sel.mask.sum()),
      score_selected_mean=float(sel.scores[sel.mask].mean()) if sel.mask.any() else None,
      score_others_max=float(sel.scores[alive & ~sel.mask].max()) if (alive & ~sel.mask).any()
      else None)
  if "instance" in r["before"] and ids:
    for k in ("before", "after"):
      rep[f"mask_pixels_decoded_{k}"] = int(np.isin(r[k]["instance"], ids).sum())
  rep["sel_alpha_pixels_before"] = int((r["sel_alpha"] > 0.5).sum())
  rep["changed_pixels"] = int((np.abs(r["after"]["rgb"] - r["before"]["rgb"]).max(-1)
                               > CHANGED).sum())
  held = np.isin(idx, task.eval_idx)
  if cap.instance is not None and ids:
    true_mask = np.isin(cap.instance, ids)
    rep["true_mask_pixels"] = int(true_mask.sum())
    if "instance" in r["after"]:
      rep["true_mask_still_target_after"] = float(
          np.isin(r["after"]["instance"], ids)[true_mask].mean()) if true_mask.any() else None
      rep["decoded_mask_iou_before"] = truth.mask_iou(np.isin(r["before"]["instance"], ids),
                                                      true_mask)
    rep["sel_mask_iou"] = truth.mask_iou(r["sel_alpha"] > 0.5, true_mask)
  if with_truth and task.config.data.source == "world" and ids:
    ep = truth.world_episode(task.config.data)
    means0 = np.asarray(task.gaussians_at(fs.params, 0.0)["means"])
    labels = truth.gaussian_labels(means0, ep, frame=0)
    on_target = np.isin(labels, ids) & alive
    rep["selection"] = truth.precision_recall(sel.mask, on_target)
    if task.has_instance:
      by_inst = apply_lib.select(fs, cmd.target, teacher, threshold, by="instance").mask
      rep["selection_by_instance"] = truth.precision_recall(by_inst, on_target)
    rep["selection_sweep"] = selection_sweep(sel.scores, on_target, alive)
    rep["true_labels"] = {str(i): int(((labels == i) & alive).sum()) for i in np.unique(labels)}
    # Where the selected Gaussians lie: distance from the (first) target's centre in units of
    # its radius (quartiles), and the selection's precision weighted by opacity.
    dist = truth.solid_distance(means0, ep, ids[0] - 1, 0)[sel.mask]
    if dist.size:
      rep["selected_distance_over_radius_q25_50_75_90"] = [
          float(q) for q in np.percentile(dist, [25, 50, 75, 90])]
    opa = np.asarray(apply_lib.activated(fs)["opacities"])
    rep["selection_precision_opacity_weighted"] = float(
        (opa * (sel.mask & on_target)).sum() / max((opa * sel.mask).sum(), 1e-12))
    if cmd.operation == "delete":
      twin = truth.render_without(ep, [i - 1 for i in ids])   # description id i: object i - 1
      r["twin"] = twin["rgb"]
      outside = ~true_mask
      others = (twin["instance"] > 0) & outside
      sets = dict(all=np.ones_like(true_mask), outside_target=outside, other_objects=others,
                  revealed=true_mask)
      for name, m in sets.items():
        rep[f"psnr_vs_twin_{name}"] = truth.psnr(r["after"]["rgb"], twin["rgb"], m)
        rep[f"psnr_before_vs_truth_{name}"] = truth.psnr(r["before"]["rgb"], cap.images, m)
        rep[f"heldout_psnr_vs_twin_{name}"] = truth.psnr(
            r["after"]["rgb"][held], twin["rgb"][held], m[held])
        rep[f"heldout_psnr_before_vs_truth_{name}"] = truth.psnr(
            r["before"]["rgb"][held], cap.images[held], m[held])
      rep["psnr_after_vs_before_outside_target"] = truth.psnr(
          r["after"]["rgb"], r["before"]["rgb"], outside)
    if cmd.operation == "redirect" and sel.mask.any():
      shift = np.asarray(edit.shift)[sel.mask][0]
      rep.update(measure_redirect(r, truth.render_moved(ep, [i - 1 for i in ids], shift), cap,
                                  ids, held))
      rep["shift"] = shift.tolist()
  if cmd.operation == "extract" and cap.instance is not None and ids:
    near = _dilate(np.isin(cap.instance, ids))
    on = np.isin(cap.instance, ids)
    alpha = r["after"]["alpha"]
    rep.update(extract_alpha_on_true_mask=float(alpha[on].mean()) if on.any() else None,
               extract_alpha_outside_mask_dilated=float(alpha[~near].mean()),
               extract_pixels_outside_alpha_gt_half=int((alpha[~near] > 0.5).sum()),
               extract_psnr_on_mask_after_vs_before=truth.psnr(r["after"]["rgb"],
                                                               r["before"]["rgb"], on),
               extract_psnr_on_mask_after_vs_truth=truth.psnr(r["after"]["rgb"], cap.images, on),
               extract_psnr_on_mask_before_vs_truth=truth.psnr(r["before"]["rgb"], cap.images, on))
  if cmd.operation == "recolour":
    sel_mask = r["sel_alpha"] > CHANGED
    changed = np.abs(r["after"]["rgb"] - r["before"]["rgb"]).max(-1) > CHANGED
    rep["sel_mask_pixels"] = int(sel_mask.sum())
    rep["changed_inside_sel_mask"] = float(sel_mask[changed].mean()) if changed.any() else None
    rep["psnr_outside_sel_mask_vs_before"] = truth.psnr(r["after"]["rgb"], r["before"]["rgb"],
                                                        ~sel_mask)
    rgb = np.asarray(cmd.args["rgb"], np.float64)
    rep["target_rgb"] = rgb.tolist()
    if cap.instance is not None and ids:
      near = _dilate(true_mask)
      rep["changed_inside_true_mask_dilated"] = (float(near[changed].mean()) if changed.any()
                                                 else None)
      rep["psnr_outside_true_mask_vs_before"] = truth.psnr(r["after"]["rgb"],
                                                           r["before"]["rgb"], ~near)
      for k in ("before", "after"):
        rep[f"target_mean_rgb_{k}"] = r[k]["rgb"][true_mask].mean(0).tolist()
      rep["target_mean_abs_err_to_rgb_after"] = float(
          np.abs(r["after"]["rgb"][true_mask] - rgb).mean())
      rep["target_mean_abs_err_to_rgb_before"] = float(
          np.abs(r["before"]["rgb"][true_mask] - rgb).mean())
  return rep, r
