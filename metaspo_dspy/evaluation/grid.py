"""The grid evaluator: one parallel map over (system prompt, task, user prompt, example).

Every evaluation step of MetaSPO -- all candidates x tasks x user prompts x examples of a phase --
is flattened into one list of items (:class:`~metaspo_dspy.evaluation.records.EvalJob` x example)
and handed to one executor (:mod:`metaspo_dspy.evaluation.executors`): a thread pool with
``num_threads`` workers, or ``num_processes`` worker processes (:mod:`metaspo_dspy.evaluation.processes`).
Each item is one program run under the job's system prompt (:mod:`metaspo_dspy.evaluation.run_item`);
this process alone collects the runs (journal, ledger) and scores them, in input order. A failed call
never raises: it is recorded and scored 0 (wrong).

The pieces: :mod:`~metaspo_dspy.evaluation.records` (jobs, runs and results as plain data),
:mod:`~metaspo_dspy.evaluation.digests` (what identifies an item),
:mod:`~metaspo_dspy.evaluation.run_item` (one program run), :mod:`~metaspo_dspy.evaluation.executors`
and :mod:`~metaspo_dspy.evaluation.processes` (who runs them), and this module (:class:`GridEvaluator`).

Identical items (same request-shaping state and example) are evaluated once per evaluator: see
:func:`~metaspo_dspy.evaluation.digests.item_key`. A journaled item is read back instead of asked
again, except a failed one: a run that stopped because its model failed is resumed to ask those
items again.

With progress on, a grid in which no item has finished for :data:`STALL_SECONDS` says so in its bar
("waiting 25s for the task model"), so a stalled server shows while the calls wait for their
timeout; the bar goes back to normal as soon as an item finishes.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Sequence
from typing import Any

import dspy

from metaspo_dspy.errors import ConfigError
from metaspo_dspy.evaluation.digests import item_key, job_digest
from metaspo_dspy.evaluation.executors import Executor, ThreadExecutor
from metaspo_dspy.evaluation.processes import ProcessExecutor
from metaspo_dspy.evaluation.records import EvalJob, ExampleResult, ItemRun, NodeEval, jsonable
from metaspo_dspy.evaluation.run_item import GridWork
from metaspo_dspy.program.input_check import bare_mismatch, is_bare, mismatch_message
from metaspo_dspy.program.metrics import TaskMetric, answer_parsed, score_example, task_score
from metaspo_dspy.store.journal import Journal
from metaspo_dspy.store.ledger import Ledger

#: The grid's items as (job index, example index, item key), in job and example order.
_Items = Sequence[tuple[int, int, str]]
#: Seconds without a finished item after which the progress bar says that the grid is waiting.
STALL_SECONDS = 10.0


class GridEvaluator:
    """Scores many nodes at once with one executor.

    Args:
        task_lm: default LM for predictors without their own (None: ``dspy.settings.lm``).
        adapter: base adapter (None: the configured adapter, else ChatAdapter); the system prompt
            of each job is added on top of it.
        num_threads: concurrent program runs (over all processes).
        progress: show a tqdm bar per :meth:`evaluate` call.
        num_processes: client processes (1: this one, :class:`~metaspo_dspy.evaluation.executors.ThreadExecutor`).
            With K > 1 each grid's program runs go to K worker processes
            (:class:`~metaspo_dspy.evaluation.processes.ProcessExecutor`; results, faults and usage come
            back, this process alone journals); :meth:`close` stops them.
        journal: where finished program runs are kept (and read back); None: in memory.
        ledger: where each finished program run's task calls and tokens are recorded as it comes
            back (:mod:`metaspo_dspy.store.ledger`); None: in memory. Runs that were already sent when
            a grid is interrupted (Ctrl-C) are waited for and kept like finished ones.

    Contract: :meth:`evaluate` never raises for a failed LM call, an empty or truncated answer, or a
    parse failure (the example scores 0 and carries the redacted error, so it counts as a failure);
    it raises :class:`~metaspo_dspy.errors.MetricError` when a metric raises or
    returns something other than a score, since that is a bug in the metric, not in the model; and
    :class:`~metaspo_dspy.errors.ConfigError` when a predictor would be, or was, called
    without a required input (:mod:`metaspo_dspy.program.input_check`), a bug in the examples or the
    program: before any call for a bare ``Predict``/``ChainOfThought``, else after the first program
    run of each task (the run is journaled with what was missing, so a resumed run stops the same way
    without asking again).
    """

    def __init__(
        self,
        task_lm: Any = None,
        adapter: Any = None,
        num_threads: int = 16,
        progress: bool = True,
        journal: Journal | None = None,
        num_processes: int = 1,
        ledger: Ledger | None = None,
    ):
        if num_threads < 1:
            raise ValueError(f"num_threads must be >= 1, got {num_threads}")
        if num_processes < 1:
            raise ValueError(f"num_processes must be >= 1, got {num_processes}")
        self.num_processes = num_processes
        self.executor: Executor = (
            ThreadExecutor(num_threads) if num_processes == 1 else ProcessExecutor(num_processes, num_threads)
        )
        self.task_lm = task_lm
        self.adapter = adapter
        self.num_threads = num_threads
        self.progress = progress
        self.journal = journal if journal is not None else Journal(None)
        self.ledger = ledger if ledger is not None else Ledger(None)
        self._memo: dict[str, ItemRun] = {}
        self._lock = threading.Lock()
        self._inputs_checked: set[str] = set()  # tasks whose first program run had every input
        self.requests = 0  # program runs that were not served from the memo or the journal

    def evaluate(self, jobs: Sequence[EvalJob], desc: str = "evaluate") -> list[NodeEval]:
        """Score every job; results in job order."""
        items: list[tuple[int, int, str]] = []
        names_per_job = []
        for j, job in enumerate(jobs):
            names_per_job.append({id(p): n for n, p in job.program.named_predictors()})
            digest = job_digest(self.task_lm, self.adapter, job)
            for i, example in enumerate(job.examples):
                items.append((j, i, item_key(digest, example)))
        work = GridWork(jobs, names_per_job, self.task_lm, self.adapter)

        runs: dict[str, ItemRun] = {}
        cached: set[str] = set()
        todo: dict[str, tuple[int, int]] = {}
        with self._lock:
            for j, i, key in items:
                run = self._recall(key)
                if run is not None:
                    runs[key] = run
                    cached.add(key)
                elif key not in todo:
                    todo[key] = (j, i)
        self._check_inputs(work, items, todo, runs, desc)
        self._run_all(work, todo, runs, desc)
        _refuse_missing_inputs(jobs, items, runs)

        per_job: list[list[tuple[int, str]]] = [[] for _ in jobs]
        for j, i, key in items:
            per_job[j].append((i, key))
        seen: set[str] = set(cached)
        return [self._score(job, per_job[j], runs, seen) for j, job in enumerate(jobs)]

    def close(self) -> None:
        """Stop the worker processes, if any (a later grid starts them again)."""
        self.executor.close()

    def _collect(self, key: str, run: ItemRun, runs: dict[str, ItemRun], bar: Any) -> None:
        runs[key] = run
        self.ledger.paid("task", len(run.calls), run.usage)
        self.journal.put(key, run.to_json())
        with self._lock:
            self._memo[key] = run
            self.requests += 1
        if bar is not None:
            bar.update(1)

    def _run_all(self, work: GridWork, todo: dict[str, tuple[int, int]], runs: dict[str, ItemRun], desc: str) -> None:
        """Run the items of ``todo`` (key -> job and example index) on the executor; their runs are
        collected into ``runs`` (and the journal, ledger and memo) as they finish."""
        if not todo:
            return
        bar = _progress(len(todo), desc) if self.progress else None
        stall = _Stall(bar) if bar is not None else None

        def collect(key: str, run: ItemRun) -> None:
            self._collect(key, run, runs, bar)
            if stall is not None:
                stall.finished()

        try:
            self.executor.run(work, [(key, j, i) for key, (j, i) in todo.items()], collect)
        finally:
            if stall is not None:
                stall.close()
            if bar is not None:
                bar.close()

    def _check_inputs(
        self,
        work: GridWork,
        items: _Items,
        todo: dict[str, tuple[int, int]],
        runs: dict[str, ItemRun],
        desc: str,
    ) -> None:
        """Refuse a grid whose predictors would miss a required input, as early as possible: a bare
        program's examples before any call; runs read back (memo, journal) before any new one; for
        every other program, the first item of each task not checked yet runs first, alone with the
        other tasks' first items (one program run per task), and is checked before the rest. The
        items run here leave ``todo`` (their results are in ``runs``)."""
        jobs = work.jobs
        for job in jobs:
            found = bare_mismatch(job.program, job.examples)
            if found is not None:
                index, problem = found
                raise ConfigError(mismatch_message(job.task, _where(job, index), [problem], job.examples[index]))
        _refuse_missing_inputs(jobs, items, runs)
        first: dict[str, str] = {}
        for j, _, key in items:
            if jobs[j].task not in self._inputs_checked and not is_bare(jobs[j].program):
                first.setdefault(jobs[j].task, key)
        probe = {key: todo.pop(key) for key in first.values() if key in todo}
        if probe:
            self._run_all(work, probe, runs, f"{desc} (first run per task)")
            _refuse_missing_inputs(jobs, items, runs)
        self._inputs_checked.update(first)

    def _recall(self, key: str) -> ItemRun | None:
        """This process's result for ``key``, else a journaled success (a journaled failure -- from
        an earlier process -- is asked again), else None."""
        run = self._memo.get(key)
        if run is None:
            stored = self.journal.get(key)
            if stored is not None and stored.get("error") is None:
                run = self._memo[key] = ItemRun.from_json(stored)
        return run

    def _score(self, job: EvalJob, keyed: list[tuple[int, str]], runs: dict[str, ItemRun], seen: set[str]) -> NodeEval:
        """Score one job; ``seen`` holds keys already paid for (memo or earlier in this call)."""
        results: list[ExampleResult] = []
        predictions: list[dspy.Prediction | None] = []
        for i, key in keyed:
            run = runs[key]
            example = job.examples[i]
            where = f"task {job.task!r}, example {i}"
            if run.prediction is None:
                score, feedback = 0.0, None
            else:
                s = score_example(job.metric, example, run.prediction, where)
                score, feedback = s.value, s.feedback
            parsed = answer_parsed(job.metric, example, run.prediction)
            predictions.append(run.prediction)
            results.append(
                ExampleResult(
                    index=i,
                    score=score,
                    prediction=None if run.prediction is None else jsonable(dict(run.prediction.items())),
                    feedback=feedback,
                    error=run.error,
                    calls=list(run.calls),
                    cached=key in seen,
                    usage=run.usage,
                    parsed=parsed,
                )
            )
            seen.add(key)
        if isinstance(job.metric, TaskMetric):
            total = task_score(job.metric, job.examples, predictions, [r.score for r in results], job.task)
        else:
            total = sum(r.score for r in results) / len(results) if results else 0.0
        return NodeEval(score=total, results=results)


def _refuse_missing_inputs(jobs: Sequence[EvalJob], items: _Items, runs: dict[str, ItemRun]) -> None:
    """Raise :class:`ConfigError` when a program run in ``runs`` called a predictor without a
    required input, naming, per task, the first such example of the grid (items not in ``runs``
    are skipped)."""
    lines: dict[str, str] = {}
    for j, i, key in items:
        run, job = runs.get(key), jobs[j]
        if run is not None and run.missing_inputs and job.task not in lines:
            lines[job.task] = mismatch_message(job.task, _where(job, i), run.missing_inputs, job.examples[i])
    if lines:
        raise ConfigError(" | ".join(lines.values()))


def _where(job: EvalJob, index: int) -> str:
    return f"example {index}" + (f" of {job.label}" if job.label else "")


class _Stall:
    """Shows in ``bar``'s postfix how long no item has finished, once that reaches
    :data:`STALL_SECONDS` (a daemon thread looks once a second; the item path only reads the clock)."""

    def __init__(self, bar: Any, tick: float = 1.0):
        self.bar = bar
        self.last = time.monotonic()
        self.shown = False
        self._tick = tick
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._watch, name="metaspo-grid-stall", daemon=True)
        self._thread.start()

    def finished(self) -> None:
        """An item finished: the grid is moving again."""
        self.last = time.monotonic()
        if self.shown:
            self.shown = False
            self.bar.set_postfix_str("", refresh=False)

    def _watch(self) -> None:
        while not self._stop.wait(self._tick):
            idle = time.monotonic() - self.last
            if idle >= STALL_SECONDS:
                self.shown = True
                self.bar.set_postfix_str(f"waiting {idle:.0f}s for the task model", refresh=True)

    def close(self) -> None:
        self._stop.set()
        self._thread.join()


def _progress(total: int, desc: str):
    from tqdm.auto import tqdm

    return tqdm(total=total, desc=desc, unit="call", leave=False, mininterval=0.5)
