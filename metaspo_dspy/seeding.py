"""Reproducible random draws: every draw derives from (seed, iteration, phase, task, candidate).

Python's ``hash`` is salted per process, so digests come from SHA-256 of the JSON of the parts:
the same parts give the same stream in every process, which makes runs repeatable and resumable.
"""

from __future__ import annotations

import hashlib
import json
import random
from typing import Any


def derive_seed(*parts: Any) -> int:
    """A 63-bit integer determined by ``parts`` (JSON-serialisable values)."""
    text = json.dumps(parts, sort_keys=True, default=str)
    return int.from_bytes(hashlib.sha256(text.encode("utf-8")).digest()[:8], "big") >> 1


def rng_for(*parts: Any) -> random.Random:
    """A ``random.Random`` seeded by :func:`derive_seed` of ``parts``."""
    return random.Random(derive_seed(*parts))
