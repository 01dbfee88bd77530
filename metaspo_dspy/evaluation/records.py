"""What an evaluation grid takes and gives back, as plain data.

An :class:`EvalJob` is one node to score (a prepared program, its system prompt, some examples and
a metric). An :class:`ItemRun` is one program run on one example, as it is kept in memory and
journaled (:meth:`ItemRun.to_json`); :class:`ExampleResult` and :class:`NodeEval` are a node's scored
results. :func:`token_counts` counts the tokens of the calls behind them (summed with
:func:`~metaspo_dspy.budget.merge_usage`), and :func:`jsonable` is the JSON form in which
predictions, examples and settings are kept and digested.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import dspy
from dspy.utils.usage_tracker import UsageTracker

from metaspo_dspy.budget import merge_usage
from metaspo_dspy.program.adapters import message_text
from metaspo_dspy.program.input_check import MissingInputs
from metaspo_dspy.program.metrics import Metric, is_wrong
from metaspo_dspy.program.recorder import LMCall


@dataclass(frozen=True)
class EvalJob:
    """One node to score: a prepared program (user prompts already set) on some examples."""

    task: str
    program: dspy.Module
    system_prompt: str
    instructions_in: str
    examples: Sequence[dspy.Example]
    metric: Metric
    label: str = ""


@dataclass
class ExampleResult:
    """What happened on one example."""

    index: int
    score: float
    prediction: dict[str, Any] | None
    feedback: str | None = None
    error: str | None = None
    calls: list[LMCall] = field(default_factory=list)
    cached: bool = False
    usage: dict[str, dict[str, int]] = field(default_factory=dict)
    #: whether an answer could be read (:func:`~metaspo_dspy.program.metrics.answer_parsed`; None: n/a)
    parsed: bool | None = None

    @property
    def wrong(self) -> bool:
        return is_wrong(self.score)


@dataclass
class NodeEval:
    """A node's score on its examples, with every example's result."""

    score: float
    results: list[ExampleResult]

    @property
    def wrong(self) -> list[ExampleResult]:
        return [r for r in self.results if r.wrong]

    @property
    def lm_calls(self) -> int:
        return sum(len(r.calls) for r in self.results if not r.cached)

    @property
    def usage(self) -> dict[str, dict[str, int]]:
        """Tokens of the calls paid for here (reused results excluded), per model."""
        total: dict[str, dict[str, int]] = {}
        for r in self.results:
            if not r.cached:
                merge_usage(total, r.usage)
        return total

    @property
    def failures(self) -> int:
        return sum(1 for r in self.results if r.error is not None)

    @property
    def parsed_counts(self) -> tuple[int, int]:
        """(answers parsed, answers where parsing applies) over the results."""
        applicable = [r.parsed for r in self.results if r.parsed is not None]
        return sum(applicable), len(applicable)

    @property
    def parsed_share(self) -> float | None:
        """The share of answers parsed (None where parsing does not apply to any result)."""
        parsed, of = self.parsed_counts
        return parsed / of if of else None


@dataclass
class ItemRun:
    """One program run: its prediction (None on failure), error, compacted LM calls, tokens, and the
    predictors it called without a required input (:mod:`metaspo_dspy.program.input_check`; journaled only
    when there are some, so a record without ``missing_inputs`` -- also an older one -- has none)."""

    prediction: dspy.Prediction | None
    error: str | None
    calls: list[LMCall]
    usage: dict[str, dict[str, int]] = field(default_factory=dict)
    missing_inputs: list[MissingInputs] = field(default_factory=list)

    def to_json(self) -> dict[str, Any]:
        """The journal record of this run (:meth:`from_json` reads it back)."""
        data = {
            "prediction": None if self.prediction is None else jsonable(dict(self.prediction.items())),
            "error": self.error,
            "usage": self.usage,
            "calls": [
                {"predictor": c.predictor, "user": _last_user(c.messages), "completion": c.completion}
                for c in self.calls
            ],
        }
        if self.missing_inputs:
            data["missing_inputs"] = [m.to_json() for m in self.missing_inputs]
        return data

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> ItemRun:
        """The run a journal record (:meth:`to_json`) holds."""
        prediction = None if data["prediction"] is None else dspy.Prediction(**data["prediction"])
        calls = [
            LMCall(c["predictor"], [{"role": "user", "content": c["user"]}], c["completion"]) for c in data["calls"]
        ]
        missing = [MissingInputs.from_json(m) for m in data.get("missing_inputs") or []]
        return cls(prediction, data["error"], calls, data.get("usage") or {}, missing)


def compact_calls(calls: list[LMCall]) -> list[LMCall]:
    """Keep what the optimizer is shown (last user message, completion): runs stay small in memory."""
    return [LMCall(c.predictor, [{"role": "user", "content": _last_user(c.messages)}], c.completion) for c in calls]


def _last_user(messages: list[dict[str, Any]]) -> str:
    users = [m for m in messages if m.get("role") == "user"]
    return message_text(users[-1]["content"]) if users else ""


def jsonable(value: Any) -> Any:
    """``value`` as JSON data: examples and mappings as dicts (string keys), sequences as lists,
    pydantic models dumped, anything else that is not a JSON scalar as its ``repr``."""
    if isinstance(value, dspy.Example):
        return {k: jsonable(v) for k, v in value.items()}
    if isinstance(value, dict):
        return {str(k): jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [jsonable(v) for v in value]
    if isinstance(value, (str, int, float, bool)) or value is None:
        return value
    if hasattr(value, "model_dump"):
        return value.model_dump(mode="json")
    return repr(value)


def token_counts(tracker: UsageTracker) -> dict[str, dict[str, int]]:
    """``{model: {"prompt_tokens", "completion_tokens", "calls"}}`` of the calls a tracker saw."""
    out: dict[str, dict[str, int]] = {}
    for model, entries in tracker.usage_data.items():
        out[model] = {
            "prompt_tokens": sum(int(e.get("prompt_tokens") or 0) for e in entries),
            "completion_tokens": sum(int(e.get("completion_tokens") or 0) for e in entries),
            "calls": len(entries),
        }
    return out
