"""Rule-based answer extraction on a table of real-looking responses."""
import hypothesis
from hypothesis import strategies as st
import pytest

from mfm_jax.eval import answers

OPTS = {"A": "left", "B": "right", "C": "not moving", "D": "no car there"}
LOW = ("a", "b", "c", "d")
MMW = {"a": "It bounced off the wall", "b": "It collided with the cube",
       "c": "It stopped", "d": "Nothing happened"}
COUNT = {"A": "1", "B": "2", "C": "3", "D": "0"}

# (response, options, labels, expected)
TABLE = [
    # a leading or standalone letter
    ("B", OPTS, None, "B"),
    ("b", OPTS, None, "B"),
    ("B.", OPTS, None, "B"),
    ("(d)", OPTS, None, "D"),
    ("(d)", MMW, LOW, "d"),
    ("C) not moving", OPTS, None, "C"),
    ("D. no car there", OPTS, None, "D"),
    ("**B**: right", OPTS, None, "B"),
    ("<answer>C</answer>", OPTS, None, "C"),
    ("a", MMW, LOW, "a"),
    ("B and not C", OPTS, None, "B"),
    # answer statements
    ("The answer is (b)", MMW, LOW, "b"),
    ("The answer is (b)", OPTS, None, "B"),
    ("Answer: C", OPTS, None, "C"),
    ("Answer: a", MMW, LOW, "a"),
    ("answer: (c) It stopped", MMW, LOW, "c"),
    ("the answer is b because the ball hit the cube", MMW, LOW, "b"),
    ("The correct option is D.", OPTS, None, "D"),
    ("I'd go with B.", OPTS, None, "B"),
    ("Option B is correct.", OPTS, None, "B"),
    ("The answer is B, not C.", OPTS, None, "B"),
    ("The answer is: **B. right**", OPTS, None, "B"),
    ("Answer: B\nExplanation: A is incorrect because it moves right.", OPTS,
     None, "B"),
    ("A. left\nB. right\nC. not moving\nD. no car there\nAnswer: B", OPTS,
     None, "B"),
    # final-answer phrase (VLM4D chain of thought)
    ("The bus enters from the left edge and leaves on the right. Therefore, "
     "the final answer is: B", OPTS, None, "B"),
    ("Final answer: B", OPTS, None, "B"),
    ("final answer: b.", MMW, LOW, "b"),
    ("The final answer is: C. Actually the answer is A", OPTS, None, "C"),
    # self-corrections: the last statement wins
    ("I think it's A, no wait, C", OPTS, None, "C"),
    ("I think the answer is A. Looking again it moves right, so B.", OPTS,
     None, "B"),
    # negation
    ("It is not A, B or C.", OPTS, None, "D"),
    ("Not A, not B, not C.", OPTS, None, "D"),
    ("A and B are wrong. The car is not moving.", OPTS, None, "C"),
    ("Option A (left) and option B (right) are wrong, so C.", OPTS, None,
     "C"),
    ("Options A and B are wrong; D is correct.", OPTS, None, "D"),
    ("A isn't right; B is.", OPTS, None, "B"),
    ("Not C.", OPTS, None, None),
    # the text of an option, without a letter
    ("left", OPTS, None, "A"),
    ("Left.", OPTS, None, "A"),
    ("The car is moving to the right.", OPTS, None, "B"),
    ("The car is not moving.", OPTS, None, "C"),
    ("It moves left, not right.", OPTS, None, "A"),
    ("A car moves left.", OPTS, None, "A"),    # "A" is the article here
    ("It is a left turn", OPTS, None, "A"),
    ("Answer: The car moves left", OPTS, None, "A"),
    ("it collided with the cube", MMW, LOW, "b"),
    ("2", COUNT, None, "B"),
    ("There are 3 cars.", COUNT, None, "C"),
    # ambiguous or no answer -> None
    ("A or B", OPTS, None, None),
    ("The answer is A or B.", OPTS, None, None),
    ("Final answer: A, C", OPTS, None, None),
    ("Either A or C could be true.", OPTS, None, None),
    ("left or right", OPTS, None, None),
    ("A car moves across the frame.", OPTS, None, None),
    ("I'm not sure.", OPTS, None, None),
    ("", OPTS, None, None),
    (None, OPTS, None, None),
]


@pytest.mark.parametrize("response,options,labels,expected", TABLE)
def test_extraction_table(response, options, labels, expected):
  got = answers.extract_answer(response, options, labels or answers.UPPER)
  assert got == expected


def test_options_as_sequence_and_key_case():
  texts = ["left", "right", "not moving", "no car there"]
  assert answers.extract_answer("right", texts) == "B"
  assert answers.extract_answer("right", {"a": "left", "b": "right"},
                                answers.UPPER) == "B"
  assert answers.extract_answer("B", None) == "B"      # no options needed


def test_judge_plugin_fallback_and_always():
  calls = []

  def judge(question, options, response):
    calls.append((question, dict(options), response))
    return "(c)"

  got = answers.answer_letter("Why?", MMW, "Hard to say.", LOW, judge)
  assert got == "c" and calls == [("Why?", MMW, "Hard to say.")]
  # Rules decide first; the judge is only asked when they give None.
  assert answers.answer_letter("Why?", MMW, "(b)", LOW, judge) == "b"
  assert len(calls) == 1
  assert answers.answer_letter("Why?", MMW, "(b)", LOW, judge,
                               judge_mode="always") == "c"
  assert answers.answer_letter("Q", MMW, "?", LOW,
                               lambda *a: "zebra") is None
  assert answers.answer_letter("Q", MMW, "?", LOW, lambda *a: None) is None
  with pytest.raises(ValueError, match="judge_mode"):
    answers.answer_letter("Q", MMW, "b", LOW, judge, judge_mode="vote")


def test_is_correct_compares_texts():
  dup = {"A": "not sure", "B": "not moving", "C": "away", "D": "away "}
  assert answers.is_correct("C", dup, "away")
  assert answers.is_correct("D", dup, "away")      # validation_633
  assert not answers.is_correct("B", dup, "away")
  assert not answers.is_correct(None, dup, "away")


_RULE_WORDS = {"not", "nor", "never", "wrong", "false", "unlikely", "without",
               "excluding", "exclude", "impossible", "excluded", "rather",
               "other", "thus", "so", "is", "are", "was", "seems", "must",
               "would", "option", "choice", "letter", "answer", "or", "nor"}
# Option texts: words without the letters a-d, none a word the rules read.
_WORD = st.text(alphabet="efghijklmnopqrstuvwxyz", min_size=3,
                max_size=8).filter(lambda w: w not in _RULE_WORDS)


@hypothesis.settings(max_examples=60, deadline=None)
@hypothesis.given(
    label=st.sampled_from(answers.UPPER),
    texts=st.lists(_WORD, min_size=4, max_size=4, unique=True),
    template=st.sampled_from([
        "{l}", "({l})", "{low}", "The answer is ({low}).", "Answer: {l}",
        "Therefore, the final answer is: {l}", "Final answer: {l}",
        "{l}. {t}", "I choose {l}.", "{t}"]),
    lower_labels=st.booleans())
def test_statements_pick_the_label(label, texts, template, lower_labels):
  labels = LOW if lower_labels else answers.UPPER
  want = label.lower() if lower_labels else label
  opts = dict(zip(labels, texts))
  response = template.format(l=label, low=label.lower(),
                             t=opts[want])
  assert answers.extract_answer(response, opts, labels) == want


@hypothesis.settings(max_examples=100, deadline=None)
@hypothesis.given(st.text(max_size=200))
def test_never_raises_and_returns_a_label_or_none(text):
  got = answers.extract_answer(text, OPTS)
  assert got is None or got in answers.UPPER
