"""Programs that already carry a system prompt, handed to MetaSPO, ProTeGi or APE.

A :class:`~metaspo_dspy.program.system_prompt.WithSystemPrompt` (``best.for_task(name)``, a ProTeGi/APE result)
or a :class:`~metaspo_dspy.program.system_prompt.MetaSPOProgram` is never re-wrapped: its own system prompt would
override every candidate's, so every candidate would score the same and the result would name a
system prompt that was never sent. Instead the optimizers **unwrap** it:

* the inner program is optimized (nested wrappers: the innermost program);
* each setting the wrapper holds -- the system prompt text, its placement (``instructions_in``)
  and the base adapter -- is used where the optimizer was not given that setting itself
  (MetaSPO: ``initial_system_prompt``, ``instructions_in``, ``adapter``; ProTeGi/APE:
  ``system_prompt``, ``adapter``). A setting given to the optimizer wins, with a logged warning
  when the wrapper's differs. Of nested wrappers the innermost one's prompt counts (it is the one
  the predictors see); the adapter is the innermost one that sets one;
* several wrapped task programs (MetaSPO) must agree on a setting the optimizer was not given,
  else a :class:`~metaspo_dspy.errors.ConfigError` asks for it;
* a ``WithSystemPrompt`` *inside* a task program (a sub-module) is refused with a
  ``ConfigError`` naming its path: its prompt would silently override every candidate.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import dspy

from metaspo_dspy.errors import ConfigError
from metaspo_dspy.program.system_prompt import MetaSPOProgram, SystemPrompt, WithSystemPrompt, unwrap

logger = logging.getLogger(__name__)


@dataclass
class Unwrapped:
    """Task programs with their wrappers taken off, and what the wrappers held per task."""

    programs: dict[str, dspy.Module]
    prompts: dict[str, SystemPrompt] = field(default_factory=dict)
    adapters: dict[str, Any] = field(default_factory=dict)

    @property
    def texts(self) -> dict[str, str]:
        return {task: prompt.text for task, prompt in self.prompts.items()}

    @property
    def placements(self) -> dict[str, str]:
        return {task: prompt.instructions_in for task, prompt in self.prompts.items()}


def choose(
    what: str, given: Any, found: Mapping[str, Any], default: Any, optimizer: str, show: Callable[[Any], str] = repr
) -> Any:
    """The value of setting ``what`` for a run: ``given`` (not None) wins, with a warning when a
    wrapper's value differs; else the wrappers' value (``found``: task -> value, compared by
    ``show``), which must be the same for all; else ``default``."""
    if given is not None:
        differing = sorted(task for task, value in found.items() if show(value) != show(given))
        if differing:
            logger.warning(
                "%s: using %s=%s; the wrapper(s) of task(s) %s carry %s, which is not used",
                optimizer,
                what,
                show(given),
                differing,
                sorted({show(found[task]) for task in differing}),
            )
        return given
    shown = {show(value) for value in found.values()}
    if len(shown) > 1:
        listing = ", ".join(f"{task}: {show(value)}" for task, value in sorted(found.items()))
        raise ConfigError(
            f"the wrapped task programs carry different values of {what} ({listing}); pass {optimizer}({what}=...)"
        )
    return next(iter(found.values())) if found else default


def unwrap_programs(program: Any, tasks: list[str]) -> Unwrapped:
    """``{task: inner program}`` for ``compile``'s ``program`` argument (one module, a MetaSPOProgram
    or ``{task: module}``), with what any wrapper held; raises ``ConfigError`` for a missing task
    program or a ``WithSystemPrompt`` nested inside one."""
    result = Unwrapped({})
    for name in tasks:
        if isinstance(program, MetaSPOProgram):
            if name not in program.tasks:
                raise ConfigError(
                    f"the MetaSPOProgram passed as program has no task {name!r}; it has {sorted(program.tasks)}"
                )
            module = program.for_task(name)
        elif isinstance(program, dspy.Module):
            module = program
        elif isinstance(program, Mapping) and isinstance(program.get(name), dspy.Module):
            module = program[name]
        else:
            raise ConfigError(f"no program for task {name!r}: pass one dspy.Module or a dict with every task")
        inner, prompt, adapter = unwrap(module)
        for path, _ in inner.named_sub_modules(WithSystemPrompt):
            raise ConfigError(
                f"the program of task {name!r} contains a WithSystemPrompt at {path}: its system prompt would "
                "override every candidate's; pass the program without it (the optimizer adds the system prompt)"
            )
        result.programs[name] = inner
        if prompt is not None:
            result.prompts[name] = prompt
        if adapter is not None:
            result.adapters[name] = adapter
    return result
