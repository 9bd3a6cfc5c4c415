"""VLM4D (ICCV 2025) harness: prompts, per-split scoring and a scoring CLI.

Question files (`real_mc.json`, `synthetic_mc.json`) are read and validated
by `mfm_jax.data.sources.vlm4d` (no videos needed here). Prediction files
are lists of records with at least

  id, choices {"A".."D"}, ground_truth_answer (the text of the right choice;
  `answer` is accepted too), and `correct` (bool, already judged) and/or
  `response` (free text)

as the official repository's processed outputs. Grading uses `correct`
where present; with extract=True (CLI `--extract`) it ignores `correct` and
grades `response` with the rule-based extractor (`answers.py`): right when
the chosen choice's text is the ground truth, wrong when nothing is chosen.

Splits as the paper (and the official acc_final_statistics.py): real
questions with numeric id (the trailing integer of "validation_<n>", or an
int id) <= 922 are exo-centric (DAVIS, YouTube-VOS: 922 of 1,371), > 922
ego-centric (Ego4D: 449); a synthetic question whose answer is "no" or
starts with "no " is a false-positive item (45 of 445), the rest are
directional (400). "real", "synth" and "overall" pool their questions
(1,816 overall). Accuracies are percentages; a split with no questions
scores None.

  python -m mfm_jax.eval.vlm4d --real REAL.json --synthetic SYNTH.json \
      [--extract]

prints {"real_ego": .., "real_exo": .., "real": .., "synth_dir": ..,
"synth_fp": .., "synth": .., "overall": .., "n": {split: count}}.
"""
from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Iterable, Mapping, Sequence

from mfm_jax.data.sources import common
from mfm_jax.data.sources import vlm4d as source
from mfm_jax.eval import answers

LABELS = source.LABELS
SPLITS = ("real_ego", "real_exo", "real", "synth_dir", "synth_fp", "synth",
          "overall")
_CATEGORY_SPLIT = {"exo": "real_exo", "ego": "real_ego",
                   "directional": "synth_dir", "false_positive": "synth_fp"}
_POOLS = {"real": ("real_ego", "real_exo"), "synth": ("synth_dir", "synth_fp"),
          "overall": ("real_ego", "real_exo", "synth_dir", "synth_fp")}

COT_PROMPT = (
    "Question: {question}\n{choices}\n\n"
    "Answer the given multiple-choice question step by step. Begin by "
    "explaining your reasoning process clearly. Conclude by stating the "
    "final answer using the following format: \"Therefore, the final answer "
    "is: $LETTER\" (without quotes), where $LETTER is one of the options. "
    "Think step by step before answering.")
DIRECT_PROMPT = (
    "Question: {question}\n{choices}\n\n"
    "Do not generate any intermediate reasoning process. Answer directly "
    "with the option letter from the given choices.")
PROMPTS = {"cot": COT_PROMPT, "direct": DIRECT_PROMPT}


def load_questions(path, on_bad_record: str = "raise",
                   split: str | None = None) -> list[dict]:
  """A VLM4D question file -> [question] (validated by the data source).

  Each question: id, video (URL), video_name, question_type, question,
  choices {"A".."D": text}, answer (text), category ("exo" / "ego" /
  "directional" / "false_positive" / ""), index (position in the file).
  """
  records, _ = source.parse_file(path, on_bad_record, split)
  return [{"id": f["id"], "video": f["video_url"],
           "video_name": f["video_name"],
           "question_type": f["question_type"], "question": f["question"],
           "choices": dict(zip(LABELS, (str(t) for t in f["choices"]))),
           "answer": f["answer"], "category": f["category"], "index": i}
          for i, f in records]


def prompt(question: str, choices, mode: str = "cot") -> str:
  """The chain-of-thought ("cot") or direct-output ("direct") prompt."""
  if mode not in PROMPTS:
    raise ValueError(f"mode must be one of {sorted(PROMPTS)}, got {mode!r}")
  opts = answers.option_map(choices, LABELS)
  lines = "\n".join(f"{l}: {opts[l]}" for l in LABELS if l in opts)
  return PROMPTS[mode].format(question=question, choices=lines)


def prediction_record(question: Mapping, response: str) -> dict:
  """A prediction record (the CLI's schema) for one question's response."""
  return {"id": question["id"], "video": question.get("video", ""),
          "question": question["question"],
          "choices": dict(question["choices"]),
          "ground_truth_answer": question["answer"], "response": response}


def split_of(source_split: str, record_id, answer: str) -> str:
  """"real_exo" / "real_ego" (source "real") or "synth_dir" / "synth_fp"
  (source "synthetic") of one question.

  Raises:
    ValueError: an unknown source, or a real id without a trailing number.
  """
  if source_split not in ("real", "synthetic"):
    raise ValueError(f"source split must be 'real' or 'synthetic', got "
                     f"{source_split!r}")
  cat = source.category(source_split, {"id": record_id}, answer)
  if cat not in _CATEGORY_SPLIT:
    raise ValueError(f"real id {record_id!r} has no numeric part; cannot "
                     f"tell exo- from ego-centric")
  return _CATEGORY_SPLIT[cat]


def grade(record: Mapping, extract: bool = False, judge=None,
          judge_mode: str = "fallback") -> bool:
  """Whether one prediction record is right (see module doc).

  Raises:
    ValueError: a missing field, bad choices, no `correct` / `response` to
      grade.
  """
  missing = common.missing_fields(record, ("id", "choices"))
  truth = record.get("ground_truth_answer", record.get("answer"))
  if truth is None:
    missing.append("ground_truth_answer")
  if missing:
    raise ValueError(f"missing field(s) {missing}")
  texts, _ = common.parse_choices(record["choices"], LABELS, truth)
  if not extract and record.get("correct") is not None:
    try:
      return common.as_bool(record["correct"])
    except TypeError as e:
      raise ValueError(f"bad 'correct': {e}") from None
  if record.get("response") is None:
    raise ValueError("nothing to grade: no 'response'" +
                     ("" if extract else " and no 'correct'"))
  letter = answers.answer_letter(
      str(record.get("question", "")), texts, str(record["response"]),
      LABELS, judge, judge_mode)
  return answers.is_correct(letter, texts, common.as_text(truth), LABELS)


def grade_file(records, source_split: str, file: str = "<records>",
               extract: bool = False, judge=None,
               judge_mode: str = "fallback") -> list[tuple[str, bool]]:
  """[(split, correct)] for a list of prediction records of one source.

  Raises:
    common.BadRecordError: naming the file and record id (a bad record, a
      duplicate id, a real id without a number).
  """
  if not isinstance(records, list):
    raise ValueError(f"{file}: expected a list of prediction records, got "
                     f"{type(records).__name__}")
  out, seen = [], {}
  for i, rec in enumerate(records):
    rid = (str(rec["id"]) if isinstance(rec, Mapping)
           and rec.get("id") is not None else f"#{i}")
    try:
      ok = grade(rec, extract, judge, judge_mode)
      truth = common.as_text(rec.get("ground_truth_answer",
                                     rec.get("answer")))
      split = split_of(source_split, rec["id"], truth)
    except (ValueError, TypeError) as e:
      raise common.BadRecordError(file, rid, str(e)) from None
    if rid in seen:
      raise common.BadRecordError(file, rid, f"duplicate id: {rid!r} also "
                                  f"at record #{seen[rid]}")
    seen[rid] = i
    out.append((split, ok))
  return out


def aggregate(graded: Iterable[tuple[str, bool]]) -> dict:
  """{split: accuracy %, ..., "n": {split: count}} over SPLITS."""
  right = {s: 0 for s in _CATEGORY_SPLIT.values()}
  count = dict(right)
  for split, ok in graded:
    count[split] += 1
    right[split] += bool(ok)
  for pool, parts in _POOLS.items():
    right[pool] = sum(right[p] for p in parts)
    count[pool] = sum(count[p] for p in parts)
  result = {s: (100.0 * right[s] / count[s] if count[s] else None)
            for s in SPLITS}
  result["n"] = {s: count[s] for s in SPLITS}
  return result


def score(real: Sequence[Mapping] | None = None,
          synthetic: Sequence[Mapping] | None = None, extract: bool = False,
          judge=None, judge_mode: str = "fallback") -> dict:
  """Per-split accuracy of real and / or synthetic prediction records.

  Args:
    real, synthetic: lists of prediction records (module doc), or None.
    extract: grade `response` with the extractor even where `correct` is.
    judge, judge_mode: see `answers.answer_letter`.

  Returns:
    {"real_ego", "real_exo", "real", "synth_dir", "synth_fp", "synth",
    "overall": accuracy in % (None for an empty split), "n": {split: n}}.
  """
  graded = []
  for name, recs in (("real", real), ("synthetic", synthetic)):
    if recs is not None:
      graded += grade_file(list(recs), name, f"<{name}>", extract, judge,
                           judge_mode)
  return aggregate(graded)


def score_files(real=None, synthetic=None, extract: bool = False,
                judge=None, judge_mode: str = "fallback") -> dict:
  """`score` on prediction files (paths); errors name the file."""
  graded = []
  for name, path in (("real", real), ("synthetic", synthetic)):
    if path is not None:
      graded += grade_file(common.load_json(path), name, str(path), extract,
                           judge, judge_mode)
  return aggregate(graded)


def main(argv: Sequence[str] | None = None) -> int:
  parser = argparse.ArgumentParser(
      prog="python -m mfm_jax.eval.vlm4d",
      description="Scores VLM4D prediction files per split (percentages).")
  parser.add_argument("--real", help="predictions on real_mc.json")
  parser.add_argument("--synthetic",
                      help="predictions on synthetic_mc.json")
  parser.add_argument("--extract", action="store_true",
                      help="ignore `correct`; grade `response` with the "
                      "rule-based extractor")
  args = parser.parse_args(argv)
  if args.real is None and args.synthetic is None:
    parser.error("give --real and / or --synthetic")
  try:
    result = score_files(args.real, args.synthetic, args.extract)
  except (ValueError, FileNotFoundError) as e:
    print(f"error: {e}", file=sys.stderr)
    return 2
  print(json.dumps(result))
  return 0


if __name__ == "__main__":
  sys.exit(main())
