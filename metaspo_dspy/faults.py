"""Record every LM fault of a run: failed attempts (HTTP errors, timeouts, connection resets) and
completions that could not be parsed.

Retries are LiteLLM's (``dspy.LM(num_retries=...)``, exponential backoff); this module only
*observes*. A LiteLLM ``CustomLogger`` (installed once per process, appended to
``litellm.callbacks``) reports each failed attempt, and our adapters report each parse failure, to
every active :class:`FaultLog`. A run opens one for its duration, so its record holds each fault the
model server saw, even those a retry or the JSON fallback recovered from.
"""

from __future__ import annotations

import json
import threading
import time
from collections import Counter
from pathlib import Path
from typing import Any

_ACTIVE: list[FaultLog] = []
_LOCK = threading.Lock()
_INSTALLED = False


def classify(exc: BaseException | None) -> str:
    """A short fault kind for an exception raised by an LM call."""
    name = type(exc).__name__ if exc is not None else "unknown"
    text = str(exc).lower() if exc is not None else ""
    status = getattr(exc, "status_code", None)
    if "timeout" in name.lower() or "timed out" in text:
        return "timeout"
    if "connection error" in text or "connecterror" in text or "connection reset" in text:
        return "connection"  # LiteLLM reports these as InternalServerError with status 500
    if name == "RateLimitError" or status == 429:
        return "rate_limit"
    if (isinstance(status, int) and status >= 500) or name in ("InternalServerError", "ServiceUnavailableError"):
        return f"http_{status}" if isinstance(status, int) else "http_5xx"
    if "connection" in name.lower() or "connection" in text:
        return "connection"
    if name in ("AuthenticationError", "PermissionDeniedError"):
        return "auth"
    return name


class FaultLog:
    """The faults seen while this log is open (``with FaultLog(path) as faults: ...``).

    ``counts`` maps kinds (``timeout``, ``http_500``, ``parse_error``, ...) to numbers; each fault is
    also appended to ``path`` (JSON lines) when given.
    """

    def __init__(self, path: str | Path | None = None):
        self.path = Path(path) if path is not None else None
        self.counts: Counter[str] = Counter()
        self._lock = threading.Lock()
        self._handle = None

    def __enter__(self) -> FaultLog:
        install()
        with _LOCK:
            _ACTIVE.append(self)
        return self

    def __exit__(self, *exc: Any) -> None:
        with _LOCK:
            if self in _ACTIVE:
                _ACTIVE.remove(self)
        with self._lock:
            if self._handle is not None:
                self._handle.close()
                self._handle = None

    def record(self, kind: str, model: str | None, message: str) -> None:
        entry = {"t": round(time.time(), 4), "kind": kind, "model": model, "message": message[:300]}
        with self._lock:
            self.counts[kind] += 1
            if self.path is not None:
                if self._handle is None:
                    self.path.parent.mkdir(parents=True, exist_ok=True)
                    self._handle = open(self.path, "a", encoding="utf-8")  # noqa: SIM115 - appended to
                self._handle.write(json.dumps(entry) + "\n")
                self._handle.flush()


def report(kind: str, model: str | None, message: str) -> None:
    """Tell every open :class:`FaultLog` about a fault."""
    with _LOCK:
        logs = list(_ACTIVE)
    for log in logs:
        log.record(kind, model, message)


def install() -> None:
    """Register the LiteLLM failure observer (idempotent; appends to ``litellm.callbacks``)."""
    global _INSTALLED
    with _LOCK:
        if _INSTALLED:
            return
        import litellm
        from litellm.integrations.custom_logger import CustomLogger

        class _FaultObserver(CustomLogger):
            def log_failure_event(self, kwargs, response_obj, start_time, end_time):
                exc = kwargs.get("exception")
                report(classify(exc), kwargs.get("model"), f"{type(exc).__name__}: {exc}")

            async def async_log_failure_event(self, kwargs, response_obj, start_time, end_time):
                self.log_failure_event(kwargs, response_obj, start_time, end_time)

        litellm.callbacks = [*litellm.callbacks, _FaultObserver()]
        _INSTALLED = True
