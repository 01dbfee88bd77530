"""Preflight: prove each LM is usable with one tiny request before a run pays for anything.

A run that cannot reach its model should fail in seconds with one message, not after a whole grid
of failed calls. :func:`preflight` sends one short chat request to each *distinct* LM of a run
(task and optimizer; the same LM object, or the same model at the same endpoint, is asked once),
bypassing DSPy's cache (``cache=False``: a cached answer proves nothing about the server), with the
LM's own retries. Transient failures (429, 5xx, timeouts, connection errors) are retried with DSPy's
backoff, so a server that is still starting gets the LM's retries; rejected keys (401/403), unknown
models or endpoints (404) and refused requests (400) are not retried.

**The check has its own deadline** (``timeout``, default :data:`DEFAULT_TIMEOUT` = 30 s; the CLI's
``--preflight-timeout`` and the config key ``preflight_timeout``): a server that accepts the request
and never answers fails the check after that many seconds with one :class:`PreflightError` naming
the model, the endpoint and the setting to raise, instead of waiting through the LM's own request
timeout and retries (with lm15's 600 s, 40 minutes). Each attempt of the check waits at most the
deadline for its answer (a copy of the LM with that timeout and DSPy's retries off; the retries
happen here, and none starts after the deadline), and the check runs in a daemon thread that the
caller stops waiting for at the deadline whatever the LM does. While it waits, ``progress`` is told
every :data:`PROGRESS_EVERY` seconds ("waiting for the task model ... at ...: 10s"; default: a
``logging`` warning). In-process models (the embedded one, the fake: no server to wait for) are
asked directly, without a deadline.

"Usable" means the transport, the authentication and the model work and the answer is not empty.
Correctness is never judged: a weak model (the embedded one, the fake) passes.

Preflight calls are not part of a run's accounting: they are reported on their own, never counted
in ``calls`` or ``phases``, so per-phase counts stay exactly the reference's.

:func:`check_lm` validates what needs no call: that an argument is a ``dspy.BaseLM`` at all.
"""

from __future__ import annotations

import contextlib
import contextvars
import logging
import math
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from metaspo_dspy.errors import ModelConfigError
from metaspo_dspy.lm import providers
from metaspo_dspy.lm.providers import PROBE
from metaspo_dspy.redact import redact

logger = logging.getLogger(__name__)

#: Generous enough for reasoning models, small enough to cost nothing.
PROBE_MAX_TOKENS = 32
#: Seconds the check waits for each distinct LM's answer (a setting: ``preflight_timeout``). A
#: 32-token answer takes seconds even from a busy server; a server still loading its model answers
#: 503 at once (retried within the deadline), so 30 s is reached only by a server that does not answer.
DEFAULT_TIMEOUT = 30.0
#: Seconds between two "waiting for ..." reports while the check waits.
PROGRESS_EVERY = 5.0

#: Told each "waiting for ..." line (one line of text, already redacted).
Progress = Callable[[str], None]


class PreflightError(ModelConfigError):
    """An LM is not usable; the message names the role, model, endpoint, cause and fix.

    A :class:`~metaspo_dspy.lm.ModelConfigError` (so a ``ValueError``): the CLI reports it as one
    ``error:`` line with exit code 2.
    """


@dataclass(frozen=True)
class PreflightResult:
    """One LM that answered: which roles it serves, its model, endpoint and round-trip time."""

    roles: tuple[str, ...]
    model: str
    endpoint: str
    seconds: float

    def describe(self) -> str:
        return f"{' + '.join(self.roles)} model {self.model} ok ({self.seconds:.1f}s)"


def check_lm(value: Any, name: str) -> None:
    """Raise a ``ModelConfigError`` unless ``value`` is a ``dspy.BaseLM`` (None is allowed: the
    caller decides whether a default applies)."""
    import dspy

    if value is None or isinstance(value, dspy.BaseLM):
        return
    hint = (
        f"; build it with dspy.LM({value!r}) or metaspo_dspy.lm.build_lm({value!r})" if isinstance(value, str) else ""
    )
    raise ModelConfigError(f"{name} must be a dspy.LM (a dspy.BaseLM), got {type(value).__name__} {value!r:.80}{hint}")


def _connection(lm: Any) -> dict[str, Any]:
    """An LM's client settings: its kwargs, or what its native engine holds (see lm.native)."""
    from metaspo_dspy.lm.native import native_settings

    return native_settings(lm) or getattr(lm, "kwargs", None) or {}


def endpoint_of(lm: Any) -> str:
    """Where an LM's requests go, for messages: its ``api_base``, or the provider's default."""
    connection = _connection(lm)
    base = connection.get("api_base") or connection.get("base_url")
    return str(base) if base else "the provider's default endpoint"


def _identity(lm: Any) -> tuple[Any, ...]:
    connection = _connection(lm)
    key = connection.get("api_key") or connection.get("api_key_env")
    return (type(lm), getattr(lm, "model", None), connection.get("api_base"), key)


def check_timeout(timeout: Any) -> float:
    """``timeout`` as float seconds; :class:`~metaspo_dspy.errors.ModelConfigError` unless it is a
    positive finite number."""
    if isinstance(timeout, bool) or not isinstance(timeout, (int, float)) or not 0 < timeout < math.inf:
        raise ModelConfigError(f"preflight_timeout must be a positive number of seconds, got {timeout!r}")
    return float(timeout)


def preflight(
    lms: Sequence[tuple[str, Any]], *, timeout: float = DEFAULT_TIMEOUT, progress: Progress | None = None
) -> list[PreflightResult]:
    """Send one tiny request to each distinct LM in ``lms`` (``(role, lm)`` pairs, e.g.
    ``[("task", task_lm), ("optimizer", optimizer_lm)]``); None LMs are skipped.

    Args:
        lms: the LMs to check, with their roles.
        timeout: seconds each distinct LM gets to answer, retries included (default 30).
        progress: told a "waiting for ..." line every :data:`PROGRESS_EVERY` seconds while an LM
            has not answered (None: a ``logging`` warning of this module's logger).

    Returns one :class:`PreflightResult` per distinct LM, in order. Raises :class:`PreflightError`
    for the first LM that fails, answers with nothing or does not answer within ``timeout``
    (after at most ``timeout`` seconds, plus about a second); a
    :class:`~metaspo_dspy.errors.ModelConfigError` for a ``timeout`` that is not a positive number.
    """
    timeout = check_timeout(timeout)
    report = progress if progress is not None else _log_progress
    groups: dict[tuple[Any, ...], tuple[list[str], Any]] = {}
    for role, lm in lms:
        if lm is None:
            continue
        check_lm(lm, f"the {role} LM")
        key = _identity(lm)
        if key in groups:
            groups[key][0].append(role)
        else:
            groups[key] = ([role], lm)
    return [_probe(tuple(roles), lm, timeout, report) for roles, lm in groups.values()]


def _log_progress(text: str) -> None:
    logger.warning("preflight: %s", text)


def _probe(roles: tuple[str, ...], lm: Any, timeout: float, progress: Progress) -> PreflightResult:
    model = getattr(lm, "model", type(lm).__name__)
    endpoint = redact(endpoint_of(lm))  # a password in api_base is never shown, in any message
    who = f"{' and '.join(roles)} model {model!r} at {endpoint}"
    kwargs: dict[str, Any] = {"cache": False}
    configured = (getattr(lm, "kwargs", None) or {}).get("max_tokens")
    if configured is None or configured > PROBE_MAX_TOKENS:
        kwargs["max_tokens"] = PROBE_MAX_TOKENS
    started = time.perf_counter()
    if providers.is_local(providers.prefix_of(str(model))):
        try:  # in this process: no server to wait for (the embedded model's first call loads it)
            outputs = lm(messages=[{"role": "user", "content": PROBE}], **kwargs)
        except Exception as exc:
            raise PreflightError(f"{who} is not usable: {_cause(exc)}") from None
    else:
        outputs = _ask_within(lm, kwargs, timeout, who, progress)
    seconds = time.perf_counter() - started
    if not any(_text(o).strip() for o in outputs or []):
        raise PreflightError(
            f"{who} answered a connection check with an empty message; check that the server serves this "
            "model for chat completions (a run would score every answer as wrong)"
        )
    return PreflightResult(roles, str(model), endpoint, seconds)


class _Attempts:
    """The check of one LM, run in a daemon thread: attempts until an answer, a final error, the
    LM's retries used up or :meth:`stop` (the caller's deadline); no attempt starts after it."""

    def __init__(self, lm: Any, kwargs: dict[str, Any], deadline: float):
        self.probe, self.retries, self.engine = _bounded(lm, deadline - time.monotonic())
        self.kwargs = kwargs
        self.deadline = deadline
        self.done = threading.Event()
        self._stop = threading.Event()
        self.outputs: Any = None
        self.error: BaseException | None = None

    def stop(self) -> None:
        self._stop.set()

    def run(self) -> None:
        from dspy.utils.exceptions import is_retryable_lm_error

        try:
            for attempt in range(self.retries + 1):
                try:
                    self.outputs = self.probe(messages=[{"role": "user", "content": PROBE}], **self.kwargs)
                    return
                except Exception as exc:
                    self.error = exc
                    if attempt >= self.retries or not is_retryable_lm_error(exc):
                        return
                    wait = _backoff(exc, attempt)
                    if time.monotonic() + wait >= self.deadline or self._stop.wait(wait):
                        return  # the next attempt could not finish in time: report this failure
                    self.error = None
        except BaseException as exc:  # handed to the caller's thread
            self.error = exc
        finally:
            self.done.set()
            if self.engine is not None:  # the probe's own connections, never the LM's
                with contextlib.suppress(Exception):
                    self.engine.close()


def _ask_within(lm: Any, kwargs: dict[str, Any], timeout: float, who: str, progress: Progress) -> Any:
    """The LM's answer to the probe, asked in a daemon thread that is waited for at most
    ``timeout`` seconds; ``progress`` hears about the wait every :data:`PROGRESS_EVERY` seconds."""
    started = time.monotonic()
    deadline = started + timeout
    check = _Attempts(lm, kwargs, deadline)
    thread = threading.Thread(
        target=contextvars.copy_context().run, args=(check.run,), name="metaspo-preflight", daemon=True
    )
    thread.start()
    next_report = started + PROGRESS_EVERY
    while not check.done.is_set():
        now = time.monotonic()
        if now >= deadline:
            break
        if check.done.wait(min(next_report, deadline) - now):
            break
        now = time.monotonic()
        if next_report <= now < deadline and not check.done.is_set():
            elapsed = now - started
            progress(f"waiting for the {who} ... {elapsed:.0f}s (preflight_timeout {timeout:g} s)")
            next_report += PROGRESS_EVERY
    if not check.done.is_set():
        check.stop()  # no further attempt; the one in flight ends by its own timeout (daemon thread)
        raise PreflightError(
            f"the {who} did not answer within {timeout:g} s (preflight_timeout); is the server running and "
            "not overloaded? Raise --preflight-timeout SECONDS (config key preflight_timeout) for a server "
            "that is slow to answer, or skip the check with --no-preflight"
        )
    if check.error is not None:
        raise PreflightError(f"{who} is not usable: {_cause(check.error)}") from None
    return check.outputs


def _bounded(lm: Any, seconds: float) -> tuple[Any, int, Any]:
    """(the LM to send the probe through, retries to make here, an engine made for it or None): a
    copy of a ``dspy.LM`` whose requests time out within ``seconds`` (never later than the LM's own
    timeout) and that DSPy does not retry, with the LM's ``num_retries``; any other LM as it is, with
    no retry here (its own apply; the caller's deadline bounds them)."""
    import dspy

    from metaspo_dspy.lm.native import AsyncNativeEngine, NativeEngine

    if not isinstance(lm, dspy.LM):
        return lm, 0, None
    retries = int(getattr(lm, "num_retries", 0) or 0)
    seconds = max(1.0, math.ceil(seconds))
    try:
        engine = lm.engine
        if isinstance(engine, NativeEngine):
            state = engine.settings()
            state["timeout"] = _shorter(state.get("timeout"), seconds)
            own = NativeEngine.load_state(dict(state))
            probe = lm.copy(engine=own, async_engine=AsyncNativeEngine.load_state(dict(state)), num_retries=0)
            return probe, retries, own
        if isinstance(engine, str):
            return lm.copy(num_retries=0, timeout=_shorter(lm.kwargs.get("timeout"), seconds)), retries, None
        return lm.copy(num_retries=0), retries, None  # a custom engine owns its timeout
    except Exception:  # an LM that cannot be copied so: ask it as it is, with its own retries
        return lm, 0, None


def _shorter(current: Any, seconds: float) -> float:
    if isinstance(current, (int, float)) and not isinstance(current, bool) and 0 < current < seconds:
        return float(current)
    return seconds


def _backoff(exc: BaseException, attempt: int) -> float:
    """DSPy's wait before the next attempt: the server's ``retry_after``, else 1, 2, 4 ... s (at most 60)."""
    hint = getattr(exc, "retry_after", None)
    if isinstance(hint, (int, float)) and not isinstance(hint, bool) and 0 <= hint < math.inf:
        return float(hint)
    return float(min(2 ** min(attempt, 6), 60))


def _text(output: Any) -> str:
    if isinstance(output, dict):
        return str(output.get("text") or "")
    return str(output or "")


def _cause(exc: BaseException) -> str:
    """What went wrong and what to do, from DSPy's LM error taxonomy (both engines use it)."""
    from dspy.utils import exceptions as e

    status = getattr(exc, "status", None) or getattr(exc, "status_code", None)
    # One line: DSPy's messages may carry a multi-line "To fix:" list after the first paragraph.
    first = str(exc).strip().split("\n\n", 1)[0]
    detail = redact(" ".join(f"{type(exc).__name__}: {first}".split()))[:400]
    code = f"HTTP {status}: " if status else ""
    if isinstance(exc, e.LMAuthError) or status in (401, 403):
        fix = "the server rejected the credentials; check the API key in the environment variable (api_key_env)"
    elif isinstance(exc, e.LMUnsupportedModelError) or status == 404:
        fix = (
            "the model or the endpoint was not found; check the model name after the provider prefix and "
            "api_base (an OpenAI-compatible server's URL usually ends in /v1)"
        )
    elif isinstance(exc, e.LMInvalidRequestError) or status == 400:
        fix = "the server refused the request; check the model string, api_base and generation settings"
    elif isinstance(exc, e.LMBillingError):
        fix = "the provider refused for billing or quota reasons"
    elif isinstance(exc, (e.LMTransportError, e.LMTimeoutError, e.LMServerError, e.LMRateLimitError)):
        fix = (
            "no usable answer after the LM's retries (num_retries); is the server running and reachable at "
            "api_base? Raise num_retries or timeout for a server that takes long to start"
        )
    else:
        fix = "check the model string, api_base and API key"
    return f"{fix} ({code}{detail})"
