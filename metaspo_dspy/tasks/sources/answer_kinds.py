"""Each built-in task's declared answer type, checked on every row when the task is loaded.

A row whose answer does not fit its task (an Amazon rating that is a list or null, a MedMCQA
answer that is not an option letter, a grounding row without gold answers, ...) would otherwise
surface only in the metric, after the initial evaluation was paid for. :func:`check_rows` raises
one :class:`~metaspo_dspy.errors.TaskLoadError` naming the task, the file (or source), the
split, the row index, the value found and the type expected. Tasks made with
:func:`~metaspo_dspy.tasks.task.make_task` are not checked here: their metric decides.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from metaspo_dspy.errors import TaskLoadError
from metaspo_dspy.tasks.sources.local import check_row
from metaspo_dspy.tasks.specs import TaskSpec

_RATINGS = ("1", "2", "3", "4", "5")


def expected_answer(spec: TaskSpec) -> str:
    """The answer type ``spec`` declares, in words (for error messages)."""
    if spec.kind == "option":
        return f"one of the option letters {', '.join(spec.letters)} (a string)"
    return {
        "rating": "a rating from 1 to 5 (an integer, or its digit as a string)",
        "yesno": "'yes' or 'no' (a string)",
        "span": "'answers': a non-empty list of non-empty strings, or 'answer': a non-empty string",
    }.get(spec.kind, "a non-empty string (or an integer)")


def _text(value: Any) -> bool:
    return isinstance(value, str) and bool(value.strip())


def answer_fits(spec: TaskSpec, row: Mapping[str, Any]) -> bool:
    """Whether ``row``'s gold answer has the type ``spec`` declares."""
    if spec.kind == "span":
        answers = row.get("answers")
        if "answers" in row:
            return isinstance(answers, list) and bool(answers) and all(_text(a) for a in answers)
        return _text(row.get("answer"))
    answer = row.get("answer")
    if spec.kind == "rating":
        if isinstance(answer, int) and not isinstance(answer, bool):
            return 1 <= answer <= 5
        return isinstance(answer, str) and answer.strip() in _RATINGS
    if spec.kind == "option":
        return isinstance(answer, str) and len(answer.strip()) == 1 and answer.strip().upper() in spec.letters
    if spec.kind == "yesno":
        return isinstance(answer, str) and answer.strip().lower() in ("yes", "no")
    return _text(answer) or (isinstance(answer, int) and not isinstance(answer, bool))


def check_rows(spec: TaskSpec, splits: Mapping[str, Sequence[Any]], origin: str) -> None:
    """Raise :class:`TaskLoadError` at the first row of ``splits`` without a string question or
    with an answer of the wrong type; ``origin`` names the file or source in the message."""
    for split in ("train", "test"):
        for i, row in enumerate(splits.get(split, [])):
            where = f"{origin}, {split} split, row {i}"
            check_row(row, spec.name, where)
            if not answer_fits(spec, row):
                found = {k: row[k] for k in ("answer", "answers") if k in row}
                raise TaskLoadError(
                    f"task {spec.name!r}: {where}: answer {found!r:.120} does not fit the task; expected "
                    f"{expected_answer(spec)}. Fix that row of the data file (or remove it)"
                )
