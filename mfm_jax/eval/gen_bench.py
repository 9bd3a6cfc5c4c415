"""The generation and 4D runs of ``python -m mfm_jax.evaluate`` (configs/eval/{generation,fit4d}.py).

generation: a ``video_diffusion`` checkpoint samples one video per held-out caption (the first
``num_videos`` clips of the run's ``split``, noise from ``seed``), then

  frechet                Fréchet distance between features of the samples and of the real clips
                         of those captions (``eval/frechet.py``); ``frechet_noise`` is the same
                         for uniform-noise videos: the ceiling that makes the number readable
  clip_score             mean 100 * max(cos, 0) of sample vs its caption (``eval/clip_score.py``),
                         and ``clip_score_real`` of the real clip (the reference); needs a
                         contrastive ``encoder`` checkpoint, else None
  trajectory_error       of the samples against the clips' simulated object tracks
                         (``eval/trajectory.py``), with the real clips and the real clips under
                         shuffled captions as references, as ``tasks/video_diffusion.evaluate``

Features: the ``encoder`` checkpoint's video tower, else a fixed random-init VideoViT seeded by
``encoder_seed`` (comparable only between runs with the same seed: a warning says so).
Files: results.json, results.md, samples.csv (per caption), samples.gif (real | sample).

fit4d: a ``fit4d`` checkpoint rendered on its held-out views / times (``eval/fit4d.evaluate``):
PSNR / SSIM per category and per view; images.csv has one row per rendered image.
"""
from __future__ import annotations

import json
import os

import numpy as np

from mfm_jax.eval import checkpoints, report


def default_config(bench: str, arg=None):
  """The config of configs/eval/{generation,fit4d}.py. Arg words: smoke, n=, ckpt=."""
  import ml_collections  # pylint: disable=g-import-not-at-top
  from mfm_jax.engine.config import parse_arg  # pylint: disable=g-import-not-at-top
  a = parse_arg(arg, smoke=False, n=0, ckpt="")
  c = ml_collections.ConfigDict()
  c.bench = bench
  c.checkpoint = a.ckpt or ml_collections.config_dict.placeholder(str)   # a run (required)
  if bench == "generation":
    c.num_videos = a.n or (4 if a.smoke else 64)   # held-out captions sampled
    c.split = "validation"
    c.seed = 0                   # sampling noise
    c.batch_size = 4 if a.smoke else 16
    c.encoder = ""               # a contrastive checkpoint; "": random-init VideoViT features
    c.encoder_seed = 0
    c.gif = True
  else:
    c.gifs = not a.smoke         # turntable / held-out GIFs
  return c


def _require_checkpoint(config) -> str:
  if not config.get("checkpoint"):
    raise ValueError(f"config.checkpoint is required for bench {config.bench!r} "
                     f"(a run workdir or its checkpoints folder)")
  return config.checkpoint


def _sample(task, params, ids, mask, seed: int, batch: int) -> np.ndarray:
  import jax  # pylint: disable=g-import-not-at-top
  import jax.numpy as jnp  # pylint: disable=g-import-not-at-top
  n = len(ids)
  shape = getattr(task, "model_shape", task.video_shape)   # latents for a latent-space model
  noise = np.asarray(jax.random.normal(jax.random.key(seed), (n,) + shape))
  out = []
  for s in range(0, n, batch):
    sl = [a[s:s + batch] for a in (ids, mask, noise)]
    pad = batch - len(sl[0])
    if pad:
      sl = [np.concatenate([a, np.repeat(a[-1:], pad, 0)]) for a in sl]
    v = task.sample(params, *(jnp.asarray(a) for a in sl))
    out.append(np.asarray(jax.device_get(v))[:batch - pad])
  return np.concatenate(out)


def run_generation(config, workdir: str) -> dict:
  from mfm_jax.data import pipeline  # pylint: disable=g-import-not-at-top
  from mfm_jax.eval import clip_score, frechet, trajectory, visualize  # pylint: disable=g-import-not-at-top
  loaded = checkpoints.load(_require_checkpoint(config), "video_diffusion")
  task, params = loaded.task, loaded.params
  examples = pipeline.load_examples(task.config.data, config.split, int(config.num_videos))
  if len(examples) < 2:
    raise ValueError(f"config.num_videos={config.num_videos}: need >= 2 held-out clips "
                     f"(split {config.split!r} has {len(examples)})")
  captions = [ex["caption"] for ex in examples]
  ids, mask = task.tokenizer.encode(captions)
  videos = _sample(task, params, np.asarray(ids), np.asarray(mask), int(config.seed),
                   int(config.batch_size))
  real = np.stack([ex["video"] for ex in examples]).astype(np.float32)
  gt = {k: np.stack([ex[k] for ex in examples]) for k in ("centers", "colors", "obj_mask")}
  traj = {name: trajectory.trajectory_error_batch(v, gt["centers"], gt["colors"], gt["obj_mask"])
          for name, v in (("samples", videos), ("real", real),
                          ("real_shuffled", np.roll(real, 1, axis=0)))}
  enc = clip_score.ClipEncoder(config.encoder) if config.encoder else None
  feats = enc.embed_videos if enc else frechet.random_video_encoder(int(config.encoder_seed))
  noise = np.random.default_rng(int(config.seed)).uniform(-1, 1, real.shape).astype(np.float32)
  f_real = feats(real)
  summary = {"frechet": frechet.frechet_from_features(feats(videos), f_real),
             "frechet_noise": frechet.frechet_from_features(feats(noise), f_real),
             "clip_score": None, "clip_score_real": None,
             "trajectory_error": float(traj["samples"]["error"]),
             "trajectory_error_real": float(traj["real"]["error"]),
             "trajectory_error_real_shuffled": float(traj["real_shuffled"]["error"]),
             "detection_rate": float(traj["samples"]["detection_rate"]),
             "num_videos": len(examples)}
  per_gen = per_real = [None] * len(examples)
  if enc is not None:
    t = enc.embed_texts(captions)
    per_gen = clip_score.clip_score(enc.embed_videos(videos), t)
    per_real = clip_score.clip_score(f_real, t)
    summary["clip_score"], summary["clip_score_real"] = float(per_gen.mean()), float(
        per_real.mean())
  features = enc.name if enc else getattr(feats, "name", "random")
  rows = [{"index": i, "caption": c, "trajectory_error": float(traj["samples"]["per_video"][i]),
           "trajectory_error_real": float(traj["real"]["per_video"][i]),
           "clip_score": None if per_gen[i] is None else float(per_gen[i]),
           "clip_score_real": None if per_real[i] is None else float(per_real[i])}
          for i, c in enumerate(captions)]
  out = {"bench": "generation", "checkpoint": loaded.path, "step": loaded.step,
         "features": features, "summary": summary, "config": config.to_dict()}
  if config.gif:
    os.makedirs(workdir, exist_ok=True)
    cells, labels = [], []
    for i in range(len(examples)):
      cells += [real[i], videos[i]]
      labels += [f"real: {captions[i]}", f"sample (err {rows[i]['trajectory_error']:.3f})"]
    out["gif"] = visualize.write_video_grid(os.path.join(workdir, "samples.gif"), cells, labels,
                                            cols=4, scale=max(1, 128 // real.shape[2]))
  table = [{"metric": k, "value": v} for k, v in summary.items()]
  note = ("" if enc else f" (features: {features}; comparable only with the same encoder_seed;"
          f" CLIP score needs config.encoder)")
  title = f"generation · {loaded.path} · step {loaded.step}{note}"
  out["files"] = report.write(workdir, out, [(title, report.markdown_table(table, digits=4))],
                              rows, "samples.csv")
  return out


def run_fit4d(config, workdir: str) -> dict:
  from mfm_jax.eval import fit4d as fit4d_eval  # pylint: disable=g-import-not-at-top
  loaded = checkpoints.load(_require_checkpoint(config), "fit4d",
                            overrides={"eval.gifs": bool(config.gifs)})
  summary = fit4d_eval.evaluate(loaded.task, loaded.params, loaded.step, workdir)
  with open(os.path.join(workdir, "samples", f"fit4d_step_{loaded.step:06d}.json")) as f:
    detail = json.load(f)
  out = {"bench": "fit4d", "checkpoint": loaded.path, "step": loaded.step,
         "summary": {k.removeprefix("eval/"): v for k, v in summary.items()},
         "per_view": detail["per_view"], "config": config.to_dict()}
  tables = [(f"fit4d · {loaded.path} · step {loaded.step}", report.markdown_table(
      [{"metric": k, "value": v} for k, v in out["summary"].items()
       if not isinstance(v, str)], digits=3)),
            ("per view", report.markdown_table(detail["per_view"], digits=3))]
  out["files"] = report.write(workdir, out, tables, detail["images"], "images.csv")
  return out


def run(config, workdir: str) -> dict:
  if config.bench == "generation":
    return run_generation(config, workdir)
  return run_fit4d(config, workdir)
