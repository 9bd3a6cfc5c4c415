"""MMWorld (ICLR 2025) harness: prompt, scoring, runs and EvalAI export.

The official JSON (a list of video records `video_id, video_url, discipline,
subdiscipline, captions, questions`; each question `type, question, options
{a..d}, answer, correct_answer_label, requires_domain_knowledge,
requires_audio, requires_visual, question_only`) is read and validated by
`mfm_jax.data.sources.mmworld` (no videos needed here). A question's id is
"<video_id>/<question number>", as in that source.

A prediction record: `id`, and `response` (free text) and / or `correct`
(bool, already judged). Grading uses `correct` where present unless
extract=True; otherwise the response's letter (rule-based, `answers.py`,
labels a..d; an optional judge plug-in backs it up) must be the
correct_answer_label. A question without a prediction counts as wrong and
is reported under "missing".

Scores (as the official evaluation/eval.py): accuracy overall, per
discipline, per question type, and per annotation flag over the questions
whose flag is true. `score_runs` gives mean and std (population, ddof=0)
over N runs.

EvalAI export (`evalai_submission`): {"detailed_results": [{"video_id",
"question", "model_answer"}]} in file order, one entry per question.
Assumption (the challenge page's format is not public in the sources we
could read): entries mirror the detailed_results the official eval.py
writes, whose `video_id` and `model_answer` the challenge asks for;
`question` is kept to tell apart the several questions of one video.
model_answer is the extracted letter (a..d), or the raw response when no
letter can be extracted.
"""
from __future__ import annotations

import json
import os
from collections.abc import Mapping, Sequence

import numpy as np

from mfm_jax.data.sources import common
from mfm_jax.data.sources import mmworld as source
from mfm_jax.eval import answers

LABELS = source.LABELS
FLAGS = source.BOOL_FIELDS
QUESTION_TYPES = source.QUESTION_TYPES
PROMPT = ("Answer the question {question} by selecting one from the given "
          "answers:\n{options}\nRespond with only a single letter: a, b, c "
          "or d.")


def load_questions(path, on_bad_record: str = "raise") -> list[dict]:
  """mmworld.json -> [question], in file order (validated by the source).

  Each question: id, video_id, video_url, discipline, subdiscipline,
  captions, type, question, options {"a".."d": text}, answer,
  correct_answer_label, the four flags (bool), index.
  """
  path = os.fspath(path)
  bad = common.BadRecords(on_bad_record, "mmworld")
  videos = source.parse_records(common.load_json(path), path, bad, "test")
  out = []
  for _, questions in videos:
    for index, q in questions:
      out.append({
          **{k: q[k] for k in ("id", "video_id", "video_url", "discipline",
                               "subdiscipline", "captions", "type",
                               "question", "answer", "correct_answer_label")},
          "options": dict(zip(LABELS, (str(t) for t in q["options"]))),
          **{k: bool(q[k]) for k in FLAGS}, "index": index})
  return out


def prompt(question: str, options) -> str:
  """The prompt that asks for one letter (as the official eval.py)."""
  opts = answers.option_map(options, LABELS)
  lines = "\n".join(f"({l}) {opts[l]}" for l in LABELS if l in opts)
  return PROMPT.format(question=question, options=lines)


def prediction_record(question: Mapping, response: str) -> dict:
  """A prediction record for one question's response."""
  return {"id": question["id"], "video_id": question["video_id"],
          "question": question["question"], "response": response}


def extract_letter(question: Mapping, response, judge=None,
            judge_mode: str = "fallback") -> str | None:
  """The letter (a..d) a response chooses, or None."""
  if response is None:
    return None
  return answers.answer_letter(question["question"], question["options"],
                               str(response), LABELS, judge, judge_mode)


def grade(question: Mapping, prediction: Mapping | None,
          extract: bool = False, judge=None,
          judge_mode: str = "fallback") -> bool:
  """Whether a prediction answers a question right (see module doc)."""
  if prediction is None:
    return False
  if not extract and prediction.get("correct") is not None:
    try:
      return common.as_bool(prediction["correct"])
    except TypeError as e:
      raise ValueError(f"{question['id']}: bad 'correct': {e}") from None
  if prediction.get("response") is None:
    raise ValueError(f"{question['id']}: nothing to grade: no 'response'" +
                     ("" if extract else " and no 'correct'"))
  letter = extract_letter(question, prediction["response"], judge, judge_mode)
  return answers.is_correct(letter, question["options"], question["answer"],
                            LABELS)


def _by_id(questions, predictions) -> dict:
  known = {q["id"] for q in questions}
  out = {}
  for i, p in enumerate(predictions):
    pid = str(p.get("id")) if isinstance(p, Mapping) else None
    if pid is None or pid == "None":
      raise ValueError(f"prediction #{i} has no 'id'")
    if pid not in known:
      raise ValueError(f"prediction #{i}: unknown question id {pid!r}")
    if pid in out:
      raise ValueError(f"duplicate prediction for question {pid!r}")
    out[pid] = p
  return out


def _acc(right: int, n: int) -> dict:
  return {"accuracy": 100.0 * right / n if n else None, "n": n,
          "correct": right}


def score(questions: Sequence[Mapping], predictions: Sequence[Mapping],
          extract: bool = False, judge=None,
          judge_mode: str = "fallback") -> dict:
  """Accuracy (%) overall, per discipline, per type, per flag.

  Returns:
    {"accuracy", "n", "correct", "missing", "per_discipline": {name:
    {"accuracy", "n", "correct"}}, "per_type": {...}, "per_flag": {flag:
    {...} over the questions whose flag is true}}.

  Raises:
    ValueError: a prediction without id, with an unknown or duplicate id,
      or with nothing to grade.
  """
  preds = _by_id(questions, predictions)
  groups = {"per_discipline": {}, "per_type": {}, "per_flag": {}}
  total = right = missing = 0
  for q in questions:
    p = preds.get(q["id"])
    missing += p is None
    ok = grade(q, p, extract, judge, judge_mode)
    total += 1
    right += ok
    keys = [("per_discipline", q["discipline"]), ("per_type", q["type"])]
    keys += [("per_flag", f) for f in FLAGS if q[f]]
    for group, key in keys:
      n, c = groups[group].get(key, (0, 0))
      groups[group][key] = (n + 1, c + ok)
  result = {**_acc(right, total), "missing": missing}
  for group, table in groups.items():
    result[group] = {k: _acc(c, n) for k, (n, c) in sorted(table.items())}
  return result


def score_runs(questions: Sequence[Mapping],
               runs: Sequence[Sequence[Mapping]], **kwargs) -> dict:
  """Mean and std (ddof=0) of every accuracy over N runs' predictions.

  Returns:
    {"runs": [score per run], "mean": {"accuracy", "per_discipline":
    {name: %}, "per_type": {...}, "per_flag": {...}}, "std": same shape}.
    A group missing from a run (no questions) is left out of that group's
    statistics; all-empty groups are None.
  """
  if not runs:
    raise ValueError("score_runs needs at least one run")
  scores = [score(questions, preds, **kwargs) for preds in runs]

  def stats(values):
    values = [v for v in values if v is not None]
    if not values:
      return None, None
    return float(np.mean(values)), float(np.std(values))

  mean, std = {}, {}
  mean["accuracy"], std["accuracy"] = stats(s["accuracy"] for s in scores)
  for group in ("per_discipline", "per_type", "per_flag"):
    mean[group], std[group] = {}, {}
    for key in sorted({k for s in scores for k in s[group]}):
      m, d = stats(s[group].get(key, {}).get("accuracy") for s in scores)
      mean[group][key], std[group][key] = m, d
  return {"runs": scores, "mean": mean, "std": std}


def evalai_submission(questions: Sequence[Mapping],
                      predictions: Sequence[Mapping], judge=None,
                      judge_mode: str = "fallback") -> dict:
  """{"detailed_results": [{"video_id", "question", "model_answer"}]}.

  model_answer: the extracted letter, else the raw response ("" when the
  question has no prediction or no response). Order: the questions'.
  """
  preds = _by_id(questions, predictions)
  results = []
  for q in questions:
    response = (preds.get(q["id"]) or {}).get("response")
    letter = extract_letter(q, response, judge, judge_mode)
    answer = letter if letter is not None else (
        "" if response is None else str(response))
    results.append({"video_id": q["video_id"], "question": q["question"],
                    "model_answer": answer})
  return {"detailed_results": results}


def write_submission(path, questions, predictions, **kwargs) -> str:
  """Writes `evalai_submission(...)` as JSON to path; returns the path."""
  path = os.fspath(path)
  with open(path, "w") as f:
    json.dump(evalai_submission(questions, predictions, **kwargs), f,
              indent=1)
  return path
