"""Empty and truncated LM answers are faults, never answers.

What DSPy 3.4.1 does with such a 200 response on its own (checked against a loopback server):

* ``"choices": []``: through LiteLLM the LM returns no outputs and ``Predict`` returns a
  ``Prediction`` with no fields at all (no error; a metric sees a missing answer and scores 0);
  through the native client (``engine="lm15"``) it is an empty text, see the next point.
* content ``None`` or ``""``: ``AdapterParseError`` ("The LM returned an empty or null response")
  -- after a second request, since a ``ChatAdapter`` retries every parse error with a JSON adapter.
* ``finish_reason: "length"``: a logged warning only; a ``ChatAdapter`` parses whatever the cut
  text holds (often a complete-looking answer), a ``JSONAdapter`` fails to parse it.

The adapters of :mod:`metaspo_dspy.program.adapters` make both explicit with :func:`guarded` around each
adapter call and :func:`check` before parsing. An empty answer raises :class:`EmptyResponse` after
one retry that bypasses DSPy's cache (``cache=False``), so an empty answer stored in the cache is
never replayed as an answer; a truncated one raises :class:`TruncatedResponse` at once (asking
again would be cut at the same limit). Neither is a parse error, so no JSON fallback request is
made for them. Each bad answer is reported to the run's fault log as ``empty_response`` (with its
finish reasons) or ``truncated``.

DSPy hands an adapter only the texts of a completion; the finish reasons are read from the history
entry DSPy records for the call (cached or not, on both engines), which :func:`capturing` receives
through a private entry in ``dspy.settings.caller_modules``. With ``disable_history=True`` (or
``max_history_size=0``) no entry is recorded: empty answers are still caught, truncation is not.
"""

from __future__ import annotations

import contextlib
import contextvars
from collections.abc import Awaitable, Callable, Iterator
from typing import Any

import dspy

from metaspo_dspy.redact import redact
from metaspo_dspy.store import faults


class BadAnswer(RuntimeError):
    """A 200 response that holds no usable answer; ``kind`` is its fault kind."""

    kind = "bad_answer"

    def __init__(self, message: str, model: str | None = None, finish_reasons: tuple[str, ...] = ()):
        super().__init__(message)
        self.model = model
        self.finish_reasons = finish_reasons
        self.retried = False


class EmptyResponse(BadAnswer):
    """The model answered with no text (no choices, or null/blank content)."""

    kind = "empty_response"


class TruncatedResponse(BadAnswer):
    """The model stopped at its token limit (``finish_reason="length"``): the answer is cut off."""

    kind = "truncated"


class _Sink:
    """Stands in a ``caller_modules`` list to receive DSPy's history entries of one adapter call."""

    def __init__(self) -> None:
        self.history: list[dict[str, Any]] = []


_SINK: contextvars.ContextVar[_Sink | None] = contextvars.ContextVar("metaspo_response_sink", default=None)


@contextlib.contextmanager
def capturing() -> Iterator[None]:
    """Collect the history entries of the LM calls made inside (for :func:`check`)."""
    sink = _Sink()
    token = _SINK.set(sink)
    try:
        # First, so that code reading the innermost caller (``caller_modules[-1]``) is unaffected.
        with dspy.context(caller_modules=[sink, *(dspy.settings.caller_modules or [])]):
            yield
    finally:
        _SINK.reset(token)


def _field(obj: Any, name: str) -> Any:
    if isinstance(obj, dict):
        return obj.get(name)
    return getattr(obj, name, None)


def finish_reasons(entry: dict[str, Any] | None) -> tuple[str, ...]:
    """The finish reason of every choice in a DSPy history entry (LiteLLM or native response)."""
    response = (entry or {}).get("response")
    items = response if isinstance(response, (list, tuple)) else [response]
    reasons: list[str] = []
    for item in items:
        if item is None:
            continue
        choices = _field(item, "choices")
        if choices is not None:
            reasons += [str(_field(c, "finish_reason")) for c in choices]
        elif _field(item, "finish_reason") is not None:
            reasons.append(str(_field(item, "finish_reason")))
    return tuple(reasons)


def answer_text(output: Any) -> str | None:
    """The text of one LM output (a string, None, or DSPy's dict form)."""
    return output.get("text") if isinstance(output, dict) else output


def is_empty(outputs: list[Any]) -> bool:
    """No output, or every output without text (blank) and without tool calls."""
    return all(
        not str(answer_text(o) or "").strip() and not (isinstance(o, dict) and o.get("tool_calls")) for o in outputs
    )


def check(outputs: list[Any], lm: Any) -> None:
    """Raise (and report) :class:`EmptyResponse` or :class:`TruncatedResponse` for the outputs of
    the LM call just made inside :func:`capturing`; return None for a usable answer."""
    sink = _SINK.get()
    reasons = finish_reasons(sink.history[-1]) if sink is not None and sink.history else ()
    model = getattr(lm, "model", None)
    error: BadAnswer | None = None
    if is_empty(outputs):
        why = f"finish_reason={','.join(reasons)}" if reasons else "no choices" if not outputs else "no text"
        error = EmptyResponse(f"{model} returned an empty answer ({why})", model, reasons)
    elif "length" in reasons:
        max_tokens = (getattr(lm, "kwargs", None) or {}).get("max_tokens")
        error = TruncatedResponse(
            f"{model} stopped at its token limit (finish_reason=length, max_tokens={max_tokens}): the answer "
            "is cut off; raise max_tokens",
            model,
            reasons,
        )
    if error is not None:
        faults.report(error.kind, model, redact(str(error)))
        raise error


def guarded(call: Callable[[dict[str, Any]], Any], lm_kwargs: dict[str, Any]) -> Any:
    """``call(lm_kwargs)`` (one adapter call); an empty answer is asked once more with
    ``cache=False``. Raises :class:`EmptyResponse` when the second answer is empty too."""
    try:
        with capturing():
            return call(dict(lm_kwargs))
    except EmptyResponse as exc:
        if exc.retried:  # a nested adapter (the JSON fallback) already asked again
            raise
    try:
        with capturing():
            return call({**lm_kwargs, "cache": False})
    except EmptyResponse as exc:
        exc.retried = True
        raise


async def aguarded(call: Callable[[dict[str, Any]], Awaitable[Any]], lm_kwargs: dict[str, Any]) -> Any:
    """The async form of :func:`guarded`."""
    try:
        with capturing():
            return await call(dict(lm_kwargs))
    except EmptyResponse as exc:
        if exc.retried:
            raise
    try:
        with capturing():
            return await call({**lm_kwargs, "cache": False})
    except EmptyResponse as exc:
        exc.retried = True
        raise
