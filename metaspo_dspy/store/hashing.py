"""SHA-256 digests: the keys of journal entries and the fingerprints recorded in a run's settings.

Every digest a run stores comes from here. A digest is the hex SHA-256 of UTF-8 text, cut to its
first ``length`` hex digits where its caller keeps it short; a value is first written as canonical
JSON (sorted keys, non-ASCII kept, ``default`` for what JSON cannot hold). Stored digests are
compared on resume, so a caller's ``length`` and ``default`` never change.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable
from typing import Any

__all__ = ["json_digest", "sha256_hex"]


def sha256_hex(text: str, length: int | None = None) -> str:
    """The hex SHA-256 of ``text``'s UTF-8 bytes: all 64 digits, or the first ``length``."""
    digest = hashlib.sha256(text.encode("utf-8")).hexdigest()
    return digest if length is None else digest[:length]


def json_digest(value: Any, length: int | None = None, default: Callable[[Any], Any] = repr) -> str:
    """:func:`sha256_hex` of ``value`` as canonical JSON: ``json.dumps(value, sort_keys=True,
    ensure_ascii=False, default=default)``, so equal values give equal digests in every process."""
    return sha256_hex(json.dumps(value, sort_keys=True, ensure_ascii=False, default=default), length)
