"""The run's ledger: what every process of a run paid for, journaled as it is paid.

A run's artifact counts ``calls``, ``usage`` and phase times of the process that wrote it; a run
that was interrupted, killed and resumed was paid for by several processes. The ledger
(``RUN_DIR/ledger.jsonl``, append-only JSON lines) records each paid unit as it completes, so the
run's totals over all its processes -- killed ones included -- can be summed at any time:

* ``{"p": ID, "s": S, "kind": "start", "pid": ..., "at": EPOCH, "unrecorded_before": bool}``: the
  first line of a process (written with its first other line, so a process that pays nothing and
  writes nothing -- such as a resume of a finished run -- leaves no trace);
* ``{"p": ID, "s": S, "kind": "task", "calls": N, "usage": {model: {...}}}``: one finished program
  run of an evaluation grid (its task-model calls, failed ones included, and their tokens);
* ``{"p": ID, "s": S, "kind": "optimizer", "calls": 1, "usage": {...}}``: one optimizer call,
  answered or failed;
* ``{"p": ID, "s": S, "kind": "time"}``: a time mark (after each checkpoint and at the end).

``ID`` names the process (random per :class:`Ledger`), ``S`` is the seconds since it opened the
run directory, so a killed process's time is known up to its last line. Each line is flushed when
written; a process starts its lines on a fresh line, so a line torn by a killed writer stands
alone and is skipped (with a warning) when the ledger is read. A "call" is one LM call as DSPy makes
it (what the artifact's ``calls`` counts); a retried attempt of it is a fault (``faults.jsonl``),
not another call.

:meth:`Ledger.totals` is the artifact's ``cumulative`` entry: the sums over every line of every
process, this process's time up to now, and ``all_processes: False`` when the run directory was
continued from a version that kept no ledger (its earlier processes are then not counted).
"""

from __future__ import annotations

import json
import logging
import os
import threading
import time
import uuid
from collections import Counter
from pathlib import Path
from typing import Any

from metaspo_dspy.budget import Usage, cost_of, merge_usage
from metaspo_dspy.store.io import with_filename
from metaspo_dspy.store.journal import read_lines

logger = logging.getLogger(__name__)

#: The ledger's file in a run directory.
LEDGER_FILE = "ledger.jsonl"
#: Paid kinds, and the name of their usage in :meth:`Ledger.totals` (as in the artifact's ``usage``).
_PAID = {"task": "task_lm", "optimizer": "optimizer_lm"}


class _Tally:
    """Sums over ledger lines: calls and tokens per kind, seconds per process."""

    def __init__(self) -> None:
        self.calls: Counter[str] = Counter()
        self.usage: dict[str, dict[str, Counter[str]]] = {part: {} for part in _PAID.values()}
        self.seconds: dict[str, float] = {}
        self.unrecorded_before = False

    def add(self, line: dict[str, Any]) -> None:
        """Count one ledger line (the caller checked its shape with :func:`line_problem`)."""
        process = line["p"]
        self.seconds[process] = max(self.seconds.get(process, 0.0), float(line["s"]))
        self.unrecorded_before |= bool(line.get("unrecorded_before"))
        part = _PAID.get(line["kind"])
        if part is None:
            return
        self.calls[part] += int(line["calls"])
        for model, counts in (line.get("usage") or {}).items():
            self.usage[part].setdefault(model, Counter()).update(counts)


def line_problem(line: Any) -> str | None:
    """Why ``line`` is not a ledger line, or None."""
    if not isinstance(line, dict) or not isinstance(line.get("p"), str):
        return "a ledger line must be an object with a process id 'p'"
    if not isinstance(line.get("s"), (int, float)) or isinstance(line.get("s"), bool):
        return "a ledger line needs its seconds 's'"
    if line.get("kind") in _PAID:
        if not isinstance(line.get("calls"), int) or not isinstance(line.get("usage") or {}, dict):
            return f"a {line['kind']} line needs 'calls' (int) and 'usage' (mapping)"
    elif line.get("kind") not in ("start", "time"):
        return f"unknown ledger line kind {line.get('kind')!r}"
    return None


def _read(path: Path) -> _Tally:
    """The tally of the ledger file at ``path`` (empty when there is none); unreadable lines -- a
    torn last line, a corrupt or foreign line -- are skipped with a warning."""
    tally = _Tally()
    if path.exists():
        for line in read_lines(path, line_problem):
            tally.add(line)
    return tally


class Ledger:
    """This process's side of a run's ledger (see the module docstring).

    Args:
        path: the ledger file (None: in memory only -- :meth:`totals` then covers this process).
        unrecorded_before: the run had earlier processes that kept no ledger (a run directory
            continued from an older version); recorded in this process's first line, so
            ``totals()["all_processes"]`` stays False for the rest of the run.

    Opening reads the lines already there (earlier processes); nothing is written until the first
    :meth:`paid` or :meth:`mark`. Thread-safe. A failed write raises ``OSError`` naming the file.
    """

    def __init__(self, path: str | Path | None, unrecorded_before: bool = False):
        self.path = Path(path) if path is not None else None
        self.process = uuid.uuid4().hex[:12]
        self._started = time.monotonic()
        self._tally = _read(self.path) if self.path is not None else _Tally()
        self._unrecorded_before = unrecorded_before
        self._lock = threading.Lock()
        self._handle: Any = None
        self._opened = False  # this process has written its start line

    def paid(self, kind: str, calls: int, usage: Usage) -> None:
        """Record ``calls`` LM calls of ``kind`` (``"task"``: one finished program run;
        ``"optimizer"``: one optimizer call) and their tokens (``{model: counts}``)."""
        if kind not in _PAID:
            raise ValueError(f"kind must be one of {sorted(_PAID)}, got {kind!r}")
        self._write({"kind": kind, "calls": calls, "usage": usage})

    def mark(self) -> None:
        """Record this process's time so far (after each checkpoint)."""
        self._write({"kind": "time"})

    def totals(self, faults: int) -> dict[str, Any]:
        """The run's totals over every process, this one up to now (the artifact's
        ``cumulative``): ``processes``, ``task_lm_calls``, ``optimizer_calls``, ``tokens`` (prompt +
        completion), ``usage`` (``{"task_lm": {model: counts}, "optimizer_lm": ...}``), ``cost``
        (None when a model is unpriced), ``seconds``, ``faults`` (given: the run's fault log spans
        processes already) and ``all_processes``."""
        with self._lock:
            seconds = dict(self._tally.seconds)
            seconds[self.process] = max(seconds.get(self.process, 0.0), self._elapsed())
            usage = {part: {m: dict(c) for m, c in models.items()} for part, models in self._tally.usage.items()}
            calls = dict(self._tally.calls)
            unrecorded = self._tally.unrecorded_before or self._unrecorded_before
        merged: Usage = {}
        for models in usage.values():
            merge_usage(merged, models)
        return {
            "processes": len(seconds),
            "task_lm_calls": calls.get("task_lm", 0),
            "optimizer_calls": calls.get("optimizer_lm", 0),
            "tokens": sum(c.get("prompt_tokens", 0) + c.get("completion_tokens", 0) for c in merged.values()),
            "usage": usage,
            "cost": cost_of(merged),
            "seconds": round(sum(seconds.values()), 3),
            "faults": faults,
            "all_processes": not unrecorded,
        }

    def sync(self) -> None:
        """Flush and fsync the lines written so far."""
        with self._lock:
            if self._handle is not None:
                try:
                    os.fsync(self._handle.fileno())
                except OSError as exc:
                    raise with_filename(exc, self.path) from exc

    def close(self) -> None:
        """Mark the time (if this process wrote anything) and close the file."""
        if self._opened:
            self.mark()
        with self._lock:
            handle, self._handle = self._handle, None
            if handle is not None:
                try:
                    handle.close()
                except OSError as exc:
                    raise with_filename(exc, self.path) from exc

    # -- writing -----------------------------------------------------------------------------
    def _elapsed(self) -> float:
        return round(time.monotonic() - self._started, 3)

    def _write(self, entry: dict[str, Any]) -> None:
        with self._lock:
            lines = []
            if not self._opened:
                self._opened = True
                lines.append(
                    {"p": self.process, "s": 0.0, "kind": "start", "pid": os.getpid(), "at": round(time.time(), 3)}
                    | ({"unrecorded_before": True} if self._unrecorded_before else {})
                )
            lines.append({"p": self.process, "s": self._elapsed(), **entry})
            for line in lines:
                self._tally.add(line)
            if self.path is None:
                return
            text = "".join(json.dumps(line, default=str) + "\n" for line in lines)
            try:
                if self._handle is None:
                    self.path.parent.mkdir(parents=True, exist_ok=True)
                    self._handle = open(self.path, "a", encoding="utf-8")  # noqa: SIM115 - kept open for appends
                    # A fresh line: whatever a killed writer left half-written stands alone.
                    text = "\n" + text if self._handle.tell() > 0 else text
                self._handle.write(text)
                self._handle.flush()
            except OSError as exc:
                raise with_filename(exc, self.path) from exc


def describe(cumulative: dict[str, Any]) -> str:
    """One line for people: the run's totals over all its processes (an artifact's ``cumulative``)."""
    c = cumulative
    tokens = c["tokens"]
    shown = f"{tokens / 1e6:.2f}M" if tokens >= 100_000 else str(tokens)
    cost = f", ${c['cost']:.4f}" if c.get("cost") is not None else ""
    processes = f"{c['processes']} process{'es' if c['processes'] != 1 else ''}"
    text = (
        f"over {processes} of this run: {c['task_lm_calls']} task-model, {c['optimizer_calls']} optimizer calls; "
        f"{shown} tokens{cost}; {c['seconds']:.1f} s; {c['faults']} faults"
    )
    if not c.get("all_processes", True):
        text += " (earlier processes, run by a version without ledger.jsonl, are not counted)"
    return text
