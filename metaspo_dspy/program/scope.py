"""Run code so that every predictor call inside carries a system prompt, whatever adapter it uses.

:func:`system_prompt_scope` is how :class:`~metaspo_dspy.program.system_prompt.WithSystemPrompt`,
:class:`~metaspo_dspy.program.system_prompt.MetaSPOProgram` and the evaluator apply a system prompt. Inside it:

* the adapter in effect is the base adapter (given, else the configured one, else ChatAdapter)
  carrying the system prompt (:func:`~metaspo_dspy.program.adapters.with_system_prompt`), set with a scoped
  ``dspy.context`` -- never ``dspy.configure`` -- so LM calls outside the scope never see it;
* an adapter the program picks itself inside ``forward`` (``with dspy.context(adapter=
  dspy.JSONAdapter()): ...``) carries it too: a DSPy callback (:class:`Rider`, first in
  ``dspy.settings.callbacks`` inside the scope) wraps the adapter in effect for the duration of
  each ``dspy.Predict`` call whose adapter carries no system prompt yet;
* an adapter the adapter in effect hands the call to carries it too: ``dspy.Refine``'s retry
  adapter, a subclass of the adapter Refine captured *before* a ``WithSystemPrompt`` inside it
  opened its scope, calls that captured adapter; the :class:`Rider` (a format callback) replaces
  the messages it formats with the ones the scope's adapter would send
  (:data:`~metaspo_dspy.program.adapters.HANDING_OVER`); calls made while parsing are left alone;
* an adapter that already carries one -- a nested scope's, or one made with ``with_system_prompt``
  inside ``forward`` -- is left as it is: the innermost system prompt wins;
* :func:`no_system_prompt` opens a block inside a scope whose calls get none (e.g. an optimizer
  called from inside a program); this package's own optimizer calls use it.
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import dspy
from dspy.dsp.utils.settings import thread_local_overrides
from dspy.dsp.utils.utils import dotdict
from dspy.utils.callback import BaseCallback

from metaspo_dspy.program import recorder as recording
from metaspo_dspy.program.adapters import (
    HANDING_OVER,
    InstructionsIn,
    base_adapter,
    format_with_system_prompt,
    system_prompt_of,
    with_system_prompt,
)

SETTING = "metaspo_system_prompt"


@dataclass(frozen=True)
class ActiveSystemPrompt:
    """The system prompt of the innermost scope (``dspy.settings.metaspo_system_prompt``)."""

    text: str
    instructions_in: InstructionsIn


class Rider(BaseCallback):
    """Puts the scope's system prompt on the adapter a ``dspy.Predict`` call is about to use, when
    the program switched to an adapter without one inside the scope. Restores it after the call.

    Also gives it to an adapter without one that the adapter in effect hands its call to (see
    :data:`~metaspo_dspy.program.adapters.HANDING_OVER`): the list of messages that adapter's ``format``
    returns -- the object DSPy hands to ``on_adapter_format_end`` and then sends -- is refilled in
    place with :func:`~metaspo_dspy.program.adapters.format_with_system_prompt`'s messages; while that
    adapter parses, nothing is handed over (its parser's own calls are not the task)."""

    def __init__(self) -> None:
        self._tokens: dict[str, Any] = {}
        self._handed: dict[str, tuple[Any, tuple[str, InstructionsIn], dict[str, Any]]] = {}
        self._parsing: dict[str, Any] = {}
        self._lock = threading.Lock()

    def on_module_start(self, call_id: str, instance: Any, inputs: dict[str, Any]) -> None:
        if not isinstance(instance, dspy.Predict):
            return
        active = dspy.settings.get(SETTING)
        adapter = dspy.settings.adapter
        if not isinstance(active, ActiveSystemPrompt) or system_prompt_of(adapter) is not None:
            return
        carried = with_system_prompt(adapter, active.text, active.instructions_in)
        token = thread_local_overrides.set(dotdict({**thread_local_overrides.get(), "adapter": carried}))
        with self._lock:
            self._tokens[call_id] = token

    def on_module_end(self, call_id: str, outputs: Any, exception: BaseException | None = None) -> None:
        with self._lock:
            token = self._tokens.pop(call_id, None)
        if token is not None:
            thread_local_overrides.reset(token)

    def on_adapter_format_start(self, call_id: str, instance: Any, inputs: dict[str, Any]) -> None:
        carried = HANDING_OVER.get()
        if carried is None or system_prompt_of(instance) is not None:
            return
        with self._lock:
            self._handed[call_id] = (instance, carried, inputs)

    def on_adapter_format_end(self, call_id: str, outputs: Any, exception: BaseException | None = None) -> None:
        with self._lock:
            handed = self._handed.pop(call_id, None)
        if handed is None or exception is not None or not isinstance(outputs, list):
            return
        instance, (text, instructions_in), inputs = handed
        outputs[:] = format_with_system_prompt(
            instance, text, instructions_in, inputs["signature"], inputs["demos"], inputs["inputs"]
        )

    def on_adapter_parse_start(self, call_id: str, instance: Any, inputs: dict[str, Any]) -> None:
        if HANDING_OVER.get() is None or system_prompt_of(instance) is not None:
            return
        recording.finish(inputs["completion"])  # pairs with the call format_with_system_prompt recorded
        token = HANDING_OVER.set(None)
        with self._lock:
            self._parsing[call_id] = token

    def on_adapter_parse_end(self, call_id: str, outputs: Any, exception: BaseException | None = None) -> None:
        with self._lock:
            token = self._parsing.pop(call_id, None)
        if token is not None:
            HANDING_OVER.reset(token)


RIDER = Rider()


#: Programs whose ``forward`` is DSPy's own and never switches adapters: inside a scope they need
#: no :class:`Rider` (whose presence makes DSPy compute callback inputs on every call, about a
#: third of a millisecond of CPU per program run).
_FIXED_ADAPTER = (dspy.Predict, dspy.ChainOfThought)


def needs_rider(program: Any) -> bool:
    """Whether ``program`` might pick its own adapter inside ``forward`` (anything but a plain
    ``dspy.Predict``/``dspy.ChainOfThought``, subclasses included)."""
    return type(program) not in _FIXED_ADAPTER


@contextlib.contextmanager
def system_prompt_scope(
    text: str, instructions_in: InstructionsIn = "user", adapter: Any = None, ride: bool = True, **overrides: Any
) -> Iterator[None]:
    """Every predictor call made inside carries ``text`` (see the module docstring).

    Args:
        text: the system prompt.
        instructions_in: where the instructions go (``"user"`` or ``"system"``).
        adapter: the base adapter (None: the one in effect, else ChatAdapter).
        ride: install the :class:`Rider` for adapters the code inside picks itself; False only
            for code that runs no program but those :func:`needs_rider` clears.
        overrides: further ``dspy.context`` settings for the block (``lm``, ``trace``, ...).
    """
    base = adapter if adapter is not None else dspy.settings.adapter
    settings: dict[str, Any] = {SETTING: ActiveSystemPrompt(text, instructions_in)}
    if ride:
        settings["callbacks"] = [RIDER, *(c for c in (dspy.settings.get("callbacks") or []) if c is not RIDER)]
    with dspy.context(adapter=with_system_prompt(base, text, instructions_in), **settings, **overrides):
        yield


@contextlib.contextmanager
def no_system_prompt(adapter: Any = None, **overrides: Any) -> Iterator[None]:
    """A block whose predictor calls carry no system prompt, even inside a scope.

    The adapter is ``adapter`` as given, else the one in effect without its system prompt (None:
    ChatAdapter). ``overrides`` are further ``dspy.context`` settings for the block.
    """
    base = adapter if adapter is not None else base_adapter(dspy.settings.adapter)
    with dspy.context(adapter=base, **{SETTING: None}, **overrides):
        yield
