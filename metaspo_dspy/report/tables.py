"""Markdown tables of a run and of metaspo test results."""

from __future__ import annotations

import re
import statistics
from collections import Counter
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from metaspo_dspy.report.data import _short, load_results, parsed_change, step_label, task_scores


def _fmt(value: Any, digits: int = 3) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.{digits}f}"
    return str(value)


def _cell(value: Any) -> str:
    return _fmt(value).replace("|", "\\|").replace("\n", " ")


def _md_table(rows: Sequence[Sequence[Any]], headers: Sequence[str]) -> str:
    lines = ["| " + " | ".join(headers) + " |", "|" + "|".join("---" for _ in headers) + "|"]
    lines += ["| " + " | ".join(_cell(v) for v in row) + " |" for row in rows]
    return "\n".join(lines)


def _fence(text: str, info: str = "text") -> str:
    longest = max((len(m) for m in re.findall(r"`+", text)), default=0)
    ticks = "`" * max(3, longest + 1)
    return f"{ticks}{info}\n{text}\n{ticks}"


def steps_table(artifact: Mapping[str, Any]) -> str:
    """Markdown: meta-score after every step, and whether the system prompt changed."""
    rows, previous = [], None
    for i, step in enumerate(artifact["steps"]):
        changed = "" if previous is None else ("yes" if step["system_prompt"] != previous else "")
        rows.append([i, step_label(step), step["meta_score"], changed])
        previous = step["system_prompt"]
    return _md_table(rows, ["step", "phase", "meta-score", "system prompt changed"])


DECISION_HEADERS = ["iteration", "candidate", "meta-score", "incumbent", "decision"]


def decision_rows(artifact: Mapping[str, Any], width: int | None = None) -> list[list[Any]]:
    """One row per outer-loop candidate (``DECISION_HEADERS``), plus its system prompt cut to
    ``width`` characters when a width is given."""
    rows = []
    for d in artifact.get("outer_decisions", []):
        row = [d["iteration"] + 1, d["candidate"], d["meta_score"], d["incumbent_meta_score"]]
        row.append("accepted" if d["accepted"] else "rejected")
        rows.append(row if width is None else [*row, _short(d["system_prompt"], width)])
    return rows


def decisions_table(artifact: Mapping[str, Any], width: int = 70) -> str:
    """Markdown: every outer-loop candidate with its meta-score and fate."""
    rows = decision_rows(artifact, width)
    return _md_table(rows, [*DECISION_HEADERS, "system prompt"])


def task_table(artifact: Mapping[str, Any], width: int = 70) -> str:
    """Markdown: per task, initial vs final train score, test scores and the best user prompt."""
    scores = task_scores(artifact)
    tasks = artifact.get("tasks") or {}
    rows = []
    for task, s in scores.items():
        prompt = (tasks.get(task) or {}).get("user_prompt") or {}
        text = next(iter(prompt.values())) if len(prompt) == 1 else "; ".join(f"[{k}] {v}" for k, v in prompt.items())
        parsed = parsed_change(s["initial_parsed"], s["final_parsed"])
        scored = [s["initial_train"], s["final_train"], s["initial_test"], s["final_test"]]
        rows.append([task, *scored, parsed, _short(text, width)])
    headers = ["task", "initial train", "final train", "initial test", "final test", "parsed (train)"]
    table = _md_table(rows, [*headers, "best user prompt (final)"])
    warnings = "".join(f"\n- warning: {w}" for w in artifact.get("warnings", []))
    return table + ("\n" + warnings if warnings else "")


def phases_table(artifact: Mapping[str, Any]) -> str:
    """Markdown: calls, proposals and time per phase, with a total row."""
    keys = ["task_lm_calls", "reused_evaluations", "optimizer_calls", "proposals", "discarded", "failures", "seconds"]
    rows, total = [], Counter()
    for phase in artifact.get("phases", []):
        rows.append([step_label(phase), *(phase.get(k, 0) for k in keys)])
        total.update({k: phase.get(k, 0) for k in keys})
    rows.append(["total", *(round(total[k], 3) if k == "seconds" else total[k] for k in keys)])
    return _md_table(
        rows,
        ["phase", "task-LM calls", "reused evals", "optimizer calls", "proposals", "discarded", "failures", "seconds"],
    )


def proposals_table(artifact: Mapping[str, Any]) -> str:
    """Markdown: proposals by kind, how many were usable, and why the others were discarded."""
    by_kind: dict[str, Counter] = {}
    reasons: dict[str, Counter] = {}
    for p in artifact.get("proposals", []):
        by_kind.setdefault(p["kind"], Counter())[p["status"]] += 1
        if p["status"] != "ok":
            reasons.setdefault(p["kind"], Counter())[_short(p.get("reason") or "?", 50)] += 1
    rows = [
        [
            kind,
            sum(c.values()),
            c.get("ok", 0),
            sum(c.values()) - c.get("ok", 0),
            "; ".join(f"{r} ({n})" for r, n in reasons.get(kind, Counter()).most_common()),
        ]
        for kind, c in by_kind.items()
    ]
    return _md_table(rows, ["kind", "proposals", "usable", "discarded", "reasons"])


def unseen_table(results: str | Path | Mapping[str, Any]) -> str:
    """Markdown: mean ± stdev (n user prompts) per unseen task and system prompt, and the average."""
    data = load_results(results)
    runs = data["results"]
    labels = list(runs)
    tasks = list(dict.fromkeys(t for run in runs.values() for t in run["tasks"]))
    rows = []
    for task in tasks:
        row: list[Any] = [task]
        for label in labels:
            entry = runs[label]["tasks"].get(task)
            row.append(f"{entry['mean']:.3f} ± {entry['stdev']:.3f} (n={len(entry['scores'])})" if entry else "-")
        rows.append(row)
    rows.append(["**average**", *(f"**{runs[label]['average']:.3f}**" for label in labels)])
    return _md_table(rows, ["task", *labels])


def _tta_curves(data: Mapping[str, Any]) -> dict[str, list[float | None]]:
    """Per system prompt: the test score of the initial prompt, then of the best kept prompt per
    round, averaged over tasks."""
    curves = {}
    for label, per_task in data["results"].items():
        series = []
        for result in per_task.values():
            initial = (result.get("initial") or {}).get("test_score")
            series.append([initial, *(r["test_of_best"] for r in result["rounds"])])
        length = min(len(s) for s in series)
        curves[label] = [
            statistics.fmean(v) if None not in (v := [s[i] for s in series]) else None for i in range(length)
        ]
    return curves


def tta_table(results: str | Path | Mapping[str, Any]) -> str:
    """Markdown: test-time adaptation, test score of the best kept prompt per round (task mean)."""
    curves = _tta_curves(load_results(results))
    length = max((len(c) for c in curves.values()), default=0)
    headers = ["system prompt", "initial", *(f"round {r}" for r in range(length - 1))]
    return _md_table([[label, *values] for label, values in curves.items()], headers)
