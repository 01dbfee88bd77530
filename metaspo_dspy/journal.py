"""Append-only JSON-lines journals: completed evaluations and proposals, persisted as they complete.

A journal is the durable memory of a run. The evaluator writes one line per finished program run
(keyed by :func:`~metaspo_dspy.evaluation.item_key`), the proposer one line per finished proposal
(keyed by kind, iteration, task, candidate and a digest of what it was shown). Each line is flushed
to the operating system when written, so a killed process loses at most the line being written;
a torn last line is ignored on reading. Resuming a run replays the search deterministically with
these journals as its memory: nothing already paid for is asked again.
"""

from __future__ import annotations

import json
import logging
import os
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

logger = logging.getLogger(__name__)


class Journal:
    """A keyed, append-only JSON-lines file with an in-memory index of its entries.

    ``get(key)`` returns the last entry written under ``key``; ``put(key, value)`` appends. Safe to
    use from several threads. Missing files are created on first write; unreadable lines (a torn
    write at the end, or a corrupt line) are skipped with a warning.
    """

    def __init__(self, path: str | Path | None):
        self.path = Path(path) if path is not None else None
        self._entries: dict[str, Any] = {}
        self._lock = threading.Lock()
        self._handle = None
        if self.path is not None and self.path.exists():
            for key, value in self._read(self.path):
                self._entries[key] = value

    @staticmethod
    def _read(path: Path) -> Iterator[tuple[str, Any]]:
        with open(path, encoding="utf-8") as handle:
            for number, line in enumerate(handle, 1):
                if not line.strip():
                    continue
                try:
                    record = json.loads(line)
                    yield record["key"], record["value"]
                except (json.JSONDecodeError, KeyError, TypeError):
                    logger.warning("skipping unreadable line %d of %s (interrupted write?)", number, path)

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
            self._handle.write(line)
            self._handle.flush()

    def sync(self) -> None:
        """Flush and fsync (called at phase boundaries)."""
        with self._lock:
            if self._handle is not None:
                self._handle.flush()
                os.fsync(self._handle.fileno())

    def close(self) -> None:
        with self._lock:
            if self._handle is not None:
                self._handle.close()
                self._handle = None


def _ends_with_newline(path: Path) -> bool:
    with open(path, "rb") as handle:
        handle.seek(-1, os.SEEK_END)
        return handle.read(1) == b"\n"
