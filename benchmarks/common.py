"""Shared benchmark plumbing: loopback mock servers, LMs built the way `compile` gets them, results.

Every benchmark writes ``benchmarks/results/<name>.json`` and rewrites its own section of
``benchmarks/README.md`` (between ``<!-- name:start -->`` and ``<!-- name:end -->``), so the table
always shows the last run. Numbers are from the machine that ran them (the header says which).
``$METASPO_BENCHMARK_OUT`` (a folder) redirects both -- the JSON and a copy of the README -- there,
so a smoke run (``tests/test_benchmarks.py``) leaves the recorded results alone.
"""

from __future__ import annotations

import os
import platform
import re
import time
from pathlib import Path
from typing import Any

os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")

HERE = Path(__file__).resolve().parent
_OUT = os.environ.get("METASPO_BENCHMARK_OUT")
RESULTS = Path(_OUT) if _OUT else HERE / "results"
README = Path(_OUT) / "README.md" if _OUT else HERE / "README.md"
#: None: the library's default places (user cache, then the bundled tasks); the review tasks need
#: `metaspo data fetch review` first. $METASPO_DATA_DIR overrides.
DATA_DIR = Path(os.environ["METASPO_DATA_DIR"]) if os.environ.get("METASPO_DATA_DIR") else None


def mock_server(*args: str):
    """A loopback mock model server in a subprocess; yields its base URL."""
    from metaspo_dspy.testing.mock_server import running

    return running(*args)


def mock_lm(url: str, engine: str = "auto", temperature: float = 0.0):
    """An LM for the mock server built by ``metaspo_dspy.lm.build_lm``, as the CLI builds it (no cache;
    a 30 s request timeout, so a lost request is retried instead of stalling a grid for LiteLLM's
    default 600 s)."""
    from metaspo_dspy.lm import LMSettings, build_lm

    settings = LMSettings(
        model="openai/mock", api_base=url, temperature=temperature, engine=engine, extra={"cache": False, "timeout": 30}
    )
    return build_lm(settings)


def disable_dspy_cache() -> None:
    """No DSPy response cache (every call reaches the server) and no per-evaluation log lines."""
    import logging

    import dspy

    dspy.configure_cache(enable_disk_cache=False, enable_memory_cache=False)
    for name in ("dspy", "LiteLLM", "litellm"):
        logging.getLogger(name).setLevel(logging.ERROR)


def machine() -> dict[str, Any]:
    return {
        "cpus": os.cpu_count(),
        "python": platform.python_version(),
        "platform": platform.platform(),
        "when": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
    }


def save(name: str, data: dict[str, Any], table: str) -> None:
    """Write results/<name>.json and replace the <name> section of README.md with ``table``."""
    from metaspo_dspy.store.io import atomic_write_json, atomic_write_text

    data = {"benchmark": name, "machine": machine(), **data}
    atomic_write_json(RESULTS / f"{name}.json", data)
    text = README.read_text(encoding="utf-8") if README.exists() else "# Benchmarks\n"
    block = f"<!-- {name}:start -->\n{table.rstrip()}\n\n_{data['machine']['when']}, {data['machine']['cpus']} CPUs, "
    block += f"Python {data['machine']['python']}; raw numbers: `results/{name}.json`._\n<!-- {name}:end -->"
    pattern = re.compile(rf"<!-- {name}:start -->.*?<!-- {name}:end -->", re.S)
    text = pattern.sub(lambda _: block, text) if pattern.search(text) else text.rstrip() + "\n\n" + block + "\n"
    atomic_write_text(README, text)
    print(table)


def markdown(rows: list[list[Any]], header: list[str]) -> str:
    def cell(value: Any) -> str:
        if isinstance(value, float):
            return f"{value:.2f}" if abs(value) < 100 else f"{value:.0f}"
        return str(value)

    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(cell(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)
