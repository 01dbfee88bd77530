"""A task inside an optimization run (its private program copy, data and metric), and the checks
on the examples and arguments every optimizer receives."""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import dspy

from metaspo_dspy.errors import ConfigError, ModelConfigError
from metaspo_dspy.lm.preflight import check_lm
from metaspo_dspy.program.input_check import bare_mismatch, mismatch_message
from metaspo_dspy.program.metrics import Metric


def positive_int(name: str, value: Any) -> int:
    """``value`` if it is a positive int (not a bool), else a :class:`ConfigError` naming ``name``."""
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ConfigError(f"{name} must be a positive integer, got {value!r}")
    return value


def check_lms(**lms: Any) -> None:
    """Refuse with a :class:`ConfigError` any LM argument (named by its keyword, e.g.
    ``check_lms(optimizer_lm=..., task_lm=...)``) that is not a ``dspy.BaseLM``, such as a model
    string (:func:`~metaspo_dspy.lm.preflight.check_lm`); ``None`` passes (the caller decides
    whether a default applies). Makes no LM call: every optimizer and meta-test protocol runs it
    before its first one."""
    try:
        for name, lm in lms.items():
            check_lm(lm, name)
    except ModelConfigError as exc:
        raise ConfigError(str(exc)) from None


def check_processes(num_processes: Any, task_lm: Any, programs: Sequence[dspy.Module] | None = None) -> int:
    """Validate ``num_processes`` and, when it is above 1, refuse with a :class:`ConfigError` what
    worker processes cannot rebuild (see :mod:`metaspo_dspy.evaluation.processes`): the task LM (``None`` is
    not checked: the LM is not known yet); given ``programs`` (the run is about to start), also their
    predictors' LMs, the programs themselves and ``dspy.settings`` callbacks, with ``task_lm=None``
    meaning ``dspy.settings.lm``. Makes no LM call. Returns ``num_processes``."""
    num_processes = positive_int("num_processes", num_processes)
    if num_processes > 1:
        from metaspo_dspy.errors import ProcessError
        from metaspo_dspy.evaluation.processes import check_portable, check_run

        try:
            if programs is None:
                check_portable(task_lm, "task_lm")
            else:
                check_run(task_lm, programs)
        except ProcessError as exc:
            raise ConfigError(str(exc)) from None
    return num_processes


def check_examples(task: str, examples: Any, split: str) -> list[dspy.Example]:
    """A task's examples as a list, each a ``dspy.Example`` with inputs set."""
    if examples is None or isinstance(examples, (str, bytes)) or not hasattr(examples, "__iter__"):
        raise ConfigError(f"{split} set of task {task!r} must be a list of dspy.Example, got {type(examples).__name__}")
    examples = list(examples)
    if not examples:
        raise ConfigError(f"{split} set of task {task!r} is empty; give it at least one dspy.Example")
    for i, example in enumerate(examples):
        if not isinstance(example, dspy.Example):
            raise ConfigError(
                f"{split} example {i} of task {task!r} is a {type(example).__name__}, not a dspy.Example; "
                "build it with dspy.Example(...).with_inputs(...)"
            )
        if not example._input_keys:
            raise ConfigError(
                f"{split} example {i} of task {task!r} has no input fields; call .with_inputs('question', ...)"
            )
    return examples


@dataclass
class TaskRun:
    """One task inside a run: a private copy of its program, its data and its metric.

    Built before any LM call; raises :class:`ConfigError` when the program has no predictor, or is
    a bare ``dspy.Predict`` / ``dspy.ChainOfThought`` whose required inputs some train or test
    example does not give (:func:`~metaspo_dspy.program.input_check.bare_mismatch`). Other programs are
    checked on their first program run by the evaluator (:mod:`metaspo_dspy.evaluation.grid`)."""

    name: str
    program: dspy.Module
    trainset: list[dspy.Example]
    metric: Metric
    testset: list[dspy.Example] | None = None
    suffix: str = ""
    _prepared: dict[tuple, dspy.Module] = field(default_factory=dict, repr=False)

    def __post_init__(self) -> None:
        self.program = self.program.deepcopy()
        if not self.program.named_predictors():
            raise ConfigError(f"the program of task {self.name!r} has no dspy.Predict inside; nothing to optimize")
        for split, examples in (("train", self.trainset), ("test", self.testset or [])):
            found = bare_mismatch(self.program, examples)
            if found is not None:
                index, problem = found
                where = f"{split} example {index}"
                raise ConfigError(mismatch_message(self.name, where, [problem], examples[index]))

    @property
    def predictor_names(self) -> list[str]:
        return [name for name, _ in self.program.named_predictors()]

    @property
    def input_names(self) -> list[str]:
        names: dict[str, None] = {}
        for example in self.trainset:
            names.update(dict.fromkeys(example._input_keys))
        return list(names)

    @staticmethod
    def prompt_key(user_prompt: Mapping[str, str]) -> str:
        """A hashable identity for a (possibly multi-predictor) user prompt."""
        return json.dumps(sorted(user_prompt.items()), ensure_ascii=False)

    def initial_user_prompt(self) -> dict[str, str]:
        return {name: p.signature.instructions for name, p in self.program.named_predictors()}

    def prepared(self, user_prompt: Mapping[str, str]) -> dspy.Module:
        """A copy of the program whose predictors carry ``user_prompt`` (cached; never mutated)."""
        key = tuple(sorted(user_prompt.items()))
        program = self._prepared.get(key)
        if program is None:
            program = self.program.deepcopy()
            for name, predictor in program.named_predictors():
                if name in user_prompt:
                    predictor.signature = predictor.signature.with_instructions(user_prompt[name])
            self._prepared[key] = program
        return program
