"""Shared set-up for the single-task baselines (ProTeGi, APE): one task, a fixed system prompt."""

from __future__ import annotations

from typing import Any

import dspy
from dspy.teleprompt.teleprompt import Teleprompter

from metaspo_dspy.adapters import make_adapter
from metaspo_dspy.evaluation import GridEvaluator
from metaspo_dspy.metrics import Metric
from metaspo_dspy.optimize.common import ConfigError, SearchBase, TaskRun, check_examples
from metaspo_dspy.optimize.proposer import Proposer
from metaspo_dspy.optimize.state import PromptNode
from metaspo_dspy.program import DEFAULT_SYSTEM_PROMPT, SystemPrompt, WithSystemPrompt, as_system_prompt


class SingleTaskOptimizer(Teleprompter):
    """Common arguments of the single-task user-prompt optimizers.

    Args:
        metric: per-example metric or ``TaskMetric``.
        optimizer_lm: the LM that writes prompts.
        task_lm: the LM being prompted (default: ``dspy.settings.lm``).
        system_prompt: the fixed system prompt (text or :class:`SystemPrompt`).
        adapter, optimizer_adapter: as for ``MetaSPO``.
        num_threads, seed, progress: as for ``MetaSPO``.
    """

    def __init__(
        self,
        metric: Metric,
        optimizer_lm: Any,
        task_lm: Any = None,
        system_prompt: SystemPrompt | str = DEFAULT_SYSTEM_PROMPT,
        adapter: Any = None,
        optimizer_adapter: Any = None,
        num_threads: int = 16,
        seed: int = 42,
        progress: bool = True,
        max_prompt_chars: int = 8000,
    ):
        super().__init__()
        if metric is None:
            raise ConfigError("a metric is required")
        if optimizer_lm is None:
            raise ConfigError("optimizer_lm=dspy.LM(...) is required: the model that writes prompts")
        self.metric = metric
        self.optimizer_lm = optimizer_lm
        self.task_lm = task_lm
        self.system_prompt = as_system_prompt(system_prompt)
        self.adapter = make_adapter(adapter)
        self.optimizer_adapter = make_adapter(optimizer_adapter)
        self.num_threads = num_threads
        self.seed = seed
        self.progress = progress
        self.max_prompt_chars = max_prompt_chars

    def _search(self, program: dspy.Module, trainset: Any, testset: Any, task_name: str, suffix: str) -> SearchBase:
        if self.task_lm is None and dspy.settings.lm is None:
            raise ConfigError("no task LM: pass task_lm=dspy.LM(...) or dspy.configure(lm=...)")
        if not isinstance(program, dspy.Module):
            raise ConfigError(f"program must be a dspy.Module, got {type(program).__name__}")
        test = check_examples(task_name, testset, "test") if testset is not None else None
        task = TaskRun(task_name, program, check_examples(task_name, trainset, "train"), self.metric, test, suffix)
        evaluator = GridEvaluator(self.task_lm, self.adapter, self.num_threads, self.progress)
        proposer = Proposer(
            self.optimizer_lm,
            self.optimizer_adapter,
            self.seed,
            self.max_prompt_chars,
            num_threads=min(self.num_threads, 16),
        )
        return SearchBase({task_name: task}, evaluator, proposer, self.system_prompt.instructions_in, self.seed)

    def _root(self, search: SearchBase, task_name: str) -> PromptNode:
        task = search.tasks[task_name]
        return search.store.new(
            task=task_name,
            system_prompt=self.system_prompt.text,
            user_prompt=task.initial_user_prompt(),
            parent_id=None,
            depth=0,
        )

    def _result(self, search: SearchBase, node: PromptNode, details: dict[str, Any]) -> WithSystemPrompt:
        task = search.tasks[node.task]
        program = WithSystemPrompt(task.prepared(node.user_prompt).deepcopy(), self.system_prompt, self.adapter)
        program.detailed_results = details
        return program


def node_dicts(search: SearchBase, ids: list[int]) -> list[dict[str, Any]]:
    return [search.store[i].to_dict() for i in ids]
