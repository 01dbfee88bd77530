"""The teleprompter base that MetaSPO and SPRIG share: their settings, and ``compile``.

A method is a :class:`SearchTeleprompter` with its own constructor (which builds the method's
frozen :class:`~metaspo_dspy.optimize.settings.SearchSettings`) and its own :meth:`make_run`;
``compile`` is common: :meth:`SearchTeleprompter.open_run` checks the program and the task sets,
unwraps wrapped task programs (their system prompt, placement and adapter stand in for the settings
not given, :mod:`metaspo_dspy.optimize.wrapped`), checks the context window, the budget, the worker
processes and the open-file limit, and opens the run directory (locked; on resume its ``run.json``
read and its settings compared) -- everything that needs no model, so a bad setting or folder is
refused before any request; then ``compile`` returns a finished run's saved program without a call,
or sends the preflight (a failed one leaves a new run's folder as it was) and runs the search.
The settings are readable as attributes (``teleprompter.num_iterations``), never writable: they are
checked once, when the teleprompter is made.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import fields, replace
from typing import Any

import dspy
from dspy.teleprompt.teleprompt import Teleprompter

from metaspo_dspy.errors import ConfigError
from metaspo_dspy.evaluation.task_run import TaskRun, check_examples, check_processes
from metaspo_dspy.lm.open_files import check_open_files
from metaspo_dspy.lm.preflight import preflight
from metaspo_dspy.optimize.autolog import log_task_sets
from metaspo_dspy.optimize.engine.run import SearchRun
from metaspo_dspy.optimize.settings import SearchSettings
from metaspo_dspy.optimize.wrapped import Unwrapped, unwrap_programs
from metaspo_dspy.program.metrics import Metric
from metaspo_dspy.program.system_prompt import MetaSPOProgram
from metaspo_dspy.store.run_dir import finished_run

__all__ = ["SearchTeleprompter"]

logger = logging.getLogger(__name__)

#: DSPy's ``Teleprompter.compile`` data keywords, which ``compile`` replaces by one set per task.
DSPY_SET_ARGUMENTS = ("trainset", "valset")


class SearchTeleprompter(Teleprompter):
    """A multi-task system-prompt search as a DSPy teleprompter: ``metric`` (the default for tasks
    without their own) and ``settings`` (everything its runs read, frozen); see the module docstring."""

    def __init__(self, metric: Metric | None, settings: SearchSettings):
        super().__init__()
        self.metric = metric
        self.settings = settings
        self._warned: set[str] = set()

    def __getattr__(self, name: str) -> Any:
        """A setting, read as an attribute of the teleprompter (``teleprompter.num_iterations``)."""
        settings = self.__dict__.get("settings")
        if settings is not None and name in _field_names(settings):
            return getattr(settings, name)
        raise AttributeError(f"{type(self).__name__!r} object has no attribute {name!r}")

    def __setattr__(self, name: str, value: Any) -> None:
        settings = self.__dict__.get("settings")
        if settings is not None and name in _field_names(settings):
            raise AttributeError(
                f"{name} is a setting, checked when the {type(self).__name__} was made: make a new one to change it"
            )
        super().__setattr__(name, value)

    def make_run(self, settings: SearchSettings, tasks: dict[str, TaskRun]) -> SearchRun:
        """The search of one ``compile`` with ``settings`` (this teleprompter's, with what wrapped
        task programs supply) once its tasks are set up and checked."""
        raise NotImplementedError

    def budget_warnings(self) -> list[str]:
        """What the budget cannot enforce (``max_cost`` with a model LiteLLM cannot price), and marks
        them as said; ``compile`` logs the ones not fetched here."""
        found = self.settings.priced_budget().warnings()
        self._warned.update(found)
        return found

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
        (:func:`metaspo_dspy.optimize.autolog.log_task_sets`).
        """
        run = self.open_run(
            program, trainsets, testsets, metrics, user_prompt_suffixes, student=student, **kwargs
        )  # every local check; the run directory locked; nothing sent
        if run.already_finished:
            logger.info("%s is a finished run: its saved program is returned, nothing is asked", run.settings.log_dir)
            return run.reopen()  # the settings were compared with the run's when it was opened
        try:
            if run.settings.preflight:
                lms = [("task", run.settings.task_model), ("optimizer", run.settings.optimizer_lm)]
                for result in preflight(lms):
                    logger.info("preflight: %s", result.describe())
        except BaseException:
            run.abandon()  # nothing was sent for the run: a new run's folder is left as it was found
            raise
        return run.execute()

    def open_run(
        self,
        program: dspy.Module | Mapping[str, dspy.Module] | None = None,
        trainsets: Mapping[str, Any] | None = None,
        testsets: Mapping[str, Any] | None = None,
        metrics: Mapping[str, Metric] | None = None,
        user_prompt_suffixes: Mapping[str, str] | None = None,
        *,
        student: dspy.Module | Mapping[str, dspy.Module] | None = None,
        **kwargs: Any,
    ) -> SearchRun:
        """Everything :meth:`compile` does before its first request, and its run, opened: takes
        ``compile``'s arguments and makes every check that needs no model -- the program and the
        task sets, the context window, a ``max_lm_calls`` that cannot cover the initial evaluation,
        the worker processes, the open-file limit -- then opens the run directory (created and
        locked; on resume its ``run.json`` read, its format and settings compared; a folder in use
        by another process refused). Each problem is a :class:`~metaspo_dspy.errors.MetaSPOError`
        (a ``ValueError``) raised before anything is sent. A finished run (``resume`` on a finished
        run directory) is opened without the other checks (it sends nothing).

        The caller ends the returned run in exactly one way: :meth:`SearchRun.execute` (the search),
        :meth:`SearchRun.reopen` when :attr:`SearchRun.already_finished`, or :meth:`SearchRun.abandon`
        (nothing sent; a new run's folder is put back as it was found). ``compile`` is
        ``open_run``, the preflight (``preflight=True``), then ``execute``; a caller that sends its
        own preflight (the ``metaspo train`` command) does the same in its own words.
        """
        program = _the_program(program, student, kwargs)
        tasks, unwrapped = self._task_runs(program, trainsets, testsets, metrics, user_prompt_suffixes)
        settings = self.settings.for_wrapped(unwrapped)
        log_task_sets(
            {name: task.trainset for name, task in tasks.items()},
            {name: task.testset for name, task in tasks.items() if task.testset is not None},
        )
        if settings.resume and finished_run(settings.log_dir) is not None:
            return self.make_run(settings, tasks)  # reopen() returns it; the settings are still compared
        _check_context_window(settings.task_model, settings.initial_system_prompt)
        said = set(self._warned)
        for warning in self.budget_warnings():
            if warning not in said:
                logger.warning(warning)
        settings = replace(settings, budget=settings.priced_budget())
        initial = sum(len(task.trainset) for task in tasks.values())
        if settings.budget.max_lm_calls is not None and initial > settings.budget.max_lm_calls:
            raise ConfigError(
                f"max_lm_calls={settings.budget.max_lm_calls} does not cover even the initial evaluation "
                f"({initial} calls); raise the budget or use fewer train examples"
            )
        check_processes(settings.num_processes, settings.task_lm, [task.program for task in tasks.values()])
        check_open_files(settings.num_threads, settings.num_processes)
        return self.make_run(settings, tasks)  # opens the run directory: locked, checked, nothing sent

    def _task_runs(self, program, trainsets, testsets, metrics, suffixes) -> tuple[dict[str, TaskRun], Unwrapped]:
        """The checked task runs of one ``compile`` and what the task programs' wrappers held."""
        if not isinstance(trainsets, Mapping) or not trainsets:
            raise ConfigError("compile() needs trainsets={task_name: [dspy.Example, ...]} with at least one task")
        if self.settings.optimizer_lm is None:
            raise ConfigError("MetaSPO needs optimizer_lm=dspy.LM(...): the model that writes prompts")
        if self.settings.task_model is None:
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
            metric = metrics.get(name, self.metric)
            if metric is None:
                raise ConfigError(f"no metric for task {name!r}: pass MetaSPO(metric=...) or compile(metrics=...)")
            test = check_examples(name, testsets[name], "test") if name in testsets else None
            runs[name] = TaskRun(
                name=name,
                program=unwrapped.programs[name],
                trainset=check_examples(name, train, "train"),
                metric=metric,
                testset=test,
                suffix=(suffixes or {}).get(name, ""),
            )
        return runs, unwrapped


def _field_names(settings: SearchSettings) -> set[str]:
    return {f.name for f in fields(settings)}


def _the_program(program: Any, student: Any, unexpected: Mapping[str, Any]) -> Any:
    """The program given to ``compile`` as ``program`` (positionally) or as ``student`` (DSPy's
    name); a :class:`ConfigError` for both or neither, for DSPy's ``trainset=``/``valset=`` (with the
    ``trainsets=`` to use instead) and for any other unknown argument in ``unexpected``."""
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


def _check_context_window(lm: Any, initial_system_prompt: str) -> None:
    """Refuse an initial system prompt that cannot fit the task model's context window (where
    LiteLLM knows the window) before any call is made."""
    import litellm

    model = getattr(lm, "model", None)
    try:
        window = litellm.get_model_info(model).get("max_input_tokens") if model else None
        tokens = litellm.token_counter(model=model, text=initial_system_prompt) if window else 0
    except Exception:  # unknown model (local servers, the embedded model): max_prompt_chars applies
        return
    if window and tokens >= window:
        raise ConfigError(
            f"initial_system_prompt has about {tokens:,} tokens, more than the {window:,}-token context window "
            f"of {model!r}; shorten it"
        )
