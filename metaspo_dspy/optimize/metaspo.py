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

import copy
import dataclasses
import logging
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import dspy
from dspy.teleprompt.teleprompt import Teleprompter

from metaspo_dspy.adapters import adapter_name, make_adapter
from metaspo_dspy.budget import Budget, is_priced
from metaspo_dspy.lm.preflight import preflight
from metaspo_dspy.metrics import Metric
from metaspo_dspy.optimize.artifact import reference_bilevel_nodes
from metaspo_dspy.optimize.bilevel import BilevelRun
from metaspo_dspy.optimize.common import ConfigError, PhaseLog, TaskRun, check_examples
from metaspo_dspy.optimize.task_run import check_lms, check_processes, positive_int
from metaspo_dspy.optimize.wrapped import Unwrapped, choose, unwrap_programs
from metaspo_dspy.program import DEFAULT_SYSTEM_PROMPT, MetaSPOProgram, SystemPrompt
from metaspo_dspy.runs import finished_run
from metaspo_dspy.tracking import log_task_sets

METHODS = ("metaspo", "outer_loop", "metaspo_ape")
logger = logging.getLogger(__name__)
__all__ = ["METHODS", "MetaSPO", "reference_bilevel_nodes"]


#: DSPy's ``Teleprompter.compile`` data keywords, which ``MetaSPO.compile`` replaces by one set per task.
DSPY_SET_ARGUMENTS = ("trainset", "valset")


def _the_program(program: Any, student: Any, unexpected: Mapping[str, Any]) -> Any:
    """The program given to ``MetaSPO.compile`` as ``program`` (positionally) or as ``student``
    (DSPy's name); a :class:`ConfigError` for both or neither, for DSPy's ``trainset=``/``valset=``
    (with the ``trainsets=`` to use instead) and for any other unknown argument in ``unexpected``."""
    dspy_sets = sorted(set(unexpected) & set(DSPY_SET_ARGUMENTS))
    if dspy_sets:
        given = " and ".join(f"{name}=" for name in dspy_sets)
        raise ConfigError(
            f"MetaSPO.compile() takes one set per task, not DSPy's {given}: pass "
            "trainsets={task_name: [dspy.Example, ...]} (a single task too: trainsets={'my_task': examples}); "
            "MetaSPO selects on the train sets and has no validation set (testsets={task_name: [...]} only "
            "scores the final prompts)"
        )
    if unexpected:
        raise ConfigError(f"unexpected compile() arguments {sorted(unexpected)}; see MetaSPO.compile's docstring")
    if program is not None and student is not None:
        raise ConfigError("compile() got the program twice: pass it positionally (program=) or as student=, not both")
    if program is None and student is None:
        raise ConfigError(
            "compile() needs the program: compile(program, trainsets={...}) or "
            "compile(student=program, trainsets={...})"
        )
    return program if program is not None else student


class MetaSPO(Teleprompter):
    """Optimize one system prompt for many tasks, and each task's user prompt(s) under it.

    Args:
        metric: per-example metric or :class:`~metaspo_dspy.metrics.TaskMetric` used for every task
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
            gets more than one core's worth of requests (:mod:`metaspo_dspy.processes`); results
            are identical. The LMs must be rebuildable there (``dspy.LM`` or ``build_lm``; not the
            embedded model) and callbacks picklable, else a :class:`ConfigError` before any call.
        seed: every random draw derives from it.
        num_wrong_user, num_wrong_system: wrong examples shown per user proposal (3) and per task
            for a system proposal (2).
        max_prompt_chars: longer proposals are discarded.
        log_dir: a run directory (see :mod:`metaspo_dspy.runs`): settings, journals of every
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
            :class:`~metaspo_dspy.optimize.search.NothingParsed`: every score would be 0, so the search
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
        max_prompt_chars: int = 8000,
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
        super().__init__()
        if method not in METHODS:
            raise ConfigError(f"method must be one of {METHODS}, got {method!r}")
        if instructions_in not in (None, "user", "system"):
            raise ConfigError(f"instructions_in must be 'user' or 'system', got {instructions_in!r}")
        check_lms(optimizer_lm=optimizer_lm, task_lm=task_lm)
        self.metric = metric
        self.optimizer_lm = optimizer_lm
        self.task_lm = task_lm
        self.method = method
        self.num_iterations = positive_int("num_iterations", num_iterations)
        self.num_system_candidates = positive_int("num_system_candidates", num_system_candidates)
        self.num_user_candidates = positive_int("num_user_candidates", num_user_candidates)
        self.user_top_k = positive_int("user_top_k", user_top_k)
        # None: the wrapped programs' settings (see metaspo_dspy.optimize.wrapped), else the default.
        self._given = {
            "initial_system_prompt": initial_system_prompt is not None,
            "instructions_in": instructions_in is not None,
            "adapter": adapter is not None,
        }
        if initial_system_prompt is None:
            initial_system_prompt = DEFAULT_SYSTEM_PROMPT
        initial = (
            initial_system_prompt.text if isinstance(initial_system_prompt, SystemPrompt) else initial_system_prompt
        )
        if not isinstance(initial, str):
            raise ConfigError(f"initial_system_prompt must be a string, got {type(initial).__name__}")
        self.initial_system_prompt = initial
        self.instructions_in = instructions_in or "user"
        self.adapter = make_adapter(adapter)
        self.optimizer_adapter = make_adapter(optimizer_adapter)
        self.num_threads = positive_int("num_threads", num_threads)
        self.num_processes = check_processes(num_processes, task_lm)
        self.seed = seed
        self.num_wrong_user = positive_int("num_wrong_user", num_wrong_user)
        self.num_wrong_system = positive_int("num_wrong_system", num_wrong_system)
        self.max_prompt_chars = positive_int("max_prompt_chars", max_prompt_chars)
        if len(initial) > self.max_prompt_chars:
            raise ConfigError(
                f"initial_system_prompt has {len(initial):,} characters, more than max_prompt_chars="
                f"{self.max_prompt_chars:,} (proposals longer than that are discarded too); shorten it or raise "
                "max_prompt_chars"
            )
        self.log_dir = Path(log_dir) if log_dir is not None else None
        self.progress = progress
        self.phase_callback = phase_callback
        self.resume = resume
        if not 0 <= max_failure_share <= 1:
            raise ConfigError(f"max_failure_share must be between 0 and 1, got {max_failure_share!r}")
        self.max_failure_share = max_failure_share
        if screening is not None and not 0 < screening < 1:
            raise ConfigError(f"screening must be a fraction in (0, 1) of each train set, or None; got {screening!r}")
        if not 0 < screening_keep <= 1:
            raise ConfigError(f"screening_keep must be in (0, 1], got {screening_keep!r}")
        self.screening = screening
        self.screening_keep = screening_keep
        try:
            self.budget = Budget(max_lm_calls, max_cost)
        except ValueError as exc:
            raise ConfigError(str(exc)) from None
        if resume and log_dir is None:
            raise ConfigError("resume=True needs log_dir=<the run directory to continue>")
        self.preflight = bool(preflight)
        self.allow_unparsed = bool(allow_unparsed)
        self._warned: set[str] = set()

    def budget_warnings(self) -> list[str]:
        """What the budget cannot enforce (``max_cost`` with a model LiteLLM cannot price), and marks
        them as said; ``compile`` logs the ones not fetched here."""
        lms = (self.task_lm or dspy.settings.lm, self.optimizer_lm)
        if self.budget.max_cost is not None:
            unpriced = sorted({lm.model for lm in lms if lm is not None and not is_priced(lm.model)})
            self.budget = dataclasses.replace(self.budget, unpriced_models=tuple(unpriced))
        found = self.budget.warnings()
        self._warned.update(found)
        return found

    # -- public ------------------------------------------------------------------------------
    def compile(
        self,
        program: dspy.Module | Mapping[str, dspy.Module] | None = None,
        trainsets: Mapping[str, Any] | None = None,
        testsets: Mapping[str, Any] | None = None,
        metrics: Mapping[str, Metric] | None = None,
        user_prompt_suffixes: Mapping[str, str] | None = None,
        *,
        student: dspy.Module | Mapping[str, dspy.Module] | None = None,
        **kwargs: Any,
    ) -> MetaSPOProgram:
        """Run the search and return the optimized :class:`MetaSPOProgram`.

        Args:
            program: one module used for every task, or ``{task: module}``, or a
                :class:`MetaSPOProgram`; never modified. A ``WithSystemPrompt`` is unwrapped: its
                inner program is optimized and its system prompt, placement and adapter stand in
                for the settings not given here (:mod:`metaspo_dspy.optimize.wrapped`). A program
                marked compiled by another optimizer (BootstrapFewShot) is optimized as well: its
                predictors' instructions change, its demos are kept, and so is its mark.
            trainsets: ``{task: [dspy.Example, ...]}`` (inputs set), the source tasks.
            testsets: optional ``{task: [...]}``; the final beams are scored on them.
            metrics: optional ``{task: metric}`` overriding ``metric``.
            user_prompt_suffixes: optional ``{task: text}`` appended to APE-made user prompts
                (the reference format's question slot and answer-format line).
            student: DSPy's name for ``program`` (``compile(student=..., trainsets=...)``, as DSPy's
                optimizers are called); give the program once, by either name.

        DSPy's one-set ``trainset=``/``valset=`` are refused with a :class:`ConfigError` that names
        ``trainsets=`` (there is one train set per task, and no validation set), before any call.
        With MLflow's DSPy autolog on (``log_compiles=True``) the task sets are logged into its run
        (:func:`metaspo_dspy.tracking.log_task_sets`).
        """
        program = _the_program(program, student, kwargs)
        tasks, unwrapped = self._task_runs(program, trainsets, testsets, metrics, user_prompt_suffixes)
        owner = self._for_wrapped(unwrapped)
        log_task_sets(
            {name: task.trainset for name, task in tasks.items()},
            {name: task.testset for name, task in tasks.items() if task.testset is not None},
        )
        if self.resume and finished_run(self.log_dir) is not None:
            logger.info("%s is a finished run: its saved program is returned, nothing is asked", self.log_dir)
            return owner.make_run(tasks).reopen()  # the settings are still compared with the run's
        owner._check_context_window(self.task_lm or dspy.settings.lm)
        said = set(self._warned)
        for warning in self.budget_warnings():
            if warning not in said:
                logger.warning(warning)
        initial = sum(len(task.trainset) for task in tasks.values())
        if self.budget.max_lm_calls is not None and initial > self.budget.max_lm_calls:
            raise ConfigError(
                f"max_lm_calls={self.budget.max_lm_calls} does not cover even the initial evaluation "
                f"({initial} calls); raise the budget or use fewer train examples"
            )
        check_processes(self.num_processes, self.task_lm, [task.program for task in tasks.values()])
        if self.preflight:
            for result in preflight([("task", self.task_lm or dspy.settings.lm), ("optimizer", self.optimizer_lm)]):
                logger.info("preflight: %s", result.describe())
        return owner.make_run(tasks).execute()

    def make_run(self, tasks: dict[str, TaskRun]) -> Any:
        """The search of one ``compile`` once its tasks are set up and checked (a subclass that shares
        that set-up but searches its own way, such as SPRIG, returns its own run)."""
        return BilevelRun(self, tasks)

    def _for_wrapped(self, unwrapped: Unwrapped) -> MetaSPO:
        """This teleprompter, or a copy whose settings not given to it come from the wrappers of
        the task programs (``metaspo_dspy.optimize.wrapped``); ``self`` is never changed."""
        if not unwrapped.prompts and not unwrapped.adapters:
            return self
        owner = copy.copy(self)
        wrapped = {"initial_system_prompt": unwrapped.texts, "instructions_in": unwrapped.placements}
        wrapped["adapter"] = unwrapped.adapters
        for name, found in wrapped.items():
            mine = getattr(self, name)
            show = adapter_name if name == "adapter" else repr
            setattr(owner, name, choose(name, mine if self._given[name] else None, found, mine, "MetaSPO", show))
        if len(owner.initial_system_prompt) > owner.max_prompt_chars:
            raise ConfigError(
                f"the wrapped programs' system prompt has {len(owner.initial_system_prompt):,} characters, more than "
                f"max_prompt_chars={owner.max_prompt_chars:,}; shorten it or raise max_prompt_chars"
            )
        return owner

    def _check_context_window(self, lm: Any) -> None:
        """Refuse an initial system prompt that cannot fit the task model's context window (where
        LiteLLM knows the window) before any call is made."""
        import litellm

        model = getattr(lm, "model", None)
        try:
            window = litellm.get_model_info(model).get("max_input_tokens") if model else None
            tokens = litellm.token_counter(model=model, text=self.initial_system_prompt) if window else 0
        except Exception:  # unknown model (local servers, the embedded model): max_prompt_chars applies
            return
        if window and tokens >= window:
            raise ConfigError(
                f"initial_system_prompt has about {tokens:,} tokens, more than the {window:,}-token context window "
                f"of {model!r}; shorten it"
            )

    # -- set-up ------------------------------------------------------------------------------
    def _task_runs(self, program, trainsets, testsets, metrics, suffixes) -> tuple[dict[str, TaskRun], Unwrapped]:
        if not isinstance(trainsets, Mapping) or not trainsets:
            raise ConfigError("compile() needs trainsets={task_name: [dspy.Example, ...]} with at least one task")
        if self.optimizer_lm is None:
            raise ConfigError("MetaSPO needs optimizer_lm=dspy.LM(...): the model that writes prompts")
        if self.task_lm is None and dspy.settings.lm is None:
            raise ConfigError("no task LM: pass MetaSPO(task_lm=dspy.LM(...)) or dspy.configure(lm=...)")
        metrics = dict(metrics or {})
        unknown = sorted(set(metrics) - set(trainsets))
        if unknown:
            raise ConfigError(f"metrics= names tasks that are not in trainsets: {unknown}")
        testsets = dict(testsets or {})
        unknown = sorted(set(testsets) - set(trainsets))
        if unknown:
            raise ConfigError(f"testsets= names tasks that are not in trainsets: {unknown}")
        for name in trainsets:
            if not isinstance(name, str) or not name:
                raise ConfigError(f"task names must be non-empty strings, got {name!r}")
        unwrapped = unwrap_programs(program, list(trainsets))
        runs = {}
        for name, train in trainsets.items():
            module = unwrapped.programs[name]
            metric = metrics.get(name, self.metric)
            if metric is None:
                raise ConfigError(f"no metric for task {name!r}: pass MetaSPO(metric=...) or compile(metrics=...)")
            test = check_examples(name, testsets[name], "test") if name in testsets else None
            runs[name] = TaskRun(
                name=name,
                program=module,
                trainset=check_examples(name, train, "train"),
                metric=metric,
                testset=test,
                suffix=(suffixes or {}).get(name, ""),
            )
        return runs, unwrapped
