"""Preflight: prove each LM is usable with one tiny request before a run pays for anything.

A run that cannot reach its model should fail in seconds with one message, not after a whole grid
of failed calls. :func:`preflight` sends one short chat request to each *distinct* LM of a run
(task and optimizer; the same LM object, or the same model at the same endpoint, is asked once),
bypassing DSPy's cache (``cache=False``: a cached answer proves nothing about the server), with the
LM's own retries and timeout. DSPy retries transient failures (429, 5xx, timeouts, connection
errors) with backoff, so a server that is still starting gets the LM's retries; rejected keys
(401/403), unknown models or endpoints (404) and refused requests (400) are not retried.

"Usable" means the transport, the authentication and the model work and the answer is not empty.
Correctness is never judged: a weak model (the embedded one, the fake) passes.

Preflight calls are not part of a run's accounting: they are reported on their own, never counted
in ``calls`` or ``phases``, so per-phase counts stay exactly the reference's.

:func:`check_lm` validates what needs no call: that an argument is a ``dspy.BaseLM`` at all.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from metaspo_dspy.errors import ModelConfigError
from metaspo_dspy.lm.providers import PROBE
from metaspo_dspy.redact import redact

#: Generous enough for reasoning models, small enough to cost nothing.
PROBE_MAX_TOKENS = 32


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


def preflight(lms: Sequence[tuple[str, Any]]) -> list[PreflightResult]:
    """Send one tiny request to each distinct LM in ``lms`` (``(role, lm)`` pairs, e.g.
    ``[("task", task_lm), ("optimizer", optimizer_lm)]``); None LMs are skipped.

    Returns one :class:`PreflightResult` per distinct LM, in order. Raises :class:`PreflightError`
    for the first LM that fails or answers with nothing.
    """
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
    return [_probe(tuple(roles), lm) for roles, lm in groups.values()]


def _probe(roles: tuple[str, ...], lm: Any) -> PreflightResult:
    model = getattr(lm, "model", type(lm).__name__)
    endpoint = endpoint_of(lm)
    who = f"{' and '.join(roles)} model {model!r} at {endpoint}"
    kwargs: dict[str, Any] = {"cache": False}
    configured = (getattr(lm, "kwargs", None) or {}).get("max_tokens")
    if configured is None or configured > PROBE_MAX_TOKENS:
        kwargs["max_tokens"] = PROBE_MAX_TOKENS
    started = time.perf_counter()
    try:
        outputs = lm(messages=[{"role": "user", "content": PROBE}], **kwargs)
    except Exception as exc:
        raise PreflightError(f"{who} is not usable: {_cause(exc)}") from None
    seconds = time.perf_counter() - started
    if not any(_text(o).strip() for o in outputs or []):
        raise PreflightError(
            f"{who} answered a connection check with an empty message; check that the server serves this "
            "model for chat completions (a run would score every answer as wrong)"
        )
    return PreflightResult(roles, str(model), endpoint, seconds)


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
