"""MetaSPO's settings: the shared :class:`~metaspo_dspy.optimize.settings.SearchSettings` plus its
own -- the variant (``method``), the wrong examples shown per proposal and frugal screening."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from metaspo_dspy.config.schema import METASPO_METHODS
from metaspo_dspy.errors import ConfigError
from metaspo_dspy.evaluation.task_run import positive_int
from metaspo_dspy.optimize.settings import SearchSettings

__all__ = ["MetaSPOSettings"]


@dataclass(frozen=True)
class MetaSPOSettings(SearchSettings):
    """What a MetaSPO run reads (see :class:`~metaspo_dspy.optimize.metaspo.teleprompter.MetaSPO`)."""

    num_wrong_user: int
    num_wrong_system: int
    #: None: off; else the share of each train set a system-prompt candidate is screened on
    screening: float | None
    screening_keep: float

    @classmethod
    def build(
        cls,
        method: str,
        num_wrong_user: int,
        num_wrong_system: int,
        screening: float | None,
        screening_keep: float,
        **shared: Any,
    ) -> MetaSPOSettings:
        """The settings of ``MetaSPO(**arguments)`` (all but ``metric``), checked: a
        :class:`ConfigError` names the first bad argument; ``shared`` are
        :meth:`SearchSettings.shared`'s."""
        if method not in METASPO_METHODS:
            raise ConfigError(f"method must be one of {METASPO_METHODS}, got {method!r}")
        values = cls.shared(method, **shared)
        wrong = {"num_wrong_user": num_wrong_user, "num_wrong_system": num_wrong_system}
        values.update((name, positive_int(name, value)) for name, value in wrong.items())
        if screening is not None and not 0 < screening < 1:
            raise ConfigError(f"screening must be a fraction in (0, 1) of each train set, or None; got {screening!r}")
        if not 0 < screening_keep <= 1:
            raise ConfigError(f"screening_keep must be in (0, 1], got {screening_keep!r}")
        return cls(**values, screening=screening, screening_keep=screening_keep)
