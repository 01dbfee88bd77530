"""Token and cost accounting, and the run budget (``max_lm_calls``, ``max_cost``).

Tokens are counted per model from the usage each provider reports (cache hits and journal reuse
cost nothing); cost comes from LiteLLM's price table (``litellm.cost_per_token``) and is ``None``
for models it does not price (local servers, the embedded model, the fake). A budget is checked
at phase boundaries: the next phase starts only if its planned calls (an upper bound: every
proposal usable) and their estimated cost fit in what is left, so a run never stops halfway
through a phase and always leaves a consistent result.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

Usage = dict[str, dict[str, int]]


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


def calls_of(usage: Usage) -> int:
    return sum(counts.get("calls", 0) for counts in usage.values())


@dataclass(frozen=True)
class Budget:
    """Limits on a run: total LM calls (task + optimizer) and total dollar cost (None: no limit)."""

    max_lm_calls: int | None = None
    max_cost: float | None = None

    def __post_init__(self) -> None:
        if self.max_lm_calls is not None and (isinstance(self.max_lm_calls, bool) or self.max_lm_calls < 1):
            raise ValueError(f"max_lm_calls must be a positive integer or None, got {self.max_lm_calls!r}")
        if self.max_cost is not None and self.max_cost <= 0:
            raise ValueError(f"max_cost must be a positive number of dollars or None, got {self.max_cost!r}")

    @property
    def limited(self) -> bool:
        return self.max_lm_calls is not None or self.max_cost is not None

    def refusal(
        self, used_calls: int, used_cost: float | None, planned_calls: int, cost_per_call: float | None, phase: str
    ) -> str | None:
        """Why the next phase must not start, or None when it fits."""
        if self.max_lm_calls is not None and used_calls + planned_calls > self.max_lm_calls:
            return (
                f"max_lm_calls={self.max_lm_calls}: {used_calls} calls made, the {phase} phase plans up to "
                f"{planned_calls} more"
            )
        if self.max_cost is not None and used_cost is not None:
            planned_cost = planned_calls * (cost_per_call or 0.0)
            if used_cost + planned_cost > self.max_cost:
                return (
                    f"max_cost=${self.max_cost:.4f}: ${used_cost:.4f} spent, the {phase} phase would cost about "
                    f"${planned_cost:.4f} more"
                )
        return None

    def to_dict(self) -> dict[str, Any]:
        return {"max_lm_calls": self.max_lm_calls, "max_cost": self.max_cost}
