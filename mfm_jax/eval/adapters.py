"""Model adapters for the benchmark harnesses, and the loop that runs them.

An adapter is any callable(frames, prompt) -> text: frames is whatever the
caller's `frames_fn` returns for a question (e.g. [K, H, W, 3] uint8, or
None for text-only baselines), prompt the benchmark's prompt. So an
external VLM plugs in as a plain function (or `CallableAdapter`); the
project's own VQA model gets an adapter of the same shape.

  preds = run(RandomBaseline(seed=0), vlm4d.load_questions("real_mc.json"),
              "vlm4d")
  vlm4d.score(real=preds)          # about 25 %

Baselines answer with a letter, which the extractor reads back (labels in
any case work for both benchmarks).
"""
from __future__ import annotations

import random
from collections.abc import Callable, Mapping, Sequence

from mfm_jax.eval import answers
from mfm_jax.eval import mmworld
from mfm_jax.eval import vlm4d

Adapter = Callable[[object, str], str]
BENCHMARKS = ("vlm4d", "mmworld")


class RandomBaseline:
  """A uniformly random letter per call; seeded, so runs repeat.

  The answers depend on the seed and the order of the calls only.
  """

  name = "random"

  def __init__(self, seed: int = 0, labels: Sequence[str] = answers.UPPER):
    self.labels = tuple(labels)
    self.seed = seed
    self._rng = random.Random(seed)

  def __call__(self, frames, prompt: str) -> str:
    del frames, prompt
    return self._rng.choice(self.labels)


class ConstantBaseline:
  """Always the same letter."""

  def __init__(self, letter: str = "A"):
    if not isinstance(letter, str) or len(letter.strip()) != 1:
      raise ValueError(f"letter must be a single letter, got {letter!r}")
    self.letter = letter.strip()
    self.name = f"constant_{self.letter}"

  def __call__(self, frames, prompt: str) -> str:
    del frames, prompt
    return self.letter


class CallableAdapter:
  """Wraps any callable(frames, prompt) -> text (an external VLM).

  Checks that the callable returns text, so a broken model fails loudly
  with the question id instead of scoring as wrong.
  """

  def __init__(self, fn: Adapter, name: str | None = None):
    if not callable(fn):
      raise TypeError(f"expected a callable(frames, prompt) -> text, got "
                      f"{type(fn).__name__}")
    self.fn = fn
    self.name = name or getattr(fn, "__name__", type(fn).__name__)

  def __call__(self, frames, prompt: str) -> str:
    out = self.fn(frames, prompt)
    if not isinstance(out, str):
      raise TypeError(f"adapter {self.name!r} returned "
                      f"{type(out).__name__}, expected text")
    return out


def _prompt(benchmark: str, question: Mapping, mode: str) -> str:
  if benchmark == "vlm4d":
    return vlm4d.prompt(question["question"], question["choices"], mode)
  return mmworld.prompt(question["question"], question["options"])


def run(adapter: Adapter, questions: Sequence[Mapping],
        benchmark: str = "vlm4d", mode: str = "direct",
        frames_fn: Callable[[Mapping], object] | None = None,
        progress: bool = False) -> list[dict]:
  """Runs an adapter over a benchmark's questions.

  Args:
    adapter: callable(frames, prompt) -> text.
    questions: from `vlm4d.load_questions` or `mmworld.load_questions`.
    benchmark: "vlm4d" or "mmworld".
    mode: the VLM4D prompt, "direct" or "cot" (MMWorld has one prompt).
    frames_fn: question -> frames for the adapter; None passes None.
    progress: show a tqdm bar.

  Returns:
    Prediction records (`vlm4d.prediction_record` / `mmworld.
    prediction_record`), in question order, ready for the benchmark's
    `score` (graded from `response`).
  """
  if benchmark not in BENCHMARKS:
    raise ValueError(f"benchmark must be one of {BENCHMARKS}, got "
                     f"{benchmark!r}")
  wrapped = adapter if isinstance(adapter, CallableAdapter) else \
      CallableAdapter(adapter, getattr(adapter, "name", None))
  module = vlm4d if benchmark == "vlm4d" else mmworld
  items = questions
  if progress:
    import tqdm  # pylint: disable=g-import-not-at-top
    items = tqdm.tqdm(questions, desc=f"{benchmark}:{wrapped.name}")
  out = []
  for q in items:
    frames = frames_fn(q) if frames_fn is not None else None
    try:
      response = wrapped(frames, _prompt(benchmark, q, mode))
    except TypeError as e:
      raise TypeError(f"question {q['id']}: {e}") from e
    out.append(module.prediction_record(q, response))
  return out
