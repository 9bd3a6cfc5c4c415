"""Structured (StructureDiffusion) vs plain cross-attention on a trained text-to-video checkpoint.

Samples the first ``--num`` captions of a split with the same noise per caption, once with plain
cross-attention and once per noun-phrase extractor with structured values
(``diffusion/structured.py``), and scores every video on attribute binding
(``eval/binding.py``) and trajectory error (``eval/trajectory.py``). Differences to plain are
paired per caption, with 95% bootstrap intervals. Captions with equal numbers of value sequences
are sampled together, so every caption gets the paper's uniform weights over its own sequences.

  PYTHONPATH=. python tools/structure_eval.py --ckpt /work/ckpt/video_gen \\
      --out /tmp/structure_eval
  PYTHONPATH=. python tools/structure_eval.py --smoke --num 4 --out /tmp/structure_smoke

``--smoke``: the smoke config of ``configs/video_gen.py`` with random weights (no checkpoint), to
check the tool runs. Writes ``results.json`` and ``samples.gif`` (real / plain / structured for
the first captions) under ``--out``.
"""
from __future__ import annotations

import functools
import json
import os
import time

from absl import app
from absl import flags
import jax
import jax.numpy as jnp
import numpy as np

from mfm_jax.data import noun_phrases
from mfm_jax.data import pipeline
from mfm_jax.data import sources
from mfm_jax.diffusion import structured
from mfm_jax.eval import binding
from mfm_jax.eval import trajectory
from mfm_jax.eval import visualize

_CKPT = flags.DEFINE_string("ckpt", None, "video_diffusion workdir / checkpoint folder")
_SMOKE = flags.DEFINE_bool("smoke", False, "smoke config with random weights (no --ckpt)")
_SPLIT = flags.DEFINE_string("split", "validation", "split whose captions are sampled")
_NUM = flags.DEFINE_integer("num", 64, "captions (the first ones of the split)")
_BATCH = flags.DEFINE_integer("batch", 32, "plain sampling batch size")
_SEED = flags.DEFINE_integer("seed", 1234, "noise seed (the same noise for every condition)")
_REPEATS = flags.DEFINE_integer("repeats", 1, "noise draws per caption (more pairs)")
_EXTRACTORS = flags.DEFINE_list("extractors", ["scene_graph", "parser"],
                                "noun-phrase extractors (data/noun_phrases.py)")
_STEPS = flags.DEFINE_integer("steps", 0, "sampler steps (0: the run's config)")
_OUT = flags.DEFINE_string("out", "/tmp/structure_eval", "output folder")
_GIF = flags.DEFINE_integer("gif", 6, "captions shown in samples.gif")


def _smoke_task():
  from configs import video_gen  # pylint: disable=g-import-not-at-top
  from mfm_jax import tasks  # pylint: disable=g-import-not-at-top
  config = video_gen.get_config("smoke")
  task = tasks.get(config.task)(config)
  abstract = jax.eval_shape(task.init, jax.random.key(0))
  rng = np.random.default_rng(0)
  params = jax.tree.map(lambda s: np.asarray(rng.normal(0, 0.2, s.shape), s.dtype), abstract)
  return task, params, config


def _load():
  if _SMOKE.value:
    return _smoke_task()
  if not _CKPT.value:
    raise app.UsageError("give --ckpt (a video_gen workdir) or --smoke")
  from mfm_jax.eval import checkpoints  # pylint: disable=g-import-not-at-top
  overrides = {"diffusion.num_inference_steps": _STEPS.value} if _STEPS.value else None
  loaded = checkpoints.load(_CKPT.value, expect_task="video_diffusion", overrides=overrides)
  print(f"loaded {loaded.path} (step {loaded.step})", flush=True)
  return loaded.task, loaded.params, loaded.config


def _sample_plain(task, params, ids, mask, noise, batch):
  out = []
  for i in range(0, len(ids), batch):
    sl = slice(i, i + batch)
    out.append(np.asarray(task.sample(params, jnp.asarray(ids[sl]), jnp.asarray(mask[sl]),
                                      noise[sl])))
  return np.concatenate(out)


def _sample_structured(task, params, p: structured.Plan, noise):
  """Samples grouped by sequence count; each group keeps only its own ``count`` sequences."""
  encode = jax.jit(functools.partial(task.encode_text, params))
  values = np.asarray(structured.plan_values(encode, p))            # [N, S, L, D]
  out = np.zeros((len(p.ids),) + noise.shape[1:], np.float32)
  for count, idx in structured.group_by_count(p.counts).items():
    out[idx] = np.asarray(task.sample(params, jnp.asarray(p.ids[idx]), jnp.asarray(p.mask[idx]),
                                      noise[idx], text_values=jnp.asarray(values[idx, :count])))
  return out


def _scores(videos, gt) -> dict[str, np.ndarray]:
  """Per-video metrics: binding, presence, leakage, swap, trajectory error, detection rate."""
  b = binding.binding_batch(videos, gt["centers"], gt["colors"], gt["obj_mask"])
  t = [trajectory.trajectory_error(v, c, k, m) for v, c, k, m in
       zip(videos, gt["centers"], gt["colors"], gt["obj_mask"])]
  per = {k: b["per_video"][k] for k in ("binding", "presence", "leakage", "swap", "count")}
  per["traj_error"] = np.array([r["error"] for r in t])
  per["detection"] = np.array([r["detection_rate"] for r in t])
  return per


METRICS = ("binding", "presence", "leakage", "swap", "traj_error", "detection")
WEIGHTED = ("binding", "presence", "traj_error", "detection")   # pooled over (t, k) pairs


def _summary(per) -> dict[str, float]:
  out = {}
  for k in METRICS:
    v, w = per[k], per["count"]
    ok = ~np.isnan(v)
    out[k] = float(np.average(v[ok], weights=w[ok] if k in WEIGHTED else None)) if ok.any() else (
        float("nan"))
  return out


def _paired(a, b, w, caption, rng, n_boot=2000) -> tuple[float, float, float]:
  """The w-weighted mean of b - a over the videos where both are defined (equal to the
  difference of the pooled summaries), and its 95% bootstrap interval with captions as the
  resampled unit."""
  ok = ~(np.isnan(a) | np.isnan(b)) & (w > 0)
  if not ok.any():
    return float("nan"), float("nan"), float("nan")
  caps = np.unique(caption[ok])
  num = np.array([np.sum(((b - a) * w)[ok & (caption == c)]) for c in caps])
  den = np.array([np.sum(w[ok & (caption == c)]) for c in caps])
  pick = rng.integers(0, len(caps), (n_boot, len(caps)))
  boots = num[pick].sum(1) / den[pick].sum(1)
  return (float(num.sum() / den.sum()), float(np.percentile(boots, 2.5)),
          float(np.percentile(boots, 97.5)))


def main(argv):
  del argv
  t0 = time.time()
  os.makedirs(_OUT.value, exist_ok=True)
  task, params, config = _load()
  if task.text.patch != 1:
    raise app.UsageError(f"structured values need model.text.patch = 1, got {task.text.patch}")
  params = jax.device_put(params)
  examples = pipeline.load_examples(config.data, _SPLIT.value, _NUM.value)
  src = sources.source_from_config(config.data, _SPLIT.value)
  n = len(examples)
  examples = examples * _REPEATS.value        # video r * n + i: caption i, noise draw r
  caption_index = np.arange(len(examples)) % n
  records = [src[i] for i in caption_index]
  captions = [ex["caption"] for ex in examples]
  gt = {k: np.stack([ex[k] for ex in examples]) for k in ("centers", "colors", "obj_mask")}
  truth = np.stack([ex["video"] for ex in examples])
  shape = getattr(task, "model_shape", task.video_shape)   # latents with a VAE, else pixels
  noise = jax.random.normal(jax.random.key(_SEED.value), (len(examples),) + tuple(shape))
  print(f"{n} {_SPLIT.value} captions x {_REPEATS.value} noise draws, video {task.video_shape}, "
        f"{config.diffusion.num_inference_steps} {config.diffusion.sampler} steps, "
        f"cfg {config.diffusion.guidance_scale}", flush=True)

  ids, mask = task.tokenizer.encode(captions)
  per = {"real clips (oracle)": _scores(truth, gt),
         "shuffled real clips": _scores(np.roll(truth, 1, 0), gt)}
  videos = {"plain": _sample_plain(task, params, ids, mask, noise, _BATCH.value)}
  per["plain"] = _scores(videos["plain"], gt)
  print(f"plain sampled ({time.time() - t0:.0f}s)", flush=True)
  phrases = {}
  size_names = pipeline.world_spec(config.data).size_names
  for name in _EXTRACTORS.value:
    kw = {"size_names": size_names} if name == "scene_graph" else {}
    p = structured.plan(task.tokenizer, captions, noun_phrases.get(name, **kw), records)
    np.testing.assert_array_equal(p.ids, ids)
    key = f"structured ({name})"
    videos[key] = _sample_structured(task, params, p, noise)
    per[key] = _scores(videos[key], gt)
    phrases[name] = p.phrases
    print(f"{key} sampled: {float(np.mean(p.counts - 1)):.2f} phrases per caption, "
          f"{len(set(p.counts.tolist()))} groups ({time.time() - t0:.0f}s)", flush=True)

  summary = {k: _summary(v) for k, v in per.items()}
  rng = np.random.default_rng(0)
  paired = {k: {m: _paired(per["plain"][m], per[k][m], per[k]["count"] if m in WEIGHTED else
                          np.ones(len(caption_index)), caption_index, rng) for m in METRICS}
            for k in per if k.startswith("structured")}
  header = f"{'':28s}" + "".join(f"{m:>16s}" for m in METRICS)
  lines = [header] + [f"{k:28s}" + "".join(f"{s[m]:16.3f}" for m in METRICS)
                      for k, s in summary.items()]
  for k, d in paired.items():
    lines.append(f"{k + ' - plain':28s}" + "".join(f"{d[m][0]:+16.3f}" for m in METRICS))
    lines.append(f"{'  95% CI (paired bootstrap)':28s}" + "".join(
        f"{f'[{d[m][1]:+.3f},{d[m][2]:+.3f}]':>16s}" for m in METRICS))
  table = "\n".join(lines)
  print(table)
  print(f"(binding/presence/traj_error/detection pooled over (frame, object); leakage and swap "
        f"averaged over clips; {n} captions x {_REPEATS.value} draws; {time.time() - t0:.0f}s)")
  with open(os.path.join(_OUT.value, "results.json"), "w") as f:
    json.dump({"ckpt": _CKPT.value, "smoke": _SMOKE.value, "split": _SPLIT.value,
               "num": n, "repeats": _REPEATS.value, "seed": _SEED.value, "summary": summary,
               "paired_minus_plain": paired, "table": table, "captions": captions,
               "phrases": phrases,
               "per_video": {k: {m: v[m].tolist() for m in METRICS} for k, v in per.items()}},
              f, indent=1)
  cells, labels = [], []
  for i in range(min(_GIF.value, n)):
    for k in ["real"] + list(videos):
      cells.append(truth[i] if k == "real" else videos[k][i])
      labels.append(captions[i][:60] if k == "real" else k)
  visualize.write_video_grid(os.path.join(_OUT.value, "samples.gif"), cells, labels,
                             cols=1 + len(videos), scale=max(1, 128 // task.video_shape[1]))
  print(f"wrote {_OUT.value}/results.json and samples.gif")


if __name__ == "__main__":
  app.run(main)
