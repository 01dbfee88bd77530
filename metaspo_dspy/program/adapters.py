"""Adapters that put a system prompt at the start of the system message.

MetaSPO splits an LM call into a task-agnostic *system prompt*, a task-specific *user prompt* and
the query. DSPy has no system-prompt concept: its adapters build the system message from field
descriptions, the field structure and the signature's instructions. This module adds one:

* :func:`with_system_prompt` returns a copy of *any* adapter (Chat, JSON, XML, user subclasses)
  whose system message starts with the system prompt, and whose JSON fallback (the second try a
  ``ChatAdapter`` makes after a parse error) carries it too.
* ``instructions_in="user"`` (MetaSPO's placement, the default) moves the signature's instructions
  -- the user prompt -- out of the system message and to the start of the last user message;
  ``instructions_in="system"`` keeps DSPy's own placement.
* :class:`ReferenceAdapter` sends the messages the MetaSPO reference code sends: the system prompt
  alone as the system message and the instructions, with ``{field}`` slots filled, as the user
  message; the whole completion is the single output field.

Every adapter made here reports the messages it formats and the completions it parses to the
:class:`~metaspo_dspy.program.recorder.CallRecorder` found in ``dspy.settings.metaspo_recorder`` (if any),
each completion paired with its own call; the evaluator uses this to show the optimizer what the
model saw and said. While such an adapter's call is in progress (outside its own ``format`` and
``parse``), :data:`HANDING_OVER` holds its system prompt: an adapter subclass that hands the call
to another adapter (``dspy.Refine``'s retry adapter does) makes that adapter format the task's
messages, and :class:`~metaspo_dspy.program.scope.Rider` gives them the system prompt
(:func:`format_with_system_prompt`). It also refuses empty and truncated answers
(:mod:`metaspo_dspy.program.responses`: an empty one is asked once more, bypassing DSPy's cache, then
raises ``EmptyResponse``; a truncated one raises ``TruncatedResponse``), and reports them and
every parse failure to the run's fault log.
"""

from __future__ import annotations

import contextlib
import contextvars
import copy
import functools
import threading
from collections.abc import Iterator
from typing import Any, Literal

import dspy
import dspy.utils.callback as _dspy_callbacks
from dspy.adapters.base import Adapter
from dspy.utils.exceptions import AdapterParseError

from metaspo_dspy.program import recorder as recording
from metaspo_dspy.program import responses
from metaspo_dspy.program.recorder import CallRecorder, LMCall
from metaspo_dspy.program.reference_adapter import ReferenceAdapter
from metaspo_dspy.redact import redact
from metaspo_dspy.store import faults

__all__ = [
    "ADAPTERS",
    "HANDING_OVER",
    "CallRecorder",
    "InstructionsIn",
    "LMCall",
    "ReferenceAdapter",
    "adapter_in_effect",
    "adapter_name",
    "base_adapter",
    "format_with_system_prompt",
    "make_adapter",
    "message_text",
    "observed",
    "placement_of",
    "system_prompt_of",
    "with_system_prompt",
]

InstructionsIn = Literal["user", "system"]
_PLACEMENTS = ("user", "system")
_CALLBACKS_FILE = _dspy_callbacks.__file__  # where DSPy's with_callbacks wrappers are defined

#: ``(system prompt, placement)`` of the :func:`with_system_prompt` adapter whose ``__call__``/
#: ``acall`` is in progress in this execution context, outside that adapter's own ``parse``; None
#: elsewhere. An adapter *without* a system prompt that formats while it is set was handed the
#: task call by the adapter in effect (e.g. ``dspy.Refine``'s retry adapter calls the adapter it
#: captured before our scope opened) and must send this system prompt; one that formats while the
#: adapter in effect parses (``TwoStepAdapter``'s extraction call) is a helper call and must not.
HANDING_OVER: contextvars.ContextVar[tuple[str, InstructionsIn] | None] = contextvars.ContextVar(
    "metaspo_handing_over", default=None
)


@contextlib.contextmanager
def _handing_over(carried: tuple[str, InstructionsIn] | None) -> Iterator[None]:
    token = HANDING_OVER.set(carried)
    try:
        yield
    finally:
        HANDING_OVER.reset(token)


def message_text(content: Any) -> str:
    """The text of a message's content, whether a string or a list of content parts."""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return "\n".join(part.get("text", "") for part in content if isinstance(part, dict))
    return str(content)


def _join(first: str, second: str) -> str:
    first, second = first.strip(), second.strip()
    if first and second:
        return f"{first}\n\n{second}"
    return first or second


def _prepend_text(content: Any, text: str) -> Any:
    if not text.strip():
        return content
    if isinstance(content, list):
        return [{"type": "text", "text": text.strip()}, *content]
    return _join(text, content)


def _without_callbacks(fn: Any) -> Any:
    """``fn`` without the ``with_callbacks`` layers DSPy's ``Adapter.__init_subclass__`` puts on
    ``format``/``parse`` (other decorators are kept)."""
    while hasattr(fn, "__wrapped__") and getattr(getattr(fn, "__code__", None), "co_filename", None) == _CALLBACKS_FILE:
        fn = fn.__wrapped__
    return fn


@functools.lru_cache(maxsize=512)
def _without_instructions(signature: type) -> type:
    """A copy of ``signature`` whose instructions are empty (``with_instructions("")`` would put
    DSPy's default instructions back); the original class is never touched."""
    bare = signature.with_instructions(" ")
    bare.instructions = ""
    return bare


class _SystemPromptMixin:
    """Mixed in front of an adapter class by :func:`with_system_prompt` (never used alone)."""

    system_prompt_text: str = ""
    instructions_in: InstructionsIn = "user"

    def _places_instructions(self) -> bool:
        """True when this adapter moves the instructions to the user message itself."""
        return self.instructions_in == "user" and not getattr(self, "embeds_instructions", False)

    def format_task_description(self, signature):
        if not self._places_instructions():
            return super().format_task_description(signature)
        base = super().format_task_description
        if getattr(base, "__func__", None) is dspy.ChatAdapter.format_task_description:
            return ""  # Chat, JSON and XML: the task description is only the instructions
        return base(_without_instructions(signature))  # e.g. TwoStepAdapter keeps its field list

    def format(self, signature, demos, inputs):
        """The base adapter's messages with the system prompt first in the system message and,
        under ``instructions_in="user"``, the instructions first in the last user message. This
        method (not the base's) is the one DSPy's callbacks see, so ``on_adapter_format_end``
        receives the messages that are sent."""
        base_format = _without_callbacks(super().format.__func__)
        messages = [dict(m) for m in base_format(self, signature, demos, inputs)]
        if messages and messages[0].get("role") == "system":
            messages[0]["content"] = _join(self.system_prompt_text, message_text(messages[0]["content"]))
        elif self.system_prompt_text.strip():
            messages.insert(0, {"role": "system", "content": self.system_prompt_text.strip()})
        if self._places_instructions():
            for message in reversed(messages):
                if message.get("role") == "user":
                    message["content"] = _prepend_text(message["content"], signature.instructions)
                    break
        recording.start(messages)
        return messages

    def __call__(self, lm, lm_kwargs, signature, demos, inputs):
        base = super()
        with _handing_over((self.system_prompt_text, self.instructions_in)):
            return responses.guarded(lambda kwargs: base.__call__(lm, kwargs, signature, demos, inputs), lm_kwargs)

    async def acall(self, lm, lm_kwargs, signature, demos, inputs):
        base = super()
        with _handing_over((self.system_prompt_text, self.instructions_in)):
            return await responses.aguarded(lambda kwargs: base.acall(lm, kwargs, signature, demos, inputs), lm_kwargs)

    def _call_postprocess(self, processed_signature, original_signature, outputs, lm, lm_kwargs):
        try:
            responses.check(outputs, lm)
        except responses.BadAnswer:
            recording.finish("\n".join(str(responses.answer_text(o) or "") for o in outputs))
            raise
        return super()._call_postprocess(processed_signature, original_signature, outputs, lm, lm_kwargs)

    def parse(self, signature, completion):
        recording.finish(completion)
        base_parse = _without_callbacks(super().parse.__func__)
        try:
            with _handing_over(None):  # calls the parser makes (TwoStepAdapter's extraction) are not the task
                return base_parse(self, signature, completion)
        except AdapterParseError as exc:
            faults.report("parse_error", None, redact(f"{type(self).__name__}: {str(exc)[:200]}"))
            raise

    def _make_json_adapter_fallback(self):
        return with_system_prompt(super()._make_json_adapter_fallback(), self.system_prompt_text, self.instructions_in)

    def __reduce__(self):
        """Pickle as ``with_system_prompt(<the base adapter>, text, placement)``: the class made by
        :func:`with_system_prompt` is built at run time and cannot be looked up by name."""
        return (with_system_prompt, (_plain_copy(self), self.system_prompt_text, self.instructions_in))


def _plain_copy(adapter: Any) -> Any:
    """A shallow copy of a :func:`with_system_prompt` adapter as an instance of its base class."""
    base_cls = _base_class(type(adapter))
    plain = base_cls.__new__(base_cls)
    plain.__dict__.update(adapter.__dict__)
    for name in ("system_prompt_text", "instructions_in"):
        plain.__dict__.pop(name, None)
    return plain


def _base_class(cls: type) -> type:
    """The adapter class a :func:`with_system_prompt` class was made from (else ``cls``)."""
    if issubclass(cls, _SystemPromptMixin):
        return next(c for c in cls.__mro__[1:] if c is not _SystemPromptMixin)
    return cls


_CLASS_CACHE: dict[type, type] = {}
_CLASS_LOCK = threading.Lock()


def _system_prompt_class(base: type) -> type:
    """The class ``base`` gets when it carries a system prompt: the mixin in front of ``base``,
    under ``base``'s own name -- DSPy's ``StreamListener`` recognises adapters by class name
    (``ChatAdapter``, ``JSONAdapter``, ``XMLAdapter``), so streaming works as it does for ``base``."""
    with _CLASS_LOCK:
        cls = _CLASS_CACHE.get(base)
        if cls is None:
            # Adapter.__init_subclass__ wraps the mixin's format/parse with DSPy's callbacks; the
            # mixin calls the base's methods without theirs, so callbacks fire once, on ours.
            cls = type(base.__name__, (_SystemPromptMixin, base), {"__module__": __name__})
            cls.__qualname__ = f"with_system_prompt({base.__qualname__})"
            _CLASS_CACHE[base] = cls
    return cls


def with_system_prompt(adapter: Adapter | None, text: str, instructions_in: InstructionsIn = "user") -> Adapter:
    """Return a copy of ``adapter`` (default: ``dspy.ChatAdapter()``) that carries ``text``.

    Contract: the returned adapter formats exactly what ``adapter`` would, except that the system
    message starts with ``text`` (a system message is created when the base adapter has none and
    ``text`` is not empty) and, with ``instructions_in="user"``, the signature's instructions open
    the last user message instead of closing the system message. The rest of the base adapter's
    task description stays in the system message: for Chat/JSON/XML that description is only the
    instructions, for ``TwoStepAdapter`` it also lists the input and output fields, which stay.

    Public hook: an adapter class that writes ``signature.instructions`` into its messages itself
    sets the class attribute ``embeds_instructions = True``; its instructions are then left where
    it puts them (neither removed from its task description nor added to the user message), and
    only the system prompt is added. ``ReferenceAdapter`` does this.

    The copy keeps the base adapter's class name (streaming listeners match adapters by name),
    DSPy's format/parse callbacks see the messages as sent, and it pickles with ``pickle``
    (rebuilt through this function). ``adapter`` is not modified; wrapping an already wrapped
    adapter replaces its system prompt.
    """
    if instructions_in not in _PLACEMENTS:
        raise ValueError(f"instructions_in must be one of {_PLACEMENTS}, got {instructions_in!r}")
    base = adapter if adapter is not None else dspy.ChatAdapter()
    wrapped = _plain_copy(base) if isinstance(base, _SystemPromptMixin) else copy.copy(base)
    wrapped.__class__ = _system_prompt_class(_base_class(type(base)))
    wrapped.system_prompt_text = text or ""
    wrapped.instructions_in = instructions_in
    return wrapped


def format_with_system_prompt(
    adapter: Adapter, text: str, instructions_in: InstructionsIn, signature: type, demos: list, inputs: dict[str, Any]
) -> list[dict[str, Any]]:
    """The messages ``with_system_prompt(adapter, text, instructions_in)`` formats for this call,
    built without firing DSPy's format callbacks (for a callback that replaces what ``adapter``
    formatted on its own; the call is reported to the run's recorder like any formatted call)."""
    carried = with_system_prompt(adapter, text, instructions_in)
    return _without_callbacks(type(carried).format)(carried, signature, demos, inputs)


def observed(adapter: Adapter | None) -> Adapter:
    """``adapter`` (default ChatAdapter) unchanged in what it sends, but reporting parse failures to
    the run's fault log and its calls to the run's recorder (used for optimizer calls)."""
    return with_system_prompt(adapter, "", "system")


def system_prompt_of(adapter: Any) -> str | None:
    """The system prompt an adapter made by :func:`with_system_prompt` carries, else None."""
    if isinstance(adapter, _SystemPromptMixin):
        return adapter.system_prompt_text
    return None


def base_adapter(adapter: Any) -> Any:
    """The adapter a :func:`with_system_prompt` adapter was made from (a copy), else ``adapter``."""
    return _plain_copy(adapter) if isinstance(adapter, _SystemPromptMixin) else adapter


def adapter_in_effect(adapter: Adapter | None) -> Adapter | None:
    """The base adapter task calls use when ``adapter`` is the one given: ``adapter`` itself, else
    the configured one (``dspy.settings.adapter``, without any system prompt it carries), else None
    (ChatAdapter, DSPy's default). Read it where the calls are made: the configuration may change."""
    return adapter if adapter is not None else base_adapter(dspy.settings.adapter)


def placement_of(adapter: Any) -> InstructionsIn | None:
    """Where an adapter made by :func:`with_system_prompt` puts the instructions, else None."""
    return adapter.instructions_in if isinstance(adapter, _SystemPromptMixin) else None


ADAPTERS = {
    "chat": dspy.ChatAdapter,
    "json": dspy.JSONAdapter,
    "xml": dspy.XMLAdapter,
    "reference": ReferenceAdapter,
}


def adapter_name(adapter: Adapter | None) -> str:
    """A short, stable name for an adapter (used in cache keys and saved programs)."""
    if adapter is None:
        return "default"
    cls = _base_class(type(adapter))
    for name, known in ADAPTERS.items():
        if cls is known:
            return name
    return f"{cls.__module__}.{cls.__qualname__}"


def make_adapter(name: str | Adapter | None) -> Adapter | None:
    """An adapter from its short name (``chat``, ``json``, ``xml``, ``reference``), or as given."""
    if name is None or isinstance(name, Adapter):
        return name
    if name == "default":
        return None
    try:
        return ADAPTERS[name]()
    except KeyError:
        raise ValueError(f"unknown adapter {name!r}; choose one of {sorted(ADAPTERS)}") from None
