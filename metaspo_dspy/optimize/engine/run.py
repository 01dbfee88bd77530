"""One run of a teleprompter over several tasks: run directory, budget, checkpoints and artifact.

:class:`SearchRun` is the part every multi-task method shares (MetaSPO's :class:`BilevelRun`,
SPRIG's :class:`SprigRun`): it opens the run directory (settings, journals, lock), builds the grid
evaluator and the proposer on its journals, records faults, checks the budget before each phase,
writes a checkpoint after each phase, and writes the results at the end. A method supplies the
loop (:meth:`SearchRun.search`), its state snapshots and the method-specific part of the artifact.

A run is made (by the teleprompter's ``make_run``) with its run directory opened -- locked, and on
resume its format and settings compared -- before anything is sent; it then ends in exactly one of
:meth:`SearchRun.execute`, :meth:`SearchRun.reopen` (a finished run) or :meth:`SearchRun.abandon`
(nothing sent: a failed preflight, an interruption before the first call).

Contract of :meth:`SearchRun.execute`: ``initialize`` then ``search`` then ``test``; a run whose
initial evaluation parsed no answer of any task stops with :class:`NothingParsed` before the search
(unless the settings' ``allow_unparsed``); a
:class:`BudgetStop` raised by :meth:`SearchRun.within_budget` ends the run cleanly with the state of
the last finished phase (``self.state``, set by the method's snapshots) and the reason in
``stopped``; the run directory's lock is always released.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from metaspo_dspy.errors import NothingParsed
from metaspo_dspy.evaluation.grid import GridEvaluator
from metaspo_dspy.evaluation.task_run import TaskRun
from metaspo_dspy.optimize.engine.artifact import ARTIFACT_FORMAT
from metaspo_dspy.optimize.engine.search import PhaseLog, SearchBase, total_usage
from metaspo_dspy.optimize.proposer.proposals import Proposer
from metaspo_dspy.optimize.settings import SearchSettings
from metaspo_dspy.program.adapters import ADAPTERS, adapter_in_effect, adapter_name
from metaspo_dspy.program.system_prompt import MetaSPOProgram
from metaspo_dspy.store.faults import FaultLog
from metaspo_dspy.store.ledger import Ledger
from metaspo_dspy.store.run_dir import RunDir, finished_run

logger = logging.getLogger(__name__)


def _share(parsed: int, answers: int) -> float | None:
    return parsed / answers if answers else None


class BudgetStop(Exception):
    """The next phase would exceed the run's budget (caught: the run ends with what it has)."""


class SearchRun(SearchBase):
    """A teleprompter's run over ``tasks`` with its frozen ``settings`` (everything the run reads).

    ``fingerprint`` is what shapes the results (:func:`~metaspo_dspy.optimize.engine.artifact.run_settings`:
    recorded in ``run.json`` and the artifact, compared on resume). ``adapter_in_effect`` is the
    base adapter the task calls use (``settings.adapter``, else the one configured when the run is
    made, else None: ChatAdapter); it is recorded in the artifact and given to the result, not in
    ``fingerprint``, whose ``adapter`` (part of the journal keys) names ``settings.adapter`` alone.
    """

    def __init__(
        self, settings: SearchSettings, tasks: Mapping[str, TaskRun], fingerprint: dict[str, Any], **search: Any
    ):
        s = settings
        self.settings = settings
        self.fingerprint = fingerprint
        self.adapter_in_effect = adapter_in_effect(s.adapter)
        # Whether opening the run directory makes the folder (abandon() then removes it again).
        self._made_folder = s.log_dir is not None and not Path(s.log_dir).exists()
        self.run_dir = RunDir(s.log_dir, fingerprint, s.resume) if s.log_dir is not None else None
        self.ledger = self.run_dir.ledger if self.run_dir is not None else Ledger(None)
        evaluator = GridEvaluator(
            s.task_lm,
            s.adapter,
            s.num_threads,
            s.progress,
            journal=self.run_dir.evaluations if self.run_dir else None,
            num_processes=s.num_processes,
            ledger=self.ledger,
        )
        proposer = Proposer(
            s.optimizer_lm,
            s.optimizer_adapter,
            s.seed,
            s.max_prompt_chars,
            num_threads=min(s.num_threads, 16),
            journal=self.run_dir.proposals if self.run_dir else None,
            ledger=self.ledger,
        )
        super().__init__(tasks, evaluator, proposer, s.instructions_in, s.seed, **search)
        self.phase_callback = s.phase_callback
        self.steps: list[dict[str, Any]] = []
        self.state: Any = None
        self.stopped: str | None = None
        self.faults = FaultLog(self.run_dir.path / "faults.jsonl" if self.run_dir is not None else None)
        self.max_failure_share = s.max_failure_share

    # -- the method's part -------------------------------------------------------------------
    def initialize(self) -> Any:
        """Evaluate the starting point; returns the first state (after its snapshot)."""
        raise NotImplementedError

    def search(self, state: Any) -> Any:
        """The method's loop from ``state``; returns the final state. Calls :meth:`within_budget`
        before each phase and snapshots after each."""
        raise NotImplementedError

    def test(self, state: Any) -> None:
        """Score the final state on the test sets (a no-op without test sets)."""
        raise NotImplementedError

    def planned_test(self, state: Any) -> dict[str, int]:
        """Upper bounds on the test phase's task and optimizer calls."""
        raise NotImplementedError

    def artifact(self, state: Any, complete: bool = True) -> dict[str, Any]:
        """The run history as plain data (see :meth:`frame`)."""
        raise NotImplementedError

    def result(self, state: Any) -> MetaSPOProgram:
        """The optimized program (results written to the run directory)."""
        raise NotImplementedError

    # -- the loop ----------------------------------------------------------------------------
    def execute(self) -> MetaSPOProgram:
        """Run ``initialize``, ``search`` and ``test``; see the module docstring."""
        try:
            with self.faults:
                state = self.initialize()
                self.check_parsed()
                try:
                    state = self.search(state)
                    self.within_budget("test", self.planned_test(state))
                    self.test(state)
                except BudgetStop as stop:
                    self.stopped = str(stop)
                    state = self.state
                return self.result(state)
        finally:
            self.release()

    def reopen(self) -> MetaSPOProgram:
        """The result of the finished run in the run directory (:func:`~metaspo_dspy.store.run_dir.finished_run`),
        read back instead of run: nothing is sent and no file is written. The program is
        ``program.json`` rebuilt on this run's task programs, its ``detailed_results`` the saved
        artifact (``metaspo_run.json``, with the ``calls``, ``cumulative`` and ``faults`` of the runs
        that made it). Closes the run directory. Raises ``ValueError`` when the run is not finished."""
        try:
            artifact = finished_run(self.run_dir.path) if self.run_dir is not None else None
            if artifact is None:
                raise ValueError("reopen() needs a finished run in the run directory")
            programs = {name: task.program for name, task in self.tasks.items()}
            # An adapter class of the user's own is recorded by its class path: give it back.
            own = self.adapter_in_effect if adapter_name(self.adapter_in_effect) not in (*ADAPTERS, "default") else None
            program = MetaSPOProgram.from_file(self.run_dir.path / "program.json", programs=programs, adapter=own)
            program.detailed_results = artifact
            return program
        finally:
            self.release()

    @property
    def already_finished(self) -> bool:
        """Whether this resumed run's directory holds a finished run (:meth:`reopen` returns it)."""
        return self.settings.resume and self.run_dir is not None and finished_run(self.run_dir.path) is not None

    def abandon(self, also: Iterable[str] = ()) -> None:
        """End a run that was opened but never started (nothing sent: a failed preflight, an
        interruption before the first call). The lock is released; a new run's directory is put back
        as opening found it -- its ``run.json``, its lock file and the files named in ``also`` (the
        caller's own, e.g. the CLI's ``config.json``) removed, and the folder too when opening made
        it and nothing else is in it -- so the same command can simply be run again. A resumed run's
        directory is left as it is."""
        self.release()
        if self.run_dir is None or self.settings.resume:
            return
        path = self.run_dir.path
        for name in ("run.json", *also, ".lock"):
            with contextlib.suppress(OSError):
                (path / name).unlink(missing_ok=True)
        if self._made_folder:
            with contextlib.suppress(OSError):  # not empty: something else is in it, leave it
                path.rmdir()

    def release(self) -> None:
        """Stop the evaluator's worker processes and close the run directory (lock released)."""
        self.evaluator.close()
        if self.run_dir is not None:
            self.run_dir.close()

    def within_budget(self, phase: str, planned: dict[str, int]) -> None:
        """Raise :class:`BudgetStop` when the next phase may not fit in the budget (``planned``:
        upper bounds on its ``task`` and ``optimizer`` calls)."""
        budget = self.settings.budget
        if not budget.limited:
            return
        used_calls = sum(p.task_lm_calls + p.optimizer_calls for p in self.phases)
        usage = total_usage(self.phases)
        reason = budget.refusal(
            phase, used_calls, usage["task_lm"], usage["optimizer_lm"], planned["task"], planned["optimizer"]
        )
        if reason is not None:
            raise BudgetStop(f"stopped before the {phase} phase: {reason}; the result is the best found so far")

    # -- parsed answers ----------------------------------------------------------------------
    def initial_parsed(self) -> dict[str, tuple[int, int]]:
        """Per task, (answers parsed, answers where parsing applies) in the initial evaluation."""
        initial = next((p for p in self.phases if p.phase == "initial"), None)
        counts = initial.parsed if initial is not None else {}
        return {task: (c["parsed"], c["answers"]) for task, c in counts.items()}

    def parsed_warnings(self) -> list[str]:
        """One line per task whose initial answers never parsed while other tasks' did."""
        counts = {t: c for t, c in self.initial_parsed().items() if c[1]}
        if not any(n for n, _ in counts.values()):
            return []
        return [
            f"task {task!r}: no answer parsed in the initial evaluation (0/{of}) while other tasks' answers "
            "did; its user-prompt rewrites may teach it the answer format, else its scores stay 0"
            for task, (n, of) in counts.items()
            if n == 0
        ]

    def check_parsed(self) -> None:
        """After the initial evaluation: raise :class:`NothingParsed` when no answer of any task
        parsed (unless ``allow_unparsed``); log a warning per task that parsed nothing."""
        counts = self.initial_parsed()
        applicable = [n for n, of in counts.values() if of]
        if applicable and not any(applicable) and not self.settings.allow_unparsed:
            lm = self.settings.task_model
            raise NothingParsed(counts, str(getattr(lm, "model", lm)), adapter_name(self.settings.adapter))
        for warning in self.parsed_warnings():
            logger.warning(warning)

    # -- phases, checkpoints, results ----------------------------------------------------------
    def after_phase(self, log: PhaseLog) -> None:
        """Deferred: the callback runs once the phase's snapshot and checkpoint exist."""

    def notify(self, meta_score: float) -> None:
        """Record ``meta_score`` on the last phase and hand it to ``phase_callback``."""
        if self.phases and self.phase_callback is not None:
            self.phases[-1].meta_score = meta_score
            self.phase_callback(self.phases[-1])

    def checkpoint(self) -> None:
        if self.run_dir is not None and self.state is not None:
            self.run_dir.checkpoint(self.artifact(self.state, complete=False))

    def frame(self, complete: bool, body: dict[str, Any]) -> dict[str, Any]:
        """An artifact: the shared head (format, complete, method, settings, and the name of the
        adapter in effect: ``adapter_in_effect``, ``"default"`` for none), the method's ``body``,
        then the shared tail (proposals, nodes, phases, faults, stopped, budget, usage, calls).

        ``calls``, ``usage`` and ``phases`` count this process; ``cumulative`` sums every process of
        the run from its ledger (:meth:`~metaspo_dspy.store.ledger.Ledger.totals`), and ``faults`` (kinds
        from ``faults.jsonl``) spans every process too."""
        return {
            "format": ARTIFACT_FORMAT,
            "complete": complete,
            "method": self.settings.method,
            "settings": self.fingerprint,
            "adapter_in_effect": adapter_name(self.adapter_in_effect),
            **body,
            "proposals": [p.to_dict() for p in self.proposals],
            "nodes": [n.to_dict() for n in self.store.nodes.values()],
            "phases": [p.to_dict() for p in self.phases],
            "faults": dict(self.faults.counts),
            "cumulative": self.ledger.totals(faults=sum(self.faults.counts.values())),
            "parsed": {"initial": {t: _share(*c) for t, c in self.initial_parsed().items()}},
            "warnings": self.parsed_warnings(),
            "stopped": self.stopped,
            "budget": self.settings.budget.to_dict(),
            "usage": total_usage(self.phases),
            "calls": {
                "task_lm": sum(p.task_lm_calls for p in self.phases),
                "optimizer_lm": sum(p.optimizer_calls for p in self.phases),
                "task_lm_reused": sum(p.reused_evaluations for p in self.phases),
                "optimizer_reused": self.proposer.reused,
            },
        }

    def task_entry(self, ids: list[int]) -> dict[str, Any]:
        """A task's entry in the artifact's ``tasks``: its best node (``ids[0]``) and the beam."""
        best = self.store[ids[0]]
        return {
            "best_node": best.id,
            "user_prompt": best.user_prompt,
            "train_score": best.train_score,
            "test_score": best.test_score,
            "parsed": dict(best.parsed),
            "beam": [
                {"id": i, "train_score": self.store[i].train_score, "test_score": self.store[i].test_score} for i in ids
            ],
        }

    def write_results(self, data: dict[str, Any], best: MetaSPOProgram, extra: Mapping[str, Any] | None = None) -> None:
        """Write ``metaspo_run.json``, the ``extra`` files, ``program.json`` and the last
        checkpoint into the run directory (nothing without one)."""
        if self.run_dir is None:
            return
        self.run_dir.write("metaspo_run.json", data)
        for name, content in (extra or {}).items():
            self.run_dir.write(name, content)
        best.save(self.run_dir.path / "program.json")
        self.run_dir.checkpoint(data)
