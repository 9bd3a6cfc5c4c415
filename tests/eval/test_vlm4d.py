"""VLM4D harness: splits, aggregation, the scoring CLI, the real files."""
import json
import pathlib
import subprocess
import sys

import pytest

from mfm_jax.data.sources import common
from mfm_jax.eval import adapters
from mfm_jax.eval import vlm4d

ROOT = pathlib.Path(__file__).resolve().parents[2]
SHARED = ROOT.parent / "shared" / "benchmarks" / "vlm4d"
CHOICES = {"A": "left", "B": "right", "C": "not moving", "D": "no ball there"}
FP_CHOICES = {"A": "left", "B": "right", "C": "not moving", "D": "No"}


def _rec(rid, truth="left", choices=CHOICES, **over):
  return {"id": rid, "choices": dict(choices), "ground_truth_answer": truth,
          **over}


# Hand-computed fixture. `correct` (judged) and `response` disagree on
# purpose, so default grading and --extract give different numbers.
REAL = [
    _rec("validation_1", correct=True, response="A"),               # exo
    _rec("validation_922", correct=False, response="The answer is (a)"),
    _rec("validation_923", "right", correct=True, response="B"),    # ego
    _rec("validation_1000", "right", correct=True,
         response="Therefore, the final answer is: C"),
    _rec(1200, "not moving", correct=False, response="not moving"),  # ego
]
SYNTH = [
    _rec("validation_1", correct=True, response="A"),                # dir
    _rec("validation_2", "right", correct=False, response="A or B"),  # dir
    _rec("validation_3", "no ball there", correct=True,
         response="D. no ball there"),                                # fp
    _rec("validation_4", "No", FP_CHOICES, correct=False, response="D"),
]
# default (correct): exo 1/2, ego 2/3, real 3/5, dir 1/2, fp 1/2, synth 2/4,
# overall 5/9. --extract: exo 2/2, ego 2/3 (B, C wrong, "not moving"),
# real 4/5, dir 1/2 (A or B -> None), fp 2/2, synth 3/4, overall 7/9.
DEFAULT = {"real_exo": 50.0, "real_ego": 200 / 3, "real": 60.0,
           "synth_dir": 50.0, "synth_fp": 50.0, "synth": 50.0,
           "overall": 500 / 9}
EXTRACT = {"real_exo": 100.0, "real_ego": 200 / 3, "real": 80.0,
           "synth_dir": 50.0, "synth_fp": 100.0, "synth": 75.0,
           "overall": 700 / 9}
N = {"real_ego": 3, "real_exo": 2, "real": 5, "synth_dir": 2, "synth_fp": 2,
     "synth": 4, "overall": 9}


def _check(result, expected):
  assert set(result) == set(vlm4d.SPLITS) | {"n"}
  for k, v in expected.items():
    assert result[k] == pytest.approx(v), k
  assert result["n"] == N


@pytest.mark.parametrize("rid,source,answer,split", [
    ("validation_1", "real", "left", "real_exo"),
    ("validation_922", "real", "left", "real_exo"),
    ("validation_923", "real", "left", "real_ego"),
    ("real_123", "real", "left", "real_exo"),
    (922, "real", "left", "real_exo"),
    (923, "real", "left", "real_ego"),
    ("validation_1", "synthetic", "left", "synth_dir"),
    ("validation_1", "synthetic", "no dragon there", "synth_fp"),
    ("validation_1", "synthetic", " No ", "synth_fp"),
    ("validation_1", "synthetic", "north", "synth_dir"),
    ("validation_1", "synthetic", "not moving", "synth_dir"),
])
def test_split_of(rid, source, answer, split):
  assert vlm4d.split_of(source, rid, answer) == split


def test_split_of_rejects_bad_input():
  with pytest.raises(ValueError, match="no numeric part"):
    vlm4d.split_of("real", "validation_x", "left")
  with pytest.raises(ValueError, match="source split"):
    vlm4d.split_of("test", "validation_1", "left")


def test_score_hand_computed():
  _check(vlm4d.score(real=REAL, synthetic=SYNTH), DEFAULT)
  _check(vlm4d.score(real=REAL, synthetic=SYNTH, extract=True), EXTRACT)
  # Without `correct` the response is graded: same as extract.
  no_correct = [{k: v for k, v in r.items() if k != "correct"} for r in REAL]
  assert vlm4d.score(real=no_correct)["real"] == 80.0


def test_empty_splits_and_one_source():
  r = vlm4d.score(real=REAL[:2])
  assert r["real_exo"] == 50.0 and r["real_ego"] is None
  assert r["synth"] is None and r["overall"] == 50.0
  assert r["n"]["synth"] == 0 and r["n"]["overall"] == 2


def test_judge_is_used_when_rules_fail():
  synth = [_rec("validation_2", "right", response="A or B")]
  judged = vlm4d.score(synthetic=synth, judge=lambda q, o, r: "B")
  assert judged["synth_dir"] == 100.0


@pytest.mark.parametrize("record,match", [
    ({"id": "validation_1", "choices": CHOICES}, "ground_truth_answer"),
    (_rec("validation_1", "up", correct=True), "not among the choices"),
    (_rec("validation_1"), "nothing to grade"),
    (_rec("validation_1", correct="maybe"), "bad 'correct'"),
    (_rec("x", correct=True), "no numeric part"),
])
def test_bad_prediction_records_name_file_and_id(record, match):
  with pytest.raises(common.BadRecordError, match=match) as e:
    vlm4d.grade_file([record], "real", "preds.json")
  assert e.value.file == "preds.json"


def test_duplicate_id_within_a_file():
  recs = [_rec("validation_1", correct=True), _rec("validation_1",
                                                   correct=False)]
  with pytest.raises(common.BadRecordError, match="duplicate id"):
    vlm4d.grade_file(recs, "real")
  # The same id in real and synthetic is fine (the real files do this).
  assert vlm4d.score(real=recs[:1], synthetic=recs[:1])["n"]["overall"] == 2


def test_prompts():
  cot = vlm4d.prompt("Where does it go?", CHOICES, "cot")
  direct = vlm4d.prompt("Where does it go?", CHOICES, "direct")
  assert "A: left\nB: right\nC: not moving\nD: no ball there" in cot
  assert "Therefore, the final answer is: $LETTER" in cot
  assert "option letter" in direct and "step by step" not in direct
  with pytest.raises(ValueError, match="mode"):
    vlm4d.prompt("q", CHOICES, "free")


def _cli(tmp_path, *args):
  return subprocess.run([sys.executable, "-m", "mfm_jax.eval.vlm4d", *args],
                        cwd=ROOT, capture_output=True, text=True,
                        timeout=120, check=False)


def test_cli_end_to_end(tmp_path):
  real, synth = tmp_path / "real.json", tmp_path / "synth.json"
  real.write_text(json.dumps(REAL))
  synth.write_text(json.dumps(SYNTH))
  out = _cli(tmp_path, "--real", str(real), "--synthetic", str(synth))
  assert out.returncode == 0, out.stderr
  _check(json.loads(out.stdout), DEFAULT)
  out = _cli(tmp_path, "--real", str(real), "--synthetic", str(synth),
             "--extract")
  assert out.returncode == 0, out.stderr
  _check(json.loads(out.stdout), EXTRACT)


def test_cli_errors_in_process(tmp_path, capsys):
  bad = tmp_path / "bad.json"
  bad.write_text(json.dumps([_rec("validation_7")]))
  assert vlm4d.main(["--real", str(bad)]) == 2
  err = capsys.readouterr().err
  assert "bad.json" in err and "validation_7" in err
  assert vlm4d.main(["--real", str(tmp_path / "none.json")]) == 2
  with pytest.raises(SystemExit):
    vlm4d.main([])


_NO_SHARED = f"real VLM4D question files not present at {SHARED}"


@pytest.fixture(scope="module")
def real_questions():
  if not SHARED.is_dir():
    pytest.skip(_NO_SHARED)
  return (vlm4d.load_questions(SHARED / "real_mc.json"),
          vlm4d.load_questions(SHARED / "synthetic_mc.json"))


def test_real_files_load_and_split(real_questions):
  real, synth = real_questions
  assert (len(real), len(synth)) == (1371, 445)
  # Every record loads; perfect predictions score 100 % in every split.
  perfect = vlm4d.score(
      real=[{**vlm4d.prediction_record(q, q["answer"]), "correct": True}
            for q in real],
      synthetic=[vlm4d.prediction_record(q, q["answer"]) for q in synth])
  assert perfect["n"] == {"real_ego": 449, "real_exo": 922, "real": 1371,
                          "synth_dir": 400, "synth_fp": 45, "synth": 445,
                          "overall": 1816}
  assert all(perfect[s] == 100.0 for s in vlm4d.SPLITS)
  # The answer text and the CoT phrase both extract to a right choice.
  for q in real + synth:
    label = next(l for l in vlm4d.LABELS
                 if q["choices"][l].strip() == q["answer"].strip())
    rec = vlm4d.prediction_record(
        q, f"Looking at it... Therefore, the final answer is: {label}")
    assert vlm4d.grade(rec), q["id"]
  # The exo / ego cut matches the video sources: DAVIS, YouTube-VOS vs Ego4D.
  ego = [q for q in real if q["category"] == "ego"]
  assert all("/ego4d/" in q["video"] for q in ego)
  assert not any("/ego4d/" in q["video"] for q in real
                 if q["category"] == "exo")


def test_random_baseline_on_real_files(real_questions):
  real, synth = real_questions
  r = vlm4d.score(
      real=adapters.run(adapters.RandomBaseline(seed=0), real, "vlm4d"),
      synthetic=adapters.run(adapters.RandomBaseline(seed=1), synth,
                             "vlm4d"))
  print("random baseline, seeds 0/1:",
        {s: round(r[s], 2) for s in vlm4d.SPLITS})
  # 1 sigma of a 25 % coin over n: overall 1.0, real 1.2, synth 2.1 points.
  assert abs(r["overall"] - 25) < 4
  assert abs(r["real"] - 25) < 5 and abs(r["synth"] - 25) < 8
  assert all(0 < r[s] < 60 for s in vlm4d.SPLITS)
