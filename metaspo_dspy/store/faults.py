"""Record every LM fault of a run: failed attempts (HTTP errors, timeouts, connection resets) and
completions that could not be parsed.

Retries are DSPy's (``dspy.LM(num_retries=...)``, exponential backoff, ``Retry-After``); this module
only *observes*. A LiteLLM ``CustomLogger`` (installed once per process, appended to
``litellm.callbacks``) reports each failed attempt, and our adapters report each parse failure, to
every active :class:`FaultLog`. A run opens one for its duration, so its record holds each fault the
model server saw, even those a retry or the JSON fallback recovered from. Answers that hold nothing
usable are faults too: ``empty_response`` and ``truncated`` (:mod:`metaspo_dspy.program.responses`).

Messages are redacted (:func:`~metaspo_dspy.redact.redact`) before they are written: a server that
echoes the request's ``Authorization`` header in its error text must not put the key in a file.
A log opened on an existing file (a resumed run) counts the faults already in it, so ``counts``
covers every process that wrote to the file.

LMs built by :func:`~metaspo_dspy.lm.build_lm` on DSPy's native client report their failed attempts
through :class:`~metaspo_dspy.lm.native.NativeEngine`, so both engines record the same faults. A
plain ``dspy.LM(..., engine="lm15")`` is not observed: its failed attempts are not recorded here
(the failure of a call after its retries still reaches the example or proposal that made it).
"""

from __future__ import annotations

import json
import logging
import threading
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

from metaspo_dspy.redact import redact

logger = logging.getLogger(__name__)
_ACTIVE: list[FaultLog] = []
_LOCK = threading.Lock()
_INSTALLED = False


def classify(exc: BaseException | None) -> str:
    """A short fault kind for an exception raised by an LM call."""
    name = type(exc).__name__ if exc is not None else "unknown"
    text = str(exc).lower() if exc is not None else ""
    status = getattr(exc, "status_code", None)
    if status is None:
        status = getattr(exc, "status", None)  # DSPy's native client (lm15) and DSPy's LM errors
    if "timeout" in name.lower() or "timed out" in text:
        return "timeout"
    if "connection error" in text or "connecterror" in text or "connection reset" in text:
        return "connection"  # LiteLLM reports these as InternalServerError with status 500
    if name == "TransportError":
        return "connection"
    if name == "RateLimitError" or status == 429:
        return "rate_limit"
    if (isinstance(status, int) and status >= 500) or name in (
        "InternalServerError",
        "ServiceUnavailableError",
        "ServerError",
    ):
        return f"http_{status}" if isinstance(status, int) else "http_5xx"
    if "connection" in name.lower() or "connection" in text:
        return "connection"
    if name in ("AuthenticationError", "PermissionDeniedError", "AuthError"):
        return "auth"
    return name


class FaultLog:
    """The faults seen while this log is open (``with FaultLog(path) as faults: ...``).

    ``counts`` maps kinds (``timeout``, ``http_500``, ``parse_error``, ``empty_response``,
    ``truncated``, ...) to numbers; each fault is also appended to ``path`` (JSON lines) when given.
    Opening the log on an existing file starts ``counts`` from the faults recorded in it (torn or
    unreadable lines are skipped), so after a resume they count every process's faults.
    """

    def __init__(
        self,
        path: str | Path | None = None,
        keep: bool = False,
        on_record: Callable[[str, str | None, str], None] | None = None,
    ):
        self.path = Path(path) if path is not None else None
        self.counts: Counter[str] = Counter()
        #: With ``keep``: every fault seen, as (kind, model, redacted message).
        self.entries: list[tuple[str, str | None, str]] = []
        self._keep = keep
        #: Called with (kind, model, redacted message) for each fault, in the thread that saw it, as
        #: it is recorded: a worker process forwards its faults to the parent this way (see
        #: :mod:`metaspo_dspy.evaluation.processes`).
        self._on_record = on_record
        self._lock = threading.Lock()
        self._handle = None

    def __enter__(self) -> FaultLog:
        install()
        with self._lock:
            self.counts = self._recorded()
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

    def _recorded(self) -> Counter[str]:
        """The kinds of the faults already in ``path`` (none when there is no file)."""
        counts: Counter[str] = Counter()
        if self.path is None or not self.path.exists():
            return counts
        with open(self.path, "rb") as handle:
            for line in handle:
                if not line.strip():
                    continue
                try:
                    kind = json.loads(line.decode("utf-8"))["kind"]
                except (UnicodeDecodeError, ValueError, KeyError, TypeError):
                    logger.warning("skipping an unreadable line of %s (interrupted write?)", self.path)
                    continue
                counts[str(kind)] += 1
        return counts

    def record(self, kind: str, model: str | None, message: str) -> None:
        """Count a fault and append it to the file; ``message`` is redacted, then cut to 300 chars."""
        entry = {"t": round(time.time(), 4), "kind": kind, "model": model, "message": redact(message)[:300]}
        with self._lock:
            self.counts[kind] += 1
            if self._keep:
                self.entries.append((kind, model, entry["message"]))
            if self.path is not None:
                if self._handle is None:
                    self.path.parent.mkdir(parents=True, exist_ok=True)
                    torn = self.path.exists() and not _ends_with_newline(self.path)
                    self._handle = open(self.path, "a", encoding="utf-8")  # noqa: SIM115 - appended to
                    if torn:  # a killed writer left half a line: end it so this record stands alone
                        self._handle.write("\n")
                self._handle.write(json.dumps(entry) + "\n")
                self._handle.flush()
        if self._on_record is not None:
            self._on_record(kind, model, entry["message"])


def _ends_with_newline(path: Path) -> bool:
    """True for an empty file or one whose last byte is a newline."""
    with open(path, "rb") as handle:
        if handle.seek(0, 2) == 0:
            return True
        handle.seek(-1, 2)
        return handle.read(1) == b"\n"


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
