"""The table of `metaspo compare`: unseen tasks x methods, from the evaluation files it wrote.

Each evaluation file (``eval/unseen-<label>.json``) holds one system prompt's unseen-generalization
result (:func:`metaspo_dspy.meta_test.unseen_generalization`). A method's cell for a task pools the
per-user-prompt scores of all its seeds: mean ± sample standard deviation over user prompts x seeds.
The average row is the mean of the task means, ± the standard deviation over (seed, i) of the mean
over tasks of the i-th user prompt's score. Test-time adaptation cells are the test score of the
best kept prompt in the last round, mean ± std over seeds.
"""

from __future__ import annotations

import csv
import io
import statistics
from pathlib import Path
from typing import Any

from metaspo_dspy.report.data import add_parsed, parsed_share

#: Column labels: ``service`` is our own text, not a commercial product's prompt.
LABELS = {"service": "service (our text)", "cot": "cot", "default": "default"}
SERVICE_NOTE = (
    "`service` is a long assistant-style system prompt written by us in the manner of commercial "
    "services' prompts (not any product's real prompt)."
)
PROTOCOL_NOTE = (
    "Known protocol differences from the reference: our own optimizer wording, per-candidate random "
    "streams for the examples shown to the optimizer, the question appended when a prompt lacks `{question}`."
)


def _sd(values: list[float]) -> float:
    return statistics.stdev(values) if len(values) > 1 else 0.0


def unseen_cells(results: list[dict[str, Any]], tasks: list[str]) -> dict[str, tuple[float, float, int]]:
    """``{task or 'average': (mean, std, n)}`` for one method from its runs' unseen results."""
    cells = {}
    for task in tasks:
        scores = [s for r in results for s in r["tasks"][task]["scores"]]
        cells[task] = (statistics.fmean(scores), _sd(scores), len(scores))
    per_prompt = []
    for r in results:
        n = min(len(r["tasks"][t]["scores"]) for t in tasks)
        per_prompt += [statistics.fmean(r["tasks"][t]["scores"][i] for t in tasks) for i in range(n)]
    means = [cells[t][0] for t in tasks]
    cells["average"] = (statistics.fmean(means), _sd(per_prompt), len(per_prompt))
    return cells


def tta_cells(results: list[dict[str, Any]], tasks: list[str]) -> dict[str, tuple[float, float, int]]:
    """``{task or 'average': (mean, std, n)}``: last round's test score of the best kept prompt."""
    cells = {}
    for task in tasks:
        scores = [r[task]["rounds"][-1]["test_of_best"] for r in results]
        cells[task] = (statistics.fmean(scores), _sd(scores), len(scores))
    per_seed = [statistics.fmean(r[t]["rounds"][-1]["test_of_best"] for t in tasks) for r in results]
    cells["average"] = (statistics.fmean(per_seed), _sd(per_seed), len(per_seed))
    return cells


def unseen_parsed(results: list[dict[str, Any]], tasks: list[str]) -> dict[str, float | None]:
    """``{task or 'average': share of parsed answers}`` for one method (None: unknown or n/a)."""
    counts: dict[str, dict[str, int] | None] = {}
    for task in tasks:
        total: dict[str, int] | None = {"parsed": 0, "answers": 0}
        for r in results:
            total = add_parsed(total, r["tasks"][task].get("parsed"))
        counts[task] = total
    pooled: dict[str, int] | None = {"parsed": 0, "answers": 0}
    for task in tasks:
        pooled = add_parsed(pooled, counts[task])
    return {**{t: parsed_share(c) for t, c in counts.items()}, "average": parsed_share(pooled)}


def build(domain: dict[str, Any], analysis: str) -> dict[str, Any]:
    """The table for one domain: ``domain`` has tasks, methods, results ({method: [result per seed]}),
    test_sizes, caveats ({task: [text]}) and the header facts (model, prompt_format, seeds). ``parsed``
    holds each cell's share of parsed answers (unseen analysis; None where unknown or n/a)."""
    tasks = domain["tasks"]
    cells_of = unseen_cells if analysis == "unseen" else tta_cells
    cells = {m: cells_of(domain["results"][m], tasks) for m in domain["methods"]}
    parsed = {
        m: unseen_parsed(domain["results"][m], tasks) if analysis == "unseen" else dict.fromkeys([*tasks, "average"])
        for m in domain["methods"]
    }
    return {**domain, "analysis": analysis, "cells": cells, "parsed": parsed}


def cell_text(cell: tuple[float, float, int], parsed: float | None) -> str:
    """A Markdown cell: mean ± std, with the share of parsed answers when some did not parse; a
    cell where no answer parsed says so instead of showing a meaningless 0."""
    if parsed == 0:
        return "nothing parsed"
    return f"{cell[0]:.3f} ± {cell[1]:.3f}{parsed_note(parsed)}"


def parsed_note(parsed: float | None) -> str:
    """``" (63% parsed)"`` when some answers did not parse, else ``""``."""
    return "" if parsed is None or parsed >= 1 else f" ({parsed:.0%} parsed)"


#: Said under a table where some answers did not parse.
UNPARSED_NOTE = (
    "Some answers could not be parsed (the share parsed is given; an unparsed answer scores 0): the task "
    "model did not write them in the form the task's parser reads. `nothing parsed` marks a cell whose score "
    "means nothing."
)


def markdown(table: dict[str, Any]) -> str:
    methods, tasks = table["methods"], table["tasks"]
    what = "unseen generalization" if table["analysis"] == "unseen" else "test-time adaptation (last round)"
    lines = [
        f"### {table['domain']}: {what}",
        "",
        f"Task model `{table['task_model']}`, prompt format `{table['prompt_format']}` (training and testing), "
        f"{table['seeds']} seed(s) per trained method; cells: mean ± std over {table['spread']}.",
        "",
        "| task | test size | " + " | ".join(LABELS.get(m, m) for m in methods) + " |",
        "|---|---|" + "---|" * len(methods),
    ]
    for task in [*tasks, "average"]:
        size = str(table["test_sizes"][task]) if task in table["test_sizes"] else ""
        row = [cell_text(table["cells"][m][task], _parsed(table, m, task)) for m in methods]
        lines.append(f"| {task} | {size} | " + " | ".join(row) + " |")
    lines.append("")
    if any(_parsed(table, m, t) is not None and _parsed(table, m, t) < 1 for m in methods for t in tasks):
        lines.append(f"- {UNPARSED_NOTE}")
    if "service" in methods:
        lines.append(f"- {SERVICE_NOTE}")
    for task in tasks:
        for text in table["caveats"].get(task, []):
            lines.append(f"- {task}: {text}")
    lines.append(f"- {PROTOCOL_NOTE}")
    return "\n".join(lines) + "\n"


def _parsed(table: dict[str, Any], method: str, task: str) -> float | None:
    """A cell's share of parsed answers (None: unknown, e.g. a table built before it was counted)."""
    return table.get("parsed", {}).get(method, {}).get(task)


def csv_rows(table: dict[str, Any]) -> list[dict[str, Any]]:
    rows = []
    for task in [*table["tasks"], "average"]:
        for method in table["methods"]:
            mean, sd, n = table["cells"][method][task]
            rows.append(
                {
                    "domain": table["domain"],
                    "analysis": table["analysis"],
                    "task": task,
                    "method": method,
                    "mean": f"{mean:.6f}",
                    "std": f"{sd:.6f}",
                    "n": n,
                    "parsed": "" if _parsed(table, method, task) is None else f"{_parsed(table, method, task):.6f}",
                    "test_size": table["test_sizes"].get(task, ""),
                    "prompt_format": table["prompt_format"],
                    "task_model": table["task_model"],
                    "caveats": "; ".join(table["caveats"].get(task, [])),
                }
            )
    return rows


def to_csv(tables: list[dict[str, Any]]) -> str:
    rows = [row for t in tables for row in csv_rows(t)]
    out = io.StringIO()
    writer = csv.DictWriter(out, fieldnames=list(rows[0]), lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    return out.getvalue()


def figure(tables: list[dict[str, Any]], path: Path) -> str | None:
    """A bar chart of each method's average per domain; the reason when matplotlib is missing."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return "matplotlib is not installed (pip install 'metaspo-dspy[dev]'), so no figure was drawn"
    fig, axes = plt.subplots(1, len(tables), figsize=(4 + 1.2 * len(tables[0]["methods"]) * len(tables), 3.5))
    for ax, table in zip(list(axes) if len(tables) > 1 else [axes], tables, strict=True):
        methods = table["methods"]
        cells = [table["cells"][m]["average"] for m in methods]
        ax.bar([LABELS.get(m, m) for m in methods], [c[0] for c in cells], yerr=[c[1] for c in cells], capsize=3)
        for x, method in enumerate(methods):
            if _parsed(table, method, "average") == 0:
                ax.text(x, 0.02, "nothing\nparsed", ha="center", va="bottom", fontsize=8, color="firebrick")
        ax.set_ylim(0, 1)
        ax.set_title(table["domain"])
        ax.set_ylabel("average score")
        ax.tick_params(axis="x", rotation=30)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return None
