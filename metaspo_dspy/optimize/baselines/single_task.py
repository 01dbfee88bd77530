"""Shared set-up for the single-task baselines (ProTeGi, APE): one task, a fixed system prompt."""

from __future__ import annotations

from typing import Any

import dspy
from dspy.teleprompt.teleprompt import Teleprompter

from metaspo_dspy.errors import ConfigError
from metaspo_dspy.evaluation.grid import GridEvaluator
from metaspo_dspy.evaluation.task_run import TaskRun, check_examples, check_lms, check_processes
from metaspo_dspy.optimize.engine.search import SearchBase
from metaspo_dspy.optimize.engine.state import PromptNode
from metaspo_dspy.optimize.proposer.proposals import Proposer
from metaspo_dspy.optimize.wrapped import choose, unwrap_programs
from metaspo_dspy.program.adapters import adapter_in_effect, adapter_name, make_adapter
from metaspo_dspy.program.metrics import Metric
from metaspo_dspy.program.system_prompt import (
    DEFAULT_SYSTEM_PROMPT,
    MAX_PROMPT_CHARS,
    MetaSPOProgram,
    SystemPrompt,
    WithSystemPrompt,
    as_system_prompt,
)


class SingleTaskOptimizer(Teleprompter):
    """Common arguments of the single-task user-prompt optimizers.

    Args:
        metric: per-example metric or ``TaskMetric``.
        optimizer_lm: the LM that writes prompts.
        task_lm: the LM being prompted (default: ``dspy.settings.lm``). Both must be ``dspy.BaseLM``
            objects: anything else (a model string) is a :class:`ConfigError` here, before any call,
            as in ``MetaSPO``.
        system_prompt: the fixed system prompt (text or :class:`SystemPrompt`; None: the system
            prompt of a ``WithSystemPrompt`` passed to ``compile``, else "You are a helpful
            assistant.").
        adapter, optimizer_adapter: as for ``MetaSPO`` (``adapter=None``: a wrapped student's
            adapter, else the configured one).

    ``compile`` unwraps a ``WithSystemPrompt`` student (``best.for_task(name)``, an earlier
    ProTeGi/APE result): the inner program is optimized, never re-wrapped; see
    :mod:`metaspo_dspy.optimize.wrapped`.
        num_threads, num_processes, seed, progress: as for ``MetaSPO`` (``num_processes`` > 1: each
            evaluation grid in worker processes; refused before any call where they cannot work).
    """

    def __init__(
        self,
        metric: Metric,
        optimizer_lm: Any,
        task_lm: Any = None,
        system_prompt: SystemPrompt | str | None = None,
        adapter: Any = None,
        optimizer_adapter: Any = None,
        num_threads: int = 16,
        seed: int = 42,
        progress: bool = True,
        max_prompt_chars: int = MAX_PROMPT_CHARS,
        num_processes: int = 1,
    ):
        super().__init__()
        if metric is None:
            raise ConfigError("a metric is required")
        if optimizer_lm is None:
            raise ConfigError("optimizer_lm=dspy.LM(...) is required: the model that writes prompts")
        check_lms(optimizer_lm=optimizer_lm, task_lm=task_lm)
        self.metric = metric
        self.optimizer_lm = optimizer_lm
        self.task_lm = task_lm
        self.system_prompt = None if system_prompt is None else as_system_prompt(system_prompt)
        self.adapter = make_adapter(adapter)
        self.optimizer_adapter = make_adapter(optimizer_adapter)
        self.num_threads = num_threads
        self.num_processes = check_processes(num_processes, task_lm)
        self.seed = seed
        self.progress = progress
        self.max_prompt_chars = max_prompt_chars

    #: ``compile`` keywords a subclass takes beyond DSPy's (APE: ``prompt_suffix``).
    compile_options: tuple[str, ...] = ()

    def compile(
        self, student: dspy.Module, *, trainset: Any, testset: Any = None, task_name: str = "task", **options: Any
    ) -> WithSystemPrompt:
        """Optimize ``student``'s instructions on ``trainset`` (DSPy's ``compile(student, *, trainset)``)
        and return it wrapped with the fixed system prompt; ``testset`` (optional) is scored at the
        end; ``options``: the subclass's :attr:`compile_options`, any other keyword is a
        :class:`ConfigError`.

        Defined here for every subclass because MLflow's DSPy autolog patches the ``compile`` of
        ``Teleprompter``'s *direct* subclasses only: with ``mlflow.dspy.autolog(log_compiles=True)``
        a ProTeGi or APE ``compile`` is logged as DSPy's optimizers are (its ``trainset`` included).
        """
        unexpected = sorted(set(options) - set(self.compile_options))
        if unexpected:
            raise ConfigError(f"unexpected compile() arguments {unexpected}")
        search = self._search(student, trainset, testset, task_name, options.get("prompt_suffix", ""))
        return self._execute(search, task_name, testset)

    def _search(
        self, program: dspy.Module, trainset: Any, testset: Any, task_name: str, suffix: str
    ) -> SingleTaskSearch:
        if self.task_lm is None and dspy.settings.lm is None:
            raise ConfigError("no task LM: pass task_lm=dspy.LM(...) or dspy.configure(lm=...)")
        if not isinstance(program, dspy.Module) or isinstance(program, MetaSPOProgram):
            raise ConfigError(
                f"program must be a dspy.Module with the task's predictors, got {type(program).__name__}"
                + ("; pass best.for_task(name)" if isinstance(program, MetaSPOProgram) else "")
            )
        name = type(self).__name__
        unwrapped = unwrap_programs(program, [task_name])
        fixed = choose("system_prompt", self.system_prompt, unwrapped.prompts, None, name)
        fixed = fixed if fixed is not None else SystemPrompt(DEFAULT_SYSTEM_PROMPT)
        adapter = choose("adapter", self.adapter, unwrapped.adapters, None, name, adapter_name)
        test = check_examples(task_name, testset, "test") if testset is not None else None
        train = check_examples(task_name, trainset, "train")
        task = TaskRun(task_name, unwrapped.programs[task_name], train, self.metric, test, suffix)
        check_processes(self.num_processes, self.task_lm, [task.program])
        evaluator = GridEvaluator(
            self.task_lm, adapter, self.num_threads, self.progress, num_processes=self.num_processes
        )
        proposer = Proposer(
            self.optimizer_lm,
            self.optimizer_adapter,
            self.seed,
            self.max_prompt_chars,
            num_threads=min(self.num_threads, 16),
        )
        search = SingleTaskSearch({task_name: task}, evaluator, proposer, fixed.instructions_in, self.seed)
        search.system_prompt, search.adapter = fixed, adapter
        return search

    def _execute(self, search: SingleTaskSearch, task_name: str, testset: Any) -> WithSystemPrompt:
        """The subclass's ``_run(search, task_name, testset)``; the evaluator's worker processes (if
        any) are stopped however it ends."""
        try:
            return self._run(search, task_name, testset)
        finally:
            search.evaluator.close()

    def _run(self, search: SingleTaskSearch, task_name: str, testset: Any) -> WithSystemPrompt:
        raise NotImplementedError

    def _root(self, search: SingleTaskSearch, task_name: str) -> PromptNode:
        task = search.tasks[task_name]
        return search.store.new(
            task=task_name,
            system_prompt=search.system_prompt.text,
            user_prompt=task.initial_user_prompt(),
            parent_id=None,
            depth=0,
        )

    def _result(self, search: SingleTaskSearch, node: PromptNode, details: dict[str, Any]) -> WithSystemPrompt:
        """``node``'s program wrapped with (a copy of) the fixed system prompt and the adapter the
        search's calls used (``search.adapter``, else the configured one; called where ``compile``
        runs); its ``detailed_results`` are ``details`` plus ``adapter_in_effect``, that adapter's
        name (``"default"``: none, i.e. ChatAdapter)."""
        task = search.tasks[node.task]
        adapter = adapter_in_effect(search.adapter)
        program = WithSystemPrompt(task.prepared(node.user_prompt).deepcopy(), search.system_prompt, adapter)
        program.detailed_results = {**details, "adapter_in_effect": adapter_name(adapter)}
        return program


class SingleTaskSearch(SearchBase):
    """A one-task search with its fixed system prompt and base adapter (as resolved by compile)."""

    system_prompt: SystemPrompt
    adapter: Any = None


def node_dicts(search: SearchBase, ids: list[int]) -> list[dict[str, Any]]:
    return [search.store[i].to_dict() for i in ids]
