"""The Task: everything MetaSPO needs to optimize or test on one task.

A task carries a DSPy signature whose instructions are the task's initial user prompt, a metric
following :mod:`metaspo_dspy.program.metrics`' contract, and its train/test examples (``dspy.Example`` with
inputs set). ``Task.program()`` gives a fresh ``dspy.Predict`` for it, and :func:`compile_kwargs`
turns a list of tasks into the arguments of ``MetaSPO.compile``.

Your own task from your own examples: :func:`make_task` (also ``Task.from_examples``)::

    task = make_task(
        "capitals",
        train=[{"country": "France", "answer": "Paris"}, ...],
        test=[...],
        instructions="Name the capital city of the country.",
    )

Examples may be ``dspy.Example`` objects or dicts; inputs are the examples' input keys when set,
else every key except the output field(s). The default metric is exact match after
:func:`~metaspo_dspy.tasks.answers.parsing.normalize_text` (case, spaces, punctuation and number words
forgiven); pass any metric following :mod:`metaspo_dspy.program.metrics`' contract instead.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import dspy

from metaspo_dspy.program.metrics import Metric
from metaspo_dspy.tasks.answers.parsing import normalize_text

PromptFormat = Literal["dspy", "reference"]


@dataclass
class Task:
    """One task.

    Attributes:
        name: the task name (the reference's names, e.g. ``"beauty"``, ``"antropic_harmless"``).
        signature: inputs -> output(s); its instructions are the initial user prompt.
        metric: per-example metric or :class:`~metaspo_dspy.program.metrics.TaskMetric`.
        train, test: examples with inputs set.
        domain: the task's domain (``medical``, ``review``, ``reasoning``, ``safety``,
            ``grounding``, ``generated`` or ``custom``).
        prompt_format: ``"dspy"`` (typed output fields parsed by the adapter; run with a DSPy
            adapter) or ``"reference"`` (the reference's raw messages and parsing; run with
            :class:`~metaspo_dspy.program.adapters.ReferenceAdapter`).
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
        see :func:`make_task` for the options and defaults."""
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


class ExactMatch:
    """``normalize(prediction.<field>) == normalize(example.<field>)`` (None never matches)."""

    def __init__(self, field: str = "answer", normalize: Callable[[Any], Any] = normalize_text):
        self.field = field
        self.normalize = normalize
        self.__name__ = f"exact_match_{field}"

    def __call__(self, example: dspy.Example, prediction: Any, trace: Any = None) -> bool:
        predicted = self.normalize(getattr(prediction, self.field, None))
        return predicted is not None and predicted == self.normalize(example.get(self.field))


def _as_examples(items: Sequence[Any], output: str, inputs: Sequence[str] | None, where: str) -> list[dspy.Example]:
    examples = []
    for i, item in enumerate(items):
        example = item if isinstance(item, dspy.Example) else dspy.Example(**dict(item))
        keys = list(inputs) if inputs else list(example._input_keys or [k for k in example if k != output])
        if not keys:
            raise ValueError(f"{where}[{i}] has no input fields (only {list(example.keys())})")
        if output not in example:
            raise ValueError(f"{where}[{i}] has no {output!r} label (keys: {list(example.keys())})")
        examples.append(example.with_inputs(*keys))
    return examples


def make_task(
    name: str,
    train: Sequence[Any],
    test: Sequence[Any] = (),
    *,
    metric: Metric | None = None,
    instructions: str = "",
    inputs: Sequence[str] | None = None,
    output: str = "answer",
    output_desc: str = "",
    normalize: Callable[[Any], Any] = normalize_text,
    domain: str = "custom",
) -> Task:
    """A DSPy-format :class:`Task` from examples.

    Args:
        name: the task name.
        train, test: ``dspy.Example`` objects or dicts; each needs the ``output`` label.
        metric: per-example metric or :class:`~metaspo_dspy.program.metrics.TaskMetric`; default
            :class:`ExactMatch` on ``output`` with ``normalize``.
        instructions: the initial user prompt.
        inputs: input field names (default: the examples' own, else every key but ``output``).
        output: the output field name.
        output_desc: the output field's description.
        normalize: answer normaliser of the default metric (also ``Task.normalize``).
        domain: a free label.

    Raises:
        ValueError: no train examples, or an example lacks inputs or the label.
    """
    if not train:
        raise ValueError(f"task {name!r} needs at least one train example")
    train_examples = _as_examples(train, output, inputs, "train")
    test_examples = _as_examples(test, output, inputs or train_examples[0]._input_keys, "test")
    input_fields = list(inputs or sorted(train_examples[0]._input_keys, key=list(train_examples[0].keys()).index))
    fields: dict[str, Any] = {k: (str, dspy.InputField()) for k in input_fields}
    fields[output] = (str, dspy.OutputField(desc=output_desc) if output_desc else dspy.OutputField())
    signature = dspy.make_signature(fields, instructions or f"Given {', '.join(input_fields)}, give the {output}.")
    return Task(
        name=name,
        signature=signature,
        metric=metric if metric is not None else ExactMatch(output, normalize),
        train=train_examples,
        test=test_examples,
        domain=domain,
        normalize=normalize,
        metadata={"source": "examples", "available": {"train": len(train_examples), "test": len(test_examples)}},
    )
