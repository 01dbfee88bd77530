"""Evaluation grids over several client processes (``num_processes``, ``--processes``).

One Python process sends at most about one core's worth of requests (its GIL), so a fast model
server leaves the client machine's other cores idle. :class:`ProcessExecutor` (an
:class:`~metaspo_dspy.evaluation.executors.Executor`) runs a grid's program runs in K worker
processes (``forkserver`` start method where the platform has it, else ``spawn``; never ``fork``,
which would copy the parent's threads and locks), each with its own thread pool and its own LM
clients. Each worker talks to the parent over its own pipe (no queue, lock or named semaphore, so a
killed run leaves nothing for the resource tracker to clean up).

What crosses the process boundary, and how:

* To each worker, once per grid: the grid's state (the jobs --
  :class:`~metaspo_dspy.evaluation.records.EvalJob`: programs, system prompts, examples --, the task
  LM, the adapter and the callbacks in ``dspy.settings``), serialized with cloudpickle (DSPy modules
  round-trip with it). Metrics stay in the parent (the jobs travel without theirs): scoring happens
  there. Then the items, a few at a time: the parent keeps each worker at most
  ``QUEUED_ROUNDS x threads`` items ahead (its threads busy, a few waiting), topped up as results come
  back, so the work balances over the workers. A worker runs each item with
  :func:`~metaspo_dspy.evaluation.run_item.run_item`, as the thread executor does.
* LMs are rebuilt in the worker from their settings: a plain ``dspy.LM`` or one made by
  :func:`~metaspo_dspy.lm.build_lm` (its native engine re-reads the API key from the worker's
  environment; keys are never pickled). Any other LM (the embedded model, which lives in this
  process's memory, a custom ``BaseLM`` or engine) is refused by :func:`check_portable` with a
  :class:`ProcessError` before any call.
* Back to the parent, each item as soon as it is done (items that finish together travel in one
  message): its :class:`~metaspo_dspy.evaluation.records.ItemRun` (prediction, error, the calls
  shown to the optimizer, token usage) and its usage entries (added to any ``dspy.track_usage`` the
  caller opened); and each fault the worker's clients see, as it is seen (replayed into the
  parent's open fault logs, so ``faults.jsonl`` has it even if the run is killed before the item
  is done). The parent alone collects the runs (journal, ledger), item by item, so a kill loses
  about what a one-process run loses (the items in flight), and resume, fault records, budgets and
  results are those of a one-process run (a test compares them).

Workers die with their parent: a worker exits when its pipe to the parent closes (the parent exited
or was killed: the kernel closes its end), a watcher thread exits it when the parent process is gone
(a pidfd on Linux, else polling), and on Linux the parent-death signal (``PR_SET_PDEATHSIG``,
SIGKILL) ends it if the fork server that started it dies. (The fork server itself, and the resource
tracker, exit once the parent and every worker are gone.) Workers ignore SIGINT (Ctrl-C at a
terminal reaches the whole process group: the parent stops them). A worker that dies (a signal, a
crash) stops the grid with :class:`~metaspo_dspy.errors.WorkerDied` after what the workers had sent
is collected; an interrupt (KeyboardInterrupt, which the CLI also raises on SIGTERM) collects what
has arrived and stops the workers. Either way the items in the workers' hands are lost (asked again
on resume).

Worker-side effects that do not come back: ``lm.history`` and ``dspy.inspect_history`` of the worker
calls, and what callbacks do (they run in the worker).
"""

from __future__ import annotations

import contextlib
import contextvars
import functools
import hashlib
import io
import math
import multiprocessing
import os
import pickle
import queue
import select
import signal
import sys
import threading
import time
import weakref
from collections import deque
from collections.abc import Callable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, replace
from multiprocessing.connection import Connection, wait
from typing import Any

import dspy
import pydantic

from metaspo_dspy.errors import ProcessError, WorkerDied
from metaspo_dspy.evaluation.records import EvalJob, ItemRun
from metaspo_dspy.evaluation.run_item import GridItem, GridWork
from metaspo_dspy.lm.open_files import configure_bounded_cache
from metaspo_dspy.store import faults

#: Items handed to a worker ahead of its results, as a multiple of its threads: its threads stay busy
#: while the next items are on their way, and what a killed worker had in hand stays small (the
#: items waiting in it were not sent to the model yet).
QUEUED_ROUNDS = 2
#: Seconds the parent waits for a worker to exit after closing its pipe, before killing it.
STOP_SECONDS = 2.0
#: Seconds between a worker's checks that its parent is alive, where no pidfd can tell it at once.
PARENT_POLL_SECONDS = 0.25


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
        # Imported once by the fork server, so each worker starts without importing DSPy and LiteLLM
        # (seconds each) again; neither starts a thread on import, so forking after it is safe.
        context.set_forkserver_preload(["metaspo_dspy.evaluation.processes", "litellm"])
    return context


@dataclass(eq=False)
class _Worker:
    """The parent's handle on one worker: its process, its end of their pipe, the grid whose state
    it holds and how many items it has in hand."""

    process: multiprocessing.process.BaseProcess
    conn: Connection
    grid: int = 0
    in_hand: int = 0
    closed: bool = False


class ProcessExecutor:
    """K worker processes, each running ``threads`` program runs at once (``num_threads`` over all).

    :meth:`run` collects each item's run as it comes back; :meth:`close` stops the workers (the
    evaluator keeps them for its whole run: starting one costs about a second). One grid runs at a
    time (concurrent :meth:`run` calls wait for each other)."""

    def __init__(self, num_processes: int, num_threads: int):
        if num_processes < 2:
            raise ValueError(f"a ProcessExecutor needs at least 2 processes, got {num_processes}")
        self.num_processes = num_processes
        self.threads = max(1, math.ceil(num_threads / num_processes))
        self._workers: list[_Worker] = []
        self._grids = 0
        self._lock = threading.RLock()
        #: CPU seconds each worker process (by pid) had used at its last message (benchmarks read it).
        self.worker_cpu: dict[int, float] = {}

    @property
    def worker_pids(self) -> list[int]:
        """The process ids of the running workers (none before the first grid or after :meth:`close`)."""
        return [w.process.pid for w in self._workers if w.process.pid is not None]

    def _start(self) -> list[_Worker]:
        if not self._workers:
            context = _context()
            cache = _cache_settings()
            for n in range(self.num_processes):
                mine, theirs = context.Pipe(duplex=True)
                process = context.Process(
                    target=_worker_main,
                    args=(theirs, self.threads, cache, os.getpid()),
                    name=f"metaspo-worker-{n + 1}",
                    daemon=True,  # a last resort: multiprocessing stops daemonic children at exit
                )
                self._workers.append(_Worker(process, mine))
                process.start()
                theirs.close()  # the worker's end lives in the worker only: EOF there when we are gone
        return self._workers

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
        """Run ``items`` in the workers and collect each one's run as it comes back
        (:meth:`Executor.run <metaspo_dspy.evaluation.executors.Executor.run>`). Raises
        :class:`ProcessError` before any call if the grid cannot travel to the workers.

        Faults seen in a worker are reported to the parent's open fault logs as they arrive, and
        usage entries are added to the caller's usage tracker with their item. A worker that dies
        raises :class:`~metaspo_dspy.errors.WorkerDied` once what the workers had sent is collected.
        On any exception the workers are stopped (a later grid starts new ones); on an interrupt or
        a dead worker what had arrived is collected first; the items in the workers' hands are lost
        (not collected)."""
        if not items:
            return
        payload = self._payload(work)
        with self._lock:
            self._grids += 1
            grid = _Grid(self, self._grids, payload, items, collect, dspy.settings.usage_tracker)
            try:
                grid.run(self._start())
            except BaseException as exc:
                if isinstance(exc, (KeyboardInterrupt, WorkerDied)):
                    with contextlib.suppress(Exception):
                        grid.salvage()
                self._stop()
                raise

    def _stop(self) -> None:
        """Stop every worker: close its pipe (it exits at once), kill it if it has not exited in
        :data:`STOP_SECONDS`, and reap it."""
        workers, self._workers = self._workers, []
        for worker in workers:
            with contextlib.suppress(OSError):
                worker.conn.close()
        deadline = time.monotonic() + STOP_SECONDS
        for worker in workers:
            if worker.process.pid is None:  # never started
                continue
            worker.process.join(max(0.0, deadline - time.monotonic()))
            if worker.process.exitcode is None:
                worker.process.kill()
                worker.process.join(STOP_SECONDS)
        if workers:
            _FINISHED_CPU.append(sum(self.worker_cpu.values()))
            self.worker_cpu = {}

    def close(self) -> None:
        """Stop the worker processes, if any (a later :meth:`run` starts them again)."""
        with self._lock:
            self._stop()


class _Grid:
    """One :meth:`ProcessExecutor.run`: hands the items out, collects what comes back."""

    def __init__(
        self,
        executor: ProcessExecutor,
        grid: int,
        payload: bytes,
        items: Sequence[GridItem],
        collect: Callable[[str, ItemRun], None],
        tracker: Any,
    ):
        self.executor, self.grid, self.payload = executor, grid, payload
        self.pending: deque[GridItem] = deque(items)
        self.remaining = len(items)
        self.collect, self.tracker = collect, tracker
        self.ahead = executor.threads * QUEUED_ROUNDS
        self.workers: list[_Worker] = []

    def run(self, workers: list[_Worker]) -> None:
        self.workers = workers
        for worker in workers:
            self._hand_out(worker)
        while self.remaining:
            ready = set(wait([w.conn for w in workers] + [w.process.sentinel for w in workers]))
            for worker in workers:
                if worker.conn in ready:
                    self._receive(worker, hand_out=True)
            for worker in workers:
                if worker.closed or worker.process.sentinel in ready:
                    self._receive(worker, hand_out=False)  # what it sent before it died
                    raise _died(worker)

    def salvage(self) -> None:
        """Collect what the workers have sent so far, without waiting."""
        for worker in self.workers:
            self._receive(worker, hand_out=False)

    def _hand_out(self, worker: _Worker) -> None:
        """Top ``worker`` up to :data:`QUEUED_ROUNDS` x its threads items, once its waiting items
        are taken (one message for several items)."""
        if not self.pending or worker.in_hand > self.executor.threads:
            return
        batch = [self.pending.popleft() for _ in range(min(self.ahead - worker.in_hand, len(self.pending)))]
        try:
            if worker.grid != self.grid:
                worker.conn.send_bytes(pickle.dumps(("grid", self.grid, self.payload)))
                worker.grid = self.grid
            worker.conn.send_bytes(pickle.dumps(("items", self.grid, batch)))
        except OSError:  # it died: the main loop reports it
            worker.closed = True
            return
        worker.in_hand += len(batch)

    def _receive(self, worker: _Worker, hand_out: bool) -> None:
        """Collect every message ``worker`` has sent so far (without waiting), then (``hand_out``)
        top it up."""
        while not worker.closed:
            try:
                if not worker.conn.poll():
                    break
                data = worker.conn.recv_bytes()
            except (EOFError, OSError):
                worker.closed = True
                break
            message = pickle.loads(data)
            if message[0] == "error":
                raise message[1]
            _, runs, seen, (pid, cpu) = message
            self.executor.worker_cpu[pid] = cpu
            for kind, model, text in seen:
                faults.report(kind, model, text)
            for key, run, usage in runs:
                if self.tracker is not None:
                    for model, entries in usage.items():
                        for entry in entries:
                            self.tracker.add_usage(model, entry)
                worker.in_hand -= 1
                self.remaining -= 1
                self.collect(key, run)
        if hand_out and not worker.closed:
            self._hand_out(worker)


def _died(worker: _Worker) -> WorkerDied:
    """The error for a worker whose pipe closed or whose process ended (reaped here)."""
    process = worker.process
    process.join(STOP_SECONDS)
    if process.exitcode is None:  # its pipe broke while it runs: it is of no use any more
        process.kill()
        process.join(STOP_SECONDS)
        how = "stopped answering"
    elif process.exitcode < 0:
        number = -process.exitcode
        try:
            name = signal.Signals(number).name
        except ValueError:
            name = "unknown"
        how = f"died (signal {number}: {name})"
    else:
        how = f"died (exit code {process.exitcode})"
    return WorkerDied(f"a worker process {how}; the completed work is journaled.", process.pid, process.exitcode)


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
def _worker_main(conn: Connection, threads: int, cache: dict[str, Any], parent: int) -> None:
    """A worker's life: read the parent's messages (a grid's state, items) until its pipe closes,
    run the items on ``threads`` threads; a sender thread sends back each finished item and each
    fault as it comes. Exits (``os._exit``) as soon as the parent is gone."""
    _die_with_parent(parent)
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the parent's to handle: it stops us
    import logging

    for name in ("dspy", "LiteLLM", "litellm", "httpx"):
        logging.getLogger(name).setLevel(logging.WARNING)
    configure_bounded_cache(**{k: v for k, v in cache.items() if v is not None})  # files opened once
    pool = ThreadPoolExecutor(max_workers=threads)
    outbox: queue.SimpleQueue = queue.SimpleQueue()
    faults.FaultLog(on_record=lambda kind, model, text: outbox.put(("fault", (kind, model, text)))).__enter__()
    threading.Thread(target=_send_loop, args=(conn, outbox), name="metaspo-sender", daemon=True).start()

    def done(future: Future) -> None:
        try:
            outbox.put(("run", future.result()))
        except BaseException as exc:  # a bug: run_item does not raise for LM faults
            outbox.put(("error", exc))

    grid, work, context = 0, None, None
    while True:
        try:
            message = pickle.loads(conn.recv_bytes())
        except (EOFError, OSError):  # the parent closed our pipe, or is gone
            os._exit(0)
        try:
            if message[0] == "grid":
                grid, work, context = message[1], *_grid_state(message[2])
            elif message[0] == "items" and message[1] == grid:
                for item in message[2]:
                    pool.submit(context.copy().run, _run_one, work, item).add_done_callback(done)
        except Exception as exc:
            outbox.put(("error", exc))


def _run_one(work: GridWork, item: GridItem) -> tuple[str, ItemRun, dict[str, list[dict[str, Any]]]]:
    key, j, i = item
    with dspy.track_usage() as tracker:
        run = work.run(j, i)
    return key, run, {model: list(entries) for model, entries in tracker.usage_data.items()}


def _grid_state(payload: bytes) -> tuple[GridWork, contextvars.Context]:
    """The grid's work and the context its items run in (the grid's callbacks in ``dspy.settings``)."""
    state = pickle.loads(payload)
    _register_local_providers(state)
    names = [
        {id(p): n for (_, p), n in zip(job.program.named_predictors(), by_path, strict=True)}
        for job, by_path in zip(state["jobs"], state["names"], strict=True)
    ]
    with dspy.context(callbacks=state["callbacks"]):
        context = contextvars.copy_context()
    return GridWork(state["jobs"], names, state["lm"], state["adapter"]), context


def _register_local_providers(state: dict[str, Any]) -> None:
    """Register in this worker the in-process LiteLLM providers the grid's LMs name (the
    ``metaspo_dspy.providers`` entry points: the deterministic fake, a user's)."""
    from metaspo_dspy.lm import providers

    lms = [state["lm"]] + [lm for job in state["jobs"] for lm in _lms_of(job.program)]
    providers.install_for(str(getattr(lm, "model", "")) for lm in lms)


def _send_loop(conn: Connection, outbox: queue.SimpleQueue) -> None:
    """Send what the worker has to say, as soon as it has it: whatever is in ``outbox`` (finished
    items, faults) in one message, or an error alone."""
    while True:
        batch = [outbox.get()]
        with contextlib.suppress(queue.Empty):
            while len(batch) < 1000:
                batch.append(outbox.get_nowait())
        errors = [value for kind, value in batch if kind == "error"]
        if errors:
            data = _error_bytes(errors[0])
        else:
            runs = [value for kind, value in batch if kind == "run"]
            seen = [value for kind, value in batch if kind == "fault"]
            data = _dumps(("done", runs, seen, (os.getpid(), time.process_time())))
        try:
            conn.send_bytes(data)
        except OSError:  # the parent is gone
            os._exit(0)


def _dumps(value: Any) -> bytes:
    """``value`` pickled with cloudpickle (predictions hold signatures made at run time, which pickle
    cannot name), each pydantic class (a signature) as :func:`_known_class` of its pickled bytes."""
    buffer = io.BytesIO()
    _pickler_class()(buffer, protocol=pickle.HIGHEST_PROTOCOL).dump(value)
    return buffer.getvalue()


@functools.cache
def _pickler_class() -> type:
    import cloudpickle

    class Pickler(cloudpickle.Pickler):
        def reducer_override(self, obj: Any) -> Any:
            if isinstance(obj, type) and issubclass(obj, pydantic.BaseModel):
                known = _CLASSES_SENT.get(obj)
                if known is None:
                    data = cloudpickle.dumps(obj)
                    known = _CLASSES_SENT[obj] = (hashlib.sha256(data).digest(), data)
                return _known_class, known
            return super().reducer_override(obj)

    return Pickler


#: In a worker: the pickled bytes of each pydantic class (a signature) sent, and their digest.
_CLASSES_SENT: weakref.WeakKeyDictionary[type, tuple[bytes, bytes]] = weakref.WeakKeyDictionary()
#: In the parent: each class received and still in use, by the digest of its pickled bytes.
_CLASSES_RECEIVED: weakref.WeakValueDictionary[bytes, type] = weakref.WeakValueDictionary()


def _known_class(digest: bytes, data: bytes) -> type:
    """The class a worker sent as ``data`` (its bytes hash to ``digest``), unpickled only when it is
    not in use here already: rebuilding a pydantic class (a signature) costs about a millisecond,
    more than the rest of an item's message. The same bytes are the same class (cloudpickle names a
    class made at run time by an id of its own)."""
    cls = _CLASSES_RECEIVED.get(digest)
    if cls is None:
        cls = pickle.loads(data)
        _CLASSES_RECEIVED[digest] = cls
    return cls


def _error_bytes(exc: BaseException) -> bytes:
    import traceback

    import cloudpickle

    try:
        return cloudpickle.dumps(("error", exc))
    except Exception:
        text = "".join(traceback.format_exception(type(exc), exc, exc.__traceback__))
        return cloudpickle.dumps(("error", RuntimeError(f"a worker process failed:\n{text}")))


def _die_with_parent(parent: int) -> None:
    """Make this worker exit when ``parent`` (the process that runs the grids) is gone: a watcher
    thread on ``parent`` and, on Linux, the parent-death signal for the process that started this
    one when that is the fork server (the signal comes when the *thread* that started a process
    ends, and any thread of ``parent`` may start workers)."""
    starter = os.getppid()
    if sys.platform.startswith("linux") and starter != parent:
        with contextlib.suppress(Exception):
            import ctypes

            PR_SET_PDEATHSIG = 1
            ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, int(signal.SIGKILL), 0, 0, 0)
    if os.getppid() != starter:  # it died before the signal was set
        os._exit(0)
    threading.Thread(target=_watch_parent, args=(parent, starter), name="metaspo-parent-watch", daemon=True).start()


def _watch_parent(parent: int, starter: int) -> None:
    """Exit this process once ``parent`` has exited (or the process that started this one has)."""
    try:
        handle = os.pidfd_open(parent)
    except ProcessLookupError:
        os._exit(0)
    except (AttributeError, OSError):  # no pidfd here (not Linux, or a kernel before 5.3): poll
        handle = None
    while True:
        if handle is not None:
            readable, _, _ = select.select([handle], [], [], PARENT_POLL_SECONDS * 4)
            if readable:  # a pidfd is readable once its process has exited
                os._exit(0)
        else:
            time.sleep(PARENT_POLL_SECONDS)
            try:
                os.kill(parent, 0)
            except ProcessLookupError:
                os._exit(0)
            except PermissionError:
                pass
        if os.getppid() != starter:
            os._exit(0)
