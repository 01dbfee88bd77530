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


#: Rough sizes for what cannot be known before a run (documented in the CLI's estimate line).
TASK_OUTPUT_TOKENS = 20
OPTIMIZER_PROMPT_TOKENS = 1500
OPTIMIZER_OUTPUT_TOKENS = 300


def estimate_tokens_and_cost(
    calls: dict[str, int], tasks, task_model: str, optimizer_model: str, adapter=None, system_prompt: str = ""
) -> dict[str, float | int | None]:
    """Rough tokens and dollars for the calls of :func:`estimate_calls`.

    Task prompts are measured: one train example per task is formatted with the run's adapter and
    counted with ``litellm.token_counter``; outputs and optimizer calls use fixed sizes
    (:data:`TASK_OUTPUT_TOKENS`, :data:`OPTIMIZER_PROMPT_TOKENS`, :data:`OPTIMIZER_OUTPUT_TOKENS`).
    ``cost`` is None when LiteLLM has no price for a model.
    """
    import litellm

    from metaspo_dspy.program.adapters import with_system_prompt

    adapter = with_system_prompt(adapter, system_prompt, "user")
    sizes = []
    for task in tasks:
        example = task.train[0]
        messages = adapter.format(task.signature, [], dict(example.inputs()))
        try:
            sizes.append(litellm.token_counter(model=task_model, messages=messages))
        except Exception:
            sizes.append(sum(len(str(m["content"])) for m in messages) // 4)
    task_prompt = sum(sizes) / len(sizes) if sizes else 0
    task_in = int(task_prompt * calls["task_lm"])
    task_out = TASK_OUTPUT_TOKENS * calls["task_lm"]
    opt_in = OPTIMIZER_PROMPT_TOKENS * calls["optimizer_lm"]
    opt_out = OPTIMIZER_OUTPUT_TOKENS * calls["optimizer_lm"]
    try:
        cost = sum(litellm.cost_per_token(model=task_model, prompt_tokens=task_in, completion_tokens=task_out))
        cost += sum(litellm.cost_per_token(model=optimizer_model, prompt_tokens=opt_in, completion_tokens=opt_out))
    except Exception:
        cost = None
    return {"tokens": task_in + task_out + opt_in + opt_out, "cost": cost}


def sprig_budget(
    num_iterations: int,
    num_system_candidates: int,
    num_user_candidates: int,
    user_top_k: int,
    train_sizes: Mapping[str, int],
) -> int:
    """SPRIG's default search budget: the train-phase task-LM calls of a MetaSPO run with the same
    settings on the same tasks (18,200 for 4 tasks x 50 and the paper's defaults)."""
    sizes = {name: (n, 0) for name, n in train_sizes.items()}
    return estimate_calls("metaspo", num_iterations, num_system_candidates, num_user_candidates, user_top_k, sizes)[
        "task_lm_train"
    ]


def estimate_sprig_calls(budget: int, beam_size: int, sizes: Mapping[str, tuple[int, int]]) -> dict[str, int]:
    """Upper bounds on a SPRIG run's calls; ``sizes`` maps each task to (train, test) sizes.

    Every candidate system prompt is scored on every task's train set (one call per example), so
    the search makes ``budget // sum(train)`` evaluations, the initial prompt's included, and at
    most one optimizer call per later candidate (a ``rephrase`` edit; the other edits cost none).
    The final beam (up to ``beam_size`` prompts) is scored on the test sets. Returns the keys of
    :func:`estimate_calls`.
    """
    per_candidate = sum(n for n, _ in sizes.values())
    evaluations = budget // per_candidate if per_candidate else 0
    task_train = evaluations * per_candidate
    task_test = min(beam_size, max(evaluations, 1)) * sum(m for _, m in sizes.values())
    return {
        "task_lm_train": task_train,
        "task_lm_test": task_test,
        "task_lm": task_train + task_test,
        "optimizer_lm": max(evaluations - 1, 0),
    }
