"""Token and cost accounting, and the run budget (``max_lm_calls``, ``max_cost``).

Tokens are counted per model from the usage each provider reports (cache hits and journal reuse
cost nothing); cost comes from LiteLLM's price table (``litellm.cost_per_token``) and is ``None``
for models it does not price (local servers, the embedded model, the fake). A budget is checked
at phase boundaries: the next phase starts only if its planned calls (an upper bound: every
proposal usable) and their estimated cost fit in what is left, so a run never stops halfway
through a phase and always leaves a consistent result.

``max_cost`` can only count what LiteLLM can price. With a model it cannot price (a local server,
an unlisted fine-tune), the priced part is still enforced -- e.g. the optimizer on a paid API while
the task model runs locally -- and the unpriced models are named in a warning before the run and in
the artifact (``budget.unpriced_models``); their calls count as free.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

Usage = dict[str, dict[str, int]]


def merge_usage(total: Usage, more: Usage) -> None:
    """Add ``more`` into ``total`` (both ``{model: {prompt_tokens, completion_tokens, calls}}``, as
    :func:`~metaspo_dspy.evaluation.records.token_counts` returns them)."""
    for model, counts in more.items():
        into = total.setdefault(model, {"prompt_tokens": 0, "completion_tokens": 0, "calls": 0})
        for key, value in counts.items():
            into[key] = into.get(key, 0) + value


def cost_of(usage: Usage) -> float | None:
    """Dollar cost of ``usage`` at LiteLLM's prices; None if any model with tokens is unpriced."""
    import litellm

    total = 0.0
    for model, counts in usage.items():
        if not counts.get("prompt_tokens") and not counts.get("completion_tokens"):
            continue
        try:
            prompt, completion = litellm.cost_per_token(
                model=model,
                prompt_tokens=counts.get("prompt_tokens", 0),
                completion_tokens=counts.get("completion_tokens", 0),
            )
        except Exception:
            return None
        total += prompt + completion
    return total


def is_priced(model: str) -> bool:
    """Whether LiteLLM has a price for ``model`` (a model string as sent, e.g. ``openai/gpt-4o-mini``)."""
    import litellm

    try:
        litellm.cost_per_token(model=model, prompt_tokens=1000, completion_tokens=1000)
    except Exception:
        return False
    return True


def priced_cost(usage: Usage) -> float:
    """Dollar cost of the priced models in ``usage`` (unpriced models count as free)."""
    return sum(cost_of({model: counts}) or 0.0 for model, counts in usage.items())


def calls_of(usage: Usage) -> int:
    return sum(counts.get("calls", 0) for counts in usage.values())


@dataclass(frozen=True)
class Budget:
    """Limits on a run: total LM calls (task + optimizer) and total dollar cost (None: no limit)."""

    max_lm_calls: int | None = None
    max_cost: float | None = None
    #: Models whose calls ``max_cost`` cannot count (LiteLLM has no price for them).
    unpriced_models: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        if self.max_lm_calls is not None and (isinstance(self.max_lm_calls, bool) or self.max_lm_calls < 1):
            raise ValueError(f"max_lm_calls must be a positive integer or None, got {self.max_lm_calls!r}")
        if self.max_cost is not None and self.max_cost <= 0:
            raise ValueError(f"max_cost must be a positive number of dollars or None, got {self.max_cost!r}")

    @property
    def limited(self) -> bool:
        return self.max_lm_calls is not None or self.max_cost is not None

    def refusal(
        self,
        phase: str,
        used_calls: int,
        task_usage: Usage,
        optimizer_usage: Usage,
        planned_task: int,
        planned_optimizer: int,
    ) -> str | None:
        """Why the next phase must not start, or None when it fits.

        ``used_calls`` counts every call made so far; the usages are the tokens per model so far.
        The next phase's cost is estimated per role from the priced calls made so far (the mean cost
        of a task call and of an optimizer call); unpriced models count as free.
        """
        planned_calls = planned_task + planned_optimizer
        if self.max_lm_calls is not None and used_calls + planned_calls > self.max_lm_calls:
            return (
                f"max_lm_calls={self.max_lm_calls}: {used_calls} calls made, the {phase} phase plans up to "
                f"{planned_calls} more"
            )
        if self.max_cost is not None:
            spent_task, spent_optimizer = priced_cost(task_usage), priced_cost(optimizer_usage)
            planned_cost = planned_task * _per_call(spent_task, task_usage) + planned_optimizer * _per_call(
                spent_optimizer, optimizer_usage
            )
            spent = spent_task + spent_optimizer
            if spent + planned_cost > self.max_cost:
                return (
                    f"max_cost=${self.max_cost:.4f}: ${spent:.4f} spent, the {phase} phase would cost about "
                    f"${planned_cost:.4f} more"
                )
        return None

    def warnings(self) -> list[str]:
        """What this budget cannot enforce (said once before a run)."""
        if self.max_cost is None or not self.unpriced_models:
            return []
        names = ", ".join(repr(m) for m in self.unpriced_models)
        return [
            f"max_cost=${self.max_cost:g} counts priced calls only: LiteLLM has no price for {names}, so its "
            "calls count as free (use --max-lm-calls to bound them)"
        ]

    def to_dict(self) -> dict[str, Any]:
        return {
            "max_lm_calls": self.max_lm_calls,
            "max_cost": self.max_cost,
            "unpriced_models": list(self.unpriced_models),
        }


def _per_call(spent: float, usage: Usage) -> float:
    calls = calls_of(usage)
    return spent / calls if calls else 0.0
