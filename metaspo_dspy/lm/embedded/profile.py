"""Per-call timings of the embedded model, for profiling (``METASPO_EMBEDDED_PROFILE=FILE``).

With the variable set, every completion appends one JSON line to ``FILE``: temperature (the demo's
task calls run at 0, its optimizer calls at 1.0), prompt tokens and how many of them were reused
from the KV cache, completion tokens, whether a grammar constrained the output (for greedy calls
on the fast path, ``grammar_checks``: how many tokens the grammar allowed at once, found among the
highest logits, or needed the whole vocabulary; see :mod:`~metaspo_dspy.lm.embedded.greedy_grammar`), and the
seconds spent evaluating the prompt and generating. ``benchmarks/embedded_profile.py`` sums them up.
"""

from __future__ import annotations

import json
import os
import threading
from typing import Any

VARIABLE = "METASPO_EMBEDDED_PROFILE"


class CallProfile:
    """Appends one JSON line per call to ``path`` (thread-safe; the file is opened per write, so
    several processes may share it)."""

    def __init__(self, path: str):
        self.path = path
        self._lock = threading.Lock()

    @classmethod
    def from_env(cls) -> CallProfile | None:
        path = os.environ.get(VARIABLE)
        return cls(path) if path else None

    def record(self, **entry: Any) -> None:
        line = json.dumps({k: round(v, 4) if isinstance(v, float) else v for k, v in entry.items()}) + "\n"
        with self._lock, open(self.path, "a", encoding="utf-8") as handle:
            handle.write(line)
