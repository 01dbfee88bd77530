"""The Markdown report with PNG figures, and ``metaspo report``."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from metaspo_dspy.report.data import FIGURES, _short, load_results, load_run, merge_unseen_results, task_scores
from metaspo_dspy.report.plots import (
    _require_matplotlib,
    plot_meta_score,
    plot_phases,
    plot_task_progress,
    plot_task_scores,
    plot_tta,
    plot_unseen,
)
from metaspo_dspy.report.tables import (
    _fence,
    _fmt,
    _md_table,
    decisions_table,
    phases_table,
    proposals_table,
    steps_table,
    task_table,
    tta_table,
    unseen_table,
)
from metaspo_dspy.store.io import atomic_write_text
from metaspo_dspy.store.ledger import describe


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

    lines = _summary_lines(artifact, run_dir)
    lines += _prompt_lines(artifact)
    lines += _run_sections(artifact, out)
    lines += _unseen_section([(src, d) for src, d in loaded if d["analysis"] == "unseen_generalization"], out)
    lines += _tta_sections([(src, d) for src, d in loaded if d["analysis"] == "test_time_adaptation"], out)
    path = out / "report.md"
    atomic_write_text(path, "\n".join(lines).rstrip() + "\n")
    return path


def _summary_lines(artifact: Mapping[str, Any], run_dir: Path) -> list[str]:
    """The title and the run's summary: status, method, models, tasks, meta-score, calls, faults."""
    complete = artifact.get("complete", True)
    settings = artifact.get("settings", {})
    steps = artifact["steps"]
    calls = artifact.get("calls", {})
    seconds = sum(p.get("seconds", 0.0) for p in artifact.get("phases", []))
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
    lines = [
        f"# MetaSPO run report: `{run_dir.name or run_dir}`",
        "",
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
        f"{calls.get('optimizer_lm', 0)} optimizer; **time** {seconds:.1f} s (the process that wrote this record)",
    ]
    if artifact.get("cumulative"):  # absent in runs written before the ledger
        lines.append(f"- **Whole run**: {describe(artifact['cumulative'])}")
    faults = artifact.get("faults") or {}
    if faults:
        lines.append("- **Faults**: " + ", ".join(f"{k}: {v}" for k, v in sorted(faults.items())))
    return [*lines, "", "Scores are fractions in [0, 1]; train scores are on the run's train examples.", ""]


def _prompt_lines(artifact: Mapping[str, Any]) -> list[str]:
    """The optimized (or best so far) system prompt and the initial one, fenced."""
    heading = "Optimized system prompt" if artifact.get("complete", True) else "System prompt so far (run not finished)"
    return [
        f"## {heading}",
        "",
        _fence(artifact["optimized_system_prompt"]),
        "",
        "Initial system prompt:",
        "",
        _fence(artifact.get("initial_system_prompt", "")),
        "",
    ]


def _run_sections(artifact: Mapping[str, Any], out: Path) -> list[str]:
    """The run's own sections, their figures saved in ``out``: meta-score per step (and the
    outer-loop candidates), per-task scores, calls and time per phase, proposals."""
    _save(plot_meta_score, artifact, out / "meta_score.png")
    lines = ["## Meta-score per step", "", f"![{FIGURES['meta_score.png']}](meta_score.png)", ""]
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
    return lines


def _where(source: Any) -> str:
    """How the report names a results file: its path, or ``(given)`` for a dict."""
    return f"`{source}`" if not isinstance(source, Mapping) else "(given)"


def _unseen_section(unseen: list[tuple[Any, dict[str, Any]]], out: Path) -> list[str]:
    """The unseen-generalization section of ``(source, results)`` pairs merged (none: no lines);
    its figure saved in ``out``."""
    if not unseen:
        return []
    merged = merge_unseen_results(*(d for _, d in unseen))
    sources = ", ".join(_where(s) for s, _ in unseen)
    _save(plot_unseen, merged, out / "unseen.png", figsize=(8, 4))
    lines = [
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
    return lines


def _tta_sections(tta: list[tuple[Any, dict[str, Any]]], out: Path) -> list[str]:
    """One test-time-adaptation section per ``(source, results)`` pair, figures ``tta.png``,
    ``tta_2.png``, ... saved in ``out``."""
    lines: list[str] = []
    for i, (src, data) in enumerate(tta):
        name = "tta.png" if i == 0 else f"tta_{i + 1}.png"
        _save(plot_tta, data, out / name)
        lines += [
            "## Test-time adaptation",
            "",
            f"From {_where(src)}: ProTeGi on each unseen task's user prompt with the system prompt fixed; test "
            "score of the best kept prompt per round, mean over tasks.",
            "",
            f"![{FIGURES['tta.png']}]({name})",
            "",
            tta_table(data),
            "",
        ]
    return lines


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
