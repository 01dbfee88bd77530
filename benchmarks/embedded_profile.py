"""Where the offline demo's time goes: ``scripts/demo``'s two commands on the embedded model, with an
empty DSPy cache, every llama.cpp call timed (``METASPO_EMBEDDED_PROFILE``).

Splits the time into task calls (temperature 0) and optimizer calls (temperature 1.0), and each into
prompt evaluation and generation, with the prompt tokens the KV cache let it skip.

    python benchmarks/embedded_profile.py            # the demo's sizes (~5 min)
    python benchmarks/embedded_profile.py --quick    # the smallest sizes: a smoke run
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from common import markdown, save

METASPO = [sys.executable, "-m", "metaspo_dspy.cli"]
MODELS = ["--task-model", "embedded", "--optimizer-model", "embedded"]


def commands(run: Path, quick: bool) -> list[tuple[str, list[str]]]:
    """scripts/demo's two commands (``quick``: the smallest sizes, a smoke run of a minute or two)."""
    search = ["--iterations", "1", "--system-candidates", "4", "--user-candidates", "2", "--user-top-k", "2"]
    sizes, unseen = ["--train-size", "8", "--test-size", "8"], ["--num-user-prompts", "3", "--test-size", "10"]
    if quick:
        search = ["--iterations", "1", "--system-candidates", "1", "--user-candidates", "1", "--user-top-k", "1"]
        sizes, unseen = ["--train-size", "1", "--test-size", "1"], ["--num-user-prompts", "1", "--test-size", "1"]
    return [
        ("train", [*METASPO, "train", "-c", "generated", *MODELS, *search, *sizes, "--log-dir", str(run), "--quiet"]),
        ("test", [*METASPO, "test", "-c", "generated", *MODELS, "--system-prompt", "default", str(run), *unseen,
                  "--log-dir", str(run / "unseen"), "--quiet"]),
    ]  # fmt: skip


def summarize(calls: list[dict]) -> list[list]:
    rows = []
    for role, temperature in (("task (T=0)", 0.0), ("optimizer (T=1)", 1.0)):
        mine = [c for c in calls if (c["temperature"] == 0.0) == (temperature == 0.0)]
        prompt = sum(c["prompt_tokens"] for c in mine)
        reused = sum(c["reused_tokens"] for c in mine)
        rows.append([
            role, len(mine), prompt, reused, prompt - reused, sum(c["completion_tokens"] for c in mine),
            sum(c["prompt_seconds"] for c in mine), sum(c["completion_seconds"] for c in mine),
        ])  # fmt: skip
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--name", default="embedded_profile")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        profile = Path(tmp) / "calls.jsonl"
        env = {**os.environ, "METASPO_EMBEDDED_PROFILE": str(profile), "DSPY_CACHEDIR": str(Path(tmp) / "cache")}
        walls, per_command = {}, {}
        for label, command in commands(Path(tmp) / "run", args.quick):
            before = len(profile.read_text().splitlines()) if profile.exists() else 0
            start = time.perf_counter()
            subprocess.run(command, env=env, check=True, stdout=subprocess.DEVNULL, stdin=subprocess.DEVNULL)
            walls[label] = time.perf_counter() - start
            lines = profile.read_text().splitlines()[before:]
            per_command[label] = [json.loads(line) for line in lines]
    rows = []
    for label, calls in per_command.items():
        for row in summarize(calls):
            rows.append([label, *row])
    table = markdown(rows, [
        "command", "role", "calls", "prompt tokens", "reused from KV cache", "evaluated", "generated tokens",
        "prompt s", "generation s",
    ])  # fmt: skip
    table = "Wall: " + ", ".join(f"{k} {v:.0f} s" for k, v in walls.items()) + ".\n\n" + table
    save(args.name, {"quick": args.quick, "wall_s": walls, "calls": per_command}, table)


if __name__ == "__main__":
    main()
