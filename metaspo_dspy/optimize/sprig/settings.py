"""SPRIG's settings: the shared :class:`~metaspo_dspy.optimize.settings.SearchSettings` plus its own --
the component library, the beam, the candidates per iteration, the search budget and UCB's
exploration constant."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from metaspo_dspy.errors import ConfigError
from metaspo_dspy.evaluation.task_run import positive_int
from metaspo_dspy.optimize.settings import SearchSettings
from metaspo_dspy.optimize.sprig.library import Component, ComponentLibrary, load_components

__all__ = ["SprigSettings"]

#: The components a SPRIG library may be given as.
Components = str | Path | ComponentLibrary | Sequence[Component | tuple[str, str] | str] | None


@dataclass(frozen=True)
class SprigSettings(SearchSettings):
    """What a SPRIG run reads (see :class:`~metaspo_dspy.optimize.sprig.teleprompter.SPRIG`)."""

    library: ComponentLibrary
    beam_size: int
    num_candidates: int
    #: None: a MetaSPO run's train-phase task calls on the same tasks (``SPRIG.search_budget``)
    task_call_budget: int | None
    max_iterations: int | None
    exploration: float

    @classmethod
    def build(
        cls,
        components: Components,
        beam_size: int,
        num_candidates: int | None,
        task_call_budget: int | None,
        max_iterations: int | None,
        exploration: float,
        **shared: Any,
    ) -> SprigSettings:
        """The settings of ``SPRIG(**arguments)`` (all but ``metric``), checked: a
        :class:`ConfigError` names the first bad argument (a bad component file is a
        :class:`~metaspo_dspy.optimize.sprig.library.ComponentLibraryError`); ``shared`` are
        :meth:`SearchSettings.shared`'s, with its defaults for those not given."""
        values = cls.shared("sprig", **shared)
        values["beam_size"] = positive_int("beam_size", beam_size)
        candidates = values["num_system_candidates"] if num_candidates is None else num_candidates
        values["num_candidates"] = positive_int("num_candidates", candidates)
        values["task_call_budget"] = _optional("task_call_budget", task_call_budget)
        values["max_iterations"] = _optional("max_iterations", max_iterations)
        if isinstance(exploration, bool) or not isinstance(exploration, (int, float)) or exploration < 0:
            raise ConfigError(f"exploration must be a number >= 0, got {exploration!r}")
        return cls(**values, exploration=float(exploration), library=_library(components))


def _optional(name: str, value: int | None) -> int | None:
    return None if value is None else positive_int(name, value)


def _library(components: Components) -> ComponentLibrary:
    if components is None or isinstance(components, (str, Path)):
        return load_components(components)
    if isinstance(components, ComponentLibrary):
        return components
    if isinstance(components, Sequence):
        return ComponentLibrary.of(components)
    raise ConfigError(
        f"components must be None, a CSV path, a ComponentLibrary or a list of texts, got {type(components).__name__}"
    )
