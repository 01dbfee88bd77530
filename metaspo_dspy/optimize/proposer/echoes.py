"""Echoes: optimizer answers that repeat the request's own wording instead of writing a prompt.

A small optimizer model often answers a rewrite request with the title of the output field it was
asked to fill ("Improved System Prompt"), the field's name or description, or the task's
instructions. Such a text is not a prompt and must never be scored as one.

Contract of :func:`echo_of`: it returns a short description of what ``text`` echoes (for a discard
reason), or None when ``text`` is not an echo. ``text`` is an echo when it consists of pieces of
the *vocabulary*, framing and input slots only, with at least one of them. The vocabulary is derived, never
listed by hand, from the optimizer signatures -- by default every ``dspy.Signature`` class in
:mod:`metaspo_dspy.optimize.proposer.signatures`, so a new signature there is covered without editing this
module:

* each input and output field's name (``improved_system_prompt``), title (DSPy's ``prefix`` without
  its colon, "Improved System Prompt") and description (``desc``);
* each sentence of a signature's instructions and of the module's instruction fragments (its
  upper-case string constants, such as the slot note);
* the output-format reminder DSPy's Chat, JSON and XML adapters add to the request ("Respond with a
  JSON object in the following order of fields: ...").

How a text is read: DSPy's field markers (``[[ ## improved_system_prompt ## ]]``), and placeholders
(``{improved_system_prompt}``) or XML tags naming a signature field, are *framing*: they may stand
beside the echoed words but are not content. The rest is cut into pieces at line breaks, at framing
and at sentence or label ends (``. ! ? ; :``); once with the text's own line breaks and once as one
paragraph (for instructions copied with other line breaks). A piece that is only an input slot
(``{question}``, ``<Question>{question}</Question>``) is not content either: a prompt must say
something besides where the input goes ("Improved User Prompt: {question}" is an echo, as a bare
``{question}`` always was), while a slot inside a sentence and any other tag (``<answer>``) are
content. Each piece is normalised before the comparison (:func:`normalise`): case, punctuation,
markdown (``**``, ``#``, backticks), quotes, ``_``/``-`` and camelCase word joins, numbers (a list
number, a version such as "3.1.0") and white space are dropped, and so are a leading article,
possessive or "here is" ("Your improved system prompt") and a trailing "is"/"as follows". So a
title with nothing after it ("Improved system prompt:") is an echo, while a title used as a label in
front of content ("Improved System Prompt: Answer concisely.") is not. No word count is involved:
short real prompts ("Be concise.", "Let's think step by step.") share no piece with the vocabulary.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass
from functools import lru_cache
from types import ModuleType

import dspy

__all__ = ["echo_of", "normalise", "vocabulary"]

_MARKER = re.compile(r"\[\[\s*#*\s*([A-Za-z_][A-Za-z0-9_]*)\s*#*\s*\]\]")
_SLOT = re.compile(r"\$?\{\s*([^{}]*?)\s*\}")
_TAG = re.compile(r"</?\s*([A-Za-z_][A-Za-z0-9_]*)\s*/?>")
#: the reference format's input slot, a placeholder wrapped in a tag pair: ``<Question>{question}</Question>``
_WRAPPED_SLOT = re.compile(r"<\s*(\w+)\s*>\s*(\$?\{[^{}]*\})\s*<\s*/\s*\1\s*>")
#: a piece ends at a line break, at framing, or at a sentence/label end before white space or the end
_PIECE_END = re.compile(r"[\n\x00]|[.!?;:]+(?=\s|$|\x00)")
#: what framing is replaced with: a piece end in both readings (lines, one paragraph)
_FRAME = "\x00"
_CAMEL = re.compile(r"(?<=[a-z0-9])(?=[A-Z])")
#: anything but a letter or digit of any script (``_`` included); placeholders became ``{}`` first
_NON_WORD = re.compile(r"(?:[^\w{}]|_)+")
_STRAY_BRACE = re.compile(r"\{(?!\})|(?<!\{)\}")
_LEADING = re.compile(r"^(?:(?:here|below) (?:is|are) |heres )?(?:(?:the|a|an|your|my|our|this|new) )*")
_TRAILING = re.compile(r"(?: (?:is|are|as follows|below|follows))+$")
#: how any placeholder inside a piece reads once normalised
_ANY_SLOT = "{}"
#: DSPy adapters whose output-format reminder is part of an optimizer request
_ADAPTERS = ("ChatAdapter", "JSONAdapter", "XMLAdapter")


@dataclass(frozen=True)
class _Entry:
    """One vocabulary piece: where it comes from, for the discard reason."""

    what: str  # "field" | "field description" | "instructions" | "format reminder"
    source: str  # "RewriteSystemPrompt.improved_system_prompt", "RewriteSystemPrompt" or "" (a fragment)
    name: str = ""  # a field's name
    title: str = ""  # a field's title (DSPy prefix without its colon), or the description

    def describe(self, raw: str) -> str:
        """How the discard reason names this piece; ``raw`` is the echoed piece as written."""
        if self.what == "field":
            if "_" in raw or not self.title:
                return f"the field name {self.name!r}"
            return f"the field title {self.title!r}"
        if self.what == "field description":
            return f"the description of the field {self.source} ({self.title!r})"
        if self.what == "format reminder":
            return "DSPy's output-format reminder"
        return f"the instructions of {self.source}" if self.source else "the optimizer's instructions"


def normalise(piece: str) -> str:
    """One piece as compared: case-folded words of any script, punctuation, markdown and ``_``
    dropped, camelCase split, numbers dropped (a list number, "3.1.0"), any placeholder read as
    ``{}``, a leading article or "here is" and a trailing "is" / "as follows" dropped."""
    piece = _SLOT.sub(" {} ", piece)
    piece = _CAMEL.sub(" ", piece).casefold().replace("'", "").replace("\u2019", "")
    words = _STRAY_BRACE.sub(" ", _NON_WORD.sub(" ", piece)).split()
    piece = " ".join(word for word in words if not word.isdigit())
    piece = re.sub(r"(?:\{\} ?)+", "{} ", piece).strip()
    return _TRAILING.sub("", _LEADING.sub("", piece)).strip()


def _readings(text: str, fields: frozenset[str]) -> tuple[list[list[str]], bool]:
    """The pieces of ``text`` read by lines and as one paragraph, and whether it held framing."""
    framing = False

    def frame(match: re.Match[str]) -> str:
        nonlocal framing
        framing = True
        return _FRAME

    def named(match: re.Match[str]) -> str:
        # a placeholder or tag naming a signature field is framing; any other (an input slot) is content
        return frame(match) if normalise(match.group(1)) in fields else match.group(0)

    rest = _TAG.sub(named, _SLOT.sub(named, _MARKER.sub(frame, _WRAPPED_SLOT.sub(r"\2", text))))
    readings = [_pieces(rest), _pieces(" ".join(rest.split()))]
    return readings, framing


def _pieces(text: str) -> list[str]:
    return [p for p in (part.strip() for part in _PIECE_END.split(text)) if p]


def _signatures_of(module: ModuleType) -> tuple[type[dspy.Signature], ...]:
    return tuple(
        value
        for value in vars(module).values()
        if isinstance(value, type) and issubclass(value, dspy.Signature) and value is not dspy.Signature
    )


def _fragments_of(module: ModuleType) -> tuple[str, ...]:
    """The module's instruction fragments: its public upper-case string constants (the slot note)."""
    return tuple(v for k, v in vars(module).items() if k.isupper() and not k.startswith("_") and isinstance(v, str))


def _sources(
    signatures: Iterable[type[dspy.Signature]] | None,
) -> tuple[tuple[type[dspy.Signature], ...], tuple[str, ...]]:
    """The signatures and instruction fragments that make the vocabulary (see :func:`echo_of`)."""
    if signatures is not None:
        return tuple(signatures), ()
    from metaspo_dspy.optimize.proposer import signatures as module

    return _signatures_of(module), _fragments_of(module)


def _format_reminders(signature: type[dspy.Signature]) -> list[str]:
    reminders = []
    for name in _ADAPTERS:
        adapter = getattr(dspy, name, None)
        try:
            reminders.append(adapter().user_message_output_requirements(signature))
        except Exception:  # an adapter missing from this DSPy version, or one that cannot format it
            continue
    return reminders


@lru_cache(maxsize=32)
def _vocabulary(
    signatures: tuple[type[dspy.Signature], ...], fragments: tuple[str, ...]
) -> tuple[dict[str, _Entry], frozenset[str]]:
    """The normalised vocabulary (piece -> entry) and the normalised field names."""
    fields = frozenset(normalise(name) for signature in signatures for name in signature.fields)
    words: dict[str, _Entry] = {}

    def add(text: str, entry: _Entry) -> None:
        readings, _ = _readings(text, fields)
        for piece in readings[1]:  # as one paragraph: the wrapping of a docstring is not meaning
            key = normalise(piece)
            if key and key != _ANY_SLOT:
                words.setdefault(key, entry)

    for signature in signatures:
        for name, field in signature.fields.items():
            extra = field.json_schema_extra or {}
            source = f"{signature.__name__}.{name}"
            title = str(extra.get("prefix") or "").strip().rstrip(":").strip()
            entry = _Entry("field", source, name, title)
            words.setdefault(normalise(name), entry)
            if title:
                words.setdefault(normalise(title), entry)
            desc = str(extra.get("desc") or "").strip()
            if desc:
                add(desc, _Entry("field description", source, name, desc))
        if signature.instructions:
            add(signature.instructions, _Entry("instructions", signature.__name__))
        for reminder in _format_reminders(signature):
            add(reminder, _Entry("format reminder", signature.__name__))
    for fragment in fragments:
        add(fragment, _Entry("instructions", ""))
    return words, fields


def vocabulary(signatures: Iterable[type[dspy.Signature]] | None = None) -> dict[str, str]:
    """The normalised echo vocabulary (piece -> the signature or field it comes from) of
    ``signatures`` (default: the optimizer signatures and instruction fragments of
    :mod:`metaspo_dspy.optimize.proposer.signatures`)."""
    words, _ = _vocabulary(*_sources(signatures))
    return {key: entry.source or "instruction fragment" for key, entry in words.items()}


def echo_of(text: str | None, signatures: Iterable[type[dspy.Signature]] | None = None) -> str | None:
    """What ``text`` echoes, e.g. ``"the field title 'Improved System Prompt'"``, or None when it is
    not an echo (the rule is in the module docstring). ``signatures`` defaults to the optimizer
    signatures of :mod:`metaspo_dspy.optimize.proposer.signatures` and that module's instruction fragments."""
    words, fields = _vocabulary(*_sources(signatures))
    readings, framing = _readings(text or "", fields)
    for pieces in readings:
        matched = _match(pieces, words)
        if matched is None:
            continue
        found, slots = matched
        if not found:
            return "a template placeholder" if slots else "a field marker or placeholder" if framing else None
        named = list(dict.fromkeys(entry.describe(raw) for raw, entry in found))
        return named[0] if len(named) == 1 else ", ".join(named[:-1]) + " and " + named[-1]
    return None


def _match(pieces: list[str], words: dict[str, _Entry]) -> tuple[list[tuple[str, _Entry]], int] | None:
    """Each piece with its vocabulary entry and the number of pieces that are only an input slot
    (blank pieces and bare numbers skipped), or None when a piece is content."""
    found, slots = [], 0
    for piece in pieces:
        key = normalise(piece)
        if key == _ANY_SLOT:
            slots += 1
        elif key:
            entry = words.get(key)
            if entry is None:
                return None
            found.append((piece, entry))
    return found, slots
