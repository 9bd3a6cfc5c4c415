"""MMWorld harness: loading, scoring, runs, judge, EvalAI export, adapters."""
import json

import numpy as np
import pytest

from mfm_jax.data.sources import common
from mfm_jax.eval import adapters
from mfm_jax.eval import mmworld

OPTIONS = {"a": "it bounced", "b": "it collided", "c": "it stopped",
           "d": "nothing"}


def _q(qtype, label, **flags):
  q = {"type": qtype, "question": f"{qtype}: what happened?",
       "options": dict(OPTIONS), "answer": OPTIONS[label],
       "correct_answer_label": label, "requires_domain_knowledge": False,
       "requires_audio": False, "requires_visual": False,
       "question_only": False}
  q.update(flags)
  return q


def _video(vid, discipline, questions):
  return {"video_id": vid, "video_url": f"https://x.org/{vid}",
          "discipline": discipline, "subdiscipline": "sub",
          "captions": ["a ball"], "questions": questions}


DATA = [
    _video("v1", "Science", [
        _q("Explanation", "b", requires_visual=True),
        _q("Counterfactual Thinking", "d", requires_domain_knowledge=True)]),
    _video("v2", "Sports & Arts", [
        _q("Explanation", "a", requires_audio=True, requires_visual=True)]),
    _video("v3", "Science", [
        _q("Future Prediction", "c", question_only=True)]),
]
RUN1 = [{"id": "v1/0", "response": "b"},
        {"id": "v1/1", "response": "The answer is (a)"},
        {"id": "v2/0", "response": "A"}]                 # v3/0 missing
RUN2 = [{"id": "v1/0", "response": "(b) it collided"},
        {"id": "v1/1", "correct": True},
        {"id": "v2/0", "response": "Answer: a"},
        {"id": "v3/0", "response": "it stopped"}]


@pytest.fixture(scope="module")
def questions(tmp_path_factory):
  path = tmp_path_factory.mktemp("mmw") / "mmworld.json"
  path.write_text(json.dumps(DATA))
  return mmworld.load_questions(path)


def test_load_questions(questions):
  assert [q["id"] for q in questions] == ["v1/0", "v1/1", "v2/0", "v3/0"]
  q = questions[0]
  assert q["options"] == OPTIONS and q["correct_answer_label"] == "b"
  assert q["discipline"] == "Science" and q["requires_visual"] is True
  assert q["index"] == 0 and questions[3]["index"] == 3


def test_load_questions_bad_record(tmp_path):
  data = json.loads(json.dumps(DATA))
  data[0]["questions"][1]["correct_answer_label"] = "a"
  path = tmp_path / "mmworld.json"
  path.write_text(json.dumps(data))
  with pytest.raises(common.BadRecordError, match="v1/1"):
    mmworld.load_questions(path)
  assert len(mmworld.load_questions(path, on_bad_record="skip")) == 3


def test_score_hand_computed(questions):
  r = mmworld.score(questions, RUN1)
  assert (r["accuracy"], r["n"], r["correct"], r["missing"]) == (50.0, 4, 2,
                                                                  1)
  acc = lambda group: {k: v["accuracy"] for k, v in r[group].items()}
  assert acc("per_discipline") == {"Science": pytest.approx(100 / 3),
                                   "Sports & Arts": 100.0}
  assert acc("per_type") == {"Explanation": 100.0,
                             "Counterfactual Thinking": 0.0,
                             "Future Prediction": 0.0}
  assert acc("per_flag") == {"requires_visual": 100.0,
                             "requires_domain_knowledge": 0.0,
                             "requires_audio": 100.0, "question_only": 0.0}
  assert r["per_flag"]["requires_visual"]["n"] == 2
  assert mmworld.score(questions, RUN2)["accuracy"] == 100.0


def test_runs_mean_and_std(questions):
  r = mmworld.score_runs(questions, [RUN1, RUN2])
  assert r["mean"]["accuracy"] == 75.0 and r["std"]["accuracy"] == 25.0
  assert r["mean"]["per_discipline"]["Science"] == pytest.approx(200 / 3)
  assert r["std"]["per_discipline"]["Science"] == pytest.approx(100 / 3)
  assert r["mean"]["per_type"]["Explanation"] == 100.0
  assert r["std"]["per_type"]["Explanation"] == 0.0
  assert r["mean"]["per_flag"]["question_only"] == 50.0
  assert [s["accuracy"] for s in r["runs"]] == [50.0, 100.0]
  with pytest.raises(ValueError, match="at least one run"):
    mmworld.score_runs(questions, [])


def test_extract_ignores_correct_and_judge(questions):
  preds = [{"id": "v1/1", "correct": True, "response": "no idea"}]
  assert mmworld.score(questions, preds)["correct"] == 1
  assert mmworld.score(questions, preds, extract=True)["correct"] == 0
  calls = []

  def judge(question, options, response):
    calls.append(response)
    return "D"

  r = mmworld.score(questions, preds, extract=True, judge=judge)
  assert r["correct"] == 1 and calls == ["no idea"]


@pytest.mark.parametrize("preds,match", [
    ([{"id": "v9/0", "response": "a"}], "unknown question id"),
    ([{"id": "v1/0", "response": "a"}, {"id": "v1/0", "response": "b"}],
     "duplicate"),
    ([{"response": "a"}], "no 'id'"),
    ([{"id": "v1/0"}], "nothing to grade"),
])
def test_bad_predictions(questions, preds, match):
  with pytest.raises(ValueError, match=match):
    mmworld.score(questions, preds)


def test_evalai_export(questions, tmp_path):
  preds = RUN1[:2] + [{"id": "v2/0", "response": "Hmm, hard to say."}]
  path = mmworld.write_submission(tmp_path / "sub.json", questions, preds)
  sub = json.loads(open(path).read())
  assert list(sub) == ["detailed_results"]
  rows = sub["detailed_results"]
  assert [r["video_id"] for r in rows] == ["v1", "v1", "v2", "v3"]
  assert [r["model_answer"] for r in rows] == ["b", "a", "Hmm, hard to say.",
                                               ""]
  assert rows[1]["question"] == "Counterfactual Thinking: what happened?"


def test_prompt_asks_for_one_letter():
  p = mmworld.prompt("Why did it turn?", OPTIONS)
  assert "Why did it turn?" in p and "(a) it bounced\n(b) it collided" in p
  assert "single letter" in p


def test_adapters_on_mmworld(questions):
  seen = []

  def vlm(frames, prompt):
    seen.append((frames, prompt))
    return "Answer: (B)"

  preds = adapters.run(vlm, questions, "mmworld",
                       frames_fn=lambda q: np.zeros((2, 4, 4, 3), np.uint8))
  assert [p["id"] for p in preds] == [q["id"] for q in questions]
  assert seen[0][0].shape == (2, 4, 4, 3)
  assert "Explanation: what happened?" in seen[0][1]
  assert mmworld.score(questions, preds)["correct"] == 1       # only v1/0
  const = adapters.run(adapters.ConstantBaseline("a"), questions, "mmworld")
  assert mmworld.score(questions, const)["correct"] == 1       # only v2/0
  with pytest.raises(TypeError, match="v1/0"):
    adapters.run(lambda f, p: 3, questions, "mmworld")
  with pytest.raises(ValueError, match="benchmark"):
    adapters.run(vlm, questions, "mmlu")


def test_random_baseline_is_seeded():
  draw = lambda seed: [f(None, "") for f in [adapters.RandomBaseline(seed)]
                        for _ in range(50)]
  a, b, c = draw(3), draw(3), draw(4)
  assert a == b and a != c and set(a) == {"A", "B", "C", "D"}
  low = adapters.RandomBaseline(seed=0, labels=mmworld.LABELS)
  assert low(None, "") in mmworld.LABELS
  with pytest.raises(ValueError):
    adapters.ConstantBaseline("AB")
  with pytest.raises(TypeError):
    adapters.CallableAdapter("not callable")
