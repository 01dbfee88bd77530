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
#: Train examples an optimizer call shows (its wrong answers, with their questions; MetaSPO shows 3
#: per user-prompt analysis, 2 per task per system-prompt analysis).
OPTIMIZER_SHOWN_EXAMPLES = 3
#: Characters per token for text that is not counted with a tokenizer.
CHARS_PER_TOKEN = 4


def estimate_tokens_and_cost(
    calls: Mapping[str, int], tasks, task_model: str, optimizer_model: str, adapter=None, system_prompt: str = ""
) -> dict[str, float | int | None]:
    """Rough tokens and dollars for the calls of :func:`estimate_calls` (or
    :func:`estimate_sprig_calls`) on ``tasks``, from the lengths of the data that will be sent.

    Each task prompt is measured: the frame around the inputs (the run's adapter and system prompt,
    one example per task formatted and counted with ``litellm.token_counter``) plus the example's own
    input text (characters / :data:`CHARS_PER_TOKEN`), for every train and test example. The
    train-phase calls (``calls["task_lm_train"]``) send each train example equally often, so they
    cost the train examples' mean prompt; the test-phase calls (``task_lm_test``) the test
    examples'; a ``calls`` with ``task_lm`` alone is priced at the mean over both. One long question
    raises the estimate by its share. Outputs use :data:`TASK_OUTPUT_TOKENS`; an optimizer call is
    :data:`OPTIMIZER_PROMPT_TOKENS` plus the system prompt and :data:`OPTIMIZER_SHOWN_EXAMPLES` train
    examples of mean length, and :data:`OPTIMIZER_OUTPUT_TOKENS` out.

    Returns ``{"tokens", "cost", "task_prompt_tokens"}`` (the last: the mean task prompt, train and
    test calls weighted); ``cost`` is None when LiteLLM has no price for a model.
    """
    import litellm

    from metaspo_dspy.program.adapters import with_system_prompt

    adapter = with_system_prompt(adapter, system_prompt, "user")
    train: list[float] = []
    test: list[float] = []
    shown: list[float] = []
    for task in tasks:
        frame = _frame_tokens(task, task_model, adapter)
        train += [frame + _input_chars(e) / CHARS_PER_TOKEN for e in task.train]
        test += [frame + _input_chars(e) / CHARS_PER_TOKEN for e in task.test]
        shown += [_input_chars(e) / CHARS_PER_TOKEN for e in task.train]
    mean_train = _mean(train) if train else _mean(test)
    mean_test = _mean(test) if test else mean_train
    if "task_lm_train" in calls or "task_lm_test" in calls:
        train_calls, test_calls = calls.get("task_lm_train", 0), calls.get("task_lm_test", 0)
        task_in = int(mean_train * train_calls + mean_test * test_calls)
    else:
        task_in = int(_mean(train + test) * calls["task_lm"])
    task_out = TASK_OUTPUT_TOKENS * calls["task_lm"]
    per_optimizer_call = (
        OPTIMIZER_PROMPT_TOKENS + len(system_prompt) / CHARS_PER_TOKEN + OPTIMIZER_SHOWN_EXAMPLES * _mean(shown)
    )
    opt_in = int(per_optimizer_call * calls["optimizer_lm"])
    opt_out = OPTIMIZER_OUTPUT_TOKENS * calls["optimizer_lm"]
    try:  # a model that makes no call needs no price
        cost = sum(litellm.cost_per_token(model=task_model, prompt_tokens=task_in, completion_tokens=task_out))
        if calls["optimizer_lm"]:
            cost += sum(litellm.cost_per_token(model=optimizer_model, prompt_tokens=opt_in, completion_tokens=opt_out))
    except Exception:
        cost = None
    return {
        "tokens": task_in + task_out + opt_in + opt_out,
        "cost": cost,
        "task_prompt_tokens": task_in / calls["task_lm"] if calls["task_lm"] else 0,
    }


def _input_chars(example) -> int:
    """The characters of an example's input fields (what its prompt carries of the data)."""
    return sum(len(str(value)) for value in dict(example.inputs()).values())


def _frame_tokens(task, model: str, adapter) -> float:
    """The tokens of a task prompt around its inputs: the shortest example formatted with
    ``adapter`` and counted with ``litellm.token_counter`` (characters / 4 where it cannot count),
    less that example's input text."""
    import litellm

    examples = [*task.train, *task.test]
    if not examples:
        return 0.0
    probe = min(examples, key=_input_chars)
    messages = adapter.format(task.signature, [], dict(probe.inputs()))
    try:
        tokens = float(litellm.token_counter(model=model, messages=messages))
    except Exception:
        tokens = sum(len(str(m["content"])) for m in messages) / CHARS_PER_TOKEN
    return max(tokens - _input_chars(probe) / CHARS_PER_TOKEN, 0.0)


def _mean(values: list[float]) -> float:
    return sum(values) / len(values) if values else 0.0


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
