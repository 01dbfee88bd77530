"""``metaspo show``, ``metaspo presets``, ``metaspo tasks``: look at runs, presets and tasks."""

from __future__ import annotations

import argparse
from pathlib import Path

from metaspo_dspy.cli.common import add_common_flags, say, table
from metaspo_dspy.presets import PRESETS
from metaspo_dspy.report.data import load_run
from metaspo_dspy.report.tables import DECISION_HEADERS, decision_rows


def add_parsers(subparsers) -> None:
    show = subparsers.add_parser("show", help="summarize a run directory (also a running or interrupted one)")
    show.add_argument("run_dir", type=Path)
    show.add_argument("--proposals", action="store_true", help="list every proposal with its fate")
    add_common_flags(show)
    show.set_defaults(handler=run_show)
    presets = subparsers.add_parser("presets", help="print the preset system prompts (default, cot, service)")
    presets.set_defaults(handler=run_presets)
    tasks = subparsers.add_parser("tasks", help="list the available tasks by domain")
    tasks.set_defaults(handler=run_tasks)


def run_show(args: argparse.Namespace) -> int:
    artifact = load_run(args.run_dir)
    state = "finished" if artifact.get("complete", True) else "not finished (resume with metaspo train --resume)"
    say(f"run {args.run_dir}: {artifact['method']}, {state}")
    steps = [
        [s["phase"], "-" if s["iteration"] is None else s["iteration"] + 1, s["meta_score"]] for s in artifact["steps"]
    ]
    say(table(steps, ["step", "iteration", "meta-score"]))
    decisions = decision_rows(artifact)
    if decisions:
        say(table(decisions, DECISION_HEADERS))
    rows = [[t, e["best_node"], e["train_score"], e["test_score"]] for t, e in artifact["tasks"].items()]
    say(table(rows, ["task", "best node", "train", "test"]))
    calls = artifact["calls"]
    say(f"calls: {calls['task_lm']} task-model, {calls['optimizer_lm']} optimizer")
    if args.proposals:
        rows = [
            [p["id"], p["kind"], p["iteration"], p["task"] or "-", p["status"], p["reason"] or ""]
            for p in artifact["proposals"]
        ]
        say(table(rows, ["id", "kind", "iteration", "task", "status", "reason"]))
    print(artifact["optimized_system_prompt"])
    return 0


def run_presets(args: argparse.Namespace) -> int:
    for name, text in PRESETS.items():
        note = "  (ours, in the style of commercial assistants; not the paper's text)" if name == "service" else ""
        print(f"== {name}{note}\n{text}\n")
    return 0


def run_tasks(args: argparse.Namespace) -> int:
    from metaspo_dspy.tasks import DOMAIN_TASKS, SOURCE_TASKS, UNSEEN_TASKS

    rows = []
    for domain in DOMAIN_TASKS:
        rows.append([domain, ", ".join(SOURCE_TASKS.get(domain, [])), ", ".join(UNSEEN_TASKS.get(domain, []))])
    print(table(rows, ["domain", "source tasks", "unseen tasks"]))
    return 0
