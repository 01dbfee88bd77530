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

from metaspo_dspy.report.data import (
    FIGURES,
    INSTALL_HINT,
    MatplotlibMissing,
    ReportError,
    load_results,
    load_run,
    merge_unseen_results,
    step_label,
    task_scores,
)
from metaspo_dspy.report.plots import (
    plot_meta_score,
    plot_phases,
    plot_task_progress,
    plot_task_scores,
    plot_tta,
    plot_unseen,
)
from metaspo_dspy.report.render import add_parser, report, run_cli
from metaspo_dspy.report.tables import (
    decisions_table,
    phases_table,
    proposals_table,
    steps_table,
    task_table,
    tta_table,
    unseen_table,
)

__all__ = [
    "FIGURES",
    "INSTALL_HINT",
    "MatplotlibMissing",
    "ReportError",
    "add_parser",
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
    "run_cli",
    "step_label",
    "steps_table",
    "task_scores",
    "task_table",
    "tta_table",
    "unseen_table",
]
