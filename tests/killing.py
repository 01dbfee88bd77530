"""Helpers for tests that run `metaspo` as real processes on the fake provider, kill them and resume:
the environment, starting a process, the fake model's request log, waiting for a kill point, and a
run's outcome without what one process paid."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path


def fake_env(log: Path, gold: Path, **extra: str) -> dict[str, str]:
    """The environment of a fake-provider run logging requests to ``log``: no API keys, and each
    process its own empty DSPy cache, so only the run's journals can spare a request."""
    env = {k: v for k, v in os.environ.items() if not k.endswith("_API_KEY")}
    env.update({
        "METASPO_FAKE_LOG": str(log), "METASPO_FAKE_GOLD": str(gold),
        "DSPY_CACHEDIR": str(log.parent / f"dspy-cache-{time.monotonic_ns()}"), **extra,
    })  # fmt: skip
    return env


def start(args: list[str], env: dict[str, str], cwd: Path) -> subprocess.Popen:
    """``metaspo ARGS`` as a background process (pipes for its output, no stdin)."""
    return subprocess.Popen(
        [sys.executable, "-m", "metaspo_dspy.cli", *args], env=env, cwd=cwd,
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, stdin=subprocess.DEVNULL, text=True,
    )  # fmt: skip


def requests_in(log: Path) -> list[dict]:
    """The fake model's logged requests (a line still being written is skipped)."""
    if not log.exists():
        return []
    return [json.loads(line) for line in log.read_text().splitlines() if line.endswith("}")]


def wait_for(process: subprocess.Popen, log: Path, condition, timeout: float = 120) -> None:
    """Wait until ``condition(requests)`` holds; fail if the process ends first or time runs out."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition(requests_in(log)):
            return
        if process.poll() is not None:
            raise AssertionError(f"the run ended before the kill point: {process.stderr.read()}")
        time.sleep(0.01)
    raise AssertionError("kill point not reached in time")


def outcome(run_dir: Path) -> dict:
    """The run's artifact without what its processes paid (phases, calls, usage, cumulative)."""
    data = json.loads((run_dir / "metaspo_run.json").read_text())
    return {k: v for k, v in data.items() if k not in ("phases", "calls", "usage", "cumulative")}
