"""Rule-based answer extraction for multiple-choice responses.

Shared by the MMWorld (labels a..d) and VLM4D (labels A..D) harnesses.
Letters match in any case; the label comes back spelled as in `labels`.

  extract_answer("Therefore, the final answer is: B", options) -> "B"
  extract_answer("(d)", options, labels=("a", "b", "c", "d")) -> "d"

The first rule that decides wins:

  1. final-answer phrase, the LAST one: "Therefore, the final answer is: B",
     "Final answer: (b)", "final choice - C".
  2. explicit answer statement, the LAST one: "The answer is (b)",
     "Answer: C", "the correct option is D", "I'd go with B", "it's A",
     "B is correct", and self-corrections ("no wait, C", "actually C",
     "I mean C"). So "I think it's A, no wait, C" -> C.
  3. a leading letter: "B", "(d)", "b.", "C) left", "**A**: ...",
     "B and not C" -> B.
  4. the only letter mentioned outside negation: "I'd say (B), not C" -> B.
  5. elimination: every label but one mentioned, all in negation
     ("Not A, B or C.") -> the remaining one.
  6. the text of exactly one option (longest match wins where one option's
     text holds another's; negated mentions ignored): "It moves left." or
     the bare option text "left".

None when nothing decides or the response is ambiguous: a statement that
names two letters ("The answer is A or B", "Final answer: A, C"), two
different letters outside negation, or two options' texts.

A letter is "(b)", "[b]", or a bare letter that is not part of a word
("I'd" is not "d"). A bare "a"/"A" followed by a lower-case word is read as
the article ("A car turns left") unless an option / answer word precedes it,
a verb such as "is" follows, or the option's own text follows. Negation:
"not", "n't", "no", "never", "neither/nor", "except", "rule out",
"eliminate", "rather than", "instead of", "other than" right before a
letter (and carried along a list: "not A, B or C"), or "is wrong /
incorrect / not ..." right after it.

Written here (no kept library does rule-based MC extraction); an optional
LLM judge can back it up (see `answer_letter`).
"""
from __future__ import annotations

import dataclasses
import re
from collections.abc import Callable, Mapping, Sequence

UPPER = ("A", "B", "C", "D")
LOWER = ("a", "b", "c", "d")

Judge = Callable[[str, Mapping[str, str], str], "str | None"]

_NEG_BEFORE = re.compile(
    r"(?:\bnot|n['’]t|\bno|\bnever|\bneither|\bnor|\bexcept|\bexcluding"
    r"|\bexclude|\beliminat\w*|\brul(?:e|ed|ing)\s+out|\brather\s+than"
    r"|\binstead\s+of|\bother\s+than|\bwithout|\bagainst)"
    r"\s*(?:option|choice|answer)?\s*[:\-]?\s*[(\[]?\s*$", re.I)
_NEG_AFTER = re.compile(
    r"^[\s:)\]]{0,3}(?:(?:is|are|was|seems|would|must|can|does)"
    r"(?:\s*n['’]t|\s+not)\b|(?:(?:is|are|was|seems|would\s+be|must\s+be)"
    r"\s+)?(?:wrong|incorrect|false|unlikely|impossible|ruled\s+out"
    r"|eliminated|excluded)\b)", re.I)
_LIST_SEP = re.compile(
    r"^\s*(?:\([^)]*\))?\s*(?:,|/|or|nor|and|,\s*or|,\s*nor|,\s*and)\s*"
    r"(?:option|choice)?\s*$", re.I)
_AMBIG_AFTER = re.compile(
    r"^\s*(?:,|/|&|or|and|,\s*or|,\s*and)\s*(?:option\s+|choice\s+)?", re.I)
_CONTEXT_BEFORE = re.compile(r"(?:option|choice|answer|letter|:)\s*$",
                             re.I)
_VERB_AFTER = re.compile(
    r"^\s+(?:is|was|seems|would|should|must|matches|fits|and|or|because)\b")

_FINAL = re.compile(
    r"\bfinal\s+(?:answer|choice|option)\s*(?:is|would\s+be|will\s+be"
    r"|should\s+be|=|:|-)?", re.I)
_STATEMENTS = tuple(re.compile(p, re.I) for p in (
    r"\banswer\s*(?:is|would\s+be|will\s+be|should\s+be|must\s+be|=|:|-)",
    r"\b(?:correct|right|best|most\s+likely|appropriate)\s+"
    r"(?:answer|option|choice)\s*(?:is|would\s+be|=|:|-)?",
    r"\b(?:choose|chose|pick|select|go\s+with|going\s+with|opt\s+for)\b",
    r"\b(?:it['’]?s|it\s+is|that['’]?s|that\s+is)\b",
    r"\b(?:so|thus|hence|therefore)\b\s*,?",
    r"\b(?:no\s*,?\s*wait|wait\s*,?\s*no|actually|i\s+mean|rather"
    r"|correction|on\s+second\s+thought)\b\s*[,:]?\s*(?:it['’]?s\b|it\s+is\b"
    r"|the\s+answer\s+is\b)?",
))
_SUFFIX_STATEMENT = re.compile(
    r"^\s*(?:is|would\s+be|seems)\s+(?:the\s+)?(?:correct|right|best"
    r"|answer)\b", re.I)
_SKIP_TO_LETTER = re.compile(
    r"^[\s:\-=\"'*`]*(?:(?:the\s+)?(?:option|choice|letter)\s*)?[\s:\-=\"'*`]*",
    re.I)


@dataclasses.dataclass(frozen=True)
class _Token:
  label: str          # as spelled in `labels`
  start: int
  end: int
  negated: bool


def _norm(text: str) -> str:
  return re.sub(r"\s+", " ", str(text)).strip().lower()


def option_map(options, labels: Sequence[str]) -> dict[str, str]:
  """{label: text} from a mapping (any key case) or a sequence in order."""
  if options is None:
    return {}
  if isinstance(options, Mapping):
    by_key = {str(k).strip().lower(): v for k, v in options.items()}
    return {l: str(by_key[l.lower()]) for l in labels
            if l.lower() in by_key}
  return {l: str(t) for l, t in zip(labels, options)}


def _tokens(text: str, labels: Sequence[str], opts: dict[str, str]
            ) -> list[_Token]:
  """Every letter token, in order, with its negation."""
  by_low = {l.lower(): l for l in labels}
  cls = "".join(re.escape(l.lower()) + re.escape(l.upper()) for l in labels)
  pattern = re.compile(
      rf"(?<![\w'’])(?:\(\s*([{cls}])\s*\)|\[\s*([{cls}])\s*\]"
      rf"|([{cls}])(?![\w'’\-]))")
  out: list[_Token] = []
  for m in pattern.finditer(text):
    bare = m.group(3)
    letter = (m.group(1) or m.group(2) or bare)
    label = by_low[letter.lower()]
    after = text[m.end():]
    if bare and re.match(r"^\s+[a-z]", after):
      before = text[:m.start()]
      option_follows = _norm(after).startswith(_norm(opts.get(label, "\0")))
      context = _CONTEXT_BEFORE.search(before) or _VERB_AFTER.match(after)
      if not (option_follows or context) and (
          letter.lower() == "a" or letter.islower()):
        continue   # the article "a", or a lower-case letter inside prose
    negated = _negated(text, m.start(), m.end(), label, opts)
    if not negated and out and out[-1].negated and _LIST_SEP.match(
        text[out[-1].end:m.start()]):
      negated = True
    out.append(_Token(label, m.start(), m.end(), negated))
  for i in range(len(out) - 1, 0, -1):   # "A and B are wrong": A too
    if out[i].negated and _LIST_SEP.match(text[out[i - 1].end:out[i].start]):
      out[i - 1] = dataclasses.replace(out[i - 1], negated=True)
  return out


def _negated(text: str, start: int, end: int, label: str,
             opts: dict[str, str]) -> bool:
  if _NEG_BEFORE.search(text[max(0, start - 40):start]):
    return True
  after = re.sub(r"^\s*[:.)\-]?\s*", "", text[end:end + 200])
  option = opts.get(label)
  if option and _norm(after).startswith(_norm(option)):
    after = after[len(option.strip()):]
  after = re.sub(r"^\s*\([^)]*\)", "", after)
  return bool(_NEG_AFTER.match(after))


def _token_at(tokens: list[_Token], pos: int) -> _Token | None:
  for t in tokens:
    if t.start == pos:
      return t
    if t.start > pos:
      return None
  return None


def _statement(text: str, tokens: list[_Token], patterns
               ) -> tuple[bool, _Token | None]:
  """(found, token) of the last statement; token None if it was ambiguous."""
  hits: list[tuple[int, _Token | None]] = []
  for pattern in patterns:
    for m in pattern.finditer(text):
      pos = m.end() + _SKIP_TO_LETTER.match(text[m.end():]).end()
      tok = _token_at(tokens, pos)
      if tok is None or tok.negated:
        continue
      hits.append((m.start(), None if _ambiguous(text, tokens, tok)
                   else tok))
  if patterns is _STATEMENTS:
    for tok in tokens:
      if not tok.negated and _SUFFIX_STATEMENT.match(text[tok.end:]):
        hits.append((tok.start, tok))
  if not hits:
    return False, None
  return True, max(hits, key=lambda h: h[0])[1]


def _ambiguous(text: str, tokens: list[_Token], tok: _Token) -> bool:
  """True for "A or B", "A, C", "A/B" right after a chosen letter."""
  m = _AMBIG_AFTER.match(text[tok.end:])
  if not m:
    return False
  other = _token_at(tokens, tok.end + m.end())
  return other is not None and not other.negated and other.label != tok.label


def _option_text(text: str, labels: Sequence[str], opts: dict[str, str]
                 ) -> str | None:
  """The label of the one option whose text the response gives."""
  norm = _norm(text)
  bare = norm.strip(" .!\"'*`")
  for l in labels:
    if l in opts and _norm(opts[l]) == bare and bare:
      return l
  spans = []   # (start, end, normalized option text)
  for l in labels:
    t = _norm(opts.get(l, ""))
    if not t:
      continue
    for m in re.finditer(rf"(?<!\w){re.escape(t)}(?!\w)", norm):
      if not _NEG_BEFORE.search(norm[max(0, m.start() - 40):m.start()]):
        spans.append((m.start(), m.end(), t))
  kept = {t for s, e, t in spans if not any(
      s2 <= s and e <= e2 and (e2 - s2) > (e - s) for s2, e2, _ in spans)}
  if len(kept) != 1:
    return None
  (only,) = kept
  return next(l for l in labels if _norm(opts.get(l, "")) == only)


def extract_answer(response: str | None, options=None,
                   labels: Sequence[str] = UPPER) -> str | None:
  """The option label a free-text response chooses (rules: module doc).

  Args:
    response: the model's text.
    options: {label: text} (keys in any case) or texts in label order;
      optional, needed only for the option-text rule.
    labels: the option labels, e.g. ("A", "B", "C", "D") or ("a", ...).

  Returns:
    One of `labels`, or None when no rule decides or it is ambiguous.
  """
  if not response or not str(response).strip():
    return None
  text = re.sub(r"\*\*|__|`", "", str(response)).strip()
  opts = option_map(options, labels)
  tokens = _tokens(text, labels, opts)
  for patterns in ((_FINAL,), _STATEMENTS):
    found, tok = _statement(text, tokens, patterns)
    if found:
      return tok.label if tok else None
  lead = re.match(r"^[\s\"'#>*\-]*", text).end()
  tok = _token_at(tokens, lead)
  if tok is not None and not tok.negated:
    return None if _ambiguous(text, tokens, tok) else tok.label
  positive = {t.label for t in tokens if not t.negated}
  if len(positive) == 1:
    return positive.pop()
  if len(positive) > 1:
    return None
  negated = {t.label for t in tokens}
  if len(negated) == len(labels) - 1:
    return next(l for l in labels if l not in negated)
  return _option_text(text, labels, opts)


def answer_letter(question: str, options, response: str | None,
                  labels: Sequence[str] = UPPER, judge: Judge | None = None,
                  judge_mode: str = "fallback") -> str | None:
  """Rule-based extraction, optionally backed by a judge.

  Args:
    question, options, response, labels: as in `extract_answer`.
    judge: callable(question, options, response) -> letter or None, e.g.
      an LLM behind an HTTP endpoint the user configures. Its letter is
      matched case-insensitively to `labels`; anything else counts as None.
    judge_mode: "fallback" (ask the judge only when the rules give None)
      or "always" (the judge decides; the rules are not used).

  Returns:
    One of `labels` or None.
  """
  if judge_mode not in ("fallback", "always"):
    raise ValueError(f"judge_mode must be 'fallback' or 'always', got "
                     f"{judge_mode!r}")
  letter = None
  if judge is None or judge_mode == "fallback":
    letter = extract_answer(response, options, labels)
  if letter is None and judge is not None:
    verdict = judge(question, option_map(options, labels), response or "")
    by_low = {l.lower(): l for l in labels}
    letter = by_low.get(str(verdict).strip().strip("()").lower()) \
        if verdict is not None else None
  return letter


def is_correct(letter: str | None, options, answer: str,
               labels: Sequence[str] = UPPER) -> bool:
  """Whether the chosen label's text is the answer text (whitespace-free).

  Compares texts, so a question with two identical right options (VLM4D
  validation_633) accepts either.
  """
  if letter is None:
    return False
  text = option_map(options, labels).get(letter)
  return text is not None and text.strip() == str(answer).strip()
