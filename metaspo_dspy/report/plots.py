"""matplotlib figures of a run (each draws on ``ax`` or a new figure)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from metaspo_dspy.report.data import (
    INSTALL_HINT,
    MatplotlibMissing,
    _best_node,
    load_results,
    load_run,
    step_label,
    task_scores,
)
from metaspo_dspy.report.tables import _tta_curves


# -- plots -------------------------------------------------------------------------------------
def _require_matplotlib():
    try:
        import matplotlib
    except ImportError:
        raise MatplotlibMissing(f"plots need matplotlib: {INSTALL_HINT}") from None
    return matplotlib


def _axes(ax, figsize=(7, 4)):
    if ax is not None:
        return ax
    _require_matplotlib()
    import matplotlib.pyplot as plt

    _, ax = plt.subplots(figsize=figsize, layout="constrained")
    return ax


def _artifact(artifact) -> dict[str, Any]:
    return artifact if isinstance(artifact, Mapping) and "steps" in artifact else load_run(artifact)


def plot_meta_score(artifact, ax=None):
    """Meta-score (mean train score over all beams) of the incumbent after every step, and each
    outer-loop candidate's meta-score at its iteration's outer step (▲ accepted, ✕ rejected)."""
    artifact = _artifact(artifact)
    ax = _axes(ax)
    steps = artifact["steps"]
    xs = list(range(len(steps)))
    ax.plot(xs, [s["meta_score"] for s in steps], marker="o", color="C0", label="meta-score (incumbent)", zorder=3)
    outer_x = {s["iteration"]: i for i, s in enumerate(steps) if s["phase"] == "outer"}
    by_iteration: dict[int, list[Mapping[str, Any]]] = {}
    for d in artifact.get("outer_decisions", []):
        by_iteration.setdefault(d["iteration"], []).append(d)
    shown = set()
    for iteration, decisions in by_iteration.items():
        x0 = outer_x.get(iteration, len(steps))
        n = len(decisions)
        for k, d in enumerate(decisions):
            x = x0 - 0.3 + 0.3 * (k + 1) / (n + 1)  # spread just left of the outer step
            kind = "accepted" if d["accepted"] else "rejected"
            style = (
                {"marker": "^", "color": "C2", "s": 60} if d["accepted"] else {"marker": "x", "color": "C3", "s": 45}
            )
            label = f"{kind} candidate" if kind not in shown else None
            shown.add(kind)
            ax.scatter([x], [d["meta_score"]], label=label, zorder=4, **style)
    ax.set_xticks(xs, [step_label(s) for s in steps], rotation=30 if len(steps) > 4 else 0, ha="right")
    ax.set_ylim(-0.02, 1.05)
    ax.set_ylabel("meta-score (train, fraction)")
    status = "" if artifact.get("complete", True) else " (run not finished)"
    ax.set_title(f"Meta-score per step{status}")
    ax.grid(alpha=0.3)
    ax.legend(loc="best", fontsize="small")
    return ax


def plot_task_scores(artifact, ax=None):
    """Per task: initial vs final train score, and the final test score (and the initial one when
    known), as grouped bars."""
    import numpy as np

    artifact = _artifact(artifact)
    ax = _axes(ax)
    scores = task_scores(artifact)
    names = list(scores)
    series = [("initial train", "initial_train", "C7"), ("final train", "final_train", "C0")]
    if any(s["initial_test"] is not None for s in scores.values()):
        series.append(("initial test", "initial_test", "C8"))
    if any(s["final_test"] is not None for s in scores.values()):
        series.append(("final test", "final_test", "C1"))
    x = np.arange(len(names))
    width = 0.8 / len(series)
    for i, (label, key, color) in enumerate(series):
        values = [scores[t][key] for t in names]
        heights = [v if v is not None else 0.0 for v in values]
        bars = ax.bar(x - 0.4 + width * (i + 0.5), heights, width, label=label, color=color)
        for bar, value in zip(bars, values, strict=True):
            text = "n/a" if value is None else f"{value:.2f}"
            ax.annotate(
                text, (bar.get_x() + bar.get_width() / 2, bar.get_height()), ha="center", va="bottom", fontsize=7
            )
    ax.set_xticks(x, names, rotation=20 if len(names) > 3 else 0, ha="right" if len(names) > 3 else "center")
    ax.set_ylim(0, 1.22)
    ax.set_yticks([0, 0.2, 0.4, 0.6, 0.8, 1.0])
    ax.set_ylabel("score (fraction)")
    ax.set_title("Per-task scores: initial vs final")
    ax.legend(fontsize="small", ncols=len(series), loc="upper center")
    ax.grid(axis="y", alpha=0.3)
    return ax


def plot_task_progress(artifact, ax=None):
    """Best train score of every task's beam after every step (one line per task)."""
    artifact = _artifact(artifact)
    ax = _axes(ax)
    steps = artifact["steps"]
    xs = list(range(len(steps)))
    tasks = list(dict.fromkeys(t for s in steps for t in s.get("nodes", {})))
    for i, task in enumerate(tasks):
        ys = [(_best_node(s, task) or {}).get("train_score") for s in steps]
        ax.plot(xs, [y if y is not None else float("nan") for y in ys], marker="o", color=f"C{i % 10}", label=task)
    ax.set_xticks(xs, [step_label(s) for s in steps], rotation=30 if len(steps) > 4 else 0, ha="right")
    ax.set_ylim(-0.02, 1.05)
    ax.set_ylabel("best train score (fraction)")
    ax.set_title("Per-task train score after every step")
    ax.grid(alpha=0.3)
    ax.legend(fontsize="small")
    return ax


def plot_phases(artifact, ax=None):
    """Task-LM and optimizer-LM calls per phase (bars) and seconds per phase (line, right axis)."""
    import numpy as np

    artifact = _artifact(artifact)
    ax = _axes(ax)
    phases = artifact.get("phases", [])
    x = np.arange(len(phases))
    ax.bar(x - 0.2, [p.get("task_lm_calls", 0) for p in phases], 0.4, label="task-LM calls", color="C0")
    ax.bar(x + 0.2, [p.get("optimizer_calls", 0) for p in phases], 0.4, label="optimizer calls", color="C1")
    ax.set_xticks(x, [step_label(p) for p in phases], rotation=30 if len(phases) > 4 else 0, ha="right")
    ax.set_ylabel("calls")
    seconds = ax.twinx()
    seconds.plot(x, [p.get("seconds", 0.0) for p in phases], color="C3", marker="s", label="seconds")
    seconds.set_ylabel("seconds")
    seconds.set_ylim(bottom=0)
    handles = ax.get_legend_handles_labels()
    more = seconds.get_legend_handles_labels()
    ax.legend(handles[0] + more[0], handles[1] + more[1], fontsize="small", loc="upper left")
    ax.set_title("Calls and time per phase")
    return ax


def plot_unseen(results, ax=None):
    """Unseen generalization: mean test score per task and system prompt with the spread over user
    prompts (± stdev error bars), and the average over tasks."""
    import numpy as np

    data = load_results(results)
    ax = _axes(ax)
    runs = data["results"]
    labels = list(runs)
    tasks = list(dict.fromkeys(t for run in runs.values() for t in run["tasks"]))
    groups = [*tasks, "average"]
    x = np.arange(len(groups))
    width = 0.8 / max(1, len(labels))
    for i, label in enumerate(labels):
        run = runs[label]
        means = [run["tasks"][t]["mean"] if t in run["tasks"] else 0.0 for t in tasks] + [run["average"]]
        errors = [run["tasks"][t]["stdev"] if t in run["tasks"] else 0.0 for t in tasks]
        positions = x - 0.4 + width * (i + 0.5)
        ax.bar(positions, means, width, label=label, color=f"C{i % 10}")
        ax.errorbar(positions[:-1], means[:-1], yerr=errors, fmt="none", ecolor="black", capsize=3, linewidth=1)
    ax.set_xticks(x, groups, rotation=20 if len(groups) > 4 else 0, ha="right" if len(groups) > 4 else "center")
    ax.set_ylim(0, 1.22)
    ax.set_yticks([0, 0.2, 0.4, 0.6, 0.8, 1.0])
    ax.set_ylabel("test score (fraction)")
    ax.set_title("Unseen tasks: mean ± stdev over user prompts")
    ax.legend(fontsize="small", ncols=min(4, len(labels)), loc="upper center")
    ax.grid(axis="y", alpha=0.3)
    return ax


def plot_tta(results, ax=None):
    """Test-time adaptation: test score of the best kept prompt per ProTeGi round (task mean), one
    line per system prompt; the first point is the task's initial user prompt."""
    curves = _tta_curves(load_results(results))
    ax = _axes(ax)
    length = max((len(c) for c in curves.values()), default=0)
    for i, (label, values) in enumerate(curves.items()):
        ax.plot(
            range(len(values)),
            [v if v is not None else float("nan") for v in values],
            marker="o",
            color=f"C{i % 10}",
            label=label,
        )
    ax.set_xticks(range(length), ["initial", *(f"round {r}" for r in range(length - 1))])
    ax.set_ylim(-0.02, 1.05)
    ax.set_ylabel("test score of best prompt (fraction)")
    ax.set_title("Test-time adaptation (ProTeGi)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize="small")
    return ax
