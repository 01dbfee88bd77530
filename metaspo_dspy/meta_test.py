"""Meta-test protocols: unseen generalization and test-time adaptation.

* :func:`unseen_generalization` scores a system prompt on tasks it was not optimized on, with
  several user prompts that were never optimized against it: per task, the mean (and spread) over
  ``num_user_prompts`` prompts of the test score. Prompts are given, read from ``prompts_dir``, or
  generated once with APE (one optimizer call each, from 10 random train pairs plus the task's
  prompt suffix) and stored there for reuse by every method.
* :func:`test_time_adaptation` runs ProTeGi on one task's user prompt with the system prompt fixed
  and reports, per round, the train and test scores of the prompts kept.

Tasks are :class:`~metaspo_dspy.tasks.base.Task` objects (or anything with ``name``,
``program()``, ``train``, ``test``, ``metric`` and optionally ``prompt_suffix``).
"""

from __future__ import annotations

import json
import statistics
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

from metaspo_dspy.adapters import make_adapter
from metaspo_dspy.evaluation import EvalJob, GridEvaluator
from metaspo_dspy.io import atomic_write_json
from metaspo_dspy.optimize.common import ConfigError, TaskRun, check_examples
from metaspo_dspy.optimize.proposer import Proposal, Proposer, io_pairs
from metaspo_dspy.optimize.protegi import ProTeGi
from metaspo_dspy.program import SystemPrompt, as_system_prompt
from metaspo_dspy.seeding import rng_for


def generate_user_prompts(
    task: Any, optimizer_lm: Any, num: int = 10, seed: int = 42, num_pairs: int = 10, adapter: Any = None
) -> list[str]:
    """``num`` APE user prompts for ``task`` (one optimizer call each); failed proposals are retried
    with new samples, up to ``3 * num`` calls, then a ``RuntimeError`` says how many were made."""
    proposer = Proposer(optimizer_lm, make_adapter(adapter), seed)
    train = check_examples(task.name, task.train, "train")
    prompts: list[str] = []
    attempt = 0
    while len(prompts) < num and attempt < 3 * num:
        rng = rng_for(seed, "unseen_prompts", task.name, attempt)
        pairs = io_pairs(rng.sample(train, min(num_pairs, len(train))))
        proposal = Proposal(
            id=attempt,
            kind="ape_user",
            iteration=None,
            candidate=attempt,
            task=task.name,
            parent_node=None,
            predictor=None,
        )
        proposer.induce(proposal, pairs, getattr(task, "prompt_suffix", ""))
        if proposal.ok and proposal.text not in prompts:
            prompts.append(proposal.text)
        attempt += 1
    if len(prompts) < num:
        raise RuntimeError(f"APE produced only {len(prompts)} of {num} usable user prompts for {task.name!r}")
    return prompts


def _prompts_for(
    task: Any,
    given: Mapping[str, Sequence[str]] | None,
    prompts_dir: Path | None,
    num: int,
    optimizer_lm: Any,
    seed: int,
    adapter: Any,
) -> list[str]:
    if given is not None and task.name in given:
        prompts = list(given[task.name])[:num]
    elif prompts_dir is not None and (prompts_dir / f"{task.name}.json").exists():
        prompts = json.loads((prompts_dir / f"{task.name}.json").read_text(encoding="utf-8"))[:num]
    elif optimizer_lm is not None:
        prompts = generate_user_prompts(task, optimizer_lm, num, seed, adapter=adapter)
        if prompts_dir is not None:
            atomic_write_json(prompts_dir / f"{task.name}.json", prompts)
    else:
        raise ConfigError(
            f"no user prompts for unseen task {task.name!r}: pass user_prompts={{...}}, a prompts_dir holding "
            f"{task.name}.json, or optimizer_lm= to generate them with APE"
        )
    if not prompts or not all(isinstance(p, str) and p.strip() for p in prompts):
        raise ConfigError(f"user prompts for task {task.name!r} must be a non-empty list of non-empty strings")
    return prompts


def unseen_generalization(
    system_prompt: SystemPrompt | str,
    tasks: Iterable[Any],
    user_prompts: Mapping[str, Sequence[str]] | None = None,
    num_user_prompts: int = 10,
    *,
    task_lm: Any = None,
    optimizer_lm: Any = None,
    adapter: Any = None,
    optimizer_adapter: Any = None,
    prompts_dir: str | Path | None = None,
    num_threads: int = 16,
    seed: int = 42,
    progress: bool = True,
) -> dict[str, Any]:
    """Score ``system_prompt`` on unseen ``tasks`` with never-optimized user prompts (test split).

    Returns ``{"system_prompt", "average", "tasks": {name: {"mean", "stdev", "scores",
    "user_prompts", "failures"}}, "task_lm_calls"}``; ``average`` is the mean of the task means.
    All tasks x prompts x test examples run as one evaluation grid.
    """
    system_prompt = as_system_prompt(system_prompt)
    tasks = list(tasks)
    if not tasks:
        raise ConfigError("unseen_generalization needs at least one task")
    folder = Path(prompts_dir) if prompts_dir is not None else None
    adapter = make_adapter(adapter)
    jobs, owners = [], []
    for task in tasks:
        prompts = _prompts_for(task, user_prompts, folder, num_user_prompts, optimizer_lm, seed, optimizer_adapter)
        run = TaskRun(
            task.name,
            task.program(),
            check_examples(task.name, task.train or task.test, "train"),
            task.metric,
            check_examples(task.name, task.test, "test"),
        )
        if len(run.predictor_names) != 1:
            raise ConfigError(f"task {task.name!r}: unseen user prompts need a single-predictor program")
        for prompt in prompts:
            jobs.append(
                EvalJob(
                    task.name,
                    run.prepared({run.predictor_names[0]: prompt}),
                    system_prompt.text,
                    system_prompt.instructions_in,
                    run.testset,
                    task.metric,
                )
            )
            owners.append((task.name, prompt))
    evaluator = GridEvaluator(task_lm, adapter, num_threads, progress)
    results = evaluator.evaluate(jobs, desc="unseen generalization")
    per_task: dict[str, dict[str, Any]] = {}
    for (name, prompt), result in zip(owners, results, strict=True):
        entry = per_task.setdefault(name, {"scores": [], "user_prompts": [], "failures": 0})
        entry["scores"].append(result.score)
        entry["user_prompts"].append(prompt)
        entry["failures"] += result.failures
    for entry in per_task.values():
        entry["mean"] = statistics.fmean(entry["scores"])
        entry["stdev"] = statistics.stdev(entry["scores"]) if len(entry["scores"]) > 1 else 0.0
    return {
        "system_prompt": system_prompt.text,
        "average": statistics.fmean(e["mean"] for e in per_task.values()),
        "tasks": per_task,
        "task_lm_calls": sum(r.lm_calls for r in results),
    }


def test_time_adaptation(
    system_prompt: SystemPrompt | str,
    task: Any,
    iterations: int = 6,
    *,
    optimizer_lm: Any,
    task_lm: Any = None,
    num_candidates: int = 3,
    beam_width: int = 3,
    **kwargs: Any,
) -> dict[str, Any]:
    """ProTeGi on ``task`` with ``system_prompt`` fixed; per-round train/test scores of the beam.

    Returns ``{"system_prompt", "task", "rounds": [{"round", "train": [...], "test": [...],
    "best_train", "test_of_best", "mean_test"}], "program", "details"}`` where round 0 is the first
    expansion and ``test_of_best`` is the test score of the round's best prompt by train score.
    """
    optimizer = ProTeGi(
        task.metric,
        optimizer_lm,
        task_lm,
        num_iterations=iterations,
        num_candidates=num_candidates,
        beam_width=beam_width,
        system_prompt=system_prompt,
        **kwargs,
    )
    program = optimizer.compile(task.program(), trainset=task.train, testset=task.test, task_name=task.name)
    details = program.detailed_results
    rounds = []
    for r, beam in enumerate(details["rounds"]):
        tests = [n["test_score"] for n in beam]
        rounds.append(
            {
                "round": r,
                "train": [n["train_score"] for n in beam],
                "test": tests,
                "best_train": beam[0]["train_score"],
                "test_of_best": beam[0]["test_score"],
                "mean_test": statistics.fmean(tests) if tests and None not in tests else None,
            }
        )
    return {
        "system_prompt": as_system_prompt(system_prompt).text,
        "task": task.name,
        "initial": details["initial"],
        "rounds": rounds,
        "program": program,
        "details": details,
    }


# The name starts with "test_": keep pytest from collecting it when a test module imports it.
test_time_adaptation.__test__ = False  # type: ignore[attr-defined]
