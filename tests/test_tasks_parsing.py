"""Answer parsing: the robust DSPy-format normalisers, the reference's quirks, macro-F1."""

from __future__ import annotations

import dspy
import pytest

from metaspo_dspy.tasks import get_spec, macro_f1
from metaspo_dspy.tasks.answers.parsing import (
    normalize_text,
    options_in,
    parse_option,
    parse_rating,
    parse_span,
    parse_yes_no,
    span_match,
    squad_normalize,
)
from metaspo_dspy.tasks.answers.reference_parsing import (
    FORMAT_ERROR,
    ref_amazon,
    ref_bigbench_option,
    ref_bigbench_text,
    ref_grounding,
    ref_medmcqa,
    ref_safety,
)
from metaspo_dspy.tasks.answers.scoring import UNPARSABLE, AnswerMetric, MacroF1

QUESTION = "Drug of choice?\nOptions:\n(A) Penicillin\n(B) Tetracycline\n(C) Aspirin\n(D) None of the above"


# ---- DSPy format: robust ---------------------------------------------------------------------
@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("B", "B"),
        ("b", "B"),
        ("(B)", "B"),
        ("B)", "B"),
        ("B.", "B"),
        ("B. Tetracycline", "B"),
        ("(B) Tetracycline", "B"),
        ("b) tetracycline", "B"),
        ("Answer: B", "B"),
        ("answer: b", "B"),
        ("The answer is (B).", "B"),
        ("The correct option is B", "B"),
        ("Option B", "B"),
        ("**B**", "B"),
        ("  B \n", "B"),
        ("<answer>B</answer>", "B"),
        ("I think it is (B)", "B"),
        ("Tetracycline", "B"),
        ("tetracycline.", "B"),
        ("E", None),
        ("(A) or (B)", None),
        ("A patient should get B", None),
        ("e.g. B", None),
        ("", None),
        (None, None),
        ("Tetra", None),
    ],
)
def test_parse_option(text, expected):
    assert parse_option(text, "ABCD", options_in(QUESTION)) == expected


def test_parse_option_uses_the_tasks_letters():
    assert parse_option("G", "ABCDEFG") == "G"
    assert parse_option("(F)", "ABCD") is None


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("4", 4),
        ("4 stars", 4),
        ("4/5", 4),
        ("4 out of 5", 4),
        ("Rating: 4", 4),
        ("four", 4),
        ("Four stars.", 4),
        ("5.", 5),
        ("4.0", 4),
        ("<answer>2</answer>", 2),
        ("0", None),
        ("10", None),
        ("3-4", None),
        ("It is a 4", None),
        ("great", None),
    ],
)
def test_parse_rating(text, expected):
    assert parse_rating(text) == expected


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("3", "3"),
        ("three", "3"),
        ("Three.", "3"),
        ("twenty-one", "21"),
        ("twenty one", "21"),
        ("Answer: 12", "12"),
        ("Mauve", "mauve"),
        ("'mauve'", "mauve"),
        ("Non-entailment", "non entailment"),
        ("non entailment.", "non entailment"),
        ("  Yes ", "yes"),
        ("", None),
    ],
)
def test_normalize_text(text, expected):
    assert normalize_text(text) == expected


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("yes", "yes"),
        ("Yes.", "yes"),
        ("NO", "no"),
        ("No, it is not offensive.", "no"),
        ("Answer: yes", "yes"),
        ("<answer>no</answer>", "no"),
        ("maybe", None),
        ("yesterday", None),
        ("", None),
    ],
)
def test_parse_yes_no(text, expected):
    assert parse_yes_no(text) == expected


@pytest.mark.parametrize(
    ("text", "golds", "expected"),
    [
        ("Paris", ["paris"], True),
        ("Answer: The Eiffel Tower.", ["Eiffel Tower"], True),
        ("“Unreal City”", ["Eliot’s “Unreal City”", "“Unreal City”"], True),
        ("Eliot’s “Unreal City”", ["Eliot’s “Unreal City”"], True),
        ("in 1960", ["1960"], False),
        ("answer key", ["answer key"], True),
    ],
)
def test_span_match(text, golds, expected):
    assert span_match(text, golds) is expected


def test_squad_normalize():
    assert squad_normalize("The  Eiffel-Tower!") == "eiffeltower"
    assert parse_span("Answer: an apple") == "an apple"


# ---- reference format: quirks --------------------------------------------------------------
@pytest.mark.parametrize(
    ("response", "expected"),
    [
        ("<answer>B</answer>", "B"),
        ("<answer>(C) Aspirin</answer>", "C"),
        ("<answer>Answer: B</answer>", "A"),  # the first option letter anywhere: the "A" of "Answer"
        ("<answer>The answer is B</answer>", "A"),  # "a" of "answer" (after "The")
        ("<answer>b</answer>", "B"),
        ("<ANSWER>d</ANSWER>", "D"),
        ("<answer>A</answer> then <answer>C</answer>", "C"),  # the last span
        ("<answer>()</answer>", ""),  # "()" matches with an empty group
        ("<answer></answer>", FORMAT_ERROR),
        ("<answer>E</answer>", FORMAT_ERROR),
        ("B", FORMAT_ERROR),
        (None, FORMAT_ERROR),
    ],
)
def test_reference_medmcqa(response, expected):
    assert ref_medmcqa(response) == expected


@pytest.mark.parametrize(
    ("response", "expected"),
    [
        ("<answer>(E)</answer>", "E"),
        ("<answer>g</answer>", "G"),
        ("<answer>answer: b</answer>", "A"),
        ("<answer>The (C) one</answer>", "C"),
        ("<answer>  </answer>", FORMAT_ERROR),
        ("<answer>xyz</answer>", FORMAT_ERROR),
        ("no tags (B)", FORMAT_ERROR),
        ("<answer>A</answer> <answer></answer>", FORMAT_ERROR),  # the last span is empty
    ],
)
def test_reference_bigbench_option(response, expected):
    assert ref_bigbench_option(response) == expected


@pytest.mark.parametrize(
    ("response", "expected"),
    [
        ("<answer>3</answer>", "3"),
        ("<answer> Three </answer>", 3),
        ("<answer>twenty-one</answer>", 21),
        ("<answer>Mauve</answer>", "mauve"),
        ("<answer>3.</answer>", "3."),
        ("<answer>The answer is 3</answer>", "the answer is 3"),
        ("3", FORMAT_ERROR),
    ],
)
def test_reference_bigbench_text(response, expected):
    assert ref_bigbench_text(response) == expected


@pytest.mark.parametrize(
    ("response", "expected"),
    [
        ("<answer>4</answer>", 4),
        ("<answer>4 stars out of 5</answer>", 4),
        ("<answer>Rating: 10</answer>", 10),
        ("<answer>four</answer>", -1),
        ("<answer> </answer>", -1),
        ("4", -1),
    ],
)
def test_reference_amazon(response, expected):
    assert ref_amazon(response) == expected


@pytest.mark.parametrize(
    ("response", "expected"),
    [
        ("<answer>yes</answer>", "yes"),
        ("<answer> No </answer>", "no"),
        ("<answer>Yes.</answer>", "yes."),
        ("<answer>yes</answer> or <answer>no</answer>", "no"),
        ("yes", FORMAT_ERROR),
    ],
)
def test_reference_safety(response, expected):
    assert ref_safety(response) == expected


def test_reference_grounding_is_the_whole_response():
    assert ref_grounding("Answer: Paris") == "Answer: Paris"


def test_reference_metrics_apply_the_quirks():
    example = dspy.Example(question=QUESTION, answer="B").with_inputs("question")
    metric = AnswerMetric(get_spec("dental"), "reference")
    assert metric(example, dspy.Prediction(response="<answer>(B)</answer>")).score == 1.0
    assert metric(example, dspy.Prediction(response="<answer>Answer: B</answer>")).score == 0.0
    robust = AnswerMetric(get_spec("dental"), "dspy")
    assert robust(example, dspy.Prediction(answer="Answer: B")).score == 1.0
    assert robust(example, dspy.Prediction(answer="Answer: B"), trace=[]) is True
    counting = dspy.Example(question="How many?", answer="3").with_inputs("question")
    assert (
        AnswerMetric(get_spec("object_counting"), "reference")(
            counting, dspy.Prediction(response="<answer>three</answer>")
        ).score
        == 1.0
    )
    assert AnswerMetric(get_spec("object_counting"), "dspy")(counting, dspy.Prediction(answer="three")).score == 1.0
    grounding = dspy.Example(question="Q", answers=["Paris"]).with_inputs("question")
    assert (
        AnswerMetric(get_spec("squad"), "reference")(
            grounding, dspy.Prediction(response="<answer>Paris</answer>")
        ).score
        == 0.0
    )
    assert (
        AnswerMetric(get_spec("squad"), "dspy")(grounding, dspy.Prediction(answer="<answer>Paris</answer>")).score
        == 1.0
    )


def test_metric_feedback_shows_the_parsed_answer():
    example = dspy.Example(question=QUESTION, answer="B").with_inputs("question")
    result = AnswerMetric(get_spec("anatomy"), "reference")(
        example, dspy.Prediction(response="<answer>Answer: B</answer>")
    )
    assert result.feedback == "Parsed answer: 'A'; correct answer: 'B'."


# ---- macro-F1 ------------------------------------------------------------------------------
def test_macro_f1_by_hand_with_an_unparsable_answer():
    golds = ["yes", "yes", "no", "no"]
    preds = ["yes", "no", "no", "maybe"]
    # yes: tp1 fp0 fn1 -> 2/3; no: tp1 fp1 fn1 -> 1/2; maybe: tp0 fp1 fn0 -> 0
    assert macro_f1(golds, preds) == pytest.approx((2 / 3 + 1 / 2 + 0) / 3)
    assert macro_f1(["yes", "no"], ["yes", "no"]) == 1.0
    assert macro_f1(["yes", "yes"], ["yes", "yes"]) == 1.0
    assert macro_f1([], []) == 0.0


def test_safety_aggregate_in_both_formats():
    spec = get_spec("liar")
    examples = [
        dspy.Example(question=str(i), answer=a).with_inputs("question")
        for i, a in enumerate(["yes", "yes", "no", "no"])
    ]
    dspy_preds = [dspy.Prediction(answer=t) for t in ("Yes.", "No", "no", "perhaps")]
    dspy_f1 = MacroF1(AnswerMetric(spec, "dspy"))
    assert dspy_f1.label(examples[3], dspy_preds[3]) == UNPARSABLE
    assert dspy_f1(examples, dspy_preds) == pytest.approx((2 / 3 + 1 / 2 + 0) / 3)
    ref_preds = [dspy.Prediction(response=f"<answer>{t}</answer>") for t in ("yes", "no", "no", "maybe")]
    ref_preds.append(None)
    ref_examples = [*examples, dspy.Example(question="x", answer="no").with_inputs("question")]
    # classes yes / no / maybe / format error: yes (tp1 fp0 fn1) 2/3, no (tp1 fp1 fn2) 2/5, others 0
    assert MacroF1(AnswerMetric(spec, "reference"))(ref_examples, ref_preds) == pytest.approx((2 / 3 + 2 / 5) / 4)
    # two distinct unparsable strings are two classes in the reference format, one in the DSPy format
    texts = ("yes", "maybe", "no", "unsure")
    two = [dspy.Prediction(response=f"<answer>{t}</answer>") for t in texts]
    assert MacroF1(AnswerMetric(spec, "reference"))(examples, two) == pytest.approx((2 / 3 + 2 / 3) / 4)
    one = [dspy.Prediction(answer=t) for t in texts]
    assert dspy_f1(examples, one) == pytest.approx((2 / 3 + 2 / 3) / 3)
