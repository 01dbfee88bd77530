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

import contextvars
import threading
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor, as_completed
from dataclasses import dataclass, field
from typing import Any

import dspy
from dspy.utils.usage_tracker import UsageTracker

from metaspo_dspy.adapters import message_text
from metaspo_dspy.digests import _jsonable, item_key, job_digest, lm_identity, program_state  # noqa: F401 - re-exported
from metaspo_dspy.journal import Journal
from metaspo_dspy.metrics import Metric, TaskMetric, is_wrong, score_example, task_score
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


@dataclass
class _Raw:
    """One program run: its prediction (None on failure), error, and compacted LM calls."""

    prediction: dspy.Prediction | None
    error: str | None
    calls: list[LMCall]
    usage: dict[str, dict[str, int]] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        return {
            "prediction": None if self.prediction is None else _jsonable(dict(self.prediction.items())),
            "error": self.error,
            "usage": self.usage,
            "calls": [
                {"predictor": c.predictor, "user": _last_user(c.messages), "completion": c.completion}
                for c in self.calls
            ],
        }

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> _Raw:
        prediction = None if data["prediction"] is None else dspy.Prediction(**data["prediction"])
        calls = [
            LMCall(c["predictor"], [{"role": "user", "content": c["user"]}], c["completion"]) for c in data["calls"]
        ]
        return cls(prediction, data["error"], calls, data.get("usage") or {})


def _last_user(messages: list[dict[str, Any]]) -> str:
    users = [m for m in messages if m.get("role") == "user"]
    return message_text(users[-1]["content"]) if users else ""


def _compact(calls: list[LMCall]) -> list[LMCall]:
    """Keep what the optimizer is shown (last user message, completion): runs stay small in memory."""
    return [LMCall(c.predictor, [{"role": "user", "content": _last_user(c.messages)}], c.completion) for c in calls]


def run_item(job: EvalJob, names: dict[int, str], example: dspy.Example, task_lm: Any, adapter: Any) -> _Raw:
    """Run ``job``'s program on one example under its system prompt; never raises for LM faults."""
    recorder = CallRecorder(predictor_names=names)
    overrides: dict[str, Any] = {"trace": [], "metaspo_recorder": recorder}
    if task_lm is not None:
        overrides["lm"] = task_lm
    # A nested dspy.track_usage(): this item's tokens are counted here and rolled up into any
    # tracker the caller opened around compile() (DSPy's own mechanism).
    with dspy.track_usage() as tracker:
        try:
            ride = needs_rider(job.program)
            with system_prompt_scope(job.system_prompt, job.instructions_in, adapter, ride, **overrides):
                prediction = job.program(**example.inputs())
            return _Raw(prediction, None, _compact(recorder.calls), token_counts(tracker))
        except Exception as exc:
            error = redact(f"{type(exc).__name__}: {exc}")[:2000]
            return _Raw(None, error, _compact(recorder.calls), token_counts(tracker))


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

    Contract: :meth:`evaluate` never raises for a failed LM call, an empty or truncated answer, or a
    parse failure (the example scores 0 and carries the redacted error, so it counts as a failure);
    it raises :class:`~metaspo_dspy.metrics.MetricError` when a metric raises or
    returns something other than a score, since that is a bug in the metric, not in the model.
    """

    def __init__(
        self,
        task_lm: Any = None,
        adapter: Any = None,
        num_threads: int = 16,
        progress: bool = True,
        journal: Journal | None = None,
        num_processes: int = 1,
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
        self._memo: dict[str, _Raw] = {}
        self._lock = threading.Lock()
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
        self._run_all(todo, jobs, names_per_job, raws, desc)

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
        try:
            futures = [pool.submit(contextvars.copy_context().run, work, key) for key in todo]
            for future in as_completed(futures):
                key, raw = future.result()
                self._collect(key, raw, raws, bar)
        except BaseException:
            # Ctrl-C or a bug: drop queued items at once (finished ones are already journaled).
            pool.shutdown(wait=False, cancel_futures=True)
            raise
        finally:
            pool.shutdown(wait=True)
            if bar is not None:
                bar.close()

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
                )
            )
            seen.add(key)
        if isinstance(job.metric, TaskMetric):
            total = task_score(job.metric, job.examples, predictions, [r.score for r in results], job.task)
        else:
            total = sum(r.score for r in results) / len(results) if results else 0.0
        return NodeEval(score=total, results=results)


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
