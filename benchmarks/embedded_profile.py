"""Where the offline demo's time goes: ``scripts/demo``'s two commands on the embedded model, with an
empty DSPy cache, every llama.cpp call timed (``METASPO_EMBEDDED_PROFILE``).

Splits the time into task calls (temperature 0) and optimizer calls (temperature 1.0), and each into
prompt evaluation and generation, with the prompt tokens the KV cache let it skip. ``--compare``
first runs the same demo on llama-cpp-python's own sampler chain (``METASPO_EMBEDDED_GREEDY_GRAMMAR=0``),
then on the default, and checks that both produced the same outcome (every journaled answer and
completion, the optimized program, the unseen-task scores); it exits 1 when they differ.

    python benchmarks/embedded_profile.py --compare  # the demo's sizes, both samplers (~16 min)
    python benchmarks/embedded_profile.py            # the demo's sizes, default only (~7 min)
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
from typing import Any

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


def run_demo(tmp: Path, quick: bool, greedy_grammar: bool) -> tuple[dict, dict, dict]:
    """Run the demo's commands in ``tmp``; returns wall seconds and profiled calls per command, and
    the run's outcome (:func:`outcome`)."""
    profile, run = tmp / "calls.jsonl", tmp / "run"
    env = {
        **os.environ,
        "METASPO_EMBEDDED_PROFILE": str(profile),
        "METASPO_EMBEDDED_GREEDY_GRAMMAR": "1" if greedy_grammar else "0",
        "DSPY_CACHEDIR": str(tmp / "cache"),
    }
    walls, per_command = {}, {}
    for label, command in commands(run, quick):
        before = len(profile.read_text().splitlines()) if profile.exists() else 0
        start = time.perf_counter()
        subprocess.run(command, env=env, check=True, stdout=subprocess.DEVNULL, stdin=subprocess.DEVNULL)
        walls[label] = time.perf_counter() - start
        lines = profile.read_text().splitlines()[before:]
        per_command[label] = [json.loads(line) for line in lines]
    return walls, per_command, outcome(run)


def outcome(run: Path) -> dict:
    """What a run produced, without timings: every journaled evaluation (answers and the model's raw
    completions), the optimized program and the unseen-task scores."""
    evaluations = {}
    for line in (run / "evaluations.jsonl").read_text().splitlines():
        record = json.loads(line)
        evaluations[record["key"]] = record["value"]
    unseen = json.loads((run / "unseen" / "unseen_results.json").read_text())
    return {
        "evaluations": evaluations,
        "program": without_timings(json.loads((run / "program.json").read_text())),
        "unseen": {name: result["tasks"] for name, result in unseen["results"].items()},
    }


def without_timings(value: Any) -> Any:
    """``value`` without the ``seconds`` keys (each phase's duration, the only timings a program holds)."""
    if isinstance(value, dict):
        return {k: without_timings(v) for k, v in value.items() if k != "seconds"}
    if isinstance(value, list):
        return [without_timings(v) for v in value]
    return value


def table(per_command: dict) -> list[list]:
    rows = []
    for label, calls in per_command.items():
        for row in summarize(calls):
            rows.append([label, *row])
    return rows


HEADERS = [
    "command", "role", "calls", "prompt tokens", "reused from KV cache", "evaluated", "generated tokens",
    "prompt s", "generation s",
]  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--name", default="embedded_profile")
    parser.add_argument(
        "--compare", action="store_true",
        help="also run the demo with llama-cpp-python's own sampler chain first, and check both runs "
        "produced the same answers",
    )  # fmt: skip
    args = parser.parse_args()
    modes = [False, True] if args.compare else [True]
    results = {}
    for greedy_grammar in modes:
        with tempfile.TemporaryDirectory() as tmp:
            results[greedy_grammar] = run_demo(Path(tmp), args.quick, greedy_grammar)
    walls, per_command, produced = results[True]
    text = "Wall: " + ", ".join(f"{k} {v:.0f} s" for k, v in walls.items()) + ".\n\n"
    text += markdown(table(per_command), HEADERS)
    data = {"quick": args.quick, "wall_s": walls, "calls": per_command}
    if args.compare:
        stock_walls, stock_calls, stock_produced = results[False]
        same = {part: stock_produced[part] == produced[part] for part in produced}
        data.update(stock_wall_s=stock_walls, stock_calls=stock_calls, identical=same)
        text = (
            "Fast greedy grammar sampling (default) vs llama-cpp-python's own sampler chain "
            "(`METASPO_EMBEDDED_GREEDY_GRAMMAR=0`), the same demo in one run: wall "
            + ", ".join(
                f"{k} {walls[k]:.0f} s vs {stock_walls[k]:.0f} s ({walls[k] / stock_walls[k]:.2f}x)" for k in walls
            )
            + "; identical outcome: "
            + ", ".join(f"{part} {'yes' if ok else 'NO'}" for part, ok in same.items())
            + f" ({len(produced['evaluations'])} journaled evaluations).\n\nDefault:\n\n"
            + text
            + "\n\nllama-cpp-python's chain:\n\n"
            + markdown(table(stock_calls), HEADERS)
        )
    save(args.name, data, text)
    if args.compare and not all(data["identical"].values()):
        sys.exit(f"the two samplers produced different outcomes: {data['identical']}")


if __name__ == "__main__":
    main()
