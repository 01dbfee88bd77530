"""``metaspo show``, ``metaspo presets``, ``metaspo tasks``: look at runs, presets and tasks."""

from __future__ import annotations

import argparse
from pathlib import Path

from metaspo_dspy.cli.common import add_common_flags, say, table
from metaspo_dspy.presets import PRESETS
from metaspo_dspy.report.data import load_run, parsed_change, task_scores
from metaspo_dspy.report.tables import DECISION_HEADERS, decision_rows
from metaspo_dspy.store.ledger import describe


def add_parsers(subparsers) -> None:
    show = subparsers.add_parser("show", help="summarize a run directory (also a running or interrupted one)")
    show.add_argument("run_dir", type=Path)
    show.add_argument("--proposals", action="store_true", help="list every proposal with its fate")
    add_common_flags(show)
    show.set_defaults(handler=run_show)
    presets = subparsers.add_parser("presets", help="print the preset system prompts (default, cot, service)")
    presets.set_defaults(handler=run_presets)
    tasks = subparsers.add_parser(
        "tasks", help="list the tasks: source, licence, sizes, whether on this machine (bundled/fetched/missing)"
    )
    tasks.add_argument("--data-dir", type=Path, default=None, help="report on this data folder instead")
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
    parsed = task_scores(artifact)
    rows = [
        [t, e["best_node"], e["train_score"], e["test_score"], parsed_change(*_initial_final(parsed[t]))]
        for t, e in artifact["tasks"].items()
    ]
    say(table(rows, ["task", "best node", "train", "test", "parsed (train)"]))
    for warning in artifact.get("warnings", []):
        say(f"warning: {warning}")
    calls = artifact["calls"]
    say(f"calls: {calls['task_lm']} task-model, {calls['optimizer_lm']} optimizer (the last process)")
    if artifact.get("cumulative"):  # absent in runs written before the ledger
        when = "" if artifact.get("complete", True) else " (as of the last checkpoint)"
        say(f"  {describe(artifact['cumulative'])}{when}")
    if args.proposals:
        rows = [
            [p["id"], p["kind"], p["iteration"], p["task"] or "-", p["status"], p["reason"] or ""]
            for p in artifact["proposals"]
        ]
        say(table(rows, ["id", "kind", "iteration", "task", "status", "reason"]))
    print(artifact["optimized_system_prompt"])
    return 0


def _initial_final(scores: dict[str, float | None]) -> tuple[float | None, float | None]:
    return scores["initial_parsed"], scores["final_parsed"]


def run_presets(args: argparse.Namespace) -> int:
    for name, text in PRESETS.items():
        note = "  (ours, in the style of commercial assistants; not the paper's text)" if name == "service" else ""
        print(f"== {name}{note}\n{text}\n")
    return 0


def run_tasks(args: argparse.Namespace) -> int:
    """The task table on stdout: per task its domain, role, where its data is read from now
    (``bundled``, ``fetched``, ``missing``, ...), the authors' unseen user prompts, sizes of our
    data, licence and source; then the caveats and the fetch command for what is missing."""
    from metaspo_dspy.tasks import DOMAIN_TASKS, SPECS
    from metaspo_dspy.tasks.generated import N_TEST, N_TRAIN
    from metaspo_dspy.tasks.provenance import DATA_INFO, availability, caveats
    from metaspo_dspy.tasks.sources.local import data_roots, find_file
    from metaspo_dspy.tasks.sources.remote import PROMPTS_FOLDER

    rows, notes, missing = [], [], set()
    for domain, names in DOMAIN_TASKS.items():
        for name in names:
            spec = SPECS[name]
            where = availability(name, args.data_dir)
            prompts = "-"
            if spec.unseen_file:
                found = find_file(f"{PROMPTS_FOLDER}/{spec.unseen_file}.json", args.data_dir)
                prompts = found[0] if found else "missing"
            if "missing" in (where, prompts):
                missing.add(domain)
            info = DATA_INFO.get(name)
            if info is None:
                rows.append([domain, name, spec.role, where, prompts, N_TRAIN, N_TEST, "-", "generated offline"])
                continue
            rows.append([domain, name, spec.role, where, prompts, info.train, info.test, info.licence, info.source])
            if caveats(name):
                notes.append(f"  {name}: " + "; ".join(map(str, caveats(name))))
    headers = ["domain", "task", "role", "data", "user prompts", "train", "test", "licence", "source"]
    print(table(rows, headers))
    print("\ntrain/test: examples in the bundled or fetched file; the paper samples 50 train and 500 test per task.")
    print("caveats (where our data differs from the paper's):")
    print("\n".join(notes))
    print("\nlooked in: " + ", ".join(f"{root} ({kind})" for kind, root in data_roots(args.data_dir)))
    if missing and args.data_dir is None:
        print(f"missing data or user prompts: run `metaspo data fetch {' '.join(sorted(missing))}`")
    return 0
