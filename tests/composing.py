"""Small inline tasks for the composition tests (no data files): questions, gold answers, metrics."""

from __future__ import annotations

import dspy

SIG = dspy.Signature("question -> answer", "Answer the question with one number.")


def examples(task: str, n: int = 6, start: int = 0) -> list[dspy.Example]:
    """``n`` examples of ``task`` whose answers are 1-5."""
    return [
        dspy.Example(question=f"{task}: item {i}?", answer=str(i % 5 + 1)).with_inputs("question")
        for i in range(start, start + n)
    ]


def gold(*sets: list[dspy.Example]) -> dict[str, str]:
    """The fake engine's answer table for the given example lists."""
    return {e.question: e.answer for examples in sets for e in examples}


def accuracy(example, prediction, trace=None) -> bool:
    return str(prediction.answer).strip() == str(example.answer)


def feedback_metric(example, prediction, trace=None, pred_name=None, pred_trace=None) -> dspy.Prediction:
    """A GEPA-style metric: a score and the feedback GEPA's reflection reads."""
    right = accuracy(example, prediction)
    return dspy.Prediction(score=float(right), feedback="correct" if right else f"the answer is {example.answer}")


def small_metaspo(**kwargs):
    """MetaSPO settings small enough for a test run (one iteration, two candidates each)."""
    from metaspo_dspy import MetaSPO

    settings = dict(
        metric=accuracy,
        num_iterations=1,
        num_system_candidates=2,
        num_user_candidates=2,
        user_top_k=1,
        num_threads=4,
        progress=False,
    )
    settings.update(kwargs)
    return MetaSPO(**settings)
