"""Build the task and optimizer LMs (and the adapters they need) from a run config, and check them.

Each LM waits a finite time per request: ``task_lm.timeout`` / ``optimizer_lm.timeout`` seconds,
by default :data:`~metaspo_dspy.lm.settings.TASK_TIMEOUT` (120 s) for the task model and
:data:`~metaspo_dspy.lm.settings.OPTIMIZER_TIMEOUT` (300 s) for the optimizer (none for the
embedded model, which runs in this process). The preflight (:func:`check_models`) waits
``--preflight-timeout`` (else the config's ``preflight_timeout``, 30 s) for each model's answer and
says on stderr every few seconds that it is waiting.
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from metaspo_dspy.config import LMConfig, RunConfig
from metaspo_dspy.errors import ConfigError

#: ``--task-model embedded`` is short for the embedded offline model.
EMBEDDED_ALIASES = ("embedded", "smollm2")
#: The optimizer's outputs (analyses, prompts) need room; the embedded model needs a bound.
EMBEDDED_OPTIMIZER_MAX_TOKENS = 384
EMBEDDED_TASK_MAX_TOKENS = 128


#: The embedded model serves one call at a time; more threads only add contention (measured:
#: 0.38 s/call with 1-2 threads, 0.51 s/call with 16).
EMBEDDED_MAX_THREADS = 2


@dataclass
class Models:
    task_lm: Any
    optimizer_lm: Any
    task_adapter: Any
    optimizer_adapter: Any
    task_label: str
    optimizer_label: str
    max_threads: int | None = None
    #: seconds each model gets to answer the preflight (the config's ``preflight_timeout``)
    preflight_timeout: float | None = None

    def threads(self, wanted: int) -> int:
        """``wanted`` capped for models that serve one call at a time."""
        return min(wanted, self.max_threads) if self.max_threads else wanted


def names_embedded(model: str | None) -> bool:
    """Whether a config's model string means the embedded offline model."""
    from metaspo_dspy.lm import is_embedded

    return bool(model) and (model in EMBEDDED_ALIASES or is_embedded(model))


def _build(config: LMConfig, role: str, default_max_tokens: int) -> tuple[Any, bool]:
    from metaspo_dspy.lm import EMBEDDED_MODEL, LMSettings, build_lm
    from metaspo_dspy.lm.providers import is_local, prefix_of
    from metaspo_dspy.lm.settings import OPTIMIZER_TIMEOUT, TASK_TIMEOUT

    if not config.model:
        flag = "--task-model" if role == "task" else "--optimizer-model"
        raise ConfigError(
            f"no {role} model: pass {flag} MODEL (e.g. 'embedded' or 'openai/gpt-4o-mini') "
            f"or set {role}_lm.model in a config"
        )
    embedded = names_embedded(config.model)
    in_process = embedded or is_local(prefix_of(config.model))
    timeout = config.timeout or (None if in_process else TASK_TIMEOUT if role == "task" else OPTIMIZER_TIMEOUT)
    settings = LMSettings(
        model=EMBEDDED_MODEL if embedded else config.model,
        temperature=config.temperature,
        max_tokens=config.max_tokens or (default_max_tokens if embedded else None),
        api_base=config.api_base,
        api_key_env=config.api_key_env if not embedded else None,
        num_retries=config.num_retries,
        engine=config.engine if not embedded else "litellm",
        extra={"timeout": timeout} if timeout else {},  # in-process models: none unless set
        max_retry_after=config.max_retry_after,
    )
    return build_lm(settings), embedded


def build_models(config: RunConfig, task_only: bool = False) -> Models:
    """The run's LMs: through LiteLLM, API keys from the environment, JSONAdapter for the embedded
    model (it cannot follow ChatAdapter's format), ReferenceAdapter for the reference prompt format.
    With ``task_only`` the optimizer LM is not built (None). Refuses ``num_processes`` > 1 with a
    task LM that worker processes cannot rebuild (the embedded model), before any call."""
    from metaspo_dspy.evaluation.task_run import check_processes
    from metaspo_dspy.lm import recommended_adapter

    task_lm, task_embedded = _build(config.task_lm, "task", EMBEDDED_TASK_MAX_TOKENS)
    check_processes(config.num_processes, task_lm)
    optimizer_lm, optimizer_embedded = None, False
    if not task_only:
        optimizer_lm, optimizer_embedded = _build(config.optimizer_lm, "optimizer", EMBEDDED_OPTIMIZER_MAX_TOKENS)
    if config.data.prompt_format == "reference":
        task_adapter: Any = "reference"
    else:
        task_adapter = recommended_adapter() if task_embedded else None
    return Models(
        task_lm=task_lm,
        optimizer_lm=optimizer_lm,
        task_adapter=task_adapter,
        optimizer_adapter=recommended_adapter() if optimizer_embedded else None,
        task_label=task_lm.model,
        optimizer_label=optimizer_lm.model if optimizer_lm is not None else "(none)",
        max_threads=EMBEDDED_MAX_THREADS if task_embedded else None,
        preflight_timeout=config.preflight_timeout,
    )


#: ``--preflight-timeout`` of the command being parsed (None: not given). It is how long this
#: invocation waits, not a setting of the run: it is kept out of the parsed arguments, so it is
#: never recorded with a run and may change on ``--resume`` (the config key ``preflight_timeout``
#: is the recorded default).
_flag_timeout: float | None = None


class _PreflightTimeout(argparse.Action):
    """Stores ``--preflight-timeout SECONDS`` in :data:`_flag_timeout` (not in the namespace)."""

    def __call__(
        self,
        parser: argparse.ArgumentParser,
        namespace: argparse.Namespace,
        values: str | Sequence[Any] | None,
        option_string: str | None = None,
    ) -> None:
        global _flag_timeout
        try:
            seconds = float(str(values))
        except ValueError:
            parser.error(f"{option_string} takes a number of seconds, got {values!r}")
        if not 0 < seconds < float("inf"):
            parser.error(f"{option_string} must be a positive number of seconds, got {values!r}")
        _flag_timeout = seconds


def add_preflight_argument(parser: argparse.ArgumentParser) -> None:
    """``--no-preflight``: skip the one-request check of each model before the run;
    ``--preflight-timeout SECONDS``: how long each model gets to answer it."""
    global _flag_timeout
    _flag_timeout = None  # a new parser: a new command
    parser.add_argument(
        "--no-preflight",
        dest="preflight",
        action="store_false",
        help="do not send the one-request check to each model before starting (by default a dead server, "
        "a rejected key or an unknown model ends the command in seconds, before any work is paid for)",
    )
    parser.add_argument(
        "--preflight-timeout",
        action=_PreflightTimeout,
        default=argparse.SUPPRESS,
        metavar="SECONDS",
        help="seconds each model gets to answer the one-request check (default: the config's preflight_timeout, "
        "30); a server that does not answer in time ends the command with one error line",
    )


def check_models(models: Models, timeout: float | None = None) -> None:
    """Preflight: one tiny uncached request to each distinct model; one line on stderr, and a
    "waiting for ..." line every few seconds while a model has not answered.

    ``timeout``: seconds each model gets (None: ``--preflight-timeout``, else
    ``models.preflight_timeout``, else 30). Raises :class:`~metaspo_dspy.lm.preflight.PreflightError`
    (exit 2) for a model that is not usable or does not answer in time. These requests are not
    counted in the run's calls.
    """
    from metaspo_dspy.cli.common import say
    from metaspo_dspy.lm.preflight import DEFAULT_TIMEOUT, preflight

    seconds = next((t for t in (timeout, _flag_timeout, models.preflight_timeout) if t is not None), DEFAULT_TIMEOUT)
    results = preflight(
        [("task", models.task_lm), ("optimizer", models.optimizer_lm)],
        timeout=seconds,
        progress=lambda text: say(f"  preflight: {text}"),
    )
    say("  preflight: " + "; ".join(r.describe() for r in results) + " (not counted in the run's calls)")
