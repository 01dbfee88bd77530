"""Plots, tables and a Markdown report for MetaSPO runs (finished or interrupted).

    from metaspo_dspy.report import report, load_run, plot_meta_score
    report("runs/review")                     # -> runs/review/report/report.md + PNG figures
    artifact = load_run("runs/review")        # metaspo_run.json, else checkpoint.json
    plot_meta_score(artifact)                 # a matplotlib Axes (in a notebook: shown inline)

Every ``plot_*`` function takes a run artifact (``MetaSPOProgram.detailed_results``, a run
directory's ``metaspo_run.json`` or ``checkpoint.json``) or a ``metaspo test`` results file and
draws on ``ax`` (a new figure when None); it returns the Axes. ``report`` saves the same figures as
PNG files through matplotlib's Agg canvas without touching the global pyplot backend, so it is
safe inside notebooks. Scores are fractions in [0, 1], as everywhere in this package.

matplotlib is optional: ``pip install 'metaspo-dspy[notebook]'`` (or just ``matplotlib``); the
tables (``*_table``) and :func:`load_run` work without it.
"""

from __future__ import annotations

import json
import re
import statistics
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

from metaspo_dspy.io import atomic_write_text
from metaspo_dspy.optimize.common import ConfigError

__all__ = [
    "MatplotlibMissing",
    "ReportError",
    "decisions_table",
    "load_results",
    "load_run",
    "merge_unseen_results",
    "phases_table",
    "plot_meta_score",
    "plot_phases",
    "plot_task_progress",
    "plot_task_scores",
    "plot_tta",
    "plot_unseen",
    "proposals_table",
    "report",
    "step_label",
    "steps_table",
    "task_scores",
    "task_table",
    "tta_table",
    "unseen_table",
]

INSTALL_HINT = "pip install 'metaspo-dspy[notebook]' (or: pip install matplotlib)"
#: Figure files written by :func:`report` (name -> caption).
FIGURES = {
    "meta_score.png": "Meta-score per step, with the outer loop's candidates",
    "task_scores.png": "Per-task scores, initial vs final",
    "task_progress.png": "Best train score per task after every step",
    "phases.png": "Calls and time per phase",
    "unseen.png": "Unseen generalization",
    "tta.png": "Test-time adaptation",
}


class ReportError(ConfigError):
    """A run directory or results file cannot be reported on; the message says why."""


class MatplotlibMissing(ReportError, ImportError):
    """matplotlib is not installed (it comes with the ``notebook`` extra)."""


# -- loading -----------------------------------------------------------------------------------
def _read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise ReportError(f"{path} is not valid JSON ({exc})") from None
    except OSError as exc:
        raise ReportError(f"cannot read {path}: {exc.strerror or exc}") from None


def load_run(run: str | Path | Mapping[str, Any]) -> dict[str, Any]:
    """The run artifact of a run directory: ``metaspo_run.json`` when the run finished, else its
    last ``checkpoint.json`` (``"complete": False``). Also accepts the path of either file, or an
    artifact dict (returned as is).

    Raises :class:`ReportError` when the folder holds no run or no phase has finished yet.
    """
    if isinstance(run, Mapping):
        return _check_artifact(dict(run), "the given artifact")
    path = Path(run)
    if path.is_file():
        return _check_artifact(_read_json(path), str(path))
    if not path.is_dir():
        raise ReportError(f"{path} does not exist; give a run directory made by MetaSPO(log_dir=...) or metaspo train")
    for name in ("metaspo_run.json", "checkpoint.json"):
        if (path / name).is_file():
            return _check_artifact(_read_json(path / name), str(path / name))
    if (path / "run.json").is_file():
        raise ReportError(f"{path} holds a run that has not finished its first phase yet (no checkpoint.json)")
    raise ReportError(f"{path} holds no MetaSPO run (no metaspo_run.json or checkpoint.json)")


def _check_artifact(data: Any, where: str) -> dict[str, Any]:
    if not isinstance(data, dict) or "steps" not in data or "optimized_system_prompt" not in data:
        raise ReportError(f"{where} is not a MetaSPO run artifact (no 'steps' / 'optimized_system_prompt')")
    return data


def load_results(results: str | Path | Mapping[str, Any]) -> dict[str, Any]:
    """A ``metaspo test`` results file (``unseen_results.json`` or ``tta_results.json``) as a dict
    in the CLI's shape ``{"analysis", "system_prompts", "results": {label: ...}}``.

    Also accepts that dict, ``{label: unseen_generalization(...) result}``, one
    ``unseen_generalization`` result (labelled by its system prompt), or
    ``{label: test_time_adaptation(...) result}``.
    """
    data = _read_json(Path(results)) if not isinstance(results, Mapping) else dict(results)
    if not isinstance(data, dict):
        raise ReportError("not a metaspo test results file (expected a JSON object)")
    if "results" in data and "analysis" in data:
        return data
    if "tasks" in data and "average" in data:  # one unseen_generalization result
        label = _short(data.get("system_prompt", "system prompt"), 30)
        data = {label: data}
    if data and all(isinstance(v, Mapping) and "tasks" in v and "average" in v for v in data.values()):
        return {
            "analysis": "unseen_generalization",
            "system_prompts": {k: v.get("system_prompt", "") for k, v in data.items()},
            "results": dict(data),
        }
    if data and all(isinstance(v, Mapping) and "rounds" in v for v in data.values()):  # {label: tta result}
        return {
            "analysis": "test_time_adaptation",
            "system_prompts": {k: v.get("system_prompt", "") for k, v in data.items()},
            "results": {k: {v.get("task", "task"): v} for k, v in data.items()},
        }
    raise ReportError("not a metaspo test results file (expected 'analysis' and 'results')")


def merge_unseen_results(*results: str | Path | Mapping[str, Any]) -> dict[str, Any]:
    """Pool several unseen-generalization results (e.g. one per seed, each with its own user
    prompts) into one: per system prompt and task, the scores of every prompt of every result,
    with their mean and spread (sample stdev); ``average`` is the mean of the task means."""
    merged: dict[str, dict[str, Any]] = {}
    prompts: dict[str, str] = {}
    for item in results:
        data = load_results(item)
        if data["analysis"] != "unseen_generalization":
            raise ReportError("merge_unseen_results takes unseen-generalization results only")
        prompts.update(data.get("system_prompts", {}))
        for label, run in data["results"].items():
            entry = merged.setdefault(label, {"system_prompt": run.get("system_prompt", ""), "tasks": {}})
            for task, values in run["tasks"].items():
                target = entry["tasks"].setdefault(task, {"scores": [], "user_prompts": [], "failures": 0})
                target["scores"] += list(values["scores"])
                target["user_prompts"] += list(values.get("user_prompts", []))
                target["failures"] += values.get("failures", 0)
            entry["task_lm_calls"] = entry.get("task_lm_calls", 0) + run.get("task_lm_calls", 0)
    for entry in merged.values():
        for values in entry["tasks"].values():
            values["mean"] = statistics.fmean(values["scores"])
            values["stdev"] = statistics.stdev(values["scores"]) if len(values["scores"]) > 1 else 0.0
        entry["average"] = statistics.fmean(v["mean"] for v in entry["tasks"].values())
    return {"analysis": "unseen_generalization", "system_prompts": prompts, "results": merged}


# -- derived data ------------------------------------------------------------------------------
def step_label(step: Mapping[str, Any]) -> str:
    """``initial``, ``it1 inner``, ``it1 outer``... for a step or phase record."""
    if step.get("iteration") is None:
        return str(step["phase"])
    return f"it{step['iteration'] + 1} {step['phase']}"


def _best_node(step: Mapping[str, Any], task: str) -> Mapping[str, Any] | None:
    nodes = step.get("nodes", {}).get(task) or []
    return nodes[0] if nodes else None


def task_scores(artifact: Mapping[str, Any]) -> dict[str, dict[str, float | None]]:
    """Per task: ``initial_train`` (the initial node), ``final_train`` / ``final_test`` (the best
    node of the final beam) and ``initial_test`` (known only when the initial node was tested,
    i.e. it is still in the final beam; else None)."""
    steps = artifact["steps"]
    initial = steps[0] if steps else {}
    nodes = {n["id"]: n for n in artifact.get("nodes", [])}
    out = {}
    names = list(artifact.get("tasks") or (steps[-1].get("nodes", {}) if steps else {}))
    for task in names:
        first = _best_node(initial, task) or {}
        first_full = nodes.get(first.get("id"), first)
        final = (artifact.get("tasks") or {}).get(task) or {}
        if not final and steps:
            best = _best_node(steps[-1], task) or {}
            final = {"train_score": best.get("train_score"), "test_score": best.get("test_score")}
        out[task] = {
            "initial_train": first.get("train_score"),
            "initial_test": first_full.get("test_score"),
            "final_train": final.get("train_score"),
            "final_test": final.get("test_score"),
        }
    return out


def _fmt(value: Any, digits: int = 3) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.{digits}f}"
    return str(value)


def _short(text: str, n: int = 80) -> str:
    text = " ".join(str(text).split())
    return text if len(text) <= n else text[: n - 1] + "…"


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


def decisions_table(artifact: Mapping[str, Any], width: int = 70) -> str:
    """Markdown: every outer-loop candidate with its meta-score and fate."""
    rows = [
        [
            d["iteration"] + 1,
            d["candidate"],
            d["meta_score"],
            d["incumbent_meta_score"],
            "accepted" if d["accepted"] else "rejected",
            _short(d["system_prompt"], width),
        ]
        for d in artifact.get("outer_decisions", [])
    ]
    return _md_table(rows, ["iteration", "candidate", "meta-score", "incumbent", "decision", "system prompt"])


def task_table(artifact: Mapping[str, Any], width: int = 70) -> str:
    """Markdown: per task, initial vs final train score, test scores and the best user prompt."""
    scores = task_scores(artifact)
    tasks = artifact.get("tasks") or {}
    rows = []
    for task, s in scores.items():
        prompt = (tasks.get(task) or {}).get("user_prompt") or {}
        text = next(iter(prompt.values())) if len(prompt) == 1 else "; ".join(f"[{k}] {v}" for k, v in prompt.items())
        rows.append(
            [task, s["initial_train"], s["final_train"], s["initial_test"], s["final_test"], _short(text, width)]
        )
    return _md_table(
        rows, ["task", "initial train", "final train", "initial test", "final test", "best user prompt (final)"]
    )


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


# -- the report --------------------------------------------------------------------------------
def _save(plot, data, path: Path, figsize=(7, 4)) -> None:
    """Draw with ``plot`` on a fresh Agg figure and save it as PNG (no pyplot, no global backend)."""
    _require_matplotlib()
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    figure = Figure(figsize=figsize, layout="constrained")
    FigureCanvasAgg(figure)
    plot(data, ax=figure.add_subplot())
    figure.savefig(path, dpi=110, format="png")


def _discover_results(run_dir: Path) -> list[Path]:
    found = []
    for pattern in ("unseen_results.json", "*/unseen_results.json", "tta_results.json", "*/tta_results.json"):
        found += sorted(run_dir.glob(pattern))
    return found


def _as_list(value) -> list:
    if value is None:
        return []
    if isinstance(value, (str, Path, Mapping)):
        return [value]
    return list(value)


def report(
    run_dir: str | Path,
    out_dir: str | Path | None = None,
    unseen_results: str | Path | Mapping[str, Any] | Iterable[Any] | None = None,
    *,
    tta_results: str | Path | Mapping[str, Any] | Iterable[Any] | None = None,
    discover: bool = True,
) -> Path:
    """Write ``report.md`` with PNG figures for a run directory; returns the Markdown file's path.

    Args:
        run_dir: a run directory (``MetaSPO(log_dir=...)`` / ``metaspo train``), finished or not: an
            interrupted run is reported from its last ``checkpoint.json`` (or the path of either file).
        out_dir: where ``report.md`` and the figures go (default ``RUN_DIR/report``).
        unseen_results: ``metaspo test`` results (``unseen_results.json``; a path, a dict, or a
            list of them -- a test-time-adaptation file is recognised too) to add as tables and
            figures.
        tta_results: ``metaspo test --analysis tta`` results (``tta_results.json``), likewise.
        discover: when no results are given, use the ``unseen_results.json`` /
            ``tta_results.json`` files found in ``RUN_DIR`` or one folder below it.

    Raises:
        ReportError: no run in ``run_dir``, unreadable files.
        MatplotlibMissing: matplotlib is not installed (``pip install 'metaspo-dspy[notebook]'``).
    """
    artifact = load_run(run_dir)
    run_dir = Path(run_dir) if Path(run_dir).is_dir() else Path(run_dir).parent  # also a path to the artifact
    _require_matplotlib()
    out = Path(out_dir) if out_dir is not None else run_dir / "report"
    out.mkdir(parents=True, exist_ok=True)
    results = _as_list(unseen_results) + _as_list(tta_results)
    if not results and discover:
        results = _discover_results(run_dir)
    loaded = [(item, load_results(item)) for item in results]

    complete = artifact.get("complete", True)
    settings = artifact.get("settings", {})
    steps = artifact["steps"]
    calls = artifact.get("calls", {})
    seconds = sum(p.get("seconds", 0.0) for p in artifact.get("phases", []))
    lines = [f"# MetaSPO run report: `{run_dir.name or run_dir}`", ""]
    status = (
        "finished"
        if complete
        else f"**not finished** (reported from `checkpoint.json` after {len(artifact.get('phases', []))} phases; "
        f"continue with `metaspo train --resume {run_dir}`)"
    )
    tasks_settings = settings.get("tasks", {})
    task_list = ", ".join(
        f"`{t}` ({s.get('train', '?')} train / {s.get('test', 0)} test)" for t, s in tasks_settings.items()
    ) or ", ".join(f"`{t}`" for t in task_scores(artifact))
    lines += [
        f"- **Run directory**: `{run_dir}`",
        f"- **Status**: {status}",
        f"- **Method**: `{artifact.get('method', settings.get('method', '?'))}`; iterations "
        f"{settings.get('num_iterations', '?')}, system candidates {settings.get('num_system_candidates', '?')}, "
        f"user candidates {settings.get('num_user_candidates', '?')}, user top-k {settings.get('user_top_k', '?')}, "
        f"seed {settings.get('seed', '?')}",
        f"- **Task model**: `{(settings.get('task_lm') or {}).get('model', '?')}`; **optimizer model**: "
        f"`{(settings.get('optimizer_lm') or {}).get('model', '?')}`; adapter `{settings.get('adapter', '?')}`",
        f"- **Tasks**: {task_list}",
        f"- **Meta-score**: {_fmt(steps[0]['meta_score'] if steps else None)} (initial) → "
        f"{_fmt(artifact.get('meta_score'))} ({'final' if complete else 'so far'})",
        f"- **Calls**: {calls.get('task_lm', 0)} task-model ({calls.get('task_lm_reused', 0)} evaluations reused), "
        f"{calls.get('optimizer_lm', 0)} optimizer; **time** {seconds:.1f} s",
    ]
    faults = artifact.get("faults") or {}
    if faults:
        lines.append("- **Faults**: " + ", ".join(f"{k}: {v}" for k, v in sorted(faults.items())))
    lines += ["", "Scores are fractions in [0, 1]; train scores are on the run's train examples.", ""]

    heading = "Optimized system prompt" if complete else "System prompt so far (run not finished)"
    lines += [f"## {heading}", "", _fence(artifact["optimized_system_prompt"]), ""]
    lines += ["Initial system prompt:", "", _fence(artifact.get("initial_system_prompt", "")), ""]

    _save(plot_meta_score, artifact, out / "meta_score.png")
    lines += ["## Meta-score per step", "", f"![{FIGURES['meta_score.png']}](meta_score.png)", ""]
    lines += [steps_table(artifact), ""]
    if artifact.get("outer_decisions"):
        lines += [
            "### Outer-loop candidates",
            "",
            "A candidate replaces the system prompt only when its meta-score is strictly higher than "
            "the incumbent's (candidates are compared one after another).",
            "",
            decisions_table(artifact),
            "",
        ]

    _save(plot_task_scores, artifact, out / "task_scores.png")
    _save(plot_task_progress, artifact, out / "task_progress.png")
    lines += [
        "## Per-task scores",
        "",
        f"![{FIGURES['task_scores.png']}](task_scores.png)",
        "",
        f"![{FIGURES['task_progress.png']}](task_progress.png)",
        "",
        task_table(artifact),
        "",
        "*Initial test* is known only when the initial prompt is still in the final beam (only the "
        "final beams are scored on the test sets).",
        "",
    ]

    _save(plot_phases, artifact, out / "phases.png", figsize=(8, 4))
    lines += ["## Calls and time per phase", "", f"![{FIGURES['phases.png']}](phases.png)", ""]
    lines += [phases_table(artifact), ""]
    if artifact.get("proposals"):
        lines += ["## Proposals", "", proposals_table(artifact), ""]

    unseen = [(src, d) for src, d in loaded if d["analysis"] == "unseen_generalization"]
    tta = [(src, d) for src, d in loaded if d["analysis"] == "test_time_adaptation"]
    if unseen:
        merged = merge_unseen_results(*(d for _, d in unseen))
        sources = ", ".join(f"`{s}`" if not isinstance(s, Mapping) else "(given)" for s, _ in unseen)
        _save(plot_unseen, merged, out / "unseen.png", figsize=(8, 4))
        lines += [
            "## Unseen generalization",
            "",
            f"From {sources}: test score per unseen task, mean ± stdev over user prompts never optimized "
            "against the system prompt.",
            "",
            f"![{FIGURES['unseen.png']}](unseen.png)",
            "",
            unseen_table(merged),
            "",
        ]
        prompts = merged.get("system_prompts", {})
        if prompts:
            lines += [_md_table([[k, _short(v, 100)] for k, v in prompts.items()], ["label", "system prompt"]), ""]
    if tta:
        for i, (src, data) in enumerate(tta):
            name = "tta.png" if i == 0 else f"tta_{i + 1}.png"
            _save(plot_tta, data, out / name)
            where = f"`{src}`" if not isinstance(src, Mapping) else "(given)"
            lines += [
                "## Test-time adaptation",
                "",
                f"From {where}: ProTeGi on each unseen task's user prompt with the system prompt fixed; test "
                "score of the best kept prompt per round, mean over tasks.",
                "",
                f"![{FIGURES['tta.png']}]({name})",
                "",
                tta_table(data),
                "",
            ]
    path = out / "report.md"
    atomic_write_text(path, "\n".join(lines).rstrip() + "\n")
    return path


# -- command line (``metaspo report``) ---------------------------------------------------------
def add_parser(subparsers) -> None:
    """Register ``metaspo report RUN_DIR`` on the CLI's subparsers."""
    parser = subparsers.add_parser(
        "report", help="write a Markdown report with PNG figures for a run directory (finished or not)"
    )
    parser.add_argument("run_dir", type=Path)
    parser.add_argument("--out", type=Path, help="folder for report.md and the figures (default RUN_DIR/report)")
    parser.add_argument(
        "--results",
        type=Path,
        nargs="+",
        metavar="FILE",
        help="metaspo test results to include (default: unseen_results.json / tta_results.json found in RUN_DIR)",
    )
    parser.set_defaults(handler=run_cli)


def run_cli(args) -> int:
    path = report(args.run_dir, args.out, args.results)
    print(path)
    return 0
