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
:class:`CallRecorder` found in ``dspy.settings.metaspo_recorder`` (if any); the evaluator uses this
to show the optimizer what the model saw and said. It also refuses empty and truncated answers
(:mod:`metaspo_dspy.responses`: an empty one is asked once more, bypassing DSPy's cache, then
raises ``EmptyResponse``; a truncated one raises ``TruncatedResponse``), and reports them and
every parse failure to the run's fault log.
"""

from __future__ import annotations

import copy
import threading
from dataclasses import dataclass, field
from typing import Any, Literal

import dspy
from dspy.adapters.base import Adapter
from dspy.utils.exceptions import AdapterParseError

from metaspo_dspy import faults, responses
from metaspo_dspy.redact import redact

InstructionsIn = Literal["user", "system"]
_PLACEMENTS = ("user", "system")


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

    def start(self, messages: list[dict[str, Any]]) -> None:
        caller = (dspy.settings.caller_modules or [None])[-1]
        name = self.predictor_names.get(id(caller)) if caller is not None else None
        with self._lock:
            self.calls.append(LMCall(predictor=name, messages=messages))

    def finish(self, completion: str) -> None:
        with self._lock:
            for call in reversed(self.calls):
                if call.completion is None:
                    call.completion = completion
                    return


def _recorder() -> CallRecorder | None:
    return dspy.settings.get("metaspo_recorder")


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


class _SystemPromptMixin:
    """Mixed in front of an adapter class by :func:`with_system_prompt` (never used alone)."""

    # Adapters that place the instructions themselves (ReferenceAdapter) set a class attribute
    # ``embeds_instructions = True``; it is looked up on the base class, so it is not defined here.
    system_prompt_text: str = ""
    instructions_in: InstructionsIn = "user"

    def _embeds_instructions(self) -> bool:
        return getattr(self, "embeds_instructions", False)

    def format_task_description(self, signature):
        if self.instructions_in == "user" and not self._embeds_instructions():
            return ""
        return super().format_task_description(signature)

    def format(self, signature, demos, inputs):
        messages = [dict(m) for m in super().format(signature, demos, inputs)]
        if messages and messages[0].get("role") == "system":
            messages[0]["content"] = _join(self.system_prompt_text, message_text(messages[0]["content"]))
        elif self.system_prompt_text.strip():
            messages.insert(0, {"role": "system", "content": self.system_prompt_text.strip()})
        if self.instructions_in == "user" and not self._embeds_instructions():
            for message in reversed(messages):
                if message.get("role") == "user":
                    message["content"] = _prepend_text(message["content"], signature.instructions)
                    break
        recorder = _recorder()
        if recorder is not None:
            recorder.start(messages)
        return messages

    def __call__(self, lm, lm_kwargs, signature, demos, inputs):
        base = super()
        return responses.guarded(lambda kwargs: base.__call__(lm, kwargs, signature, demos, inputs), lm_kwargs)

    async def acall(self, lm, lm_kwargs, signature, demos, inputs):
        base = super()
        return await responses.aguarded(lambda kwargs: base.acall(lm, kwargs, signature, demos, inputs), lm_kwargs)

    def _call_postprocess(self, processed_signature, original_signature, outputs, lm, lm_kwargs):
        try:
            responses.check(outputs, lm)
        except responses.BadAnswer:
            recorder = _recorder()
            if recorder is not None:
                recorder.finish("\n".join(str(responses.answer_text(o) or "") for o in outputs))
            raise
        return super()._call_postprocess(processed_signature, original_signature, outputs, lm, lm_kwargs)

    def parse(self, signature, completion):
        recorder = _recorder()
        if recorder is not None:
            recorder.finish(completion)
        try:
            return super().parse(signature, completion)
        except AdapterParseError as exc:
            faults.report("parse_error", None, redact(f"{type(self).__name__}: {str(exc)[:200]}"))
            raise

    def _make_json_adapter_fallback(self):
        return with_system_prompt(super()._make_json_adapter_fallback(), self.system_prompt_text, self.instructions_in)


_CLASS_CACHE: dict[type, type] = {}
_CLASS_LOCK = threading.Lock()


def _system_prompt_class(base: type) -> type:
    with _CLASS_LOCK:
        cls = _CLASS_CACHE.get(base)
        if cls is None:
            cls = type(f"SystemPrompt{base.__name__}", (_SystemPromptMixin, base), {"__module__": __name__})
            # Adapter.__init_subclass__ wraps format/parse with DSPy callbacks; the base class's own
            # (already wrapped) methods run inside ours, so unwrap ours to fire callbacks once.
            cls.format = _SystemPromptMixin.format
            cls.parse = _SystemPromptMixin.parse
            _CLASS_CACHE[base] = cls
    return cls


def with_system_prompt(adapter: Adapter | None, text: str, instructions_in: InstructionsIn = "user") -> Adapter:
    """Return a copy of ``adapter`` (default: ``dspy.ChatAdapter()``) that carries ``text``.

    Contract: the returned adapter formats exactly what ``adapter`` would, except that the system
    message starts with ``text`` (a system message is created when the base adapter has none and
    ``text`` is not empty) and, with ``instructions_in="user"``, the signature's instructions open
    the last user message instead of closing the system message. ``adapter`` is not modified.
    Wrapping an already wrapped adapter replaces its system prompt.
    """
    if instructions_in not in _PLACEMENTS:
        raise ValueError(f"instructions_in must be one of {_PLACEMENTS}, got {instructions_in!r}")
    base = adapter if adapter is not None else dspy.ChatAdapter()
    base_cls = type(base)
    if isinstance(base, _SystemPromptMixin):
        base_cls = next(c for c in base_cls.__mro__[1:] if c is not _SystemPromptMixin)
    wrapped = copy.copy(base)
    wrapped.__class__ = _system_prompt_class(base_cls)
    wrapped.system_prompt_text = text or ""
    wrapped.instructions_in = instructions_in
    return wrapped


def observed(adapter: Adapter | None) -> Adapter:
    """``adapter`` (default ChatAdapter) unchanged in what it sends, but reporting parse failures to
    the run's fault log and its calls to the run's recorder (used for optimizer calls)."""
    return with_system_prompt(adapter, "", "system")


def system_prompt_of(adapter: Any) -> str | None:
    """The system prompt an adapter made by :func:`with_system_prompt` carries, else None."""
    if isinstance(adapter, _SystemPromptMixin):
        return adapter.system_prompt_text
    return None


class ReferenceAdapter(Adapter):
    """The raw messages of the MetaSPO reference code, for reproducing the paper's protocol.

    User message: the instructions with every ``{input_field}`` slot replaced by that input's
    value (the reference's prompts contain ``<Question>{question}</Question>``); when a prompt has
    no slot for an input -- an optimizer can drop it -- the input is appended in the reference's
    ``<Question>...</Question>`` form so the query is never silently lost (the reference itself
    would then send no question). Other braces are left as they are. No system message unless a
    system prompt is set (:func:`with_system_prompt`). The whole completion becomes the single
    output field; the task's metric does the reference's answer parsing.
    """

    embeds_instructions = True

    def _single_output(self, signature) -> str:
        outputs = list(signature.output_fields)
        if len(outputs) != 1:
            raise ValueError(
                f"ReferenceAdapter needs a signature with exactly one output field, got {outputs}; "
                "use a DSPy adapter (Chat, JSON, XML) for multi-output signatures."
            )
        return outputs[0]

    def fill(self, signature, inputs: dict[str, Any]) -> str:
        """The user message for ``inputs``: instructions with their slots filled."""
        text = signature.instructions
        missing = []
        for name in signature.input_fields:
            slot = "{" + name + "}"
            value = "" if inputs.get(name) is None else str(inputs.get(name))
            if slot in text:
                text = text.replace(slot, value)
            elif name in inputs:
                missing.append(value)
        for value in missing:
            text = f"{text}<Question>{value}</Question>"
        return text

    def format(self, signature, demos, inputs):
        output = self._single_output(signature)
        messages = []
        for demo in demos:
            if all(name in demo for name in signature.input_fields) and output in demo:
                messages.append({"role": "user", "content": self.fill(signature, demo)})
                messages.append({"role": "assistant", "content": str(demo[output])})
        messages.append({"role": "user", "content": self.fill(signature, inputs)})
        return messages

    def parse(self, signature, completion):
        output = self._single_output(signature)
        if completion is None or not str(completion).strip():
            raise AdapterParseError(
                adapter_name="ReferenceAdapter",
                signature=signature,
                lm_response=str(completion),
                message="The LM returned an empty response.",
            )
        return {output: str(completion)}

    def format_field_description(self, signature):  # pragma: no cover - not used by format()
        return ""

    def format_field_structure(self, signature):  # pragma: no cover - not used by format()
        return ""

    def format_task_description(self, signature):  # pragma: no cover - not used by format()
        return signature.instructions

    def format_user_message_content(self, signature, inputs, prefix="", suffix="", main_request=False):
        return self.fill(signature, inputs)

    def format_assistant_message_content(self, signature, outputs, missing_field_message=None):
        return str(outputs.get(self._single_output(signature), missing_field_message or ""))


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
    cls = type(adapter)
    if isinstance(adapter, _SystemPromptMixin):
        cls = next(c for c in cls.__mro__[1:] if c is not _SystemPromptMixin)
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
