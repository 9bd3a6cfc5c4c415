"""The MMWorld and VLM4D runs of ``python -m mfm_jax.evaluate`` (configs/eval/{mmworld,vlm4d}.py).

Data: ``config.data_dir`` (the real benchmark: ``mmworld.json``, or VLM4D's ``real_mc.json`` /
``synthetic_mc.json`` / a ``vlm4d.json``, with the videos anywhere below), else the procedural
world exported in the benchmark schemas (``data/world/export.py``; ``config.world.size / views /
seed``), written once into ``config.cache_dir`` (default ``$MFM_JAX_EXPORT_DIR``, else
``world_export/`` beside the TFDS data dir) and reused.

Models (``config.model``): ``random`` (seeded per run: ``config.seed + run``), ``constant:<letter>``,
``vqa:<checkpoint>`` (``eval/vqa_adapter.py``), or ``package.module:function``, a callable
``(frames, prompt) -> text`` (frames: uint8 [K, H, W, 3], ``config.num_frames`` uniform frames of
the question's video). Responses are graded by rule-based extraction (``eval/answers.py``).
``config.num_runs`` > 1 gives mean ± std (population) per score over the runs.

Scores: MMWorld as ``eval/mmworld.score`` (overall, per discipline / type / flag). VLM4D: the
paper's splits (``eval/vlm4d.aggregate``) for real_mc / synthetic_mc; questions of a
``vlm4d.json`` (the world export) have no such split and are scored overall, per view (ego /
exo, from the id ``<video>_<view>_<type>_<n>``) and per question type.
"""
from __future__ import annotations

import importlib
import os
import re
import shutil
import tempfile

import numpy as np

from mfm_jax.data.sources import common
from mfm_jax.eval import adapters, answers, mmworld, report, vlm4d

_WORLD_ID = re.compile(r"_(exo|ego)_(.+)_(\d+)$")


def default_config(bench: str, arg=None):
  """The config of configs/eval/{mmworld,vlm4d}.py. Arg words: smoke, world=, runs=."""
  import ml_collections  # pylint: disable=g-import-not-at-top
  from mfm_jax.engine.config import parse_arg  # pylint: disable=g-import-not-at-top
  a = parse_arg(arg, smoke=False, world="small", runs=1)
  c = ml_collections.ConfigDict()
  c.bench = bench
  c.model = "random"          # random | constant:<letter> | vqa:<checkpoint> | module:function
  c.data_dir = ml_collections.config_dict.placeholder(str)   # the real benchmark; None: world
  c.world = ml_collections.ConfigDict(dict(size="smoke" if a.smoke else a.world, views=1,
                                           seed=0))         # the world export
  c.cache_dir = ml_collections.config_dict.placeholder(str)  # where the world export is kept
  c.num_runs = a.runs         # mean +- std over runs (random: seed + run)
  c.seed = 0
  c.num_frames = 16           # uniform frames of each video for a model that sees video
  c.max_questions = 0         # 0: every question
  c.progress = False
  return c


def make_adapter(spec: str, seed: int = 0):
  """An adapter from ``config.model`` (module docstring)."""
  if spec == "random":
    return adapters.RandomBaseline(seed)
  if spec.startswith("constant:"):
    return adapters.ConstantBaseline(spec.partition(":")[2])
  if spec.startswith("vqa:"):
    from mfm_jax.eval import vqa_adapter  # pylint: disable=g-import-not-at-top
    return vqa_adapter.VqaAdapter(spec.partition(":")[2])
  module, sep, name = spec.partition(":")
  if not sep or not module or not name:
    raise ValueError(f"config.model={spec!r}: use random, constant:<letter>, vqa:<checkpoint> "
                     f"or package.module:function")
  try:
    fn = getattr(importlib.import_module(module), name)
  except (ImportError, AttributeError) as e:
    raise ValueError(f"config.model={spec!r}: cannot import {name!r} from {module!r}: "
                     f"{e}") from None
  return adapters.CallableAdapter(fn, spec)


def export_dir(config) -> str:
  """The world export for config.world (written on first use; module docstring)."""
  from mfm_jax.data.world import builder, export  # pylint: disable=g-import-not-at-top
  w = config.world
  base = config.get("cache_dir") or os.environ.get("MFM_JAX_EXPORT_DIR") or os.path.join(
      os.path.dirname(builder.default_data_dir().rstrip("/")), "world_export")
  out = os.path.join(base, f"{w.size}_views{w.views}_seed{w.seed}")
  if os.path.exists(os.path.join(out, "DONE")):
    return out
  os.makedirs(base, exist_ok=True)
  tmp = tempfile.mkdtemp(prefix=".export_", dir=base)
  counts = export.export(tmp, w.size, w.views, w.seed, num_workers=1)
  with open(os.path.join(tmp, "DONE"), "w") as f:
    f.write(repr(counts) + "\n")
  if os.path.exists(out):            # a partial folder of an interrupted run
    shutil.rmtree(out)
  os.replace(tmp, out)
  return out


def load_bench(config) -> tuple[str, list[tuple[str, list[dict]]]]:
  """(root, [(source, questions)]) of config.bench; source: "mmworld", "real", "synthetic" or
  "test" (a vlm4d.json)."""
  root = config.data_dir or export_dir(config)
  if not os.path.isdir(root):
    raise FileNotFoundError(f"config.data_dir={root} is not a folder")
  limit = int(config.max_questions) or None
  if config.bench == "mmworld":
    path = os.path.join(root, "mmworld.json")
    if not os.path.exists(path):
      raise FileNotFoundError(f"no mmworld.json in {root}")
    return root, [("mmworld", mmworld.load_questions(path)[:limit])]
  found = [(s, os.path.join(root, f)) for s, f in (("real", "real_mc.json"),
           ("synthetic", "synthetic_mc.json"), ("test", "vlm4d.json"))
           if os.path.exists(os.path.join(root, f))]
  if not found:
    raise FileNotFoundError(f"none of real_mc.json, synthetic_mc.json, vlm4d.json in {root}")
  return root, [(s, vlm4d.load_questions(p, split=s)[:limit]) for s, p in found]


def _frames_fn(config, root, adapter):
  if isinstance(adapter, (adapters.RandomBaseline, adapters.ConstantBaseline)):
    return None                      # text-free baselines: no video decoding
  from mfm_jax.data import video_io  # pylint: disable=g-import-not-at-top
  by_name, ambiguous = common.index_videos(root)
  wants_question = getattr(adapter, "needs_question", False)

  def frames(q):
    if config.bench == "mmworld":
      path = common.find_video(str(q["video_id"]), by_name, ambiguous, root)
      opts = [q["options"][l] for l in mmworld.LABELS]
    else:
      path = common.find_video(q["video_name"], by_name, ambiguous, root, hint=q["video"])
      opts = [q["choices"][l] for l in vlm4d.LABELS]
    video = video_io.read_video(path, num_frames=int(config.num_frames))
    if wants_question:
      from mfm_jax.eval import vqa_adapter  # pylint: disable=g-import-not-at-top
      return vqa_adapter.QuestionClip(video, q["question"], opts)
    return video
  return frames


def _mmworld_tables(result: dict, multi: bool) -> list[tuple[str, str]]:
  mean, std = result["mean"], result["std"]
  first = result["runs"][0]
  val = lambda m, s: (m, s) if multi else m  # noqa: E731
  tables = [("overall", report.markdown_table([
      {"metric": "accuracy (%)", "n": first["n"], "value": val(mean["accuracy"],
                                                               std["accuracy"])}]))]
  for group, title in (("per_discipline", "per discipline"), ("per_type", "per question type"),
                       ("per_flag", "per annotation flag (questions with the flag set)")):
    rows = [{"group": k, "n": first[group].get(k, {}).get("n"),
             "accuracy (%)": val(mean[group][k], std[group][k])} for k in mean[group]]
    tables.append((title, report.markdown_table(rows)))
  return tables


def _vlm4d_groups(source: str, q: dict) -> list[str]:
  if source in ("real", "synthetic"):
    return [vlm4d.split_of(source, q["id"], q["answer"])]
  m = _WORLD_ID.search(str(q["id"]))
  groups = ["overall"]
  if m:
    groups += [f"view:{m.group(1)}", f"type:{m.group(2)}"]
  return groups


def _vlm4d_score(sources, preds) -> dict:
  """{name: accuracy %} and {name: n}: paper splits + world groups, for one run."""
  graded, groups = [], {}
  for (source, qs), ps in zip(sources, preds):
    for q, p in zip(qs, ps):
      ok = vlm4d.grade(p, extract=True)
      for g in _vlm4d_groups(source, q):
        if g in vlm4d.SPLITS and source in ("real", "synthetic"):
          graded.append((g, ok))
        else:
          n, c = groups.get(g, (0, 0))
          groups[g] = (n + 1, c + ok)
  acc, count = {}, {}
  if graded:
    agg = vlm4d.aggregate(graded)
    acc.update({s: agg[s] for s in vlm4d.SPLITS})
    count.update(agg["n"])
  if "overall" in groups and graded:        # pool the world questions into the paper's overall
    n, c = groups.pop("overall")
    r = acc["overall"] * count["overall"] / 100.0
    count["overall"] += n
    acc["overall"] = 100.0 * (r + c) / count["overall"]
  for g, (n, c) in sorted(groups.items(), key=lambda kv: (kv[0] != "overall", kv[0])):
    acc[g], count[g] = 100.0 * c / n, n
  return {"accuracy": acc, "n": count}


def run(config, workdir: str) -> dict:
  """Runs config.model on config.bench; writes results.json / results.md / predictions.csv."""
  root, sources = load_bench(config)
  runs_preds, rows, adapter, frames_fn = [], [], None, None
  for r in range(int(config.num_runs)):
    if adapter is None or config.model == "random":   # other models are built (loaded) once
      adapter = make_adapter(config.model, int(config.seed) + r)
      frames_fn = _frames_fn(config, root, adapter)
    per_source = []
    for source, qs in sources:
      bench = "mmworld" if config.bench == "mmworld" else "vlm4d"
      preds = adapters.run(adapter, qs, bench, config.get("mode", "direct"), frames_fn,
                           progress=bool(config.progress))
      per_source.append(preds)
      for q, p in zip(qs, preds):
        if bench == "mmworld":
          letter = mmworld.extract_letter(q, p["response"])
          ok = mmworld.grade(q, p, extract=True)
          extra = {"discipline": q["discipline"], "type": q["type"],
                   "answer": q["correct_answer_label"]}
        else:
          letter = answers.answer_letter(q["question"], q["choices"], p["response"],
                                         vlm4d.LABELS)
          ok = vlm4d.grade(p, extract=True)
          extra = {"source": source, "group": "|".join(_vlm4d_groups(source, q)),
                   "answer": q["answer"]}
        rows.append({"run": r, "id": q["id"], **extra, "response": p["response"],
                     "extracted": letter, "correct": bool(ok)})
    runs_preds.append(per_source)
  multi = int(config.num_runs) > 1
  out = {"bench": config.bench, "model": config.model, "data": root,
         "num_runs": int(config.num_runs), "config": config.to_dict()}
  if config.bench == "mmworld":
    qs = sources[0][1]
    result = mmworld.score_runs(qs, [p[0] for p in runs_preds], extract=True)
    out.update(summary={"accuracy": result["mean"]["accuracy"],
                        "accuracy_std": result["std"]["accuracy"], "n": len(qs)},
               mean=result["mean"], std=result["std"], runs=result["runs"])
    tables = _mmworld_tables(result, multi)
    os.makedirs(workdir, exist_ok=True)
    out["evalai_submission"] = mmworld.write_submission(
        os.path.join(workdir, "evalai_submission.json"), qs, runs_preds[0][0])
  else:
    scores = [_vlm4d_score(sources, p) for p in runs_preds]
    keys = list(scores[0]["accuracy"])
    mean = {k: float(np.mean([s["accuracy"][k] for s in scores if s["accuracy"][k] is not None]))
            if any(s["accuracy"][k] is not None for s in scores) else None for k in keys}
    std = {k: float(np.std([s["accuracy"][k] for s in scores if s["accuracy"][k] is not None]))
           if mean[k] is not None else None for k in keys}
    out.update(summary={"accuracy": mean.get("overall"), "accuracy_std": std.get("overall"),
                        "n": scores[0]["n"].get("overall")},
               mean=mean, std=std, n=scores[0]["n"], runs=scores)
    tables = [("accuracy (%) per split / group", report.markdown_table(
        [{"split": k, "n": scores[0]["n"][k],
          "accuracy (%)": (mean[k], std[k]) if multi else mean[k]} for k in keys]))]
  title = f"{config.bench} · model {config.model} · {int(config.num_runs)} run(s)"
  tables[0] = (f"{title}: {tables[0][0]}", tables[0][1])
  out["files"] = report.write(workdir, out, tables, rows, "predictions.csv")
  return out
