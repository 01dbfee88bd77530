"""Inputs reach the prompt: every predictor call must receive its required input fields.

DSPy runs a predictor whose required input is missing anyway: it logs a warning and the request
simply lacks that field. Examples made with ``.with_inputs("q")`` for a signature whose input is
``question`` thus give a complete run in which no request contains the question. Two checks refuse
that, both with :func:`mismatch_message` (the callers raise it as a ``ConfigError``):

* :func:`bare_mismatch`, before any call, for a *bare* program (:func:`is_bare`: a
  ``dspy.Predict`` or ``dspy.ChainOfThought`` itself, whose one predictor receives exactly the
  example's inputs): every example's inputs must hold the signature's required inputs.
* :class:`InputWatcher`, for any other program (RAG, several stages, a custom ``forward``): a DSPy
  callback that records, during one program run, each predictor called without one of its required
  inputs (:class:`MissingInputs`). What the predictor receives counts, wherever it comes from: a
  stage fed by an earlier stage's output is fine.

*Required* is DSPy 3.4.1's own rule (``Predict._forward_preprocess``, the "Not all input fields
were provided" warning): an input field with no default whose annotation does not admit None
(``Optional[str]``, ``str | None``); DSPy fills a missing field's default and sends nothing for a
missing optional one, so those may be absent.
"""

from __future__ import annotations

import threading
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import dspy
from dspy.adapters.utils import annotation_allows_none
from dspy.signatures.signature import ensure_signature
from dspy.utils.callback import BaseCallback
from pydantic_core import PydanticUndefined

#: The programs whose predictor receives exactly the example's inputs (compared by exact class).
BARE_PROGRAMS = (dspy.Predict, dspy.ChainOfThought)


def required_inputs(signature: Any) -> list[str]:
    """The input fields of ``signature`` (a class or a string) that DSPy 3.4.1 needs in every call: no
    default, and an annotation that does not admit None."""
    fields = ensure_signature(signature).input_fields
    return [
        name
        for name, info in fields.items()
        if info.default is PydanticUndefined and not annotation_allows_none(info.annotation)
    ]


def is_bare(program: Any) -> bool:
    """Whether ``program`` is exactly a ``dspy.Predict`` or ``dspy.ChainOfThought`` (no subclass:
    one may override ``forward``), so that its examples can be checked before any call."""
    return type(program) in BARE_PROGRAMS


@dataclass(frozen=True)
class MissingInputs:
    """A predictor called without some of its required inputs.

    ``predictor`` is its name in the program (``named_predictors``), ``missing`` the required inputs
    it did not receive and ``given`` the input fields of its signature it did receive."""

    predictor: str
    missing: tuple[str, ...]
    given: tuple[str, ...]

    def to_json(self) -> dict[str, Any]:
        return {"predictor": self.predictor, "missing": list(self.missing), "given": list(self.given)}

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> MissingInputs:
        return cls(str(data["predictor"]), tuple(data["missing"]), tuple(data.get("given") or ()))


def _missing(predictor: str, signature: Any, received: Iterable[str]) -> MissingInputs | None:
    """What ``predictor`` with ``signature`` lacks when it receives the keyword arguments ``received``."""
    signature = ensure_signature(signature)
    received = set(received)
    missing = tuple(name for name in required_inputs(signature) if name not in received)
    if not missing:
        return None
    return MissingInputs(predictor, missing, tuple(name for name in signature.input_fields if name in received))


def bare_mismatch(program: dspy.Module, examples: Sequence[dspy.Example]) -> tuple[int, MissingInputs] | None:
    """For a bare program (:func:`is_bare`): the first example whose inputs lack a required input of
    its predictor, as ``(index, what is missing)``; None when every example gives them, and for any
    other program (whose ``forward`` decides what its predictors receive). Makes no call."""
    if not is_bare(program):
        return None
    [(name, predictor)] = program.named_predictors()
    required = set(required_inputs(predictor.signature))
    for index, example in enumerate(examples):
        given = {key for key in example._input_keys or () if key in example}
        problem = None if required <= given else _missing(name, predictor.signature, given)
        if problem is not None:
            return index, problem
    return None


class InputWatcher(BaseCallback):
    """A DSPy callback recording the predictor calls made without a required input.

    Use one watcher per program run, installed with ``dspy.context(callbacks=[..., watcher])`` around
    it (DSPy calls ``on_module_start`` before every ``Predict.__call__``, in whatever thread the
    program runs it). ``names`` maps ``id(predictor)`` to its name in the program; a predictor not in
    it is named by its class. :attr:`missing` holds one :class:`MissingInputs` per predictor (its
    first offending call). It only records: what happens to the run is its caller's decision."""

    def __init__(self, names: Mapping[int, str]):
        super().__init__()
        self.names = names
        self._missing: dict[str, MissingInputs] = {}
        self._lock = threading.Lock()

    def on_module_start(self, call_id: str, instance: Any, inputs: dict[str, Any]) -> None:
        if not isinstance(instance, dspy.Predict):
            return
        # Module.__call__(self, *args, **kwargs): DSPy hands over {"args": ..., "kwargs": ...}.
        kwargs = inputs.get("kwargs") or {}
        name = self.names.get(id(instance), type(instance).__name__)
        problem = _missing(name, kwargs.get("signature", instance.signature), kwargs)
        if problem is not None:
            with self._lock:
                self._missing.setdefault(name, problem)

    @property
    def missing(self) -> list[MissingInputs]:
        with self._lock:
            return list(self._missing.values())


def _who(predictor: str) -> str:
    # A bare Predict is its own (only) predictor, named "self" by named_predictors().
    return "the program's predictor" if predictor == "self" else f"predictor {predictor!r}"


def _names(keys: Sequence[str]) -> str:
    return ", ".join(repr(k) for k in keys) if keys else "none"


def mismatch_message(task: str, where: str, problems: Sequence[MissingInputs], example: dspy.Example) -> str:
    """One line for a ``ConfigError``: the task, each predictor and the required inputs it lacks, the
    example (``where``, e.g. "train example 3") with its input keys and those no such predictor
    received (unused), and the fix."""
    given = set(example.inputs().keys())
    inputs = [key for key in example.keys() if key in given]  # noqa: SIM118 - Example.keys() skips dspy_ keys
    reached = {key for problem in problems for key in problem.given}
    unused = [key for key in inputs if key not in reached]
    missing = list(dict.fromkeys(key for problem in problems for key in problem.missing))
    lacks = "; ".join(
        f"{_who(problem.predictor)} lacks its required input {_names(problem.missing)}" for problem in problems
    )
    wanted = ", ".join(repr(key) for key in [*(k for k in inputs if k in reached), *missing])
    if all(key in example for key in missing):
        fix = f"the examples hold {_names(missing)} but not as inputs: build them with .with_inputs({wanted})"
    else:
        fields = ", ".join(f"{key}=..." for key in missing)
        fix = (
            f"give the examples those fields, e.g. dspy.Example({fields}, ...).with_inputs({wanted}), or rename the "
            "signature's input fields to the examples' keys"
        )
    return (
        f"task {task!r}: {lacks} ({where} has the inputs {_names(inputs)}; unused: {_names(unused)}), so no request "
        f"contains {'it' if len(missing) == 1 else 'them'}; {fix}"
    )
