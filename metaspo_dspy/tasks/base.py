"""The Task: everything MetaSPO needs to optimize or test on one task.

A task carries a DSPy signature whose instructions are the task's initial user prompt, a metric
following :mod:`metaspo_dspy.metrics`' contract, and its train/test examples (``dspy.Example`` with
inputs set). ``Task.program()`` gives a fresh ``dspy.Predict`` for it, and :func:`compile_kwargs`
turns a list of tasks into the arguments of ``MetaSPO.compile``.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import dspy

from metaspo_dspy.metrics import Metric

PromptFormat = Literal["dspy", "reference"]


@dataclass
class Task:
    """One task.

    Attributes:
        name: the task name (the reference's names, e.g. ``"beauty"``, ``"antropic_harmless"``).
        signature: inputs -> output(s); its instructions are the initial user prompt.
        metric: per-example metric or :class:`~metaspo_dspy.metrics.TaskMetric`.
        train, test: examples with inputs set.
        domain: the task's domain (``medical``, ``review``, ``reasoning``, ``safety``,
            ``grounding``, ``generated`` or ``custom``).
        prompt_format: ``"dspy"`` (typed output fields parsed by the adapter; run with a DSPy
            adapter) or ``"reference"`` (the reference's raw messages and parsing; run with
            :class:`~metaspo_dspy.adapters.ReferenceAdapter`).
        prompt_suffix: appended to APE-generated user prompts; in the reference format the
            question slot and the answer-format line, empty in the DSPy format.
        normalize: the answer normaliser used by the metric (exposed for reuse and tests).
        metadata: where the data came from and how it was sampled (``source``, ``path`` or
            ``dataset``, ``available`` split sizes, ``seed``, ``role`` = source/unseen/extra...).
    """

    name: str
    signature: type[dspy.Signature]
    metric: Metric
    train: list[dspy.Example] = field(default_factory=list)
    test: list[dspy.Example] = field(default_factory=list)
    domain: str = "custom"
    prompt_format: PromptFormat = "dspy"
    prompt_suffix: str = ""
    normalize: Callable[[Any], Any] | None = None
    metadata: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def from_examples(
        cls,
        name: str,
        train: Sequence[Any],
        test: Sequence[Any] = (),
        metric: Metric | None = None,
        instructions: str = "",
        **kwargs: Any,
    ) -> Task:
        """A task from your own examples (``dspy.Example`` or dicts) and, optionally, metric;
        see :func:`metaspo_dspy.tasks.custom.make_task` for the options and defaults."""
        from metaspo_dspy.tasks.custom import make_task

        return make_task(name, train, test, metric=metric, instructions=instructions, **kwargs)

    @property
    def initial_prompt(self) -> str:
        """The task's initial user prompt (the signature's instructions)."""
        return self.signature.instructions

    @property
    def adapter_name(self) -> str | None:
        """The adapter this task's format needs (``"reference"``), or None for any DSPy adapter."""
        return "reference" if self.prompt_format == "reference" else None

    def program(self) -> dspy.Module:
        """A fresh ``dspy.Predict`` over the task's signature."""
        return dspy.Predict(self.signature)

    def with_instructions(self, instructions: str) -> Task:
        """A copy of this task whose initial user prompt is ``instructions``."""
        return Task(**{**self.__dict__, "signature": self.signature.with_instructions(instructions)})


def compile_kwargs(tasks: Iterable[Task], with_test: bool = True) -> dict[str, Any]:
    """``MetaSPO.compile`` arguments for these tasks: programs, train/test sets, metrics, suffixes."""
    tasks = list(tasks)
    names = [t.name for t in tasks]
    if len(set(names)) != len(names):
        raise ValueError(f"task names must be unique, got {names}")
    kwargs: dict[str, Any] = {
        "program": {t.name: t.program() for t in tasks},
        "trainsets": {t.name: t.train for t in tasks},
        "metrics": {t.name: t.metric for t in tasks},
        "user_prompt_suffixes": {t.name: t.prompt_suffix for t in tasks if t.prompt_suffix},
    }
    if with_test:
        kwargs["testsets"] = {t.name: t.test for t in tasks if t.test}
    return kwargs


def input_names(examples: Sequence[dspy.Example]) -> list[str]:
    """The input field names used by ``examples`` (in first-seen order)."""
    names: dict[str, None] = {}
    for example in examples:
        names.update(dict.fromkeys(example._input_keys))
    return list(names)
