"""Append-only JSON-lines journals: completed evaluations and proposals, persisted as they complete.

A journal is the durable memory of a run. The evaluator writes one line per finished program run
(keyed by :func:`~metaspo_dspy.evaluation.digests.item_key`), the proposer one line per finished proposal
(keyed by kind, iteration, task, candidate and a digest of what it was shown). Each line is flushed
to the operating system when written, so a killed process loses at most the line being written;
a torn last line, a corrupt line and a record of the wrong shape (valid JSON, but not
``{"key": str, "value": ...}`` or a value the journal's ``check`` refuses) are skipped with a
warning on reading, so such an entry is simply asked again. A failed write (disk full, ...) raises
``OSError`` naming the journal file; the lines before it stay valid. Resuming a run replays the
search deterministically with these journals as its memory: nothing already paid for is asked
again.
"""

from __future__ import annotations

import json
import logging
import os
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from metaspo_dspy.store.io import with_filename

logger = logging.getLogger(__name__)


class Journal:
    """A keyed, append-only JSON-lines file with an in-memory index of its entries.

    ``get(key)`` returns the last entry written under ``key``; ``put(key, value)`` appends. Safe to
    use from several threads. Missing files are created on first write; unreadable lines (a torn
    write at the end, a corrupt line, or a record of the wrong shape) are skipped with a warning.

    Args:
        path: the file (None: an in-memory journal).
        check: optional ``value -> problem or None``; a stored value for which it returns a
            problem is skipped with a warning instead of being handed to :meth:`get`'s callers.
    """

    def __init__(self, path: str | Path | None, check: Callable[[Any], str | None] | None = None):
        self.path = Path(path) if path is not None else None
        self._entries: dict[str, Any] = {}
        self._lock = threading.Lock()
        self._handle = None
        self._check = check
        if self.path is not None and self.path.exists():
            for key, value in self._read(self.path):
                self._entries[key] = value

    def _read(self, path: Path) -> Iterator[tuple[str, Any]]:
        for record in read_lines(path, self._problem, " (it will be asked again)"):
            yield record["key"], record["value"]

    def _problem(self, record: Any) -> str | None:
        """Why ``record`` is not a usable journal record, or None."""
        if not isinstance(record, dict) or set(record) != {"key", "value"}:
            keys = sorted(record) if isinstance(record, dict) else type(record).__name__
            return f"a record must be {{'key': ..., 'value': ...}}, got {keys}"
        if not isinstance(record["key"], str):
            return f"the key must be a string, got {type(record['key']).__name__}"
        return self._check(record["value"]) if self._check is not None else None

    def __len__(self) -> int:
        return len(self._entries)

    def __contains__(self, key: str) -> bool:
        return key in self._entries

    def get(self, key: str) -> Any | None:
        return self._entries.get(key)

    def put(self, key: str, value: Any) -> None:
        line = json.dumps({"key": key, "value": value}, ensure_ascii=False, default=str) + "\n"
        with self._lock:
            self._entries[key] = value
            if self.path is None:
                return
            if self._handle is None:
                self.path.parent.mkdir(parents=True, exist_ok=True)
                torn = self.path.exists() and self.path.stat().st_size > 0 and not _ends_with_newline(self.path)
                self._handle = open(self.path, "a", encoding="utf-8")  # noqa: SIM115 - kept open for appends
                if torn:  # a killed writer left half a line: end it so the next record stands alone
                    self._handle.write("\n")
            try:
                self._handle.write(line)
                self._handle.flush()
            except OSError as exc:
                raise with_filename(exc, self.path) from exc

    def sync(self) -> None:
        """Flush and fsync (called at phase boundaries)."""
        with self._lock:
            if self._handle is not None:
                try:
                    self._handle.flush()
                    os.fsync(self._handle.fileno())
                except OSError as exc:
                    raise with_filename(exc, self.path) from exc

    def close(self) -> None:
        with self._lock:
            if self._handle is not None:
                handle, self._handle = self._handle, None
                try:
                    handle.close()
                except OSError as exc:  # the last write's unflushed bytes (disk full, ...)
                    raise with_filename(exc, self.path) from exc


def read_lines(path: Path, problem: Callable[[Any], str | None], consequence: str = "") -> Iterator[Any]:
    """The JSON values of the lines of ``path`` for which ``problem`` returns None. Blank lines are
    passed over; an unreadable line (torn by a killed writer, corrupt) and a value with a problem
    are skipped with a warning naming the line (``consequence`` is appended to it)."""
    with open(path, "rb") as handle:
        for number, line in enumerate(handle, 1):
            if not line.strip():
                continue
            try:
                value = json.loads(line.decode("utf-8"))
            except (UnicodeDecodeError, json.JSONDecodeError):
                logger.warning("skipping unreadable line %d of %s (interrupted write?)", number, path)
                continue
            found = problem(value)
            if found:
                logger.warning("skipping line %d of %s: %s%s", number, path, found, consequence)
                continue
            yield value


def _ends_with_newline(path: Path) -> bool:
    with open(path, "rb") as handle:
        handle.seek(-1, os.SEEK_END)
        return handle.read(1) == b"\n"
