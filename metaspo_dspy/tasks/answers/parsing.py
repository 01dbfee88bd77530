"""Robust answer normalisers for the DSPy prompt format.

In the DSPy format the adapter already isolates the output field (``answer``); these functions turn
its text into a canonical answer, forgiving what a reasonable model writes and rejecting the rest:

* options: ``"(B)"``, ``"B)"``, ``"B. Tetracycline"``, ``"Answer: B"``, ``"b"`` -> ``"B"``; the
  exact text of one option -> its letter; anything else -> ``None`` (wrong);
* ratings: ``"4"``, ``"4 stars"``, ``"4/5"``, ``"four"`` -> ``4``; out of range or ambiguous -> None;
* short text (BIG-bench, generated): case, whitespace, quotes and stray punctuation ignored, number
  words become digits (``"three"`` -> ``"3"``);
* yes/no: the first word, when it is yes or no;
* spans (grounding): SQuAD normalisation (lower case, no punctuation, no articles).

Every function returns ``None`` for text it cannot read; a ``None`` is never equal to a gold answer.
These are deliberately *not* the reference's parsers (see :mod:`.reference_parsing` for those).
"""

from __future__ import annotations

import re
import string
from typing import Any

NUMBER_WORDS = {
    "zero": 0,
    "one": 1,
    "two": 2,
    "three": 3,
    "four": 4,
    "five": 5,
    "six": 6,
    "seven": 7,
    "eight": 8,
    "nine": 9,
    "ten": 10,
    "eleven": 11,
    "twelve": 12,
    "thirteen": 13,
    "fourteen": 14,
    "fifteen": 15,
    "sixteen": 16,
    "seventeen": 17,
    "eighteen": 18,
    "nineteen": 19,
    "twenty": 20,
}
_TENS = {"twenty": 20, "thirty": 30, "forty": 40, "fifty": 50}

_TAG = re.compile(r"<answer>([\s\S]*?)</answer>", re.IGNORECASE)
_LABEL_WORDS = (
    r"^(?:the\s+)?(?:final\s+|correct\s+|best\s+|predicted\s+)?"
    r"(?:answer|option|choice|rating|label|prediction|output|response)"
)
# strict: the label must end in ":" / "=" or be followed by "is" ("Answer: x", "The answer is x")
_LABEL_STRICT = re.compile(_LABEL_WORDS + r"(?:\s*[:=]\s*|\s+is\s*:?\s*)", re.IGNORECASE)
# loose: a bare label word also counts ("Option B", "Rating 4")
_LABEL_LOOSE = re.compile(_LABEL_WORDS + r"(?:\s+is)?(?:\s*[:=\-]\s*|\s+(?=\S))", re.IGNORECASE)
_EDGE = " \t\r\n\"'`*_.,;:!?" + "\u201c\u201d\u2018\u2019"
_OPTION_LINE = re.compile(r"^\s*\(([A-Z])\)\s*(.+?)\s*$", re.MULTILINE)


def to_text(value: Any) -> str:
    """``value`` as text (None -> empty)."""
    return "" if value is None else str(value)


def clean_text(value: Any, loose: bool = True, edges: str = _EDGE) -> str:
    """Strip an answer down to its content.

    Takes the last non-empty ``<answer>...</answer>`` span if there is one, drops markdown emphasis,
    one leading label (``Answer:``, ``The answer is``; with ``loose`` also a bare ``Option``,
    ``Rating``...), and the surrounding characters in ``edges`` (whitespace, quotes and
    punctuation by default). Never raises.
    """
    text = to_text(value).strip()
    spans = [s for s in _TAG.findall(text) if s.strip()]
    if spans:
        text = spans[-1]
    text = text.replace("**", "").strip().strip(edges)
    text = (_LABEL_LOOSE if loose else _LABEL_STRICT).sub("", text, count=1)
    return text.strip().strip(edges).strip()


def number_from_words(text: str) -> int | None:
    """``"three"`` -> 3, ``"twenty-one"`` / ``"twenty one"`` -> 21; None otherwise."""
    words = re.split(r"[\s\-]+", text.strip().lower())
    if len(words) == 1 and words[0] in NUMBER_WORDS:
        return NUMBER_WORDS[words[0]]
    if len(words) == 1 and words[0] in _TENS:
        return _TENS[words[0]]
    if len(words) == 2 and words[0] in _TENS and words[1] in NUMBER_WORDS and 0 < NUMBER_WORDS[words[1]] < 10:
        return _TENS[words[0]] + NUMBER_WORDS[words[1]]
    return None


def options_in(question: str) -> dict[str, str]:
    """The ``(X) text`` option lines of a question: letter -> option text."""
    return {letter: text for letter, text in _OPTION_LINE.findall(to_text(question))}


def _squash(text: str) -> str:
    return " ".join(re.sub(r"[^0-9a-z]+", " ", text.lower()).split())


def parse_option(value: Any, letters: str = "ABCD", options: dict[str, str] | None = None) -> str | None:
    """An option letter (upper case, one of ``letters``) from an answer, or None.

    Accepted: ``"B"``, ``"b"``, ``"(B)"``, ``"B)"``, ``"B."``, ``"B. text"``, ``"B) text"``,
    ``"(B) text"``, ``"B - text"`` (after a label such as ``"Answer:"``), a single distinct ``"(B)"``
    anywhere, or the exact text of exactly one of ``options``.
    """
    text = clean_text(value)
    if not text:
        return None
    valid = set(letters.upper())
    bare = re.fullmatch(r"\(?([A-Za-z])\)?", text)
    if bare and bare.group(1).upper() in valid:
        return bare.group(1).upper()
    marked = {m.upper() for m in re.findall(r"\(([A-Za-z])\)", text) if m.upper() in valid}
    lead = re.match(r"^(\()?([A-Za-z])(\)|\.|:|\s+-)\s*\S", text)
    # a lower-case letter counts only as "(b) ..." or "b) ..." (not "e.g. ...")
    if lead and (lead.group(1) or lead.group(3) == ")" or lead.group(2).isupper()):
        letter = lead.group(2).upper()
        if letter in valid and marked <= {letter}:
            return letter
    if len(marked) == 1:
        return marked.pop()
    if options:
        target = _squash(text)
        hits = [k for k, v in options.items() if _squash(v) == target and k.upper() in valid]
        if len(hits) == 1:
            return hits[0].upper()
    return None


def parse_rating(value: Any, low: int = 1, high: int = 5) -> int | None:
    """A rating in ``[low, high]`` from ``"4"``, ``"4 stars"``, ``"4/5"``, ``"4 out of 5"``, ``"four"``."""
    text = clean_text(value).lower()
    words = number_from_words(text.split(" ")[0]) if text else None
    if words is not None:
        text = str(words) + text[len(text.split(" ")[0]) :]
    match = re.fullmatch(r"([0-9]+)(?:\.0+)?\s*(?:/\s*[0-9]+|out of [0-9]+|stars?)?", text)
    if not match:
        return None
    rating = int(match.group(1))
    return rating if low <= rating <= high else None


def normalize_text(value: Any) -> str | None:
    """A canonical short answer: lower case, only letters/digits separated by single spaces, a
    number word (``"three"``, ``"twenty-one"``) turned into digits. Empty -> None."""
    text = clean_text(value)
    number = number_from_words(text)
    if number is not None:
        return str(number)
    squashed = _squash(text)
    return squashed or None


def parse_yes_no(value: Any) -> str | None:
    """``"yes"`` or ``"no"`` when the answer's first word is one of them, else None."""
    text = clean_text(value).lower()
    first = re.split(r"[^a-z]+", text, maxsplit=1)[0] if text else ""
    return first if first in ("yes", "no") else None


def squad_normalize(text: Any) -> str:
    """SQuAD's answer normalisation: lower case, drop punctuation and articles, squash spaces."""
    text = to_text(text).lower()
    text = "".join(ch for ch in text if ch not in set(string.punctuation))
    text = re.sub(r"\b(a|an|the)\b", " ", text)
    return " ".join(text.split())


def exact_match(prediction: Any, golds: Any) -> bool:
    """SQuAD exact match of ``prediction`` against any of ``golds`` (a string or a list)."""
    gold_list = [golds] if isinstance(golds, str) else list(golds or [])
    pred = squad_normalize(prediction)
    return any(squad_normalize(g) == pred for g in gold_list)


def parse_span(value: Any) -> str:
    """The answer span of a grounding answer: a last ``<answer>`` span, ``**`` and an ``Answer:``
    label removed (punctuation is left to SQuAD normalisation; see :func:`span_match`)."""
    return clean_text(value, loose=False, edges=" \t\r\n")


def span_match(value: Any, golds: Any) -> bool:
    """Exact match of a grounding answer against any gold, as is or without wrapping quotes."""
    span = parse_span(value)
    return exact_match(span, golds) or exact_match(span.strip(_EDGE), golds)
