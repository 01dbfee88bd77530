"""Your own task from your own examples: :func:`make_task` (also ``Task.from_examples``).

    task = make_task(
        "capitals",
        train=[{"country": "France", "answer": "Paris"}, ...],
        test=[...],
        instructions="Name the capital city of the country.",
    )

Examples may be ``dspy.Example`` objects or dicts; inputs are the examples' input keys when set,
else every key except the output field(s). The default metric is exact match after
:func:`~metaspo_dspy.tasks.parsing.normalize_text` (case, spaces, punctuation and number words
forgiven); pass any metric following :mod:`metaspo_dspy.metrics`' contract instead.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import dspy

from metaspo_dspy.metrics import Metric
from metaspo_dspy.tasks.base import Task
from metaspo_dspy.tasks.parsing import normalize_text


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
        metric: per-example metric or :class:`~metaspo_dspy.metrics.TaskMetric`; default
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
