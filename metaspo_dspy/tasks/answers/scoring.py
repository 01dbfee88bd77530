"""Task metrics: accuracy, macro-F1 (safety) and SQuAD exact match (grounding), in both formats.

Every metric follows :mod:`metaspo_dspy.program.metrics`' contract. Per-example metrics return
``dspy.Prediction(score=0.0 | 1.0, feedback="Parsed answer: ...; correct answer: ...")`` (the
optimizer sees the parsed answer as the reference shows it), or a plain ``bool`` when DSPy calls
them with a trace (bootstrapping optimizers test a metric's truth value). Safety tasks use a
:class:`~metaspo_dspy.program.metrics.TaskMetric` whose aggregate is the macro-F1 over the task, computed
like ``sklearn.metrics.f1_score(golds, preds, average="macro")``: the classes are every label that
occurs in the golds or the predictions, so unparsable answers form classes of their own (one class
``UNPARSABLE`` in the DSPy format; one class per distinct string in the reference format, as in
the reference); a failed call counts as unparsable.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import dspy

from metaspo_dspy.program.metrics import TaskMetric
from metaspo_dspy.tasks.answers import parsing
from metaspo_dspy.tasks.answers.reference_parsing import FORMAT_ERROR, FORMAT_ERRORS, REFERENCE_PARSERS, reference_equal
from metaspo_dspy.tasks.specs import TaskSpec

#: the single class that unparsable answers fall into in the DSPy format's macro-F1
UNPARSABLE = "<unparsable>"


def macro_f1(golds: Sequence[Any], preds: Sequence[Any]) -> float:
    """Macro-averaged F1 over the union of gold and predicted labels (sklearn's definition with
    ``zero_division=0``); 0.0 for empty input."""
    if len(golds) != len(preds):
        raise ValueError(f"macro_f1 needs as many predictions as golds ({len(preds)} != {len(golds)})")
    labels = set(golds) | set(preds)
    if not labels:
        return 0.0
    total = 0.0
    for label in labels:
        tp = sum(1 for g, p in zip(golds, preds, strict=True) if g == label and p == label)
        fp = sum(1 for g, p in zip(golds, preds, strict=True) if g != label and p == label)
        fn = sum(1 for g, p in zip(golds, preds, strict=True) if g == label and p != label)
        denominator = 2 * tp + fp + fn
        total += 2 * tp / denominator if denominator else 0.0
    return total / len(labels)


def _gold_answers(example: dspy.Example) -> list[str]:
    answers = example.get("answers")
    if answers is None:
        answers = [example.get("answer")]
    return [str(a) for a in answers]


def _dspy_parse(spec: TaskSpec, text: Any, example: dspy.Example) -> Any:
    if spec.kind == "option":
        return parsing.parse_option(text, spec.letters, parsing.options_in(example.get("question")))
    if spec.kind == "rating":
        return parsing.parse_rating(text)
    if spec.kind == "yesno":
        return parsing.parse_yes_no(text)
    if spec.kind == "span":
        return parsing.parse_span(text)
    return parsing.normalize_text(text)


def _dspy_gold(spec: TaskSpec, example: dspy.Example) -> Any:
    gold = example.get("answer")
    if spec.kind == "option":
        return str(gold).strip().upper()
    if spec.kind == "rating":
        return int(gold)
    if spec.kind == "yesno":
        return str(gold).strip().lower()
    return parsing.normalize_text(gold)


class AnswerMetric:
    """A per-example metric: parse ``prediction.<field>`` and compare it with the example's gold.

    Args:
        spec: the task.
        prompt_format: ``"dspy"`` (robust normaliser on the ``answer`` field) or ``"reference"``
            (the reference's parser on the whole ``response``).
    """

    def __init__(self, spec: TaskSpec, prompt_format: str = "dspy"):
        self.spec = spec
        self.prompt_format = prompt_format
        self.field = "answer" if prompt_format == "dspy" else "response"
        self.__name__ = f"{spec.name}_{spec.metric}_{prompt_format}"

    def _parse(self, text: Any, example: dspy.Example) -> Any:
        if self.prompt_format == "dspy":
            return _dspy_parse(self.spec, text, example)
        return REFERENCE_PARSERS[self.spec.reference_parser](text)

    def parse(self, example: dspy.Example, prediction: Any) -> Any:
        """The parsed answer of ``prediction`` (None / the format-error value when unreadable)."""
        text = None if prediction is None else getattr(prediction, self.field, None)
        if text is None and prediction is not None and hasattr(prediction, "get"):
            text = prediction.get(self.field)
        if text is None:
            return None if self.prompt_format == "dspy" else self._parse(None, example)
        return self._parse(text, example)

    def parsed(self, example: dspy.Example, prediction: Any) -> bool | None:
        """Whether an answer could be read from ``prediction`` (the contract of
        :func:`metaspo_dspy.program.metrics.answer_parsed`). Reference format: the task's parser did not
        return its format-error value (:data:`FORMAT_ERROR`, ``-1`` for Amazon); grounding scores
        the whole response, so ``None`` (not applicable). DSPy format: the normaliser read an
        answer from the output field (an option letter, a rating, yes/no, non-empty text)."""
        if self.prompt_format == "reference":
            error = FORMAT_ERRORS[self.spec.reference_parser]
            if error is None:
                return None
            value = self.parse(example, prediction)
            return not (type(value) is type(error) and value == error)
        value = self.parse(example, prediction)
        return value is not None and value != ""

    def gold(self, example: dspy.Example) -> Any:
        """The gold answer in the form the parsed answer is compared with."""
        if self.spec.kind == "span":
            return _gold_answers(example)
        if self.prompt_format == "dspy":
            return _dspy_gold(self.spec, example)
        return str(example.get("answer"))

    def correct(self, example: dspy.Example, prediction: Any) -> bool:
        """Whether ``prediction`` answers ``example`` correctly."""
        parsed = self.parse(example, prediction)
        gold = self.gold(example)
        if self.spec.kind == "span" and self.prompt_format == "dspy":
            return parsing.span_match(parsed, gold)
        if self.spec.kind == "span":
            return parsing.exact_match(parsed, gold)
        if self.prompt_format == "dspy":
            return parsed is not None and parsed == gold
        return reference_equal(parsed, gold)

    def __call__(self, example: dspy.Example, prediction: Any, trace: Any = None) -> Any:
        ok = self.correct(example, prediction)
        if trace is not None:
            return ok
        gold = self.gold(example)
        shown = gold if not isinstance(gold, list) else gold[:5]
        feedback = f"Parsed answer: {self.parse(example, prediction)!r}; correct answer: {shown!r}."
        return dspy.Prediction(score=1.0 if ok else 0.0, feedback=feedback)

    def __repr__(self) -> str:
        return f"AnswerMetric({self.spec.name!r}, prompt_format={self.prompt_format!r})"


class MacroF1:
    """The aggregate of a safety task: macro-F1 of the parsed answers against the golds."""

    def __init__(self, answer_metric: AnswerMetric):
        self.answer_metric = answer_metric
        self.unparsable = UNPARSABLE if answer_metric.prompt_format == "dspy" else FORMAT_ERROR

    def label(self, example: dspy.Example, prediction: Any) -> Any:
        """The class ``prediction`` falls into (unparsable or failed -> an unparsable class)."""
        if prediction is None:
            return self.unparsable
        parsed = self.answer_metric.parse(example, prediction)
        return self.unparsable if parsed is None else str(parsed)

    def __call__(self, examples: Sequence[dspy.Example], predictions: Sequence[Any]) -> float:
        golds = [str(ex.get("answer")).strip().lower() for ex in examples]
        preds = [self.label(ex, p) for ex, p in zip(examples, predictions, strict=True)]
        return macro_f1(golds, preds)


def build_metric(spec: TaskSpec, prompt_format: str = "dspy") -> AnswerMetric | TaskMetric:
    """The metric of ``spec`` in ``prompt_format``: accuracy / EM per example, or a macro-F1
    :class:`~metaspo_dspy.program.metrics.TaskMetric` for ``spec.metric == "macro_f1"``."""
    per_example = AnswerMetric(spec, prompt_format)
    if spec.metric == "macro_f1":
        return TaskMetric(aggregate=MacroF1(per_example), per_example=per_example, name=f"{spec.name}_macro_f1")
    return per_example
