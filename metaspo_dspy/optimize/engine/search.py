"""The search base shared by every optimizer in this package (MetaSPO, SPRIG, ProTeGi, APE).

:class:`SearchBase` holds what a search needs between its policy and the models: node evaluation on
the grid evaluator (scores set on the nodes, failures counted, a grid that fails too often stops the
run with :class:`TooManyFailures`), proposal plumbing on the proposer (deferred failure-driven and
APE user-prompt proposals, duplicate filtering, a phase whose optimizer calls fail stops the run),
and per-phase logs of calls, tokens, cost and time (:class:`PhaseLog`). A method is a small policy on
top: which nodes to make, which proposals to ask for, what to keep.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import dspy

from metaspo_dspy.budget import cost_of, merge_usage
from metaspo_dspy.errors import TooManyFailures
from metaspo_dspy.evaluation.grid import GridEvaluator
from metaspo_dspy.evaluation.records import EvalJob, NodeEval
from metaspo_dspy.evaluation.task_run import TaskRun
from metaspo_dspy.optimize.engine.state import NodeStore, PromptNode
from metaspo_dspy.optimize.proposer.proposals import Proposal, Proposer
from metaspo_dspy.optimize.proposer.shown import io_pairs, parser_of, sample_wrong, wrong_example
from metaspo_dspy.redact import redact
from metaspo_dspy.seeding import rng_for

#: A phase with fewer proposals stops only when all of them failed.
MIN_PROPOSALS_FOR_SHARE = 4


@dataclass
class PhaseLog:
    """Calls and time spent in one phase of a run."""

    phase: str
    iteration: int | None
    task_lm_calls: int = 0
    optimizer_calls: int = 0
    evaluations: int = 0
    reused_evaluations: int = 0
    failures: int = 0
    task_usage: dict[str, dict[str, int]] = field(default_factory=dict)
    optimizer_usage: dict[str, dict[str, int]] = field(default_factory=dict)
    cost: float | None = None
    meta_score: float | None = None
    screened_out: int = 0
    evaluations_saved: int = 0
    proposals: int = 0
    discarded: int = 0
    seconds: float = 0.0
    #: per task, ``{"parsed": n, "answers": m}`` over the phase's grids (answers where parsing applies)
    parsed: dict[str, dict[str, int]] = field(default_factory=dict)

    def count_parsed(self, task: str, result: NodeEval) -> None:
        """Add one evaluated node's parsed answers to its task's count."""
        parsed, of = result.parsed_counts
        entry = self.parsed.setdefault(task, {"parsed": 0, "answers": 0})
        entry["parsed"] += parsed
        entry["answers"] += of

    def to_dict(self) -> dict[str, Any]:
        return {k: (dict(v) if isinstance(v, dict) else v) for k, v in self.__dict__.items()}


class SearchBase:
    """Node evaluation and proposal plumbing common to every search in this package."""

    def __init__(
        self,
        tasks: Mapping[str, TaskRun],
        evaluator: GridEvaluator,
        proposer: Proposer,
        instructions_in: str,
        seed: int,
        num_wrong_user: int = 3,
        num_wrong_system: int = 2,
    ):
        self.tasks = dict(tasks)
        self.evaluator = evaluator
        self.proposer = proposer
        self.instructions_in = instructions_in
        self.seed = seed
        self.num_wrong_user = num_wrong_user
        self.num_wrong_system = num_wrong_system
        self.store = NodeStore()
        self.evals: dict[int, NodeEval] = {}
        self.proposals: list[Proposal] = []
        self.phases: list[PhaseLog] = []
        self._phase: PhaseLog | None = None
        self._phase_start = 0.0
        self._optimizer_calls_at_start = 0
        self._optimizer_usage_at_start: dict[str, dict[str, int]] = {}
        self.phase_callback: Callable[[PhaseLog], None] | None = None
        self.max_failure_share = 0.5

    # -- phases ------------------------------------------------------------------------------
    def begin(self, phase: str, iteration: int | None) -> PhaseLog:
        self._phase = PhaseLog(phase, iteration)
        self._phase_start = time.perf_counter()
        self._optimizer_calls_at_start = self.proposer.calls
        self._optimizer_usage_at_start = self.proposer.usage_snapshot()
        return self._phase

    def end(self) -> PhaseLog:
        log = self._phase
        assert log is not None
        log.seconds = round(time.perf_counter() - self._phase_start, 3)
        log.optimizer_calls = self.proposer.calls - self._optimizer_calls_at_start
        log.optimizer_usage = self.proposer.usage_since(self._optimizer_usage_at_start)
        log.cost = cost_of(_merged(log.task_usage, log.optimizer_usage))
        self.phases.append(log)
        self._phase = None
        self.after_phase(log)
        return log

    def after_phase(self, log: PhaseLog) -> None:
        """Hand a finished phase to ``phase_callback`` (subclasses may defer this)."""
        if self.phase_callback is not None:
            self.phase_callback(log)

    # -- evaluation --------------------------------------------------------------------------
    def _job(self, node: PromptNode, examples: Sequence[dspy.Example]) -> EvalJob:
        task = self.tasks[node.task]
        return EvalJob(
            task=node.task,
            program=task.prepared(node.user_prompt),
            system_prompt=node.system_prompt,
            instructions_in=self.instructions_in,
            examples=examples,
            metric=task.metric,
            label=f"node {node.id}",
        )

    def evaluate_subset(
        self, nodes: Sequence[PromptNode], subsets: Mapping[str, Sequence[int]], desc: str
    ) -> list[NodeEval]:
        """Score nodes on a subset of their task's train examples, leaving their scores alone."""
        jobs = [self._job(n, [self.tasks[n.task].trainset[i] for i in subsets[n.task]]) for n in nodes]
        results = self.evaluator.evaluate(jobs, desc=desc)
        if self._phase is not None:
            for node, result in zip(nodes, results, strict=True):
                self._phase.task_lm_calls += result.lm_calls
                self._phase.evaluations += sum(1 for r in result.results if not r.cached)
                merge_usage(self._phase.task_usage, result.usage)
                self._phase.count_parsed(node.task, result)
        self._check_failures(results, desc)
        return results

    def evaluate(self, nodes: Sequence[PromptNode], split: str = "train", desc: str = "") -> list[NodeEval]:
        """Score nodes on their task's train or test split in one grid; sets their scores."""
        jobs = []
        for node in nodes:
            task = self.tasks[node.task]
            jobs.append(self._job(node, (task.trainset if split == "train" else task.testset) or []))
        results = self.evaluator.evaluate(jobs, desc=desc or split)
        for node, result in zip(nodes, results, strict=True):
            if split == "train":
                node.train_score = result.score
                self.evals[node.id] = result
            else:
                node.test_score = result.score
            node.failures[split] = result.failures
            node.parsed[split] = result.parsed_share
            for r in result.results:
                if r.error and r.error not in node.errors and len(node.errors) < 3:
                    node.errors.append(r.error)
            if self._phase is not None:
                self._phase.task_lm_calls += result.lm_calls
                self._phase.evaluations += len(result.results)
                self._phase.reused_evaluations += sum(1 for r in result.results if r.cached)
                self._phase.failures += result.failures
                merge_usage(self._phase.task_usage, result.usage)
                self._phase.count_parsed(node.task, result)
        self._check_failures(results, desc or split)
        return results

    def _check_failures(self, results: Sequence[NodeEval], where: str) -> None:
        total = sum(len(r.results) for r in results)
        failed = [x for r in results for x in r.results if x.error is not None]
        if total and len(failed) / total > self.max_failure_share:
            samples = list(dict.fromkeys(x.error for x in failed))[:3]
            raise TooManyFailures(
                redact(
                    f"{len(failed)} of {total} task-model calls failed in {where} (more than "
                    f"{self.max_failure_share:.0%}); first errors: {samples}. Check the model server, key and "
                    "settings; finished evaluations are kept, so the run can be resumed."
                )
            )

    def run_proposals(self, jobs: Sequence[Callable[[], Proposal]], where: str) -> list[Proposal]:
        """Run a phase's proposal jobs (:meth:`Proposer.run_all`) and stop with
        :class:`TooManyFailures` when the optimizer model's calls failed for all of them, or for more
        than ``max_failure_share`` of them when there are at least ``MIN_PROPOSALS_FOR_SHARE``.
        Content discards (unparsable, empty, placeholder, echo, too long, duplicate) do not count."""
        proposals = self.proposer.run_all(jobs)
        failed = [p for p in proposals if p.failed]
        total = len(proposals)
        share = len(failed) / total if total else 0.0
        if failed and (len(failed) == total or (total >= MIN_PROPOSALS_FOR_SHARE and share > self.max_failure_share)):
            model = getattr(self.proposer.lm, "model", type(self.proposer.lm).__name__)
            samples = list(dict.fromkeys(p.reason for p in failed))[:3]
            how_many = "all" if len(failed) == total else f"more than {self.max_failure_share:.0%}"
            raise TooManyFailures(
                redact(
                    f"{len(failed)} of {total} proposals in {where} failed ({how_many}): the optimizer model "
                    f"{model!r} could not be used; first errors: {samples}. Check its server, key and settings; "
                    "finished work is kept, so the run can be resumed."
                )
            )
        return proposals

    # -- proposals ---------------------------------------------------------------------------
    def new_proposal(
        self,
        kind: str,
        iteration: int | None,
        candidate: int,
        task: str | None,
        parent: PromptNode | None,
        predictor: str | None = None,
    ) -> Proposal:
        proposal = Proposal(
            id=len(self.proposals),
            kind=kind,
            iteration=iteration,
            candidate=candidate,
            task=task,
            parent_node=parent.id if parent is not None else None,
            predictor=predictor,
        )
        self.proposals.append(proposal)
        return proposal

    def shown_wrong(self, node: PromptNode, k: int, rng, predictor: str | None = None):
        """Up to ``k`` sampled wrong examples of ``node`` (evaluated on train), described."""
        task = self.tasks[node.task]
        evaluation = self.evals[node.id]
        chosen = sample_wrong(evaluation.wrong, k, rng)
        parse = parser_of(task.metric)
        return [
            wrong_example(node.task, task.trainset[r.index], r, node.system_prompt, predictor, parse) for r in chosen
        ]

    def propose_user(
        self, parent: PromptNode, iteration: int | None, candidate: int, predictor: str, phase: str
    ) -> Any:
        """A deferred failure-driven user-prompt proposal from ``parent``'s wrong examples."""
        proposal = self.new_proposal("user", iteration, candidate, parent.task, parent, predictor)
        rng = rng_for(self.seed, iteration, phase, parent.task, candidate)
        shown = self.shown_wrong(parent, self.num_wrong_user, rng, predictor)
        task = self.tasks[parent.task]
        return lambda: self.proposer.user_prompt(
            proposal, parent.system_prompt, parent.user_prompt[predictor], shown, task.input_names
        )

    def propose_ape_user(
        self,
        parent: PromptNode,
        iteration: int | None,
        candidate: int,
        predictor: str,
        phase: str,
        num_pairs: int = 10,
    ) -> Any:
        """A deferred APE user-prompt proposal from random train pairs of the task."""
        proposal = self.new_proposal("ape_user", iteration, candidate, parent.task, parent, predictor)
        task = self.tasks[parent.task]
        rng = rng_for(self.seed, iteration, phase, parent.task, candidate)
        pairs = io_pairs(rng.sample(task.trainset, min(num_pairs, len(task.trainset))))
        return lambda: self.proposer.induce(proposal, pairs, task.suffix)

    def user_children(
        self,
        proposals: Sequence[Proposal],
        owners: Sequence[tuple[PromptNode, str]],
        existing: Sequence[int],
        origin: str,
        iteration: int | None,
    ) -> list[PromptNode]:
        """Nodes for the usable user-prompt proposals (``owners[i]`` = (parent, predictor) of
        ``proposals[i]``); duplicates of ``existing`` nodes' prompts or of each other are dropped."""
        owner = {id(p): o for p, o in zip(proposals, owners, strict=True)}

        def merged(proposal: Proposal) -> dict[str, str]:
            parent, predictor = owner[id(proposal)]
            return {**parent.user_prompt, predictor: proposal.text or ""}

        seen = {TaskRun.prompt_key(self.store[i].user_prompt) for i in existing}
        children = []
        for proposal in self.finish_proposals(proposals, seen, key=lambda p: TaskRun.prompt_key(merged(p))):
            parent = owner[id(proposal)][0]
            node = self.store.child(parent, user_prompt=merged(proposal), origin=origin, iteration=iteration)
            proposal.node_ids.append(node.id)
            children.append(node)
        return children

    def finish_proposals(
        self,
        proposals: Sequence[Proposal],
        existing: set[str],
        key: Callable[[Proposal], str] = lambda p: p.text or "",
    ) -> list[Proposal]:
        """Drop duplicates (``key`` already in ``existing`` or seen earlier); return the usable ones."""
        usable = []
        seen = set(existing)
        for proposal in proposals:
            if self._phase is not None:
                self._phase.proposals += 1
            if proposal.ok and key(proposal) in seen:
                proposal.discard("duplicate of an existing prompt")
            if proposal.ok:
                seen.add(key(proposal))
                usable.append(proposal)
            elif self._phase is not None:
                self._phase.discarded += 1
        return usable


def _merged(*usages: dict[str, dict[str, int]]) -> dict[str, dict[str, int]]:
    total: dict[str, dict[str, int]] = {}
    for usage in usages:
        merge_usage(total, usage)
    return total


def total_usage(phases: Sequence[PhaseLog]) -> dict[str, Any]:
    """Tokens per model and cost (None when unpriced) over phases, split by task and optimizer LM."""
    task = _merged(*(p.task_usage for p in phases))
    optimizer = _merged(*(p.optimizer_usage for p in phases))
    return {"task_lm": task, "optimizer_lm": optimizer, "cost": cost_of(_merged(task, optimizer))}
