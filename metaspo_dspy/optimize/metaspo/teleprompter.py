"""MetaSPO as a DSPy teleprompter: bilevel system-prompt optimization with meta-learning.

The loop follows the reference implementation (see ``docs`` and the README for the protocol):

1. evaluate every task's initial node (initial system prompt, the program's own instructions);
2. per iteration, the *inner loop* makes ``num_user_candidates`` user-prompt proposals per task from
   the wrong examples of that task's best node, evaluates them under the current system prompt and
   cuts each beam to ``user_top_k`` (stable: existing nodes win ties); then the *outer loop* makes
   ``num_system_candidates`` system-prompt proposals from wrong examples pooled over tasks, scores
   each with every kept user prompt of every task, and accepts a candidate only when its pooled mean
   (meta-score) is strictly higher than the incumbent's, comparing candidates one after another;
3. with test sets, score the final beams on them.

``method="outer_loop"`` skips the inner loop and runs twice the iterations; ``"metaspo_ape"``
proposes APE-style (input/output pairs) in both loops. All evaluation of a step runs as one grid.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from metaspo_dspy.evaluation.task_run import TaskRun
from metaspo_dspy.optimize.engine.search import PhaseLog
from metaspo_dspy.optimize.engine.teleprompter import SearchTeleprompter
from metaspo_dspy.optimize.metaspo.loop import BilevelRun
from metaspo_dspy.optimize.metaspo.settings import MetaSPOSettings
from metaspo_dspy.program.metrics import Metric
from metaspo_dspy.program.system_prompt import MAX_PROMPT_CHARS, SystemPrompt

__all__ = ["MetaSPO"]


class MetaSPO(SearchTeleprompter):
    """Optimize one system prompt for many tasks, and each task's user prompt(s) under it.

    Args:
        metric: per-example metric or :class:`~metaspo_dspy.program.metrics.TaskMetric` used for every task
            without its own entry in ``compile(metrics=...)``.
        optimizer_lm: the LM that writes prompts (the paper: GPT-4o mini at temperature 1.0).
        task_lm: the LM being prompted (default: ``dspy.settings.lm`` when ``compile`` runs).
        method: ``"metaspo"``, ``"outer_loop"`` (system prompt only, twice the iterations) or
            ``"metaspo_ape"`` (APE-style proposals).
        num_iterations, num_system_candidates, num_user_candidates, user_top_k: the paper's search
            sizes (3, 9, 3, 3).
        initial_system_prompt: where the search starts (None: the system prompt of the wrapped
            task programs, if ``compile`` is given ``WithSystemPrompt``/``MetaSPOProgram``
            programs, else "You are a helpful assistant.").
        instructions_in: ``"user"`` (MetaSPO: user prompt in the user message) or ``"system"``
            (None: the wrapped programs' placement, else ``"user"``).
        adapter: base adapter for task calls (a name -- ``chat``, ``json``, ``xml``, ``reference``
            -- or an instance; None: the wrapped programs' adapter, else the configured adapter,
            else ChatAdapter).
        optimizer_adapter: adapter for optimizer calls (None: the configured one).
        num_threads: concurrent task-LM calls in an evaluation grid (over all processes).
        num_processes: client processes for the evaluation grids (1: this one). With K > 1 each grid
            runs in K worker processes with ``num_threads / K`` threads each, so a fast model server
            gets more than one core's worth of requests (:mod:`metaspo_dspy.evaluation.processes`); results
            are identical. The LMs must be rebuildable there (``dspy.LM`` or ``build_lm``; not the
            embedded model) and callbacks picklable, else a :class:`ConfigError` before any call.
        seed: every random draw derives from it.
        num_wrong_user, num_wrong_system: wrong examples shown per user proposal (3) and per task
            for a system proposal (2).
        max_prompt_chars: longer proposals are discarded.
        log_dir: a run directory (see :mod:`metaspo_dspy.store.run_dir`): settings, journals of every
            completed evaluation and proposal, a checkpoint after every phase, and at the end the
            artifact (``metaspo_run.json``), the reference-format ``bilevel_nodes.json`` and the
            program (``program.json``).
        max_lm_calls, max_cost: a budget on task + optimizer calls and on dollars (LiteLLM prices);
            checked before each phase against its planned calls, so the run stops cleanly at a phase
            boundary with the best result so far (``detailed_results["stopped"]`` says why).
        screening, screening_keep: frugal screening (off by default; the faithful mode evaluates every
            candidate fully). With ``screening=0.2`` each system-prompt candidate is first scored on
            the same 20% of every task's train examples; only the best ``screening_keep`` share that
            is at least as good as the incumbent there gets the full evaluation (minibatch results are
            reused). Screened-out candidates are recorded with their minibatch score; phase logs
            report ``screened_out`` and ``evaluations_saved``.
        max_failure_share: stop (resumably) with :class:`TooManyFailures` when more than this share
            of an evaluation grid's task-model calls fail after the LM layer's retries (0.5).
        resume: continue the run recorded in ``log_dir`` (same settings required): completed
            evaluations and proposals are read back from its journals, not asked again (failed
            ones are asked again). A *finished* run (complete, not stopped by its budget) is not
            run again: ``compile`` sends nothing, not even the preflight, writes nothing and
            returns the saved program (``program.json`` on the given task programs) with the saved
            artifact as ``detailed_results``.
        progress: show progress bars.
        preflight: before any other call, send one tiny uncached request to the task and the
            optimizer LM (once each when they differ) and raise
            :class:`~metaspo_dspy.lm.preflight.PreflightError` if one is unreachable, rejects its
            key, does not know the model or answers with nothing. Not counted in ``calls`` or
            ``phases``. Off by default here; the CLI turns it on (``--no-preflight`` to skip).
        allow_unparsed: search even when no answer of any task could be parsed in the initial
            evaluation (by default the run stops there with
            :class:`~metaspo_dspy.errors.NothingParsed`: every score would be 0, so the search
            would mean nothing; the usual cause is a model that does not follow the prompt format).
            Does not shape results: it may change on resume.
        phase_callback: called with each finished phase's :class:`PhaseLog` (calls, tokens, cost,
            time, the meta-score after it) once its checkpoint is written, e.g.
            to stream progress into a notebook.
    """

    def __init__(
        self,
        metric: Metric | None = None,
        optimizer_lm: Any = None,
        task_lm: Any = None,
        method: str = "metaspo",
        num_iterations: int = 3,
        num_system_candidates: int = 9,
        num_user_candidates: int = 3,
        user_top_k: int = 3,
        initial_system_prompt: str | SystemPrompt | None = None,
        instructions_in: str | None = None,
        adapter: Any = None,
        optimizer_adapter: Any = None,
        num_threads: int = 16,
        num_processes: int = 1,
        seed: int = 42,
        num_wrong_user: int = 3,
        num_wrong_system: int = 2,
        max_prompt_chars: int = MAX_PROMPT_CHARS,
        log_dir: str | Path | None = None,
        progress: bool = True,
        phase_callback: Callable[[PhaseLog], None] | None = None,
        resume: bool = False,
        max_failure_share: float = 0.5,
        max_lm_calls: int | None = None,
        max_cost: float | None = None,
        screening: float | None = None,
        screening_keep: float = 0.5,
        preflight: bool = False,
        allow_unparsed: bool = False,
    ):
        # Every argument but the metric, by name (taken before any other local exists).
        arguments = {name: value for name, value in locals().items() if name not in ("self", "metric", "__class__")}
        super().__init__(metric, MetaSPOSettings.build(**arguments))

    def make_run(self, settings: MetaSPOSettings, tasks: dict[str, TaskRun]) -> BilevelRun:
        """The search of one ``compile``: MetaSPO's bilevel loop."""
        return BilevelRun(settings, tasks)
