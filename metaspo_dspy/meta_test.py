"""Meta-test protocols: unseen generalization and test-time adaptation.

* :func:`unseen_generalization` scores a system prompt on tasks it was not optimized on, with
  several user prompts that were never optimized against it: per task, the mean (and spread) over
  ``num_user_prompts`` prompts of the test score. Prompts are given, read from ``prompts_dir``, or
  generated once with APE (one optimizer call each, from 10 random train pairs plus the task's
  prompt suffix) and stored there for reuse by every method. With ``journal_dir`` every finished
  program run and APE proposal is journaled there as it completes (``evaluations.jsonl``,
  ``proposals.jsonl``, as in a training run directory) and read back: a rerun -- after a kill, or
  of the same command -- asks nothing already answered.
* :func:`test_time_adaptation` runs ProTeGi (or any DSPy teleprompter: ``optimizer=``) on one task's
  user prompt with the system prompt fixed and reports, per round, the train and test scores of
  the prompts kept.

Tasks are :class:`~metaspo_dspy.tasks.task.Task` objects (or anything with ``name``,
``program()``, ``train``, ``test``, ``metric`` and optionally ``prompt_suffix``).
"""

from __future__ import annotations

import contextlib
import json
import statistics
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import dspy
from dspy.teleprompt.teleprompt import Teleprompter

from metaspo_dspy.errors import ConfigError, ProcessError, TooManyFailures
from metaspo_dspy.evaluation.grid import GridEvaluator
from metaspo_dspy.evaluation.records import EvalJob
from metaspo_dspy.evaluation.task_run import TaskRun, check_examples, check_lms, check_processes
from metaspo_dspy.optimize.baselines.protegi import ProTeGi
from metaspo_dspy.optimize.proposer.proposals import Proposal, Proposer
from metaspo_dspy.optimize.proposer.shown import io_pairs
from metaspo_dspy.program.adapters import make_adapter
from metaspo_dspy.program.system_prompt import SystemPrompt, WithSystemPrompt, as_system_prompt, unwrap
from metaspo_dspy.seeding import rng_for
from metaspo_dspy.store.io import atomic_write_json
from metaspo_dspy.store.journal import Journal
from metaspo_dspy.store.run_dir import evaluation_problem, proposal_problem

#: The journals of :func:`unseen_generalization`'s ``journal_dir`` (the names a run directory uses).
EVALUATIONS_JOURNAL = "evaluations.jsonl"
PROPOSALS_JOURNAL = "proposals.jsonl"


def generate_user_prompts(
    task: Any,
    optimizer_lm: Any,
    num: int = 10,
    seed: int = 42,
    num_pairs: int = 10,
    adapter: Any = None,
    journal: Journal | None = None,
) -> list[str]:
    """``num`` APE user prompts for ``task`` (one optimizer call each); an unusable proposal (failed,
    discarded -- an echo, say --, or a repeat) is retried with new samples, up to ``max(3 * num, num +
    5)`` calls, then :class:`~metaspo_dspy.errors.TooManyFailures` says how many were made and
    why the others were discarded. An ``optimizer_lm`` that is not a ``dspy.BaseLM`` is a
    :class:`ConfigError` before any call. ``journal``: where each finished proposal is kept and read
    back (a proposal already there is not asked again); None: in memory."""
    check_lms(optimizer_lm=optimizer_lm)
    proposer = Proposer(optimizer_lm, make_adapter(adapter), seed, journal=journal)
    train = check_examples(task.name, task.train, "train")
    prompts: list[str] = []
    reasons: list[str] = []
    attempt, attempts = 0, max(3 * num, num + 5)
    while len(prompts) < num and attempt < attempts:
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
        else:
            reasons.append(proposal.reason or "a repeat of an earlier prompt")
        attempt += 1
    if len(prompts) < num:
        model = getattr(optimizer_lm, "model", type(optimizer_lm).__name__)
        raise TooManyFailures(
            f"the optimizer model {model!r} wrote only {len(prompts)} of {num} usable user prompts for unseen task "
            f"{task.name!r} in {attempt} calls (first reasons: {list(dict.fromkeys(reasons))[:3]}); use a stronger "
            "optimizer model, or give the prompts (user_prompts=, a prompts_dir; `metaspo test --user-prompts "
            "authors` where the authors' prompts are fetched)"
        )
    return prompts


def _prompts_for(
    task: Any,
    given: Mapping[str, Sequence[str]] | None,
    prompts_dir: Path | None,
    num: int,
    optimizer_lm: Any,
    seed: int,
    adapter: Any,
    journal: Journal | None = None,
) -> list[str]:
    if given is not None and task.name in given:
        prompts = list(given[task.name])[:num]
    elif prompts_dir is not None and (prompts_dir / f"{task.name}.json").exists():
        prompts = json.loads((prompts_dir / f"{task.name}.json").read_text(encoding="utf-8"))[:num]
    elif optimizer_lm is not None:
        prompts = generate_user_prompts(task, optimizer_lm, num, seed, adapter=adapter, journal=journal)
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
    num_processes: int = 1,
    journal_dir: str | Path | None = None,
) -> dict[str, Any]:
    """Score ``system_prompt`` on unseen ``tasks`` with never-optimized user prompts (test split).
    ``num_processes`` > 1 runs the grid in worker processes, as in :class:`MetaSPO`. With
    ``journal_dir`` each finished program run and APE proposal is journaled there as it completes
    and read back, so a rerun (after a kill, or of the same call) asks nothing already answered
    (journaled failures are asked again); the caller keeps other processes off the folder meanwhile.

    Returns ``{"system_prompt", "average", "tasks": {name: {"mean", "stdev", "scores",
    "user_prompts", "failures", "parsed"}}, "task_lm_calls"}``; ``average`` is the mean of the task
    means; ``parsed`` is ``{"parsed": n, "answers": m}``, the answers the task's metric could read
    out of those where parsing applies (:func:`~metaspo_dspy.program.metrics.answer_parsed`).
    All tasks x prompts x test examples run as one evaluation grid. A ``task_lm`` or
    ``optimizer_lm`` that is not a ``dspy.BaseLM`` (a model string) is a :class:`ConfigError` before
    any call.
    """
    check_lms(task_lm=task_lm, optimizer_lm=optimizer_lm)
    system_prompt = as_system_prompt(system_prompt)
    tasks = list(tasks)
    if not tasks:
        raise ConfigError("unseen_generalization needs at least one task")
    # Before any call (user prompts may be written by the optimizer LM).
    check_processes(num_processes, task_lm if task_lm is not None else dspy.settings.lm)
    folder = Path(prompts_dir) if prompts_dir is not None else None
    adapter = make_adapter(adapter)
    # Every task is checked (examples, inputs, one predictor) before any user prompt is written.
    runs = [
        TaskRun(
            task.name,
            task.program(),
            check_examples(task.name, task.train or task.test, "train"),
            task.metric,
            check_examples(task.name, task.test, "test"),
        )
        for task in tasks
    ]
    for run in runs:
        if len(run.predictor_names) != 1:
            raise ConfigError(f"task {run.name!r}: unseen user prompts need a single-predictor program")
    evaluations, proposals = _journals(journal_dir)
    try:
        jobs, owners = [], []
        for task, run in zip(tasks, runs, strict=True):
            prompts = _prompts_for(
                task, user_prompts, folder, num_user_prompts, optimizer_lm, seed, optimizer_adapter, proposals
            )
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
        results = _evaluate(
            jobs, "unseen generalization", task_lm, adapter, num_threads, progress, num_processes, evaluations
        )
        per_task: dict[str, dict[str, Any]] = {}
        for (name, prompt), result in zip(owners, results, strict=True):
            entry = per_task.setdefault(
                name, {"scores": [], "user_prompts": [], "failures": 0, "parsed": {"parsed": 0, "answers": 0}}
            )
            entry["scores"].append(result.score)
            entry["user_prompts"].append(prompt)
            entry["failures"] += result.failures
            parsed, answers = result.parsed_counts
            entry["parsed"]["parsed"] += parsed
            entry["parsed"]["answers"] += answers
        for entry in per_task.values():
            entry["mean"] = statistics.fmean(entry["scores"])
            entry["stdev"] = statistics.stdev(entry["scores"]) if len(entry["scores"]) > 1 else 0.0
        return {
            "system_prompt": system_prompt.text,
            "average": statistics.fmean(e["mean"] for e in per_task.values()),
            "tasks": per_task,
            "task_lm_calls": sum(r.lm_calls for r in results),
        }
    finally:
        evaluations.close()
        proposals.close()


def _journals(folder: str | Path | None) -> tuple[Journal, Journal]:
    """The evaluations and proposals journals in ``folder`` (in memory without one)."""
    if folder is None:
        return Journal(None, check=evaluation_problem), Journal(None, check=proposal_problem)
    folder = Path(folder)
    return (
        Journal(folder / EVALUATIONS_JOURNAL, check=evaluation_problem),
        Journal(folder / PROPOSALS_JOURNAL, check=proposal_problem),
    )


def _evaluate(
    jobs: list[EvalJob],
    desc: str,
    task_lm: Any,
    adapter: Any,
    num_threads: int,
    progress: bool,
    num_processes: int,
    journal: Journal | None = None,
) -> list[Any]:
    """One evaluation grid on its own evaluator (its finished program runs kept in ``journal``),
    whose worker processes (if any) are stopped after; a grid that cannot travel to them is a
    :class:`ConfigError`."""
    evaluator = GridEvaluator(task_lm, adapter, num_threads, progress, journal=journal, num_processes=num_processes)
    try:
        return evaluator.evaluate(jobs, desc=desc)
    except ProcessError as exc:
        raise ConfigError(str(exc)) from None
    finally:
        evaluator.close()


def test_time_adaptation(
    system_prompt: SystemPrompt | str,
    task: Any,
    iterations: int = 6,
    *,
    optimizer_lm: Any = None,
    task_lm: Any = None,
    num_candidates: int = 3,
    beam_width: int = 3,
    optimizer: Teleprompter | None = None,
    **kwargs: Any,
) -> dict[str, Any]:
    """User-prompt optimization on ``task`` with ``system_prompt`` fixed; per-round train/test scores.

    By default ProTeGi (``num_candidates`` x ``beam_width``, the paper's protocol; ``kwargs`` go to
    :class:`ProTeGi`) for ``iterations + 1`` rounds, as the reference runs it: the first expansion
    of the task's initial prompt, then ``iterations`` more (``iterations=6``: rounds 0 to 6).
    With ``optimizer=`` any DSPy teleprompter runs instead (``dspy.GEPA(...)``,
    ``dspy.MIPROv2(auto="light", ...)``, ``dspy.BootstrapFewShot(...)``):
    it compiles ``WithSystemPrompt(task.program(), system_prompt, adapter)`` on the train split
    under ``task_lm`` (so every task call carries the system prompt, and none of the optimizer's own
    calls do), and its final program is scored on train and test with the task's metric. An
    optimizer without rounds gives one round. ``kwargs`` then accepts ``adapter``, ``num_threads``,
    ``progress``, ``num_processes`` (for the final scoring grid; the optimizer's own calls run
    where it runs them) and ignores the ProTeGi-only ``optimizer_adapter`` and ``seed``. With
    ProTeGi, ``num_processes`` > 1 runs its evaluation grids in worker processes, as in
    :class:`MetaSPO`.

    Returns ``{"system_prompt", "task", "initial", "rounds": [{"round", "train": [...], "test":
    [...], "best_train", "test_of_best", "mean_test"}], "program", "details"}`` where round 0 is the
    first expansion (ProTeGi: ``iterations + 1`` rounds in all) or the optimizer's final program,
    and ``test_of_best`` is the test score of the round's best prompt by train score.

    A ``task_lm`` or ``optimizer_lm`` that is not a ``dspy.BaseLM`` (a model string) is a
    :class:`ConfigError` before any call, with either optimizer.
    """
    check_lms(optimizer_lm=optimizer_lm, task_lm=task_lm)
    if optimizer is not None:
        return _with_teleprompter(optimizer, as_system_prompt(system_prompt), task, task_lm, **kwargs)
    if optimizer_lm is None:
        raise ConfigError("test_time_adaptation needs optimizer_lm=dspy.LM(...) for ProTeGi, or optimizer=")
    protegi = ProTeGi(
        task.metric,
        optimizer_lm,
        task_lm,
        num_iterations=iterations,
        num_candidates=num_candidates,
        beam_width=beam_width,
        system_prompt=system_prompt,
        **kwargs,
    )
    program = protegi.compile(task.program(), trainset=task.train, testset=task.test, task_name=task.name)
    details = program.detailed_results
    rounds = [
        _round(r, [n["train_score"] for n in beam], [n["test_score"] for n in beam])
        for r, beam in enumerate(details["rounds"])
    ]
    return {
        "system_prompt": as_system_prompt(system_prompt).text,
        "task": task.name,
        "initial": details["initial"],
        "rounds": rounds,
        "program": program,
        "details": details,
    }


def _round(r: int, train: list[float], test: list[float | None]) -> dict[str, Any]:
    """One round of a test-time adaptation result (a beam sorted by train score)."""
    return {
        "round": r,
        "train": train,
        "test": test,
        "best_train": train[0],
        "test_of_best": test[0],
        "mean_test": statistics.fmean(test) if test and None not in test else None,
    }


def _with_teleprompter(
    optimizer: Teleprompter,
    system_prompt: SystemPrompt,
    task: Any,
    task_lm: Any,
    adapter: Any = None,
    num_threads: int = 16,
    progress: bool = True,
    optimizer_adapter: Any = None,
    seed: Any = None,
    num_processes: int = 1,
) -> dict[str, Any]:
    """:func:`test_time_adaptation` with any DSPy teleprompter: one round, its final program."""
    if not hasattr(optimizer, "compile"):
        raise ConfigError(f"optimizer must be a DSPy teleprompter (with compile()), got {type(optimizer).__name__}")
    adapter = make_adapter(adapter)
    train = check_examples(task.name, task.train, "train")
    test = check_examples(task.name, task.test, "test")
    initial = task.program()
    check_processes(num_processes, task_lm, [initial])
    student = WithSystemPrompt(initial.deepcopy(), system_prompt, adapter)
    with dspy.context(lm=task_lm) if task_lm is not None else contextlib.nullcontext():
        compiled = optimizer.compile(student, trainset=train)
    final, prompt, _ = unwrap(compiled)
    prompt = prompt or system_prompt
    jobs = [
        EvalJob(task.name, program, prompt.text, prompt.instructions_in, examples, task.metric)
        for program in (initial, final)
        for examples in (train, test)
    ]
    results = _evaluate(jobs, "test-time adaptation", task_lm, adapter, num_threads, progress, num_processes)
    scores = [r.score for r in results]

    def node(program: dspy.Module, train_score: float, test_score: float) -> dict[str, Any]:
        return {
            "task": task.name,
            "system_prompt": prompt.text,
            "user_prompt": {name: p.signature.instructions for name, p in program.named_predictors()},
            "train_score": train_score,
            "test_score": test_score,
        }

    details = {
        "method": type(optimizer).__name__,
        "system_prompt": prompt.text,
        "initial": node(initial, scores[0], scores[1]),
        "final": node(final, scores[2], scores[3]),
    }
    return {
        "system_prompt": system_prompt.text,
        "task": task.name,
        "initial": details["initial"],
        "rounds": [_round(0, [scores[2]], [scores[3]])],
        "program": compiled,
        "details": details,
    }


# The name starts with "test_": keep pytest from collecting it when a test module imports it.
test_time_adaptation.__test__ = False  # type: ignore[attr-defined]
