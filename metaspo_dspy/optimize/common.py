"""Old import names, kept working: the pieces moved to modules whose names say what they hold.

* :mod:`metaspo_dspy.optimize.task_run` -- :class:`ConfigError`, :func:`check_examples`,
  :class:`TaskRun` (a task inside a run);
* :mod:`metaspo_dspy.optimize.search` -- :class:`SearchBase` (node evaluation and proposal
  plumbing shared by every method), :class:`PhaseLog`, :class:`TooManyFailures`,
  :func:`total_usage`;
* :mod:`metaspo_dspy.optimize.runner` -- :class:`SearchRun` (a teleprompter's run: run directory,
  budget, checkpoints, artifact) and :class:`BudgetStop`.

``from metaspo_dspy.optimize.common import X`` gives the same objects as the new modules.
"""

from metaspo_dspy.optimize.search import (
    MIN_PROPOSALS_FOR_SHARE,
    PhaseLog,
    SearchBase,
    TooManyFailures,
    _merged,
    total_usage,
)
from metaspo_dspy.optimize.task_run import ConfigError, TaskRun, check_examples

__all__ = [
    "MIN_PROPOSALS_FOR_SHARE",
    "ConfigError",
    "PhaseLog",
    "SearchBase",
    "TaskRun",
    "TooManyFailures",
    "_merged",
    "check_examples",
    "total_usage",
]
