"""The grid evaluator: one parallel map over (system prompt, task, user prompt, example).

Every evaluation step of MetaSPO -- all candidates x tasks x user prompts x examples of a phase --
is flattened into one list of items and run through one thread pool with ``num_threads`` workers.
Each worker runs under a copy of the caller's context (so ``dspy.context`` overrides survive) plus
its own :func:`~metaspo_dspy.scope.system_prompt_scope` (the job's system prompt on whatever adapter
each call uses) with ``lm=task_lm`` and ``trace=[]``. Results come back
in input order; a failed call never raises: it is recorded and scored 0 (wrong). Empty and
truncated answers are failures too (:mod:`metaspo_dspy.responses`). Error texts are redacted
(:func:`~metaspo_dspy.redact.redact`) before they are kept or journaled.

Identical items (same request-shaping state and example) are evaluated once per evaluator: see
:func:`item_key`. A journaled item is read back instead of asked again, except a failed one: a run
that stopped because its model failed is resumed to ask those items again.
"""

from __future__ import annotations

import contextlib
import contextvars
import threading
from collections.abc import Sequence
from concurrent.futures import Future, ThreadPoolExecutor, as_completed
from dataclasses import dataclass, field
from typing import Any

import dspy
from dspy.utils.usage_tracker import UsageTracker

from metaspo_dspy.adapters import message_text
from metaspo_dspy.digests import _jsonable, item_key, job_digest, lm_identity, program_state  # noqa: F401 - re-exported
from metaspo_dspy.input_check import InputWatcher, MissingInputs, bare_mismatch, is_bare, mismatch_message
from metaspo_dspy.journal import Journal
from metaspo_dspy.ledger import Ledger
from metaspo_dspy.metrics import Metric, TaskMetric, answer_parsed, is_wrong, score_example, task_score
from metaspo_dspy.optimize.task_run import ConfigError
from metaspo_dspy.recorder import CallRecorder, LMCall
from metaspo_dspy.redact import redact
from metaspo_dspy.scope import needs_rider, system_prompt_scope


@dataclass(frozen=True)
class EvalJob:
    """One node to score: a prepared program (user prompts already set) on some examples."""

    task: str
    program: dspy.Module
    system_prompt: str
    instructions_in: str
    examples: Sequence[dspy.Example]
    metric: Metric
    label: str = ""


@dataclass
class ExampleResult:
    """What happened on one example."""

    index: int
    score: float
    prediction: dict[str, Any] | None
    feedback: str | None = None
    error: str | None = None
    calls: list[LMCall] = field(default_factory=list)
    cached: bool = False
    usage: dict[str, dict[str, int]] = field(default_factory=dict)
    #: whether an answer could be read (:func:`~metaspo_dspy.metrics.answer_parsed`; None: n/a)
    parsed: bool | None = None

    @property
    def wrong(self) -> bool:
        return is_wrong(self.score)


@dataclass
class NodeEval:
    """A node's score on its examples, with every example's result."""

    score: float
    results: list[ExampleResult]

    @property
    def wrong(self) -> list[ExampleResult]:
        return [r for r in self.results if r.wrong]

    @property
    def lm_calls(self) -> int:
        return sum(len(r.calls) for r in self.results if not r.cached)

    @property
    def usage(self) -> dict[str, dict[str, int]]:
        """Tokens of the calls paid for here (reused results excluded), per model."""
        total: dict[str, dict[str, int]] = {}
        for r in self.results:
            if not r.cached:
                merge_usage(total, r.usage)
        return total

    @property
    def failures(self) -> int:
        return sum(1 for r in self.results if r.error is not None)

    @property
    def parsed_counts(self) -> tuple[int, int]:
        """(answers parsed, answers where parsing applies) over the results."""
        applicable = [r.parsed for r in self.results if r.parsed is not None]
        return sum(applicable), len(applicable)

    @property
    def parsed_share(self) -> float | None:
        """The share of answers parsed (None where parsing does not apply to any result)."""
        parsed, of = self.parsed_counts
        return parsed / of if of else None


@dataclass
class _Raw:
    """One program run: its prediction (None on failure), error, compacted LM calls, tokens, and the
    predictors it called without a required input (:mod:`metaspo_dspy.input_check`; journaled only
    when there are some, so a record without ``missing_inputs`` -- also an older one -- has none)."""

    prediction: dspy.Prediction | None
    error: str | None
    calls: list[LMCall]
    usage: dict[str, dict[str, int]] = field(default_factory=dict)
    missing_inputs: list[MissingInputs] = field(default_factory=list)

    def to_json(self) -> dict[str, Any]:
        data = {
            "prediction": None if self.prediction is None else _jsonable(dict(self.prediction.items())),
            "error": self.error,
            "usage": self.usage,
            "calls": [
                {"predictor": c.predictor, "user": _last_user(c.messages), "completion": c.completion}
                for c in self.calls
            ],
        }
        if self.missing_inputs:
            data["missing_inputs"] = [m.to_json() for m in self.missing_inputs]
        return data

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> _Raw:
        prediction = None if data["prediction"] is None else dspy.Prediction(**data["prediction"])
        calls = [
            LMCall(c["predictor"], [{"role": "user", "content": c["user"]}], c["completion"]) for c in data["calls"]
        ]
        missing = [MissingInputs.from_json(m) for m in data.get("missing_inputs") or []]
        return cls(prediction, data["error"], calls, data.get("usage") or {}, missing)


def _last_user(messages: list[dict[str, Any]]) -> str:
    users = [m for m in messages if m.get("role") == "user"]
    return message_text(users[-1]["content"]) if users else ""


def _compact(calls: list[LMCall]) -> list[LMCall]:
    """Keep what the optimizer is shown (last user message, completion): runs stay small in memory."""
    return [LMCall(c.predictor, [{"role": "user", "content": _last_user(c.messages)}], c.completion) for c in calls]


def run_item(job: EvalJob, names: dict[int, str], example: dspy.Example, task_lm: Any, adapter: Any) -> _Raw:
    """Run ``job``'s program on one example under its system prompt; never raises for LM faults.

    Unless the program is bare (:func:`~metaspo_dspy.input_check.is_bare`: its examples are checked
    before any call), an :class:`~metaspo_dspy.input_check.InputWatcher` joins the callbacks in
    effect for this run only; the predictors it saw called without a required input are returned
    in ``missing_inputs`` (the caller decides what to do)."""
    recorder = CallRecorder(predictor_names=names)
    watcher = None if is_bare(job.program) else InputWatcher(names)
    watching = (
        dspy.context(callbacks=[*(dspy.settings.get("callbacks") or []), watcher])
        if watcher is not None
        else contextlib.nullcontext()
    )
    overrides: dict[str, Any] = {"trace": [], "metaspo_recorder": recorder}
    if task_lm is not None:
        overrides["lm"] = task_lm
    # A nested dspy.track_usage(): this item's tokens are counted here and rolled up into any
    # tracker the caller opened around compile() (DSPy's own mechanism).
    with dspy.track_usage() as tracker:
        try:
            ride = needs_rider(job.program)
            with watching, system_prompt_scope(job.system_prompt, job.instructions_in, adapter, ride, **overrides):
                prediction = job.program(**example.inputs())
            raw = _Raw(prediction, None, _compact(recorder.calls), token_counts(tracker))
        except Exception as exc:
            error = redact(f"{type(exc).__name__}: {exc}")[:2000]
            raw = _Raw(None, error, _compact(recorder.calls), token_counts(tracker))
    if watcher is not None:
        raw.missing_inputs = watcher.missing
    return raw


class GridEvaluator:
    """Scores many nodes at once with one thread pool.

    Args:
        task_lm: default LM for predictors without their own (None: ``dspy.settings.lm``).
        adapter: base adapter (None: the configured adapter, else ChatAdapter); the system prompt
            of each job is added on top of it.
        num_threads: concurrent program runs (over all processes).
        progress: show a tqdm bar per :meth:`evaluate` call.
        num_processes: client processes (1: this one). With K > 1 each grid's program runs go to K
            worker processes (:mod:`metaspo_dspy.processes`; results, faults and usage come back,
            this process alone journals); :meth:`close` stops them.
        journal: where finished program runs are kept (and read back); None: in memory.
        ledger: where each finished program run's task calls and tokens are recorded as it comes
            back (:mod:`metaspo_dspy.ledger`); None: in memory. Runs that were already sent when
            a grid is interrupted (Ctrl-C) are waited for and kept like finished ones.

    Contract: :meth:`evaluate` never raises for a failed LM call, an empty or truncated answer, or a
    parse failure (the example scores 0 and carries the redacted error, so it counts as a failure);
    it raises :class:`~metaspo_dspy.metrics.MetricError` when a metric raises or
    returns something other than a score, since that is a bug in the metric, not in the model; and
    :class:`~metaspo_dspy.optimize.task_run.ConfigError` when a predictor would be, or was, called
    without a required input (:mod:`metaspo_dspy.input_check`), a bug in the examples or the
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
        self._processes: Any = None
        self.task_lm = task_lm
        self.adapter = adapter
        self.num_threads = num_threads
        self.progress = progress
        self.journal = journal if journal is not None else Journal(None)
        self.ledger = ledger if ledger is not None else Ledger(None)
        self._memo: dict[str, _Raw] = {}
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

        raws: dict[str, _Raw] = {}
        cached: set[str] = set()
        todo: dict[str, tuple[int, int]] = {}
        with self._lock:
            for j, i, key in items:
                raw = self._recall(key)
                if raw is not None:
                    raws[key] = raw
                    cached.add(key)
                elif key not in todo:
                    todo[key] = (j, i)
        self._check_inputs(jobs, items, todo, names_per_job, raws, desc)
        self._run_all(todo, jobs, names_per_job, raws, desc)
        _refuse_missing_inputs(jobs, items, raws)

        per_job: list[list[tuple[int, str]]] = [[] for _ in jobs]
        for j, i, key in items:
            per_job[j].append((i, key))
        seen: set[str] = set(cached)
        return [self._score(job, per_job[j], raws, seen) for j, job in enumerate(jobs)]

    def close(self) -> None:
        """Stop the worker processes, if any (a later grid starts them again)."""
        if self._processes is not None:
            self._processes.close()
            self._processes = None

    def _collect(self, key: str, raw: _Raw, raws: dict[str, _Raw], bar: Any) -> None:
        raws[key] = raw
        self.ledger.paid("task", len(raw.calls), raw.usage)
        self.journal.put(key, raw.to_json())
        with self._lock:
            self._memo[key] = raw
            self.requests += 1
        if bar is not None:
            bar.update(1)

    def _run_in_processes(self, todo, jobs, names_per_job, raws, desc) -> None:
        from metaspo_dspy.processes import ProcessGrid

        if self._processes is None:
            self._processes = ProcessGrid(self.num_processes, self.num_threads)
        payload = self._processes.payload(jobs, names_per_job, self.task_lm, self.adapter)
        items = [(key, j, i) for key, (j, i) in todo.items()]
        bar = _progress(len(todo), desc) if self.progress else None
        try:
            for key, raw in self._processes.run(payload, items):
                self._collect(key, raw, raws, bar)
        finally:
            if bar is not None:
                bar.close()

    def _run_all(self, todo, jobs, names_per_job, raws, desc) -> None:
        if not todo:
            return
        if self.num_processes > 1:
            self._run_in_processes(todo, jobs, names_per_job, raws, desc)
            return

        def work(key: str) -> tuple[str, _Raw]:
            j, i = todo[key]
            job = jobs[j]
            return key, run_item(job, names_per_job[j], job.examples[i], self.task_lm, self.adapter)

        bar = _progress(len(todo), desc) if self.progress else None
        pool = ThreadPoolExecutor(max_workers=min(self.num_threads, len(todo)))
        futures: list[Future] = []
        try:
            futures = [pool.submit(contextvars.copy_context().run, work, key) for key in todo]
            for future in as_completed(futures):
                key, raw = future.result()
                self._collect(key, raw, raws, bar)
        except BaseException:
            # Ctrl-C or a bug: drop queued items at once; the ones already sent still finish, and
            # what they paid for is kept like any finished item's (journal, ledger).
            pool.shutdown(wait=False, cancel_futures=True)
            for future in futures:
                if not future.cancelled() and future.exception() is None:
                    key, raw = future.result()
                    if key not in raws:
                        self._collect(key, raw, raws, bar)
            raise
        finally:
            pool.shutdown(wait=True)
            if bar is not None:
                bar.close()

    def _check_inputs(
        self,
        jobs: Sequence[EvalJob],
        items: Sequence[tuple[int, int, str]],
        todo: dict[str, tuple[int, int]],
        names_per_job: Sequence[dict[int, str]],
        raws: dict[str, _Raw],
        desc: str,
    ) -> None:
        """Refuse a grid whose predictors would miss a required input, as early as possible: a bare
        program's examples before any call; runs read back (memo, journal) before any new one; for
        every other program, the first item of each task not checked yet runs first, alone with the
        other tasks' first items (one program run per task), and is checked before the rest. The
        items run here leave ``todo`` (their results are in ``raws``)."""
        for job in jobs:
            found = bare_mismatch(job.program, job.examples)
            if found is not None:
                index, problem = found
                raise ConfigError(mismatch_message(job.task, _where(job, index), [problem], job.examples[index]))
        _refuse_missing_inputs(jobs, items, raws)
        first: dict[str, str] = {}
        for j, _, key in items:
            if jobs[j].task not in self._inputs_checked and not is_bare(jobs[j].program):
                first.setdefault(jobs[j].task, key)
        probe = {key: todo.pop(key) for key in first.values() if key in todo}
        if probe:
            self._run_all(probe, jobs, names_per_job, raws, f"{desc} (first run per task)")
            _refuse_missing_inputs(jobs, items, raws)
        self._inputs_checked.update(first)

    def _recall(self, key: str) -> _Raw | None:
        """This process's result for ``key``, else a journaled success (a journaled failure -- from
        an earlier process -- is asked again), else None."""
        raw = self._memo.get(key)
        if raw is None:
            stored = self.journal.get(key)
            if stored is not None and stored.get("error") is None:
                raw = self._memo[key] = _Raw.from_json(stored)
        return raw

    def _score(self, job: EvalJob, keyed: list[tuple[int, str]], raws: dict[str, _Raw], seen: set[str]) -> NodeEval:
        """Score one job; ``seen`` holds keys already paid for (memo or earlier in this call)."""
        results: list[ExampleResult] = []
        predictions: list[dspy.Prediction | None] = []
        for i, key in keyed:
            raw = raws[key]
            example = job.examples[i]
            where = f"task {job.task!r}, example {i}"
            if raw.prediction is None:
                score, feedback = 0.0, None
            else:
                s = score_example(job.metric, example, raw.prediction, where)
                score, feedback = s.value, s.feedback
            parsed = answer_parsed(job.metric, example, raw.prediction)
            predictions.append(raw.prediction)
            results.append(
                ExampleResult(
                    index=i,
                    score=score,
                    prediction=None if raw.prediction is None else _jsonable(dict(raw.prediction.items())),
                    feedback=feedback,
                    error=raw.error,
                    calls=list(raw.calls),
                    cached=key in seen,
                    usage=raw.usage,
                    parsed=parsed,
                )
            )
            seen.add(key)
        if isinstance(job.metric, TaskMetric):
            total = task_score(job.metric, job.examples, predictions, [r.score for r in results], job.task)
        else:
            total = sum(r.score for r in results) / len(results) if results else 0.0
        return NodeEval(score=total, results=results)


def _refuse_missing_inputs(
    jobs: Sequence[EvalJob], items: Sequence[tuple[int, int, str]], raws: dict[str, _Raw]
) -> None:
    """Raise :class:`ConfigError` when a program run in ``raws`` called a predictor without a
    required input, naming, per task, the first such example of the grid (items not in ``raws``
    are skipped)."""
    lines: dict[str, str] = {}
    for j, i, key in items:
        raw, job = raws.get(key), jobs[j]
        if raw is not None and raw.missing_inputs and job.task not in lines:
            lines[job.task] = mismatch_message(job.task, _where(job, i), raw.missing_inputs, job.examples[i])
    if lines:
        raise ConfigError(" | ".join(lines.values()))


def _where(job: EvalJob, index: int) -> str:
    return f"example {index}" + (f" of {job.label}" if job.label else "")


def token_counts(tracker: UsageTracker) -> dict[str, dict[str, int]]:
    """``{model: {"prompt_tokens", "completion_tokens", "calls"}}`` of the calls a tracker saw."""
    out: dict[str, dict[str, int]] = {}
    for model, entries in tracker.usage_data.items():
        out[model] = {
            "prompt_tokens": sum(int(e.get("prompt_tokens") or 0) for e in entries),
            "completion_tokens": sum(int(e.get("completion_tokens") or 0) for e in entries),
            "calls": len(entries),
        }
    return out


def merge_usage(total: dict[str, dict[str, int]], more: dict[str, dict[str, int]]) -> None:
    """Add ``more`` into ``total`` (both as returned by :func:`token_counts`)."""
    for model, counts in more.items():
        into = total.setdefault(model, {"prompt_tokens": 0, "completion_tokens": 0, "calls": 0})
        for key, value in counts.items():
            into[key] = into.get(key, 0) + value


def _progress(total: int, desc: str):
    from tqdm.auto import tqdm

    return tqdm(total=total, desc=desc, unit="call", leave=False, mininterval=0.5)
