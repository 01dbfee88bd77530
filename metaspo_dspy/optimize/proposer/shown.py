"""What the optimizer is shown: wrong examples (with the model's response and the correct answer)
and APE input/output pairs, rendered as text for the optimizer's prompts."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import dspy

from metaspo_dspy.evaluation.records import ExampleResult
from metaspo_dspy.program.adapters import message_text


@dataclass
class WrongExample:
    """A wrong example as shown to the optimizer."""

    task: str
    example_index: int
    system_prompt: str
    user_message: str
    response: str | None
    prediction: str
    correct: str
    feedback: str | None = None

    def render(self) -> str:
        parts = [
            "<example>",
            f"Task: {self.task}",
            f"System prompt:\n{self.system_prompt}",
            f"User message:\n{self.user_message}",
            f"Model response:\n{self.response if self.response is not None else '(no response)'}",
            f"Parsed prediction:\n{self.prediction}",
            f"Correct answer:\n{self.correct}",
        ]
        if self.feedback:
            parts.append(f"Metric feedback:\n{self.feedback}")
        parts.append("</example>")
        return "\n\n".join(parts)


def format_fields(values: dict[str, Any], names: Sequence[str] | None = None) -> str:
    """``name: value`` lines (lists joined with commas)."""
    lines = []
    for name in names if names is not None else list(values):
        value = values.get(name)
        if isinstance(value, (list, tuple)):
            value = ", ".join(str(v) for v in value)
        lines.append(f"{name}: {value}")
    return "\n".join(lines)


#: ``parse(example, prediction) -> parsed answer``: a task metric's own answer parser.
Parser = Callable[[dspy.Example, Any], Any]


def parser_of(metric: Any) -> Parser | None:
    """The answer parser of a task metric (``metric.parse``, or ``metric.per_example.parse`` for a
    task-level metric), or None when the metric has none (a plain function)."""
    for owner in (metric, getattr(metric, "per_example", None)):
        parse = getattr(owner, "parse", None)
        if callable(parse):
            return parse
    return None


def wrong_example(
    task: str,
    example: dspy.Example,
    result: ExampleResult,
    system_prompt: str,
    predictor: str | None = None,
    parse: Parser | None = None,
) -> WrongExample:
    """Describe a wrong result, using the last LM call of ``predictor`` (or the last call at all).

    The *parsed prediction* is what ``parse`` (the task metric's parser, see :func:`parser_of`)
    reads from the prediction -- in the reference format the answer inside the last
    ``<answer>`` tag, not the raw completion, which is shown as the model response --, else the
    prediction's output fields."""
    calls = [c for c in result.calls if predictor is None or c.predictor == predictor] or result.calls
    call = calls[-1] if calls else None
    user_message = "(no LM call was made)"
    if call is not None:
        users = [m for m in call.messages if m.get("role") == "user"]
        user_message = message_text(users[-1]["content"]) if users else ""
    if result.prediction is not None:
        prediction = format_fields(result.prediction)
        if parse is not None:
            try:
                parsed = parse(example, result.prediction)
                prediction = "(unparsable)" if parsed is None else str(parsed)
            except Exception:  # a parser that cannot read it: show the fields as they are
                pass
    else:
        prediction = f"(failed: {result.error})"
    return WrongExample(
        task=task,
        example_index=result.index,
        system_prompt=system_prompt,
        user_message=user_message,
        response=call.completion if call is not None else None,
        prediction=prediction,
        correct=format_fields(dict(example.labels())),
        feedback=result.feedback,
    )


def sample_wrong(wrong: Sequence[ExampleResult], k: int, rng) -> list[ExampleResult]:
    """Up to ``k`` wrong results: all of them (in order) when there are at most ``k``."""
    if len(wrong) <= k:
        return list(wrong)
    return rng.sample(list(wrong), k)


def io_pairs(examples: Sequence[dspy.Example]) -> list[str]:
    """APE input/output pairs, one string each."""
    return [
        f"Input:\n{format_fields(dict(ex.inputs()))}\nOutput:\n{format_fields(dict(ex.labels()))}\n" for ex in examples
    ]
