"""Executors: who runs a grid's program runs.

The grid evaluator (:mod:`metaspo_dspy.evaluation.grid`) hands each grid's items, with what they
share (:class:`~metaspo_dspy.evaluation.run_item.GridWork`), to an :class:`Executor`, which runs
them and hands each item's :class:`~metaspo_dspy.evaluation.records.ItemRun` back as it finishes.
Two implement it: :class:`ThreadExecutor` here (one thread pool in this process, ``num_threads``
workers) and :class:`~metaspo_dspy.evaluation.processes.ProcessExecutor` (worker processes, each with
its own threads). Each program run sees a copy of the caller's context, so ``dspy.context``
overrides survive.
"""

from __future__ import annotations

import contextvars
from collections.abc import Callable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor, as_completed
from typing import Protocol

from metaspo_dspy.evaluation.records import ItemRun
from metaspo_dspy.evaluation.run_item import GridItem, GridWork

#: Called with (item key, its run) once per item, in the thread that called :meth:`Executor.run`.
Collect = Callable[[str, ItemRun], None]


class Executor(Protocol):
    """Runs the program runs of a grid's items."""

    def run(self, work: GridWork, items: Sequence[GridItem], collect: Collect) -> None:
        """Run every item of ``items`` (:meth:`GridWork.run <metaspo_dspy.evaluation.run_item.GridWork.run>`)
        and call ``collect`` with each one's key and run as it finishes, once per item, from the
        calling thread. Returns when every item was collected. On an exception (Ctrl-C, a bug, or
        ``collect`` raising) the items not started are dropped and the exception propagates."""
        ...

    def close(self) -> None:
        """Release the workers, if any (a later :meth:`run` starts them again)."""
        ...


class ThreadExecutor:
    """Runs a grid's items in one thread pool of this process (at most ``num_threads`` threads,
    a pool per grid); items that were already running when :meth:`run` is interrupted still finish
    and are collected like finished ones, so what they paid for is kept."""

    def __init__(self, num_threads: int):
        if num_threads < 1:
            raise ValueError(f"num_threads must be >= 1, got {num_threads}")
        self.num_threads = num_threads

    def run(self, work: GridWork, items: Sequence[GridItem], collect: Collect) -> None:
        """See :meth:`Executor.run`."""
        if not items:
            return
        collected: set[str] = set()

        def deliver(key: str, run: ItemRun) -> None:
            collected.add(key)
            collect(key, run)

        pool = ThreadPoolExecutor(max_workers=min(self.num_threads, len(items)))
        futures: list[Future] = []
        try:
            futures = [pool.submit(contextvars.copy_context().run, _run_one, work, item) for item in items]
            for future in as_completed(futures):
                deliver(*future.result())
        except BaseException:
            # Ctrl-C or a bug: drop queued items at once; the ones already sent still finish, and
            # what they paid for is collected like any finished item's.
            pool.shutdown(wait=False, cancel_futures=True)
            for future in futures:
                if not future.cancelled() and future.exception() is None:
                    key, run = future.result()
                    if key not in collected:
                        deliver(key, run)
            raise
        finally:
            pool.shutdown(wait=True)

    def close(self) -> None:
        """Nothing to release: each :meth:`run` has its own pool."""


def _run_one(work: GridWork, item: GridItem) -> tuple[str, ItemRun]:
    key, job, example = item
    return key, work.run(job, example)
