"""The metric contract shared by MetaSPO, the baselines and the task suites.

A metric is either

* a per-example callable ``metric(example, prediction, trace=None)`` returning a number in
  ``[0, 1]``, a bool, or a ``dspy.Prediction(score=..., feedback=...)`` (the feedback, when
  present, is shown to the optimizer with the wrong example); the task score is the mean over the
  examples; or
* a :class:`TaskMetric`, scored over all (example, prediction) pairs of a task at once (macro-F1
  needs this), with a per-example part that decides which examples count as wrong.

An example is *wrong* when its per-example score is below the maximum, 1.0. A failed call (LM or
parse error) scores 0 and is wrong; a :class:`TaskMetric` receives ``None`` as its prediction.
Scores are fractions in ``[0, 1]`` (``dspy.Evaluate`` shows percent; we never do).

An answer is *parsed* when a score could be read from it at all (:func:`answer_parsed`): a metric
may say so through an optional ``parsed(example, prediction) -> bool | None`` method (the task
suites' metrics do: the reference format's format-error value is "not parsed"; ``None`` means the
notion does not apply, as for grounding's whole-response match). A failed call is never parsed;
a metric without the method counts every successful program run as parsed.
"""

from __future__ import annotations

import inspect
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Union

import dspy

from metaspo_dspy.errors import MetricError

PerExampleMetric = Callable[..., Any]
Metric = Union[PerExampleMetric, "TaskMetric"]
PERFECT = 1.0 - 1e-9


@dataclass(frozen=True)
class TaskMetric:
    """A metric over a whole task.

    Args:
        aggregate: ``aggregate(examples, predictions) -> float`` in [0, 1]; ``predictions[i]`` is
            ``None`` when example ``i`` failed.
        per_example: ``per_example(example, prediction) -> float | bool`` deciding which examples
            are wrong (and shown to the optimizer); called only for successful predictions.
        name: shown in reports.
    """

    aggregate: Callable[[Sequence[dspy.Example], Sequence[dspy.Prediction | None]], float]
    per_example: PerExampleMetric
    name: str = "task_metric"


@dataclass(frozen=True)
class Score:
    """A per-example score and the metric's optional feedback text."""

    value: float
    feedback: str | None = None


def _accepts_trace(metric: Callable) -> bool:
    try:
        params = inspect.signature(metric).parameters.values()
    except (TypeError, ValueError):
        return True
    positional = [p for p in params if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)]
    return len(positional) >= 3 or any(p.kind == p.VAR_POSITIONAL for p in params)


def to_score(value: Any, where: str) -> Score:
    """Normalise a metric's return value; raise :class:`MetricError` naming ``where`` otherwise.

    Accepted: a bool, a real number (anything ``float()`` takes that is not text: numpy scalars
    too) in [0, 1], or an object with ``score`` (and optional ``feedback``). Text -- even a numeric
    string such as ``"1"`` -- is refused, as are NaN and numbers outside [0, 1]."""
    feedback = None
    if isinstance(value, dspy.Prediction) or (hasattr(value, "score") and not isinstance(value, (int, float))):
        feedback = getattr(value, "feedback", None)
        value = value.score
    if isinstance(value, bool):
        return Score(1.0 if value else 0.0, feedback)
    try:
        if isinstance(value, (str, bytes, bytearray)):  # "1" is text, not a score: a metric bug
            raise TypeError
        number = float(value)
    except (TypeError, ValueError):
        raise MetricError(
            f"metric returned {value!r} for {where}; return a number in [0, 1], a bool, or "
            "dspy.Prediction(score=..., feedback=...)"
        ) from None
    if math.isnan(number) or not 0.0 <= number <= 1.0:
        raise MetricError(
            f"metric returned {number} for {where}; MetaSPO needs scores in [0, 1] (divide a percentage by 100)"
        )
    return Score(number, None if feedback is None else str(feedback))


def score_example(metric: Metric, example: dspy.Example, prediction: dspy.Prediction, where: str) -> Score:
    """The per-example score of ``prediction``; a metric that raises becomes a MetricError."""
    fn = metric.per_example if isinstance(metric, TaskMetric) else metric
    try:
        value = fn(example, prediction, None) if _accepts_trace(fn) else fn(example, prediction)
    except MetricError:
        raise
    except Exception as exc:
        raise MetricError(f"metric raised {type(exc).__name__}: {exc} for {where}") from exc
    return to_score(value, where)


def task_score(
    metric: Metric,
    examples: Sequence[dspy.Example],
    predictions: Sequence[dspy.Prediction | None],
    per_example: Sequence[float],
    where: str,
) -> float:
    """The task-level score: the metric's aggregate, or the mean of the per-example scores."""
    if not examples:
        return 0.0
    if isinstance(metric, TaskMetric):
        try:
            value = metric.aggregate(list(examples), list(predictions))
        except MetricError:
            raise
        except Exception as exc:
            raise MetricError(f"task metric raised {type(exc).__name__}: {exc} for {where}") from exc
        return to_score(value, where).value
    return sum(per_example) / len(per_example)


def answer_parsed(metric: Metric, example: dspy.Example, prediction: dspy.Prediction | None) -> bool | None:
    """Whether ``prediction`` carries an answer the task's metric could read (see the module
    docstring): False for a failed call (``None``), the metric's own ``parsed`` verdict where it
    has one (``None``: not applicable to this metric), else True. A ``parsed`` method that raises
    is a :class:`MetricError`."""
    if prediction is None:
        return False
    fn = metric.per_example if isinstance(metric, TaskMetric) else metric
    check = getattr(fn, "parsed", None)
    if not callable(check):
        return True
    try:
        verdict = check(example, prediction)
    except Exception as exc:
        raise MetricError(f"metric's parsed() raised {type(exc).__name__}: {exc}") from exc
    return None if verdict is None else bool(verdict)


def is_wrong(score: float) -> bool:
    """An example is wrong when its score is below the maximum (1.0)."""
    return score < PERFECT
