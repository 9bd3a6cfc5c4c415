"""4D fitting (MorphoSim): dynamic 3D Gaussians + a deformation field + a feature field, fitted to
posed images over time; the scene is an ordinary train state (orbax checkpoints, resume).

Config: ``configs/world4d.py``. Data (`mfm_jax.data.captures`): one world_multiview clip (V views
x T frames with depth and instance ids) or a nerfstudio / D-NeRF `transforms.json` folder. Held
out for evaluation: the views in ``data.heldout_views`` and the frames f with
f % heldout_every == heldout_every // 2 (world); a transforms_test.json (else every
``heldout_every``-th image) for folders.

Params: ``gaussians`` (fixed capacity N, `world4d.scene`), ``deform`` (`models.deformation`, by
``model.deformation.kind``), ``heads`` (`models.feature_field`) and ``stats`` (alive mask and
densification statistics; frozen by ``trainable_mask``, written by ``after_update``).

Loss per image (Gaussians moved to the image's time, rendered by `render.gaussians`):
  L1(rgb) + w_ssim (1 - SSIM(rgb))                      (dm-pix SSIM, 11 x 11 Gaussian window)
  + w_depth |depth - depth_gt| / mean depth              (when the capture has depth)
  + w_instance CE(instance logits, instance id)          (when it has instance ids)
  + w_text (1 - cos(text head, teacher(description of the pixel's instance)))
  + w_motion mean |Δposition| + |Δlog-scale|            (an L1 prior: static unless seen moving)
  + w_smooth scaffold smoothness                         (scaffold only)
The rendered depth is Σ z α T (not divided by alpha; the world's depth covers every pixel, so
this also asks for full coverage). The feature image is decoded per pixel by the heads; the
teacher is pluggable (``model.text_teacher``: "random" = a fixed random unit vector per
description, offline; or "module:function" mapping a list of descriptions to [n, D]).
Densify / prune every ``densify.every`` steps inside the capacity (`world4d.scene`); a filled
slot inherits its source Gaussian's optimizer moments (`inherit_rows`).
"""
from __future__ import annotations

import functools
import importlib
import os
import zlib
from typing import Any

import dm_pix as pix
import flax.linen as nn
import grain
import jax
import jax.numpy as jnp
import numpy as np
import optax

from mfm_jax.data import captures
from mfm_jax.engine.task import Task
from mfm_jax.models import deformation
from mfm_jax.models import feature_field
from mfm_jax.render import cameras
from mfm_jax.render import gaussians as gs
from mfm_jax.world4d import scene


def random_text_teacher(dim: int):
  """Teacher: a fixed random unit vector per description (seeded by its CRC32; offline)."""
  def embed(descriptions):
    out = np.stack([np.random.default_rng(zlib.crc32(d.encode())).standard_normal(dim)
                    for d in descriptions])
    return (out / np.linalg.norm(out, axis=-1, keepdims=True)).astype(np.float32)
  return embed


def make_text_teacher(name: str, dim: int):
  if name == "random":
    return random_text_teacher(dim)
  module, _, fn = name.partition(":")
  return getattr(importlib.import_module(module), fn)


def load_capture(d) -> captures.Capture:
  if d.source == "world":
    return captures.world_clip(d.name, d.builder_config, d.split, d.index, d.data_dir)
  if d.source == "transforms":
    return captures.load_transforms(d.folder, "train", tuple(d.background), d.downscale)
  raise ValueError(f"config.data.source={d.source!r}: use 'world' or 'transforms'")


def split_indices(cap: captures.Capture, d) -> tuple[np.ndarray, np.ndarray]:
  """(train image indices, held-out image indices) (module docstring)."""
  k = int(d.heldout_every)
  if d.source == "world":
    held_t = (cap.frames % k == k // 2) if k else np.zeros(len(cap), bool)
    held = held_t | np.isin(cap.views, list(d.heldout_views))
  else:
    held = (np.arange(len(cap)) % k == k // 2) if k else np.zeros(len(cap), bool)
  return np.flatnonzero(~held), np.flatnonzero(held)


def farthest_points(points: np.ndarray, k: int, seed: int = 0) -> np.ndarray:
  """k points of `points` [M, 3] by farthest-point sampling -> [k, 3]."""
  rng = np.random.default_rng(seed)
  idx = [int(rng.integers(len(points)))]
  dist = np.linalg.norm(points - points[idx[0]], axis=-1)
  for _ in range(min(k, len(points)) - 1):
    idx.append(int(np.argmax(dist)))
    dist = np.minimum(dist, np.linalg.norm(points - points[idx[-1]], axis=-1))
  out = points[idx]
  return np.concatenate([out, out[: k - len(out)]]) if len(out) < k else out


class Fit4DTask(Task):
  """Fits a dynamic Gaussian scene to a capture (module docstring)."""

  def __init__(self, config):
    super().__init__(config)
    m, d = config.model, config.data
    cap = load_capture(d)
    # Host-side: the jitted render does not check values (errors name the image).
    cameras.check_cameras(cap.fx, cap.fy, cap.cx, cap.cy, cap.world_to_camera,
                          names=[f"capture image {i} (view {v}, frame {f})" for i, (v, f) in
                                 enumerate(zip(cap.views, cap.frames))])
    self.capture = cap
    self.train_idx, self.eval_idx = split_indices(cap, d)
    if d.source == "transforms":
      test = os.path.join(d.folder, "transforms_test.json")
      if os.path.exists(test):
        self.eval_capture = captures.load_transforms(d.folder, "test", tuple(d.background),
                                                     d.downscale)
        self.train_idx = np.arange(len(cap))
    self.height, self.width = cap.images.shape[1:3]
    self.lr_scale = dict(m.lr_scale)
    self.points, self.colors, self.point_scales = self._initial_points()
    lo, hi = np.percentile(self.points, 0.5, 0), np.percentile(self.points, 99.5, 0)
    pad = 0.1 * (hi - lo) + 1e-3
    self.bounds = (tuple(float(x) for x in lo - pad), tuple(float(x) for x in hi + pad))
    self.extent = float(0.5 * np.linalg.norm(hi - lo))
    self.has_depth = cap.depth is not None and m.losses.depth > 0
    self.has_instance = cap.instance is not None and cap.descriptions is not None
    num_ids = len(cap.descriptions) if self.has_instance else 0
    self.text_table = None
    if self.has_instance and m.text_dim:
      self.text_table = jnp.asarray(make_text_teacher(m.text_teacher, m.text_dim)(
          cap.descriptions))
    self.heads = feature_field.FeatureHeads(num_ids=num_ids, text_dim=m.text_dim if
                                            self.has_instance else 0, hidden=m.heads_hidden)
    k = m.deformation.kind
    kw = dict(m.deformation.get(k, {}))
    if k in ("hexplane", "scaffold"):
      kw["bounds"] = self.bounds
    if k == "scaffold":
      kw["num_frames"] = int(cap.frames.max()) + 1
    self.deform = deformation.make_deformation(k, **kw)
    self.render_kw = dict(width=int(self.width), height=int(self.height),
                          background=tuple(config.render.background),
                          max_per_tile=config.render.max_per_tile,
                          max_per_subtile=config.render.max_per_subtile)
    self.depth_scale = float(cap.depth[cap.depth > 0].mean()) if self.has_depth else 1.0

  def _initial_points(self):
    """Back-projected depth of the training images at the first time, else random in a box."""
    cap, m = self.capture, self.config.model
    t0 = [i for i in self.train_idx if cap.frames[i] == cap.frames[self.train_idx].min()]
    if cap.depth is not None and m.init == "depth":
      parts = [scene.backproject(cap.depth[i], cap.images[i], cap.fx[i], cap.fy[i], cap.cx[i],
                                 cap.cy[i], cap.world_to_camera[i], m.init_stride) for i in t0]
      pts, cols, foot = (np.concatenate(p) for p in zip(*parts))
      pts, cols = scene.voxel_downsample(pts, cols, m.init_voxel or 2.0 * float(np.median(foot)))
      return pts, cols, scene.knn_scale(pts) * m.init_scale
    rng = np.random.default_rng(self.config.seed)
    centre = cap.look_target()
    radius = m.init_radius or 0.4 * np.linalg.norm(cap.camera_centres - centre, axis=1).mean()
    n = min(m.init_count, m.capacity)
    pts = centre + rng.uniform(-radius, radius, (n, 3))
    foot = np.full(n, 2 * radius / n ** (1 / 3) * m.init_scale)
    return pts.astype(np.float32), np.full((n, 3), 0.5, np.float32), foot.astype(np.float32)

  # --- model --------------------------------------------------------------------------------
  def init(self, rng):
    m = self.config.model
    g, stats = scene.init_gaussians(self.points, self.colors, self.point_scales, m.capacity,
                                    m.feature_dim, self.lr_scale, m.init_opacity, self.config.seed)
    r1, r2 = jax.random.split(rng)
    deform = self.deform.init(r1, jnp.zeros((2, 3)), 0.0).get("params", {})
    if m.deformation.kind == "scaffold":
      deform = dict(deform, nodes=jnp.asarray(farthest_points(
          self.points, self.deform.num_nodes, self.config.seed)))
    heads = self.heads.init(r2, jnp.zeros((1, m.feature_dim))).get("params", {})
    box = lambda x: nn.LogicallyPartitioned(  # noqa: E731
        x, names=("gaussians",) + (None,) * (x.ndim - 1))
    return {"gaussians": jax.tree.map(box, g), "stats": jax.tree.map(box, stats),
            "deform": deform, "heads": heads}

  def trainable_mask(self, params):
    return {k: jax.tree.map(lambda _: k != "stats", v) for k, v in params.items()}

  def gaussians_at(self, params, t) -> dict:
    """Renderer inputs at time t: means, scales, quats, opacities, colors, features, alive, and
    `motion`: the mean over live Gaussians of |Δposition| + |Δlog-scale| (L1, per axis)."""
    g = scene.activate(params["gaussians"], self.lr_scale)
    deltas = self.deform.apply({"params": params["deform"]}, g["means"], t)
    means, quats, log_scales = deformation.apply_deltas(g["means"], g["quats"], g["log_scales"],
                                                        deltas)
    alive = params["stats"]["alive"]
    motion = jnp.sum(alive[:, None] * (jnp.abs(deltas["d_xyz"]) + jnp.abs(deltas["d_scale"])))
    return dict(means=means, scales=jnp.exp(log_scales), quats=quats, opacities=g["opacities"],
                colors=g["colors"], features=g["features"], alive=alive > 0.5,
                motion=motion / jnp.maximum(jnp.sum(alive), 1.0))

  def render(self, params, camera: cameras.Camera, t) -> dict:
    """One image: rgb [H, W, 3], depth [H, W], alpha [H, W], features [H, W, F], motion []."""
    g = self.gaussians_at(params, t)
    out = gs.render(g["means"], g["scales"], g["quats"], g["opacities"], g["colors"], camera,
                    features=g["features"], alive=g["alive"], **self.render_kw)
    return dict(out, motion=g["motion"])

  def _render_batch(self, params, batch):
    def one(ex):
      cam = cameras.Camera(ex["fx"], ex["fy"], ex["cx"], ex["cy"], ex["world_to_camera"])
      return self.render(params, cam, ex["time"])
    keys = ("fx", "fy", "cx", "cy", "world_to_camera", "time")
    return jax.vmap(one)({k: batch[k] for k in keys})

  def loss(self, params, batch, rng):
    del rng
    w = self.config.model.losses
    out = self._render_batch(params, batch)
    gt = batch["image"]
    l1 = jnp.mean(jnp.abs(out["rgb"] - gt))
    ssim = jnp.mean(pix.ssim(out["rgb"], gt))
    total = l1 + w.ssim * (1.0 - ssim)
    metrics = {"train/l1": l1, "train/ssim": ssim,
               "train/psnr": jnp.mean(-10 * jnp.log10(jnp.mean((out["rgb"] - gt) ** 2, (1, 2, 3)))),
               "train/alive": jnp.sum(params["stats"]["alive"])}
    if self.has_depth:
      known = batch["depth"] > 0
      dl = jnp.mean(jnp.abs(out["depth"] - batch["depth"]) * known) / self.depth_scale
      total += w.depth * dl
      metrics["train/depth_l1"] = dl
    if self.has_instance:
      dec = self.heads.apply({"params": params["heads"]}, out["features"])
      ce = jnp.mean(optax.softmax_cross_entropy_with_integer_labels(dec["instance"],
                                                                   batch["instance"]))
      total += w.instance * ce
      metrics["train/instance_ce"] = ce
      if self.text_table is not None:
        cos = jnp.mean(optax.cosine_similarity(dec["text"], self.text_table[batch["instance"]],
                                               epsilon=1e-6))
        total += w.text * (1.0 - cos)
        metrics["train/text_cos"] = cos
    if w.motion:
      total += w.motion * jnp.mean(out["motion"])
      metrics["train/motion"] = jnp.mean(out["motion"])
    if self.config.model.deformation.kind == "scaffold" and w.smooth:
      sm = deformation.smoothness(params["deform"])
      total += w.smooth * sm
      metrics["train/smoothness"] = sm
    return total, metrics

  def eval_step(self, params, batch, rng):
    _, metrics = self.loss(params, batch, rng)
    return {k.replace("train/", "eval/"): v for k, v in metrics.items()}

  # --- densify / prune inside the capacity ----------------------------------------------------
  def after_update(self, params, opt_state, grads, step, rng, tx):
    d = self.config.densify
    params = dict(params, stats=scene.accumulate(params["stats"], grads["gaussians"]["means"]))
    if not d.every:
      return params, opt_state
    due = (step % d.every == 0) & (step >= d.start) & (step <= d.stop_prune)

    def run(operand):
      p, o = operand
      g, stats, copy_from = scene.densify_and_prune(
          p["gaussians"], p["stats"], rng, lr_scale=self.lr_scale, extent=self.extent,
          grad_threshold=d.grad_threshold, percent_dense=d.percent_dense,
          min_opacity=d.min_opacity, max_scale=d.max_scale, densify=step <= d.stop)
      p = dict(p, gaussians=g, stats=stats)
      return p, inherit_rows(tx, o, p, copy_from)

    return jax.lax.cond(due, run, lambda o: o, (params, opt_state))

  # --- data ---------------------------------------------------------------------------------
  def example(self, cap: captures.Capture, i: int) -> dict:
    ex = dict(image=cap.images[i], fx=cap.fx[i], fy=cap.fy[i], cx=cap.cx[i], cy=cap.cy[i],
              world_to_camera=cap.world_to_camera[i], time=cap.times[i], index=np.int32(i))
    if self.has_depth:
      ex["depth"] = cap.depth[i]
    if self.has_instance:
      ex["instance"] = cap.instance[i]
    return {k: np.asarray(v, np.int32 if k in ("instance", "index") else np.float32)
            for k, v in ex.items()}

  def eval_set(self) -> tuple[captures.Capture, np.ndarray]:
    if hasattr(self, "eval_capture"):
      return self.eval_capture, np.arange(len(self.eval_capture))
    return self.capture, self.eval_idx

  def make_iterator(self, split, batch_size, seed, shard_index, shard_count):
    train = split == "train"
    cap, idx = (self.capture, self.train_idx) if train else self.eval_set()
    ds = grain.MapDataset.source(np.asarray(idx)).map(functools.partial(self.example, cap))
    if train:
      ds = ds.shuffle(seed=seed).repeat(None)
    ds = ds.batch(batch_size, drop_remainder=train)[shard_index::shard_count]
    return iter(ds.to_iter_dataset())

  # --- evaluation -----------------------------------------------------------------------------
  @functools.partial(jax.jit, static_argnums=(0,))
  def _eval_render(self, params, batch):
    out = self._render_batch(params, batch)
    res = {"rgb": jnp.clip(out["rgb"], 0.0, 1.0)}
    if self.has_instance:
      dec = self.heads.apply({"params": params["heads"]}, out["features"])
      res["instance"] = jnp.argmax(dec["instance"], -1)
    return res

  def evaluate(self, params, step, workdir) -> dict[str, Any]:
    from mfm_jax.eval import fit4d as fit4d_eval  # pylint: disable=g-import-not-at-top
    return fit4d_eval.evaluate(self, params, step, workdir)


def inherit_rows(tx, opt_state, params, copy_from):
  """Optimizer moments of the Gaussian rows: row i takes row copy_from[i]'s ([N] int)."""
  rows = {k: jax.tree.map((lambda _: copy_from) if k == "gaussians" else
                          (lambda _: jnp.zeros((), jnp.int32)), v) for k, v in params.items()}

  def f(leaf, src):
    if isinstance(leaf, optax.MaskedNode) or src.ndim != 1 or leaf.ndim < 1:
      return leaf
    return leaf[src] if leaf.shape[0] == src.shape[0] else leaf

  return optax.tree_map_params(tx, f, opt_state, rows, transform_non_params=lambda x: x,
                               is_leaf=lambda x: isinstance(x, optax.MaskedNode))
