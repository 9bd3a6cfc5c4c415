"""``python -m mfm_jax.evaluate`` end to end on the world export and a smoke video_diffusion run."""
import csv
import importlib.util
import json
import os
import subprocess
import sys

import numpy as np
import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
# Subprocesses compile without LLVM optimisation (as tests/models/test_dit.py's FAST options):
# a third less CPU per smoke run; every number compared here comes from runs with the same flags.
FAST_XLA = "--xla_backend_optimization_level=0 --xla_llvm_disable_expensive_passes=true"


@pytest.fixture(scope="module")
def export_dir(tmp_path_factory):
  return str(tmp_path_factory.mktemp("world_export"))


def _env(export_dir):
  env = dict(os.environ)
  env.update(XLA_FLAGS=f"--xla_force_host_platform_device_count=8 {FAST_XLA}", JAX_PLATFORMS="cpu",
             PYTHONPATH=ROOT, MFM_JAX_EXPORT_DIR=export_dir)
  return env


def _evaluate(export_dir, config, workdir, *overrides, rc=0):
  p = subprocess.run([sys.executable, "-m", "mfm_jax.evaluate", "--config", config,
                      "--workdir", str(workdir), *overrides], cwd=ROOT, env=_env(export_dir),
                     capture_output=True, text=True, timeout=600)
  assert p.returncode == rc, p.stderr[-3000:]
  return p


def _config(name, arg=None):
  spec = importlib.util.spec_from_file_location(name, os.path.join(ROOT, "configs", "eval",
                                                                   f"{name}.py"))
  mod = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(mod)
  return mod.get_config(arg)


def _rows(path):
  with open(path, newline="") as f:
    return list(csv.DictReader(f))


def test_mmworld_constant_a_equals_fraction_of_a_answers(export_dir, tmp_path):
  p = _evaluate(export_dir, "configs/eval/mmworld.py:smoke", tmp_path, "--config.model=constant:a",
                "--config.num_runs=2")
  for f in ("results.json", "results.md", "predictions.csv", "evalai_submission.json"):
    assert os.path.getsize(tmp_path / f) > 0, f
  with open(os.path.join(export_dir, "smoke_views1_seed0", "mmworld.json")) as f:
    videos = json.load(f)
  labels = [q["correct_answer_label"].lower() for v in videos for q in v["questions"]]
  frac = 100.0 * labels.count("a") / len(labels)
  res = json.loads((tmp_path / "results.json").read_text())
  assert res["summary"]["n"] == len(labels) > 0
  assert res["summary"]["accuracy"] == pytest.approx(frac)
  assert res["summary"]["accuracy_std"] == 0.0                    # a constant model: same each run
  rows = _rows(tmp_path / "predictions.csv")
  assert len(rows) == 2 * len(labels) and {r["extracted"] for r in rows} == {"a"}
  sub = json.loads((tmp_path / "evalai_submission.json").read_text())["detailed_results"]
  assert len(sub) == len(labels) and {s["model_answer"] for s in sub} == {"a"}
  assert "| accuracy (%) |" in p.stdout and "per question type" in p.stdout
  assert "per question type" in (tmp_path / "results.md").read_text()
  # a second run reuses the cached export (no new export folder)
  _evaluate(export_dir, "configs/eval/mmworld.py:smoke", tmp_path / "again")
  assert sorted(os.listdir(export_dir)) == ["smoke_views1_seed0"]


def test_vlm4d_random_runs_mean_std_and_constant(export_dir, tmp_path):
  from mfm_jax import evaluate
  os.environ["MFM_JAX_EXPORT_DIR"] = export_dir
  c = _config("vlm4d", "smoke")
  c.model, c.num_runs = "random", 3
  res = evaluate.evaluate(c, str(tmp_path / "random"))
  rows = _rows(tmp_path / "random" / "predictions.csv")
  per_run = [np.mean([r["correct"] == "True" for r in rows if r["run"] == str(i)]) * 100
             for i in range(3)]
  assert res["summary"]["accuracy"] == pytest.approx(np.mean(per_run))
  assert res["summary"]["accuracy_std"] == pytest.approx(np.std(per_run))
  assert len({tuple(r["response"] for r in rows if r["run"] == str(i)) for i in range(3)}) > 1
  with open(os.path.join(export_dir, "smoke_views1_seed0", "vlm4d.json")) as f:
    qs = json.load(f)
  c.model, c.num_runs = "constant:A", 1
  res = evaluate.evaluate(c, str(tmp_path / "const"))
  frac = 100.0 * np.mean([q["choices"]["A"] == q["answer"] for q in qs])
  assert res["summary"]["n"] == len(qs) and res["summary"]["accuracy"] == pytest.approx(frac)
  ego = [q for q in qs if "_ego_" in q["id"]]
  if ego:
    assert res["mean"]["view:ego"] == pytest.approx(
        100.0 * np.mean([q["choices"]["A"] == q["answer"] for q in ego]))


def test_callable_model_sees_frames(export_dir, tmp_path):
  from mfm_jax import evaluate
  os.environ["MFM_JAX_EXPORT_DIR"] = export_dir
  c = _config("mmworld", "smoke")
  c.model, c.num_frames, c.max_questions = "tests.eval.test_evaluate_cli:_frames_model", 4, 3
  res = evaluate.evaluate(c, str(tmp_path))
  rows = _rows(tmp_path / "predictions.csv")
  assert res["summary"]["n"] == 3
  import imageio.v2 as imageio
  first = os.path.join(export_dir, "smoke_views1_seed0", "videos",
                       rows[0]["id"].split("/")[0] + ".mp4")
  _, h, w, _ = np.asarray(imageio.mimread(first, format="FFMPEG")).shape
  assert [r["response"] for r in rows] == [f"(4, {h}, {w}, 3) uint8 b"] * 3
  assert res["summary"]["accuracy"] == pytest.approx(
      100.0 * np.mean([r["answer"] == "b" for r in rows]))


def _frames_model(frames, prompt):
  assert "Respond with only a single letter" in prompt
  return f"{frames.shape} {frames.dtype} b"


def test_bad_override_and_bad_model_are_clear_errors(export_dir, tmp_path):
  p = _evaluate(export_dir, "configs/eval/mmworld.py:smoke", tmp_path, "--config.modle=random",
                rc=2)
  assert "--config.modle=random" in p.stderr and "modle" in p.stderr
  p = _evaluate(export_dir, "configs/eval/vlm4d.py:smoke", tmp_path, "--config.model=nope",
                rc=2)
  assert "config.model='nope'" in p.stderr
  p = _evaluate(export_dir, "configs/eval/generation.py:smoke", tmp_path, rc=2)
  assert "config.checkpoint is required" in p.stderr


@pytest.mark.slow
def test_generation_on_a_smoke_checkpoint(export_dir, tmp_path):
  run = tmp_path / "run"
  p = subprocess.run([sys.executable, "-m", "mfm_jax.train", "--config",
                      "configs/video_gen.py:smoke", "--workdir", str(run),
                      "--config.total_steps=2", "--config.checkpoint.every=2",
                      "--config.eval_every=0", "--config.eval_batches=0",
                      "--config.peak_flops_per_device=1e12"], cwd=ROOT,
                     env=_env(export_dir), capture_output=True, text=True, timeout=1500)
  assert p.returncode == 0, p.stderr[-3000:]
  from mfm_jax import evaluate
  from tests.eval.test_clip_score import save_init_clip
  c = _config("generation", "smoke")
  c.checkpoint, c.num_videos, c.batch_size = str(run), 3, 2
  with pytest.warns(UserWarning, match="comparable only"):
    res = evaluate.evaluate(c, str(tmp_path / "ev"))
  s = res["summary"]
  assert res["step"] == 2 and s["num_videos"] == 3
  for k in ("frechet", "frechet_noise", "trajectory_error", "trajectory_error_real"):
    assert np.isfinite(s[k]) and s[k] >= 0, k
  assert s["clip_score"] is None                      # no encoder checkpoint given
  save_init_clip(tmp_path / "clip")                   # the project's encoder (video, smoke)
  c.encoder, c.gif = str(tmp_path / "clip"), False
  res2 = evaluate.evaluate(c, str(tmp_path / "ev2"))
  assert res2["features"].startswith("clip:")
  assert 0 <= res2["summary"]["clip_score"] <= 100 and 0 <= res2["summary"]["clip_score_real"] <= 100
  assert res2["summary"]["trajectory_error"] == pytest.approx(s["trajectory_error"])  # same noise
  assert np.isfinite(res2["summary"]["frechet"])
  assert s["trajectory_error_real"] < s["trajectory_error_real_shuffled"]
  rows = _rows(tmp_path / "ev" / "samples.csv")
  per = [float(r["trajectory_error"]) for r in rows]   # the summary pools (frame, object) pairs
  assert len(rows) == 3 and min(per) - 1e-6 <= s["trajectory_error"] <= max(per) + 1e-6
  assert os.path.getsize(tmp_path / "ev" / "samples.gif") > 0
  assert "frechet" in (tmp_path / "ev" / "results.md").read_text()


def test_vqa_adapter_builds_the_training_inputs_and_runs(export_dir, tmp_path):
  """The adapter's video / tokens / layout graph equal world_qa_pipeline's for the same clip and
  question (object nodes and object-grounded channels are empty: a benchmark has no graph)."""
  import jax
  from flax import linen as nn
  from mfm_jax import evaluate, tasks
  from mfm_jax.data import world_qa_pipeline as qa
  from mfm_jax.engine import checkpoint as ckpt_lib
  from mfm_jax.eval import vqa_adapter
  spec = importlib.util.spec_from_file_location("vqa_graph", os.path.join(ROOT, "configs",
                                                                          "vqa_graph.py"))
  mod = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(mod)
  config = mod.get_config("smoke")
  task = tasks.get("vqa")(config)
  params = jax.device_get(nn.meta.unbox(task.init(jax.random.key(0))))
  ck = ckpt_lib.Checkpointer(str(tmp_path / "run" / "checkpoints"), async_save=False)
  ck.save(0, params, config=config)
  ck.close()
  adapter = vqa_adapter.VqaAdapter(str(tmp_path / "run"))
  element = qa.QuestionSource(config.data, "validation")[0]
  ref = qa.Preprocess(config.data, task.tokenizers).map(element)
  q = element["question"]
  got = {k: v[0] for k, v in adapter.inputs(np.asarray(element["video"]), q["question"],
                                             q["options"]).items()}
  np.testing.assert_allclose(got["video"], ref["video"], atol=1e-6)
  for k in ("question_ids", "question_mask", "option_ids", "option_mask"):
    np.testing.assert_array_equal(got[k], ref[k], err_msg=k)
  lv, k = task.num_video, task.num_objects      # the layout channel, object-node rows aside
  keep = np.r_[0:lv, lv + k:got["adjacency"].shape[-1]]
  np.testing.assert_array_equal(got["adjacency"][0][np.ix_(keep, keep)],
                                ref["adjacency"][0][np.ix_(keep, keep)])
  assert not got["obj_mask"].any() and not got["adjacency"][1:].any()
  assert adapter(vqa_adapter.QuestionClip(np.asarray(element["video"]), q["question"],
                                          q["options"]), "") in "ABCD"
  os.environ["MFM_JAX_EXPORT_DIR"] = export_dir
  c = _config("mmworld", "smoke")
  c.model, c.max_questions = f"vqa:{tmp_path / 'run'}", 4
  res = evaluate.evaluate(c, str(tmp_path / "ev"))
  rows = _rows(tmp_path / "ev" / "predictions.csv")
  assert len(rows) == 4 and all(r["extracted"] in "abcd" for r in rows)
  assert res["summary"]["accuracy"] == pytest.approx(
      100.0 * np.mean([r["extracted"] == r["answer"] for r in rows]))
