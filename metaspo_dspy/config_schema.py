"""The run configuration's schema: frozen dataclasses, one per section, and :class:`ConfigError`.

Every key, its default and its meaning are listed in :mod:`metaspo_dspy.config`'s docstring; the
checks applied to each key live in :mod:`metaspo_dspy.config_checks`.
"""

from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass, field
from typing import Any

from metaspo_dspy.optimize.common import ConfigError as _OptimizerConfigError

METHODS = ("metaspo", "outer_loop", "metaspo_ape", "sprig", "protegi", "ape", "none")
DATA_SOURCES = ("auto", "local", "bigbench", "hub")
PROMPT_FORMATS = ("dspy", "reference")
ENGINES = ("auto", "litellm", "native")


class ConfigError(_OptimizerConfigError):
    """A configuration problem; the message names the key and the file it came from.

    A ``ValueError``, and a subclass of the optimizers' ``metaspo_dspy.ConfigError``, so one
    ``except`` catches both."""


@dataclass(frozen=True)
class LMConfig:
    """One language model's settings (never the API key itself)."""

    model: str | None = None
    temperature: float = 0.0
    max_tokens: int | None = None
    api_base: str | None = None
    api_key_env: str | None = None
    engine: str = "auto"
    num_retries: int = 3
    timeout: float | None = None

    def lm_kwargs(self) -> dict[str, Any]:
        """Keyword arguments for ``dspy.LM``: ``model`` plus the set options; ``api_key`` read from
        ``$api_key_env`` now (a ConfigError if that variable is unset)."""
        if not self.model:
            raise ConfigError("no model set for this LM (set <lm>.model)")
        kwargs: dict[str, Any] = {"model": self.model, "temperature": self.temperature}
        if self.max_tokens is not None:
            kwargs["max_tokens"] = self.max_tokens
        if self.api_base:
            kwargs["api_base"] = self.api_base
        if self.api_key_env:
            key = os.environ.get(self.api_key_env)
            if not key:
                raise ConfigError(f"environment variable {self.api_key_env} (api_key_env) is not set")
            kwargs["api_key"] = key
        return kwargs


@dataclass(frozen=True)
class TasksConfig:
    source: tuple[str, ...] = ()
    unseen: tuple[str, ...] = ()


@dataclass(frozen=True)
class DataConfig:
    data_dir: str | None = None
    source: str = "auto"
    prompt_format: str = "dspy"
    train_size: int = 50
    test_size: int = 500


@dataclass(frozen=True)
class SearchConfig:
    num_iterations: int = 3
    num_system_candidates: int = 9
    num_user_candidates: int = 3
    user_top_k: int = 3
    screening: float | None = None
    screening_keep: float = 0.5
    #: SPRIG's component library: a CSV in SPRIG's format (None: the built-in library)
    components: str | None = None


@dataclass(frozen=True)
class BudgetConfig:
    max_lm_calls: int | None = None
    max_cost: float | None = None
    max_failure_share: float = 0.5


@dataclass(frozen=True)
class MetaTestConfig:
    num_unseen_user_prompts: int = 10
    tta_iterations: int = 6


@dataclass(frozen=True)
class RunConfig:
    """A validated run configuration (see the module docstring for the schema)."""

    method: str = "metaspo"
    seed: int = 42
    num_threads: int = 16
    num_processes: int = 1
    initial_system_prompt: str = "You are a helpful assistant."
    tasks: TasksConfig = field(default_factory=TasksConfig)
    data: DataConfig = field(default_factory=DataConfig)
    search: SearchConfig = field(default_factory=SearchConfig)
    meta_test: MetaTestConfig = field(default_factory=MetaTestConfig)
    budget: BudgetConfig = field(default_factory=BudgetConfig)
    task_lm: LMConfig = field(default_factory=LMConfig)
    optimizer_lm: LMConfig = field(
        default_factory=lambda: LMConfig(model="openai/gpt-4o-mini", temperature=1.0, api_key_env="OPENAI_API_KEY")
    )
    sources: tuple[str, ...] = ()  # the files (and overrides) this config was built from

    def to_dict(self) -> dict[str, Any]:
        """Plain nested dict (tuples as lists), e.g. to save next to a run."""
        return _plain(dataclasses.asdict(self))


def _plain(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    return value
