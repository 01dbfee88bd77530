"""The run configuration's schema: frozen dataclasses, one per section.

Every key, its default and its meaning are listed in :mod:`metaspo_dspy.config`'s docstring; the
checks applied to each key live in :mod:`metaspo_dspy.config.checks`.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

#: MetaSPO's variants: the ``method`` of :class:`~metaspo_dspy.optimize.metaspo.teleprompter.MetaSPO`
METASPO_METHODS = ("metaspo", "outer_loop", "metaspo_ape")
#: the methods ``metaspo train`` runs: MetaSPO's variants and SPRIG (its search budget follows the MetaSPO settings)
TRAIN_METHODS = (*METASPO_METHODS, "sprig")
#: every value the config's ``method`` key accepts
METHODS = (*TRAIN_METHODS, "protegi", "ape", "none")


@dataclass(frozen=True)
class LMConfig:
    """One language model's config section (never the API key itself: ``api_key_env`` names the
    variable). The CLI turns it into :class:`metaspo_dspy.lm.LMSettings`, which validates it and
    reads the key when the LM is built."""

    model: str | None = None
    temperature: float = 0.0
    max_tokens: int | None = None
    api_base: str | None = None
    api_key_env: str | None = None
    engine: str = "auto"
    num_retries: int = 3
    #: seconds per request (None: 120 for the task LM, 300 for the optimizer LM; see metaspo_dspy.lm.settings)
    timeout: float | None = None
    #: the longest wait a server's Retry-After gets before a retry, in seconds (None: no cap)
    max_retry_after: float | None = 60.0


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
    #: seconds each model gets to answer the preflight check before the command stops (metaspo_dspy.lm.preflight)
    preflight_timeout: float = 30.0
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
