"""One item of an evaluation grid: a job's program run on one example under its system prompt.

:func:`run_item` runs the program under its own :func:`~metaspo_dspy.program.scope.system_prompt_scope`
(the job's system prompt on whatever adapter each call uses) with ``lm=task_lm`` and ``trace=[]``, and
returns an :class:`~metaspo_dspy.evaluation.records.ItemRun`. A failed call never raises: it is
recorded (and scored 0, wrong, by the grid). Empty and truncated answers are failures too
(:mod:`metaspo_dspy.program.responses`). Error texts are redacted (:func:`~metaspo_dspy.redact.redact`)
before they are kept or journaled.

:class:`GridWork` is what every item of one grid shares; an executor
(:mod:`metaspo_dspy.evaluation.executors`) runs a grid's items with :meth:`GridWork.run`, in this
process or in a worker.
"""

from __future__ import annotations

import contextlib
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import dspy

from metaspo_dspy.evaluation.records import EvalJob, ItemRun, compact_calls, token_counts
from metaspo_dspy.program.input_check import InputWatcher, is_bare
from metaspo_dspy.program.recorder import CallRecorder
from metaspo_dspy.program.scope import needs_rider, system_prompt_scope
from metaspo_dspy.redact import redact

#: One item of a grid: (its :func:`~metaspo_dspy.evaluation.digests.item_key`, job index, example index).
GridItem = tuple[str, int, int]


def run_item(job: EvalJob, names: dict[int, str], example: dspy.Example, task_lm: Any, adapter: Any) -> ItemRun:
    """Run ``job``'s program on one example under its system prompt; never raises for LM faults.

    ``names`` maps ``id(predictor)`` to the predictor's name (the recorded calls carry it);
    ``task_lm`` (None: ``dspy.settings.lm``) is the default LM and ``adapter`` (None: the configured
    adapter) the base adapter under the system prompt. Only the job's program, system prompt and
    placement are read (not its metric). Unless the program is bare
    (:func:`~metaspo_dspy.program.input_check.is_bare`: its examples are checked before any call), an
    :class:`~metaspo_dspy.program.input_check.InputWatcher` joins the callbacks in effect for this run
    only; the predictors it saw called without a required input are returned in ``missing_inputs``
    (the caller decides what to do)."""
    recorder = CallRecorder(predictor_names=names)
    watcher = None if is_bare(job.program) else InputWatcher(names)
    watching = (
        dspy.context(callbacks=[*(dspy.settings.get("callbacks") or []), watcher])
        if watcher is not None
        else contextlib.nullcontext()
    )
    overrides: dict[str, Any] = {"trace": [], "metaspo_recorder": recorder}
    if task_lm is not None:
        overrides["lm"] = task_lm
    # A nested dspy.track_usage(): this item's tokens are counted here and rolled up into any
    # tracker the caller opened around compile() (DSPy's own mechanism).
    with dspy.track_usage() as tracker:
        try:
            ride = needs_rider(job.program)
            with watching, system_prompt_scope(job.system_prompt, job.instructions_in, adapter, ride, **overrides):
                prediction = job.program(**example.inputs())
            run = ItemRun(prediction, None, compact_calls(recorder.calls), token_counts(tracker))
        except Exception as exc:
            error = redact(f"{type(exc).__name__}: {exc}")[:2000]
            run = ItemRun(None, error, compact_calls(recorder.calls), token_counts(tracker))
    if watcher is not None:
        run.missing_inputs = watcher.missing
    return run


@dataclass(frozen=True)
class GridWork:
    """What every item of one grid shares: its jobs, each job's predictor names (``id(predictor)`` to
    name, as :func:`run_item` takes them), the task LM and the base adapter (None: from
    ``dspy.settings`` at call time)."""

    jobs: Sequence[EvalJob]
    names: Sequence[dict[int, str]]
    task_lm: Any
    adapter: Any

    def run(self, job: int, example: int) -> ItemRun:
        """Run example ``example`` of job ``job`` (:func:`run_item`; never raises for LM faults)."""
        entry = self.jobs[job]
        return run_item(entry, self.names[job], entry.examples[example], self.task_lm, self.adapter)
