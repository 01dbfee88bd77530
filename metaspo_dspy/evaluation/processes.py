"""Evaluation grids over several client processes (``num_processes``, ``--processes``).

One Python process sends at most about one core's worth of requests (its GIL), so a fast model
server leaves the client machine's other cores idle. :class:`ProcessExecutor` (an
:class:`~metaspo_dspy.evaluation.executors.Executor`) runs a grid's program runs in K worker
processes of the standard library's :class:`~concurrent.futures.ProcessPoolExecutor` (``forkserver``
start method where the platform has it, else ``spawn``; never ``fork``, which would copy the
parent's threads and locks), each with its own thread pool and its own LM clients.

What crosses the process boundary, and how:

* To the workers, once per grid: the jobs (:class:`~metaspo_dspy.evaluation.records.EvalJob`: programs,
  system prompts, examples), the task LM, the adapter and the callbacks in ``dspy.settings``,
  serialized with cloudpickle (DSPy modules round-trip with it). Metrics stay in the parent (the jobs
  travel without theirs): scoring happens there. A worker runs each item with
  :func:`~metaspo_dspy.evaluation.run_item.run_item`, as the thread executor does.
* LMs are rebuilt in the worker from their settings: a plain ``dspy.LM`` or one made by
  :func:`~metaspo_dspy.lm.build_lm` (its native engine re-reads the API key from the worker's
  environment; keys are never pickled). Any other LM (the embedded model, which lives in this
  process's memory, a custom ``BaseLM`` or engine) is refused by :func:`check_portable` with a
  :class:`ProcessError` before any call.
* Back to the parent, per chunk of items: each item's
  :class:`~metaspo_dspy.evaluation.records.ItemRun` (prediction, error, the calls shown to the
  optimizer, token usage), the faults the worker's clients saw (replayed into the parent's
  open fault logs) and the usage entries (added to any ``dspy.track_usage`` the caller opened).
  The parent alone collects the runs (journal, ledger), so resume, fault records, budgets and
  results are those of a one-process run (a test compares them).

Worker-side effects that do not come back: ``lm.history`` and ``dspy.inspect_history`` of the worker
calls, and what callbacks do (they run in the worker).
"""

from __future__ import annotations

import math
import multiprocessing
import os
import pickle
import threading
from collections.abc import Callable, Sequence
from concurrent.futures import Future, ProcessPoolExecutor, ThreadPoolExecutor
from dataclasses import replace
from typing import Any

import dspy

from metaspo_dspy.errors import ProcessError
from metaspo_dspy.evaluation.records import EvalJob, ItemRun
from metaspo_dspy.evaluation.run_item import GridItem, GridWork

#: Items per chunk sent to a worker, at least this multiple of its threads (a few rounds of
#: concurrent calls); its results are journaled when it returns.
CHUNK_ROUNDS = 2
#: A grid is cut into at most this many chunks per worker: each chunk carries the grid's state (the
#: payload, some hundred kB), so fewer chunks send less, while a last chunk stays short enough that
#: one worker does not finish long after the others.
CHUNKS_PER_WORKER = 16


def _lms_of(value: Any) -> list[Any]:
    if value is None:
        return []
    if isinstance(value, dspy.Module):
        return [p.lm for _, p in value.named_predictors() if p.lm is not None]
    return [value]


def check_portable(lm: Any, where: str) -> None:
    """Raise :class:`ProcessError` unless ``lm`` can be rebuilt in a worker process."""
    from metaspo_dspy.lm import is_embedded
    from metaspo_dspy.lm.native import NativeEngine

    if lm is None:
        return
    if is_embedded(lm):
        raise ProcessError(
            f"{where}: the embedded model runs inside this process and cannot be shared with worker processes; "
            "use num_processes=1 (--processes 1)"
        )
    if type(lm) is not dspy.LM:
        raise ProcessError(
            f"{where}: {type(lm).__name__} is not a dspy.LM, so worker processes cannot rebuild it from its "
            "settings; use num_processes=1 or build the LM with dspy.LM(...) / metaspo_dspy.lm.build_lm(...)"
        )
    engine = lm.engine
    if not isinstance(engine, str) and not isinstance(engine, NativeEngine):
        raise ProcessError(
            f"{where}: the custom engine {type(engine).__name__} cannot be rebuilt in a worker process; "
            "use num_processes=1"
        )


def check_run(task_lm: Any, programs: Sequence[dspy.Module]) -> None:
    """Raise :class:`ProcessError` if a run with these programs cannot use worker processes: an LM
    that cannot be rebuilt there, or a program or a ``dspy.settings`` callback that cannot be sent.
    Cheap and makes no LM call: run it before any call is paid for."""
    check_portable(task_lm if task_lm is not None else dspy.settings.lm, "task_lm")
    for program in programs:
        for lm in _lms_of(program):
            check_portable(lm, "a predictor's LM")
        _portable_bytes(f"the program {type(program).__name__}", program)
    for callback in getattr(dspy.settings, "callbacks", None) or []:
        _portable_bytes(f"the callback {callback!r} in dspy.settings", callback)


def _portable_bytes(what: str, value: Any) -> bytes:
    import cloudpickle

    try:
        return cloudpickle.dumps(value)
    except Exception as exc:
        raise ProcessError(
            f"{what} cannot be sent to worker processes ({type(exc).__name__}: {exc}); use num_processes=1, "
            "or make it picklable (cloudpickle)"
        ) from None


def _context() -> multiprocessing.context.BaseContext:
    methods = multiprocessing.get_all_start_methods()
    context = multiprocessing.get_context("forkserver" if "forkserver" in methods else "spawn")
    if context.get_start_method() == "forkserver":
        # Imported once by the fork server, so each worker starts without importing DSPy again.
        context.set_forkserver_preload(["metaspo_dspy.evaluation.processes"])
    return context


class ProcessExecutor:
    """K worker processes, each running ``threads`` program runs at once (``num_threads`` over all).

    :meth:`run` collects each item's run as its chunk completes; :meth:`close` stops the workers
    (the evaluator keeps them for its whole run: starting one costs about a second).
    """

    def __init__(self, num_processes: int, num_threads: int):
        if num_processes < 2:
            raise ValueError(f"a ProcessExecutor needs at least 2 processes, got {num_processes}")
        self.num_processes = num_processes
        self.threads = max(1, math.ceil(num_threads / num_processes))
        self._executor: ProcessPoolExecutor | None = None
        self._grids = 0
        #: CPU seconds each worker process (by pid) had used at its last chunk (benchmarks read it).
        self.worker_cpu: dict[int, float] = {}

    def _pool(self) -> ProcessPoolExecutor:
        if self._executor is None:
            self._executor = ProcessPoolExecutor(
                max_workers=self.num_processes,
                mp_context=_context(),
                initializer=_start_worker,
                initargs=(self.threads, _cache_settings()),
            )
        return self._executor

    def _payload(self, work: GridWork) -> bytes:
        """The grid's shared state as bytes, after checking that everything in it can travel."""
        settings = dspy.settings
        lm = work.task_lm if work.task_lm is not None else settings.lm
        check_portable(lm, "task_lm")
        for job in work.jobs:
            for predictor_lm in _lms_of(job.program):
                check_portable(predictor_lm, f"task {job.task!r}: a predictor's LM")
        callbacks = list(getattr(settings, "callbacks", None) or [])
        for callback in callbacks:
            _portable_bytes(f"the callback {callback!r} in dspy.settings", callback)
        state = {
            "jobs": [_unscored(job) for job in work.jobs],
            "names": [_names_by_path(job.program, n) for job, n in zip(work.jobs, work.names, strict=True)],
            "lm": lm,
            "adapter": work.adapter if work.adapter is not None else settings.adapter,
            "callbacks": callbacks,
        }
        return _portable_bytes("this evaluation grid (its programs, examples or LM)", state)

    def run(self, work: GridWork, items: Sequence[GridItem], collect: Callable[[str, ItemRun], None]) -> None:
        """Run ``items`` in the workers and collect each one's run, chunk by chunk
        (:meth:`Executor.run <metaspo_dspy.evaluation.executors.Executor.run>`). Raises
        :class:`ProcessError` before any call if the grid cannot travel to the workers.

        Faults seen in a worker are reported to the parent's open fault logs and usage entries are
        added to the caller's usage tracker, as each chunk comes back. On an exception the chunks
        not started are cancelled; the runs of chunks in flight are lost (not collected)."""
        from concurrent.futures import as_completed

        from metaspo_dspy.store import faults

        if not items:
            return
        payload = self._payload(work)
        self._grids += 1
        grid = f"{os.getpid()}-{id(self)}-{self._grids}"
        size = max(self.threads * CHUNK_ROUNDS, math.ceil(len(items) / (self.num_processes * CHUNKS_PER_WORKER)))
        size = max(1, min(size, math.ceil(len(items) / self.num_processes)))
        pool = self._pool()
        futures: list[Future] = [
            pool.submit(_run_chunk, grid, payload, list(items[start : start + size]))
            for start in range(0, len(items), size)
        ]
        tracker = dspy.settings.usage_tracker
        try:
            for future in as_completed(futures):
                results, seen, usage, (pid, cpu) = pickle.loads(future.result())
                self.worker_cpu[pid] = cpu
                for kind, model, message in seen:
                    faults.report(kind, model, message)
                if tracker is not None:
                    for model, entries in usage:
                        for entry in entries:
                            tracker.add_usage(model, entry)
                for key, run in results:
                    collect(key, run)
        except BaseException:
            for future in futures:
                future.cancel()
            raise

    def close(self) -> None:
        """Stop the worker processes, if any (a later :meth:`run` starts them again)."""
        if self._executor is not None:
            self._executor.shutdown(wait=True, cancel_futures=True)
            self._executor = None
            _FINISHED_CPU.append(sum(self.worker_cpu.values()))
            self.worker_cpu = {}


_FINISHED_CPU: list[float] = []


def worker_cpu_seconds() -> float:
    """CPU seconds used by the worker processes of every closed :class:`ProcessExecutor` of this process
    (startup included), for measurements: a process's own CPU time does not include them."""
    return sum(_FINISHED_CPU)


def _unscored(job: EvalJob) -> EvalJob:
    """The job as it travels: its examples as a list, without its metric (scoring stays in the parent)."""
    return replace(job, examples=list(job.examples), metric=None)


def _names_by_path(program: dspy.Module, names: dict[int, str]) -> list[str]:
    """Predictor names in ``named_predictors`` order (ids do not survive pickling)."""
    return [names.get(id(p), n) for n, p in program.named_predictors()]


def _cache_settings() -> dict[str, Any]:
    cache = dspy.cache
    return {
        "enable_disk_cache": bool(getattr(cache, "enable_disk_cache", False)),
        "enable_memory_cache": bool(getattr(cache, "enable_memory_cache", False)),
        "disk_cache_dir": getattr(cache, "disk_cache_dir", None),
    }


# -- worker side -----------------------------------------------------------------------------------
_WORKER: dict[str, Any] = {}
_WORKER_LOCK = threading.Lock()


def _start_worker(threads: int, cache: dict[str, Any]) -> None:
    import logging

    for name in ("dspy", "LiteLLM", "litellm", "httpx"):
        logging.getLogger(name).setLevel(logging.WARNING)
    settings = {k: v for k, v in cache.items() if v is not None}
    dspy.configure_cache(**settings)
    _WORKER["pool"] = ThreadPoolExecutor(max_workers=threads)


def _state(grid: str, payload: bytes) -> dict[str, Any]:
    """The grid's state, unpickled once per worker and grid; its ``work`` runs the items."""
    with _WORKER_LOCK:
        if _WORKER.get("grid") != grid:
            state = pickle.loads(payload)
            _register_local_providers(state)
            names = [
                {id(p): n for (_, p), n in zip(job.program.named_predictors(), by_path, strict=True)}
                for job, by_path in zip(state["jobs"], state["names"], strict=True)
            ]
            state["work"] = GridWork(state["jobs"], names, state["lm"], state["adapter"])
            _WORKER["grid"], _WORKER["state"] = grid, state
        return _WORKER["state"]


def _register_local_providers(state: dict[str, Any]) -> None:
    """Register in this worker the in-process LiteLLM providers the grid's LMs name (the
    ``metaspo_dspy.providers`` entry points: the deterministic fake, a user's)."""
    from metaspo_dspy.lm import providers

    lms = [state["lm"]] + [lm for job in state["jobs"] for lm in _lms_of(job.program)]
    providers.install_for(str(getattr(lm, "model", "")) for lm in lms)


def _run_chunk(grid: str, payload: bytes, items: list[GridItem]):
    """Run one chunk on this worker's threads: (results, faults seen, usage entries), pickled."""
    import contextvars

    from metaspo_dspy.store import faults

    state = _state(grid, payload)
    work: GridWork = state["work"]
    seen: list[tuple[str, str | None, str]] = []
    usage: list[tuple[str, list[dict[str, Any]]]] = []

    def one(item: GridItem):
        key, j, i = item
        with dspy.track_usage() as tracker:
            run = work.run(j, i)
        return key, run, {model: list(entries) for model, entries in tracker.usage_data.items()}

    with faults.FaultLog(keep=True) as log, dspy.context(callbacks=state["callbacks"]):
        context = contextvars.copy_context()
        futures = [_WORKER["pool"].submit(context.copy().run, one, item) for item in items]
        results = []
        for future in futures:
            key, run, entries = future.result()
            results.append((key, run))
            usage.extend(entries.items())
        seen = list(log.entries)
    import time

    import cloudpickle  # predictions may hold dynamically made signatures, which pickle cannot name

    return cloudpickle.dumps((results, seen, usage, (os.getpid(), time.process_time())))
