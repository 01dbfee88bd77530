"""MLflow's DSPy autolog around a multi-task ``compile``: whether it is on, and the task sets logged.

MLflow's DSPy autolog (``mlflow.dspy.autolog(log_compiles=True)``) logs a dataset only from an
argument named ``trainset`` (or ``valset``); ``MetaSPO.compile`` takes one set per task, so it calls
:func:`log_task_sets` itself. Both functions live here, below the optimizers that call them, and
never import MLflow: they act only when the program already has (see
:mod:`metaspo_dspy.tracking` for logging runs to MLflow).
"""

from __future__ import annotations

import logging
import sys
from collections.abc import Mapping, Sequence
from typing import Any

__all__ = ["DSPY_FLAVOR", "autolog_compiles", "log_task_sets"]

#: the integration name of MLflow's DSPy autolog (``mlflow.dspy.autolog``)
DSPY_FLAVOR = "dspy"
logger = logging.getLogger(__name__)


def _file_key(text: str) -> str:
    """A task name as one artifact file name (no folders): letters, digits, ``_ - .``."""
    return "".join(c if c.isalnum() or c in "_-." else "_" for c in text)


def autolog_compiles() -> bool:
    """Whether MLflow's DSPy autolog logs the ``compile`` now running: ``mlflow.dspy.autolog(
    log_compiles=True)`` is on and an MLflow run is active (autolog opens one around ``compile``
    when none is). Never imports MLflow: False unless the program already has."""
    if sys.modules.get("mlflow") is None:
        return False
    from mlflow.utils.autologging_utils import autologging_is_disabled, get_autologging_config

    if autologging_is_disabled(DSPY_FLAVOR) or not get_autologging_config(DSPY_FLAVOR, "log_compiles", False):
        return False
    return sys.modules["mlflow"].active_run() is not None


def log_task_sets(
    trainsets: Mapping[str, Sequence[Any]], testsets: Mapping[str, Sequence[Any]] | None = None
) -> list[str]:
    """Log a multi-task ``compile``'s sets into the run of MLflow's DSPy autolog, as that autolog
    logs a DSPy optimizer's ``trainset``: each task's examples (``dspy.Example``) as a table with one
    column per field (a field an example lacks is empty), ``trainsets/<task>.json`` and
    ``testsets/<task>.json``. Returns the artifact paths logged.

    Does nothing, and returns ``[]``, unless :func:`autolog_compiles`. A set that cannot be logged
    is a warning, never an error: tracking never stops a run (MLflow's autolog does the same)."""
    if not autolog_compiles():
        return []
    mlflow = sys.modules["mlflow"]
    logged = []
    for folder, sets in (("trainsets", trainsets), ("testsets", testsets or {})):
        for task, examples in sets.items():
            path = f"{folder}/{_file_key(task)}.json"
            rows = [dict(example.items()) for example in examples]
            fields = list(dict.fromkeys(key for row in rows for key in row))
            try:
                mlflow.log_table({key: [row.get(key) for row in rows] for key in fields}, path)
            except Exception as exc:
                logger.warning("MLflow autolog: could not log %s: %s", path, exc)
                continue
            logged.append(path)
    return logged
