"""What a program run sent to its LM and what came back, call by call.

The evaluator shows the optimizer the messages the task model saw and the completion it gave for
each wrong example, so each completion must be paired with *its own* call, also when a program
makes calls concurrently (``dspy.Parallel`` inside ``forward``, async gathers). Pairing is by call,
not by order: the adapter that formats a call (:func:`start`) marks that call as the current one of
its execution context (a ``ContextVar``; DSPy formats, sends and parses one adapter call in one
thread or task), and the completion it parses (:func:`finish`) goes to that mark. A completion is
never attached to a call that another thread or task made.
"""

from __future__ import annotations

import contextvars
import threading
from dataclasses import dataclass, field
from typing import Any

import dspy


@dataclass
class LMCall:
    """One adapter round trip: the messages sent and the raw completion received (if any)."""

    predictor: str | None
    messages: list[dict[str, Any]]
    completion: str | None = None


@dataclass
class CallRecorder:
    """Collects the LM calls of one program run (thread-safe appends).

    ``predictor_names`` maps ``id(predictor)`` to its name in the program, so each call is
    attributed to the predictor that made it.
    """

    predictor_names: dict[int, str] = field(default_factory=dict)
    calls: list[LMCall] = field(default_factory=list)
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def start(self, messages: list[dict[str, Any]]) -> LMCall:
        """Record a call about to be sent (by the innermost calling predictor) and return it."""
        caller = (dspy.settings.caller_modules or [None])[-1]
        name = self.predictor_names.get(id(caller)) if caller is not None else None
        call = LMCall(predictor=name, messages=messages)
        with self._lock:
            self.calls.append(call)
        return call

    @staticmethod
    def finish(call: LMCall, completion: str) -> None:
        """Attach ``completion`` to ``call`` (the first completion of a call is kept)."""
        if call.completion is None:
            call.completion = completion


_CURRENT: contextvars.ContextVar[tuple[CallRecorder, LMCall] | None] = contextvars.ContextVar(
    "metaspo_current_call", default=None
)


def recorder() -> CallRecorder | None:
    """The recorder of the program run in progress (``dspy.settings.metaspo_recorder``), if any."""
    return dspy.settings.get("metaspo_recorder")


def start(messages: list[dict[str, Any]]) -> None:
    """Record ``messages`` as the current call of this execution context (no-op without a recorder)."""
    active = recorder()
    _CURRENT.set((active, active.start(messages)) if active is not None else None)


def finish(completion: str) -> None:
    """Pair ``completion`` with the current call of this execution context, if it was recorded by
    the recorder still in effect."""
    current = _CURRENT.get()
    if current is not None and current[0] is recorder():
        CallRecorder.finish(current[1], completion)
