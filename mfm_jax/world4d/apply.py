"""Language edits of a *fitted* 4D scene: a fit4d checkpoint -> select by text -> edit -> render.

  fs = load_fitted(workdir)                    # task (from workdir/config.json) + newest params
  teacher = teachers.query_teacher(fs.task.config, fs.task.capture.descriptions)
  cmd = commands.parse("remove the purple sphere")
  sel = select(fs, cmd.target, teacher, threshold=0.5)
  edit = make_edit(fs, cmd, sel.mask)
  out = render_images(fs, edit, fs.task.capture, np.arange(len(fs.task.capture)))

Per-Gaussian decoding: each Gaussian's own feature f_i [F] goes through the fitted feature heads
(the per-pixel decoders of `models.feature_field`, applied to one Gaussian instead of a
composited pixel) -> instance logits [N, num_ids] and a text embedding [N, D]. Selection
(``by="text"``, the method): cosine similarity of the text embedding with the query
embedding(s) from the teacher (max over the query's embeddings for a plural target) >=
``threshold``, among alive Gaussians; when the teacher has ``negatives`` (embeddings of negative
phrases, e.g. "background"), the score is `edits.relevancy` against them instead (threshold 0.5:
closer to the query than to every negative). ``by="instance"``: argmax of the instance head is
one of the description ids the teacher matched (a check of the text route).

An ``Edit`` is three arrays over the fixed capacity: ``alive`` [N] (delete / extract),
``colors`` [N, 3] (recolour; activated colours in [0, 1]) and ``shift`` [N, 3] (redirect: the
selected Gaussians' trajectory is the fitted one, through the deformation field or scaffold,
plus ``t * shift`` at clip time t in [0, 1]; `edits.displace`). One jitted renderer serves every
edit. ``towards`` is resolved here: the direction from the selected Gaussians' centroid to the
other object's (time 0, ground plane), distance default = their distance.

The jitted renderer does not check values; `render_images` runs the host-side checks
(`render.gaussians.check_values` on the edited Gaussians at t = 0, `cameras.check_cameras` on
the cameras) first, so bad input fails with the index of the Gaussian / camera.
"""
from __future__ import annotations

import dataclasses
import functools
import os
from typing import Any, NamedTuple, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from flax import linen as nn

from mfm_jax.engine import checkpoint
from mfm_jax.render import cameras
from mfm_jax.render import gaussians as gs
from mfm_jax.world4d import commands as commands_lib
from mfm_jax.world4d import edits
from mfm_jax.world4d import scene as scene_lib
from mfm_jax.world4d import teachers

Array = Any


@dataclasses.dataclass
class FittedScene:
  """A fit4d task (data, deformation, heads, render settings) and its fitted params."""
  task: Any
  params: dict
  step: int
  workdir: str


def load_fitted(workdir: str, config=None) -> FittedScene:
  """The newest checkpoint of a fit4d run (``workdir/checkpoints``) with its task, built from
  ``workdir/config.json`` unless ``config`` is given. Leaves are checked against the task's
  params (missing / extra / mis-shaped leaves are named)."""
  from mfm_jax.tasks import fit4d  # pylint: disable=g-import-not-at-top
  config = config or teachers.read_config(workdir)
  if config.task != "fit4d":
    raise ValueError(f"{workdir}: config.task={config.task!r}, expected 'fit4d'")
  task = fit4d.Fit4DTask(config)
  step, state = checkpoint.read_latest_state(os.path.join(workdir, "checkpoints"))
  params = nn.meta.unbox(state["params"])
  want = jax.eval_shape(lambda: nn.meta.unbox(task.init(jax.random.key(0))))
  got_flat = {jax.tree_util.keystr(k): v for k, v in jax.tree_util.tree_leaves_with_path(params)}
  for k, v in jax.tree_util.tree_leaves_with_path(want):
    key = jax.tree_util.keystr(k)
    if key not in got_flat:
      raise ValueError(f"{workdir} step {step}: checkpoint lacks params{key}")
    if tuple(got_flat[key].shape) != tuple(v.shape):
      raise ValueError(f"{workdir} step {step}: params{key} has shape {got_flat[key].shape}, "
                       f"the config wants {v.shape}")
  params = jax.tree.map(jnp.asarray, params)
  return FittedScene(task=task, params=params, step=int(step), workdir=workdir)


def activated(fs: FittedScene) -> dict:
  """Canonical activated Gaussians (`scene.activate`) plus ``alive`` [N] float."""
  g = scene_lib.activate(fs.params["gaussians"], fs.task.lr_scale)
  return dict(g, alive=jnp.asarray(fs.params["stats"]["alive"], jnp.float32))


def decode(fs: FittedScene) -> dict:
  """Per-Gaussian decode of the features: instance logits [N, num_ids], text [N, D]."""
  g = activated(fs)
  return fs.task.heads.apply({"params": fs.params["heads"]}, g["features"])


class Selection(NamedTuple):
  mask: np.ndarray        # [N] bool, selected (alive only)
  scores: np.ndarray      # [N] cosine similarity (text) or instance probability
  ids: list               # description ids the teacher matched
  query: np.ndarray       # [Q, D] query embeddings


def select(fs: FittedScene, target: commands_lib.Target, teacher, threshold: float = 0.5,
           by: str = "text") -> Selection:
  """Gaussians of ``target`` (module docstring)."""
  query, ids = teacher.embed(target)
  dec = decode(fs)
  alive = np.asarray(fs.params["stats"]["alive"]) > 0.5
  if by == "text":
    if "text" not in dec:
      raise ValueError(f"{fs.workdir}: the fit has no text head (model.text_dim=0 or no "
                       "descriptions); select with by='instance'")
    if query.shape[-1] != dec["text"].shape[-1]:
      raise ValueError(f"query embeddings have width {query.shape[-1]}, the fit's text head "
                       f"{dec['text'].shape[-1]}: teacher and fit disagree")
    negatives = getattr(teacher, "negatives", None)
    if negatives is not None:
      scores = np.max([np.asarray(edits.relevancy(dec["text"], jnp.asarray(q),
                                                  jnp.asarray(negatives))) for q in query], 0)
      return Selection((scores >= threshold) & alive, scores, ids, query)
    masks = [np.asarray(edits.select(dec["text"], jnp.asarray(q), alive, threshold)) for q in query]
    d = np.asarray(dec["text"])
    d = d / np.maximum(np.linalg.norm(d, axis=-1, keepdims=True), 1e-12)
    q = query / np.maximum(np.linalg.norm(query, axis=-1, keepdims=True), 1e-12)
    scores = (d @ q.T).max(-1)
    return Selection(np.any(masks, 0), scores, ids, query)
  if by == "instance":
    if not ids:
      raise ValueError(f"by='instance' needs the target's description ids; {target.text!r} "
                       "matched none")
    prob = np.asarray(jax.nn.softmax(dec["instance"], -1))
    pred = prob.argmax(-1)
    return Selection(np.isin(pred, ids) & alive, prob[:, ids].sum(-1), ids, query)
  raise ValueError(f"select: by={by!r}; use 'text' or 'instance'")


class Edit(NamedTuple):
  alive: Array     # [N] float 0/1
  colors: Array    # [N, 3] activated colours
  shift: Array     # [N, 3] displacement at t = 1 (redirect)


def no_edit(fs: FittedScene) -> Edit:
  g = activated(fs)
  return Edit(g["alive"], g["colors"], jnp.zeros_like(g["means"]))


def only(fs: FittedScene, selected) -> Edit:
  """Only the selected Gaussians (for their rendered mask: alpha)."""
  e = no_edit(fs)
  return e._replace(alive=e.alive * jnp.asarray(selected, jnp.float32))


def make_edit(fs: FittedScene, command: commands_lib.Command, selected,
              towards: np.ndarray | None = None) -> Edit:
  """The Edit of a parsed command on the selected Gaussians ([N] bool). For a redirect
  ``towards`` another object, pass that object's selection mask as ``towards``."""
  g = activated(fs)
  selected = jnp.asarray(selected, bool)
  shift = jnp.zeros_like(g["means"])
  if command.operation == "redirect":
    args = dict(command.args)
    if "direction" not in args:
      if towards is None:
        raise ValueError(f"redirect towards {args.get('towards')!r}: pass that object's "
                         "selection as `towards`")
      means0 = np.asarray(fs.task.gaussians_at(fs.params, 0.0)["means"])
      here = means0[np.asarray(selected)].mean(0)
      there = means0[np.asarray(towards, bool) & ~np.asarray(selected)].mean(0)
      d = (there - here) * np.array([1.0, 1.0, 0.0])
      args["direction"] = tuple(d / max(np.linalg.norm(d), 1e-12))
      args["distance"] = args.get("distance") or float(np.linalg.norm(d))
    command = dataclasses.replace(command, args=args)
    shift = edits.displace(shift, selected, args["direction"], args.get("distance") or 1.0, 1.0)
  edited, _ = edits.apply(g, command, selected)
  return Edit(jnp.asarray(edited["alive"], jnp.float32), edited["colors"], shift)


@functools.partial(jax.jit, static_argnums=(0,))
def _render_batch(task, params, edit: Edit, batch: dict) -> dict:
  def one(ex):
    g = task.gaussians_at(params, ex["time"])
    cam = cameras.Camera(ex["fx"], ex["fy"], ex["cx"], ex["cy"], ex["world_to_camera"])
    out = gs.render(g["means"] + ex["time"] * edit.shift, g["scales"], g["quats"],
                    g["opacities"], edit.colors, cam, features=g["features"],
                    alive=edit.alive > 0.5, **task.render_kw)
    res = dict(rgb=jnp.clip(out["rgb"], 0.0, 1.0), alpha=out["alpha"])
    if task.has_instance:
      res["instance"] = jnp.argmax(task.heads.apply({"params": params["heads"]},
                                                    out["features"])["instance"], -1)
    return res
  return jax.vmap(one)(batch)


def check_edit(fs: FittedScene, edit: Edit) -> None:
  """Host-side value checks of the alive edited Gaussians at t = 0 (errors name the index)."""
  g = fs.task.gaussians_at(fs.params, 0.0)
  alive = np.asarray(edit.alive) > 0.5
  safe = dict(means=0.0, scales=1.0, quats=np.float32([1, 0, 0, 0]), opacities=0.5)
  vals = {k: np.where(alive.reshape((-1,) + (1,) * (np.ndim(g[k]) - 1)), np.asarray(g[k]), v)
          for k, v in safe.items()}      # dead slots never render: only alive ones are checked
  cam = cameras.Camera(1.0, 1.0, 0.0, 0.0, np.eye(4, dtype=np.float32))
  try:
    gs.check_values(vals["means"], vals["scales"], vals["quats"], vals["opacities"], cam)
  except ValueError as e:
    raise ValueError(f"edited scene of {fs.workdir} at t = 0: {e}") from e
  bad = np.argwhere(~np.isfinite(np.asarray(edit.colors)) & alive[:, None])
  if bad.size:
    raise ValueError(f"edited scene: the colour of Gaussian {int(bad[0, 0])} is not finite")


def render_images(fs: FittedScene, edit: Edit, cap, idx: Sequence[int], batch: int = 4) -> dict:
  """Renders images ``idx`` of a Capture with an Edit -> dict rgb [M, H, W, 3], alpha [M, H, W],
  instance [M, H, W] (decoded), in fixed-size chunks (one compile)."""
  idx = np.asarray(idx)
  cameras.check_cameras(cap.fx[idx], cap.fy[idx], cap.cx[idx], cap.cy[idx],
                        cap.world_to_camera[idx], names=[f"image {i}" for i in idx])
  check_edit(fs, edit)
  outs = []
  for s in range(0, len(idx), batch):
    chunk = list(idx[s:s + batch])
    chunk += [chunk[-1]] * (batch - len(chunk))
    b = dict(fx=cap.fx[chunk], fy=cap.fy[chunk], cx=cap.cx[chunk], cy=cap.cy[chunk],
             world_to_camera=cap.world_to_camera[chunk], time=cap.times[chunk])
    b = {k: jnp.asarray(v, jnp.float32) for k, v in b.items()}
    outs.append(jax.device_get(_render_batch(fs.task, fs.params, edit, b)))
  return {k: np.concatenate([o[k] for o in outs])[:len(idx)] for k in outs[0]}
