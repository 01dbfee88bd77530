"""The reference code's answer parsing, quirks included (the reference prompt format).

These reproduce what the MetaSPO reference scores, so numbers measured in the reference format are
comparable with the paper's protocol. They are written from the behaviour described in
``METASPO.md`` and the reference's ``clean_response`` methods:

* the answer is the last ``<answer>...</answer>`` span; an unparsable response gives
  :data:`FORMAT_ERROR` (``-1`` for Amazon), which is never equal to a gold label;
* MedMCQA: the span is searched for ``"(X)"`` (X in A-D, either case; note ``"()"`` yields ``""``),
  else for the *first* A-D letter anywhere, so ``"Answer: B"`` reads as ``"A"``; an empty span is
  still searched (and gives a format error);
* BIG-bench option tasks: the lower-cased span is searched for ``"(x)"`` then for the first letter
  a-g anywhere (same quirk: ``"answer: b"`` -> ``"A"``); an empty span is a format error;
* BIG-bench other tasks: the stripped, lower-cased span; a whole-span number word
  (``"three"``..``"twenty-one"``) becomes an int. The reference compares with numpy, which turns a
  batch mixing ints and strings into strings; we compare ``str(parsed)`` to the gold string,
  i.e. the mixed-batch behaviour (its all-int-batch quirk, scoring 0, is not reproduced);
* Amazon: the first integer in the lower-cased span, else ``-1``;
* safety: the stripped, lower-cased span (any text: each distinct string is its own class in the
  macro-F1);
* grounding: the whole response, unparsed (scored by SQuAD exact match).
"""

from __future__ import annotations

import re
import string
from collections.abc import Callable
from typing import Any

from metaspo_dspy.tasks.answers.parsing import NUMBER_WORDS

FORMAT_ERROR = "N/A: Format error"
_TAG = r"<answer>([\s\S]*?)<\/answer>"
# The reference maps "one" .. "twenty-one" (not "zero") to numbers.
REFERENCE_NUMBER_WORDS = {word: n for word, n in NUMBER_WORDS.items() if 1 <= n <= 20} | {"twenty-one": 21}


def _text(response: Any) -> str:
    return "" if response is None else str(response)


def _last_nonempty_span(response: Any) -> str | None:
    """The stripped last span of the lower-cased response, None if absent or empty."""
    spans = re.findall(_TAG, _text(response).lower())
    if not spans or not spans[-1].strip():
        return None
    return spans[-1].strip()


def ref_medmcqa(response: Any, option_num: int = 4) -> str:
    """MedMCQA's reference parsing: an upper-case letter, ``""`` for ``"()"``, or FORMAT_ERROR."""
    valid = string.ascii_uppercase[:option_num] + string.ascii_lowercase[:option_num]
    spans = re.findall(_TAG, _text(response), re.IGNORECASE)
    if not spans:
        return FORMAT_ERROR
    last = spans[-1]
    marked = re.search(rf"\(([{valid}]?)\)", last)
    if marked:
        return marked.group(1).upper()
    letter = re.search(rf"[{valid}]", last)
    return letter.group(0).upper() if letter else FORMAT_ERROR


def ref_bigbench_option(response: Any, option_num: int = 7) -> str:
    """BIG-bench option tasks' reference parsing: an upper-case letter or FORMAT_ERROR."""
    content = _last_nonempty_span(response)
    if content is None:
        return FORMAT_ERROR
    letters = string.ascii_lowercase[:option_num]
    for pattern in (r"\(([" + letters + r"])\)", r"[" + letters + r"]"):
        match = re.search(pattern, content)
        if match:
            return match.group(0).strip("()").upper()
    return FORMAT_ERROR


def ref_bigbench_text(response: Any) -> str | int:
    """BIG-bench non-option reference parsing: the span text, a number word as int, or FORMAT_ERROR."""
    content = _last_nonempty_span(response)
    if content is None:
        return FORMAT_ERROR
    return REFERENCE_NUMBER_WORDS.get(content, content)


def ref_amazon(response: Any) -> int:
    """Amazon's reference parsing: the first integer of the last span, else -1."""
    content = _last_nonempty_span(response)
    if content is None:
        return -1
    digits = re.findall(r"\d+", content)
    return int(digits[0]) if digits else -1


def ref_safety(response: Any) -> str:
    """Safety's reference parsing: the lower-cased span text, or FORMAT_ERROR."""
    content = _last_nonempty_span(response)
    return FORMAT_ERROR if content is None else content


def ref_grounding(response: Any) -> str:
    """Grounding's reference parsing: the whole response."""
    return _text(response)


REFERENCE_PARSERS: dict[str, Callable[[Any], Any]] = {
    "medmcqa": ref_medmcqa,
    "bigbench_option": ref_bigbench_option,
    "bigbench_text": ref_bigbench_text,
    "amazon": ref_amazon,
    "safety": ref_safety,
    "grounding": ref_grounding,
}


#: Each parser's format-error value (None: the parser never fails -- grounding scores the whole response).
FORMAT_ERRORS: dict[str, Any] = {
    "medmcqa": FORMAT_ERROR,
    "bigbench_option": FORMAT_ERROR,
    "bigbench_text": FORMAT_ERROR,
    "amazon": -1,
    "safety": FORMAT_ERROR,
    "grounding": None,
}


def reference_equal(parsed: Any, gold: Any) -> bool:
    """The reference's comparison of a parsed answer with a gold label (string-wise, as numpy does
    for a mixed batch; Amazon compares ints)."""
    if isinstance(gold, int) and not isinstance(gold, bool):
        return isinstance(parsed, int) and parsed == gold
    return str(parsed) == str(gold)
