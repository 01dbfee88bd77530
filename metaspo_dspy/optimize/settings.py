"""The settings of one multi-task system-prompt search: frozen, checked once, read by its run.

:class:`SearchSettings` is the part MetaSPO and SPRIG share (the LMs, the search sizes, where the
search starts, adapters, threads and processes, the run directory, the budget); each method adds its
own fields in a subclass next to its loop
(:class:`~metaspo_dspy.optimize.metaspo.settings.MetaSPOSettings`,
:class:`~metaspo_dspy.optimize.sprig.settings.SprigSettings`). A teleprompter makes its settings
once, from its constructor arguments, through :meth:`SearchSettings.shared` (which checks every
shared argument: a :class:`~metaspo_dspy.errors.ConfigError` naming it, before any call) and
normalizes them (adapter names to adapters, ``max_lm_calls``/``max_cost`` to a :class:`Budget`);
its run reads them from there and from nowhere else.

The LMs, the adapters and ``phase_callback`` are fields like the rest, not separate arguments of a
run: they are what a run reads, they take part in the checks (``num_processes > 1`` needs a task LM
that worker processes can rebuild), and one object is simpler to hand on than five. The metric is
not a field: a run never reads it (each task's :class:`~metaspo_dspy.evaluation.task_run.TaskRun`
carries its own).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Self

import dspy

from metaspo_dspy.budget import Budget, is_priced
from metaspo_dspy.errors import ConfigError
from metaspo_dspy.evaluation.task_run import check_lms, check_processes, positive_int
from metaspo_dspy.optimize.wrapped import Unwrapped, choose
from metaspo_dspy.program.adapters import adapter_name, make_adapter
from metaspo_dspy.program.system_prompt import DEFAULT_SYSTEM_PROMPT, MAX_PROMPT_CHARS, SystemPrompt

__all__ = ["WRAPPABLE", "SearchSettings"]

#: The settings a wrapped task program may supply when the teleprompter was not given them
#: (:mod:`metaspo_dspy.optimize.wrapped`).
WRAPPABLE = ("initial_system_prompt", "instructions_in", "adapter")

#: The search sizes, each a positive integer.
_SIZES = ("num_iterations", "num_system_candidates", "num_user_candidates", "user_top_k")


@dataclass(frozen=True)
class SearchSettings:
    """What every run of a multi-task system-prompt search reads (the meaning of each field is in
    :class:`~metaspo_dspy.optimize.metaspo.teleprompter.MetaSPO`'s docstring)."""

    method: str
    #: None: ``dspy.settings.lm`` when the run starts (:attr:`task_model`)
    task_lm: Any = field(repr=False)
    optimizer_lm: Any = field(repr=False)
    num_iterations: int
    num_system_candidates: int
    num_user_candidates: int
    user_top_k: int
    initial_system_prompt: str
    instructions_in: str
    #: an adapter instance, or None (the one configured when the run is made, else ChatAdapter)
    adapter: Any
    optimizer_adapter: Any
    num_threads: int
    num_processes: int
    seed: int
    max_prompt_chars: int
    log_dir: Path | None
    progress: bool
    #: called with each finished phase's ``PhaseLog``
    phase_callback: Callable[[Any], None] | None = field(repr=False)
    resume: bool
    max_failure_share: float
    budget: Budget
    preflight: bool
    allow_unparsed: bool
    #: which of :data:`WRAPPABLE` were given, not defaulted (a wrapped program supplies the others)
    given: frozenset[str] = field(repr=False)

    @staticmethod
    def shared(
        method: str,
        *,
        optimizer_lm: Any = None,
        task_lm: Any = None,
        num_iterations: int = 3,
        num_system_candidates: int = 9,
        num_user_candidates: int = 3,
        user_top_k: int = 3,
        initial_system_prompt: str | SystemPrompt | None = None,
        instructions_in: str | None = None,
        adapter: Any = None,
        optimizer_adapter: Any = None,
        num_threads: int = 16,
        num_processes: int = 1,
        seed: int = 42,
        max_prompt_chars: int = MAX_PROMPT_CHARS,
        log_dir: str | Path | None = None,
        progress: bool = True,
        phase_callback: Callable[[Any], None] | None = None,
        resume: bool = False,
        max_failure_share: float = 0.5,
        max_lm_calls: int | None = None,
        max_cost: float | None = None,
        preflight: bool = False,
        allow_unparsed: bool = False,
    ) -> dict[str, Any]:
        """The shared fields' values from a teleprompter's constructor arguments (the defaults are
        MetaSPO's), each checked: a :class:`ConfigError` names the first bad one (an unknown adapter
        name is make_adapter's ``ValueError``). Makes no LM call."""
        if instructions_in not in (None, "user", "system"):
            raise ConfigError(f"instructions_in must be 'user' or 'system', got {instructions_in!r}")
        check_lms(optimizer_lm=optimizer_lm, task_lm=task_lm)
        sizes = (num_iterations, num_system_candidates, num_user_candidates, user_top_k)
        checked = {name: positive_int(name, value) for name, value in zip(_SIZES, sizes, strict=True)}
        given = dict(zip(WRAPPABLE, (initial_system_prompt, instructions_in, adapter), strict=True))
        initial = _initial_text(initial_system_prompt)
        values = {
            "method": method,
            "task_lm": task_lm,
            "optimizer_lm": optimizer_lm,
            **checked,
            "initial_system_prompt": initial,
            "instructions_in": instructions_in or "user",
            "adapter": make_adapter(adapter),
            "optimizer_adapter": make_adapter(optimizer_adapter),
            "num_threads": positive_int("num_threads", num_threads),
            "num_processes": check_processes(num_processes, task_lm),
            "seed": seed,
            "max_prompt_chars": _prompt_chars(max_prompt_chars, initial),
            "log_dir": Path(log_dir) if log_dir is not None else None,
            "progress": progress,
            "phase_callback": phase_callback,
            "resume": resume,
            "max_failure_share": _share(max_failure_share),
            "budget": _budget(max_lm_calls, max_cost),
            "preflight": bool(preflight),
            "allow_unparsed": bool(allow_unparsed),
            "given": frozenset(name for name, value in given.items() if value is not None),
        }
        if resume and log_dir is None:
            raise ConfigError("resume=True needs log_dir=<the run directory to continue>")
        return values

    @property
    def task_model(self) -> Any:
        """The task LM in effect now: ``task_lm``, else ``dspy.settings.lm`` (None when neither)."""
        return self.task_lm or dspy.settings.lm

    def priced_budget(self) -> Budget:
        """``budget`` with the models LiteLLM cannot price named (``unpriced_models``, when
        ``max_cost`` is set): their calls count as free, which :meth:`Budget.warnings` says."""
        if self.budget.max_cost is None:
            return self.budget
        lms = (self.task_model, self.optimizer_lm)
        unpriced = sorted({lm.model for lm in lms if lm is not None and not is_priced(lm.model)})
        return dataclasses.replace(self.budget, unpriced_models=tuple(unpriced))

    def for_wrapped(self, unwrapped: Unwrapped) -> Self:
        """These settings, or a copy in which each of :data:`WRAPPABLE` not given comes from the
        wrappers of the task programs (:func:`~metaspo_dspy.optimize.wrapped.choose`: a given one
        wins, with a warning when a wrapper's differs; the wrappers must agree). Raises
        :class:`ConfigError` when the wrappers disagree or their system prompt is longer than
        ``max_prompt_chars``."""
        if not unwrapped.prompts and not unwrapped.adapters:
            return self
        found = {"initial_system_prompt": unwrapped.texts, "instructions_in": unwrapped.placements}
        found["adapter"] = unwrapped.adapters
        chosen = {}
        for name, values in found.items():
            mine = getattr(self, name)
            show = adapter_name if name == "adapter" else repr
            chosen[name] = choose(name, mine if name in self.given else None, values, mine, "MetaSPO", show)
        if len(chosen["initial_system_prompt"]) > self.max_prompt_chars:
            raise ConfigError(
                f"the wrapped programs' system prompt has {len(chosen['initial_system_prompt']):,} characters, more "
                f"than max_prompt_chars={self.max_prompt_chars:,}; shorten it or raise max_prompt_chars"
            )
        return dataclasses.replace(self, **chosen)


def _initial_text(initial_system_prompt: str | SystemPrompt | None) -> str:
    """The text the search starts from (None: the default system prompt)."""
    if initial_system_prompt is None:
        initial_system_prompt = DEFAULT_SYSTEM_PROMPT
    initial = initial_system_prompt.text if isinstance(initial_system_prompt, SystemPrompt) else initial_system_prompt
    if not isinstance(initial, str):
        raise ConfigError(f"initial_system_prompt must be a string, got {type(initial).__name__}")
    return initial


def _prompt_chars(max_prompt_chars: int, initial: str) -> int:
    """``max_prompt_chars``, checked positive and not below the initial system prompt's length."""
    limit = positive_int("max_prompt_chars", max_prompt_chars)
    if len(initial) > limit:
        raise ConfigError(
            f"initial_system_prompt has {len(initial):,} characters, more than max_prompt_chars="
            f"{limit:,} (proposals longer than that are discarded too); shorten it or raise "
            "max_prompt_chars"
        )
    return limit


def _share(max_failure_share: float) -> float:
    if not 0 <= max_failure_share <= 1:
        raise ConfigError(f"max_failure_share must be between 0 and 1, got {max_failure_share!r}")
    return max_failure_share


def _budget(max_lm_calls: int | None, max_cost: float | None) -> Budget:
    try:
        return Budget(max_lm_calls, max_cost)
    except ValueError as exc:
        raise ConfigError(str(exc)) from None
