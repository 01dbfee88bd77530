"""How many LM calls a MetaSPO run will make, before it starts.

The counts follow the loop exactly when every proposal is usable and distinct; discarded or
duplicate proposals, evaluations reused from a journal and parse-failure retries make the real
numbers differ (fewer, or a few more for JSON fallbacks). With 4 tasks x 50 examples and the
paper's defaults: 18,200 train calls and 126 optimizer calls, as in the reference.
"""

from __future__ import annotations

from collections.abc import Mapping


def estimate_calls(
    method: str,
    num_iterations: int,
    num_system_candidates: int,
    num_user_candidates: int,
    user_top_k: int,
    sizes: Mapping[str, tuple[int, int]],
) -> dict[str, int]:
    """Task-LM and optimizer-LM calls of a run; ``sizes`` maps each task to (train, test) sizes.

    Returns ``{"task_lm_train", "task_lm_test", "task_lm", "optimizer_lm"}``.
    """
    inner = method != "outer_loop"
    iterations = num_iterations * (1 if inner else 2)
    calls_per_user = 1 if method == "metaspo_ape" else 2
    calls_per_system = 1 if method == "metaspo_ape" else 2
    train = sum(n for n, _ in sizes.values())
    task_train = train
    optimizer = 0
    beam = 1
    for _ in range(iterations):
        if inner:
            task_train += num_user_candidates * train
            optimizer += calls_per_user * num_user_candidates * len(sizes)
            beam = min(user_top_k, beam + num_user_candidates)
        task_train += num_system_candidates * beam * train
        optimizer += calls_per_system * num_system_candidates
    task_test = beam * sum(m for _, m in sizes.values())
    return {
        "task_lm_train": task_train,
        "task_lm_test": task_test,
        "task_lm": task_train + task_test,
        "optimizer_lm": optimizer,
    }
