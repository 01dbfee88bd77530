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

import logging
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import dspy
from dspy.teleprompt.teleprompt import Teleprompter

from metaspo_dspy.adapters import adapter_name, make_adapter
from metaspo_dspy.evaluation import GridEvaluator
from metaspo_dspy.io import atomic_write_json
from metaspo_dspy.metrics import Metric
from metaspo_dspy.optimize.common import ConfigError, PhaseLog, SearchBase, TaskRun, check_examples
from metaspo_dspy.optimize.proposer import Proposer, io_pairs
from metaspo_dspy.optimize.state import BilevelState, PromptNode
from metaspo_dspy.program import DEFAULT_SYSTEM_PROMPT, MetaSPOProgram, SystemPrompt
from metaspo_dspy.seeding import rng_for

logger = logging.getLogger(__name__)

METHODS = ("metaspo", "outer_loop", "metaspo_ape")
ARTIFACT_FORMAT = "metaspo-dspy/run/v1"


def _positive(name: str, value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ConfigError(f"{name} must be a positive integer, got {value!r}")
    return value


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
        initial_system_prompt: where the search starts.
        instructions_in: ``"user"`` (MetaSPO: user prompt in the user message) or ``"system"``.
        adapter: base adapter for task calls (a name -- ``chat``, ``json``, ``xml``, ``reference``
            -- or an instance; None: the configured adapter, else ChatAdapter).
        optimizer_adapter: adapter for optimizer calls (None: the configured one).
        num_threads: concurrent task-LM calls in an evaluation grid.
        seed: every random draw derives from it.
        num_wrong_user, num_wrong_system: wrong examples shown per user proposal (3) and per task
            for a system proposal (2).
        max_prompt_chars: longer proposals are discarded.
        log_dir: when set, the run artifact (``metaspo_run.json``) and the reference-format
            ``bilevel_nodes.json`` are written there.
        progress: show progress bars.
        phase_callback: called with each finished phase's :class:`PhaseLog` (calls, time), e.g.
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
        initial_system_prompt: str | SystemPrompt = DEFAULT_SYSTEM_PROMPT,
        instructions_in: str = "user",
        adapter: Any = None,
        optimizer_adapter: Any = None,
        num_threads: int = 16,
        seed: int = 42,
        num_wrong_user: int = 3,
        num_wrong_system: int = 2,
        max_prompt_chars: int = 8000,
        log_dir: str | Path | None = None,
        progress: bool = True,
        phase_callback: Callable[[PhaseLog], None] | None = None,
    ):
        super().__init__()
        if method not in METHODS:
            raise ConfigError(f"method must be one of {METHODS}, got {method!r}")
        if instructions_in not in ("user", "system"):
            raise ConfigError(f"instructions_in must be 'user' or 'system', got {instructions_in!r}")
        self.metric = metric
        self.optimizer_lm = optimizer_lm
        self.task_lm = task_lm
        self.method = method
        self.num_iterations = _positive("num_iterations", num_iterations)
        self.num_system_candidates = _positive("num_system_candidates", num_system_candidates)
        self.num_user_candidates = _positive("num_user_candidates", num_user_candidates)
        self.user_top_k = _positive("user_top_k", user_top_k)
        initial = (
            initial_system_prompt.text if isinstance(initial_system_prompt, SystemPrompt) else initial_system_prompt
        )
        if not isinstance(initial, str):
            raise ConfigError(f"initial_system_prompt must be a string, got {type(initial).__name__}")
        self.initial_system_prompt = initial
        self.instructions_in = instructions_in
        self.adapter = make_adapter(adapter)
        self.optimizer_adapter = make_adapter(optimizer_adapter)
        self.num_threads = _positive("num_threads", num_threads)
        self.seed = seed
        self.num_wrong_user = _positive("num_wrong_user", num_wrong_user)
        self.num_wrong_system = _positive("num_wrong_system", num_wrong_system)
        self.max_prompt_chars = _positive("max_prompt_chars", max_prompt_chars)
        self.log_dir = Path(log_dir) if log_dir is not None else None
        self.progress = progress
        self.phase_callback = phase_callback

    # -- public ------------------------------------------------------------------------------
    def compile(
        self,
        program: dspy.Module | Mapping[str, dspy.Module],
        trainsets: Mapping[str, Any] | None = None,
        testsets: Mapping[str, Any] | None = None,
        metrics: Mapping[str, Metric] | None = None,
        user_prompt_suffixes: Mapping[str, str] | None = None,
        **kwargs: Any,
    ) -> MetaSPOProgram:
        """Run the search and return the optimized :class:`MetaSPOProgram`.

        Args:
            program: one module used for every task, or ``{task: module}``; never modified.
            trainsets: ``{task: [dspy.Example, ...]}`` (inputs set), the source tasks.
            testsets: optional ``{task: [...]}``; the final beams are scored on them.
            metrics: optional ``{task: metric}`` overriding ``metric``.
            user_prompt_suffixes: optional ``{task: text}`` appended to APE-made user prompts
                (the reference format's question slot and answer-format line).
        """
        if kwargs:
            raise ConfigError(f"unexpected compile() arguments {sorted(kwargs)}; see MetaSPO.compile's docstring")
        run = _Run(self, self._task_runs(program, trainsets, testsets, metrics, user_prompt_suffixes))
        return run.execute()

    # -- set-up ------------------------------------------------------------------------------
    def _task_runs(self, program, trainsets, testsets, metrics, suffixes) -> dict[str, TaskRun]:
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
        runs = {}
        for name, train in trainsets.items():
            if not isinstance(name, str) or not name:
                raise ConfigError(f"task names must be non-empty strings, got {name!r}")
            if isinstance(program, dspy.Module):
                module = program
            elif isinstance(program, Mapping) and isinstance(program.get(name), dspy.Module):
                module = program[name]
            else:
                raise ConfigError(f"no program for task {name!r}: pass one dspy.Module or a dict with every task")
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
        return runs


class _Run(SearchBase):
    """One execution of MetaSPO.compile (state, history, artifact)."""

    def __init__(self, owner: MetaSPO, tasks: dict[str, TaskRun]):
        evaluator = GridEvaluator(owner.task_lm, owner.adapter, owner.num_threads, owner.progress)
        proposer = Proposer(
            owner.optimizer_lm,
            owner.optimizer_adapter,
            owner.seed,
            owner.max_prompt_chars,
            num_threads=min(owner.num_threads, 16),
        )
        super().__init__(
            tasks,
            evaluator,
            proposer,
            owner.instructions_in,
            owner.seed,
            owner.num_wrong_user,
            owner.num_wrong_system,
        )
        self.o = owner
        self.phase_callback = owner.phase_callback
        self.iterations = owner.num_iterations * (2 if owner.method == "outer_loop" else 1)
        self.steps: list[dict[str, Any]] = []
        self.decisions: list[dict[str, Any]] = []

    # -- the loop ----------------------------------------------------------------------------
    def execute(self) -> MetaSPOProgram:
        state = self.initialize()
        for iteration in range(self.iterations):
            if self.o.method != "outer_loop":
                state = self.inner_loop(state, iteration)
            state = self.outer_loop(state, iteration)
        self.test(state)
        return self.result(state)

    def initialize(self) -> BilevelState:
        self.begin("initial", None)
        nodes = [
            self.store.new(
                task=name,
                system_prompt=self.o.initial_system_prompt,
                user_prompt=task.initial_user_prompt(),
                parent_id=None,
                depth=0,
            )
            for name, task in self.tasks.items()
        ]
        self.evaluate(nodes, "train", "initial evaluation")
        state = BilevelState(self.o.initial_system_prompt, {n.task: [n.id] for n in nodes})
        self.end()
        self.snapshot("initial", None, state)
        return state

    def inner_loop(self, state: BilevelState, iteration: int) -> BilevelState:
        self.begin("inner", iteration)
        k = self.o.num_user_candidates
        jobs, owners = [], []
        for name, task in self.tasks.items():
            parent = self.store[state.best(name)]
            predictors = task.predictor_names
            for candidate in range(k):
                predictor = predictors[(iteration * k + candidate) % len(predictors)]
                if self.o.method == "metaspo_ape":
                    jobs.append(self.propose_ape_user(parent, iteration, candidate, predictor, "inner"))
                else:
                    jobs.append(self.propose_user(parent, iteration, candidate, predictor, "inner"))
                owners.append((name, parent, predictor))
        proposals = self.proposer.run_all(jobs)
        new_nodes: dict[str, list[PromptNode]] = {}
        for name in self.tasks:
            mine = [i for i, owner in enumerate(owners) if owner[0] == name]
            new_nodes[name] = self.user_children(
                [proposals[i] for i in mine], [owners[i][1:] for i in mine], state.beams[name], "inner", iteration
            )
        self.evaluate(
            [n for nodes in new_nodes.values() for n in nodes],
            "train",
            f"iteration {iteration + 1}: inner loop",
        )
        state = state.copy()
        for name in self.tasks:
            state.beams[name] = self.store.sorted_beam(
                state.beams[name] + [n.id for n in new_nodes[name]], self.o.user_top_k
            )
        self.end()
        self.snapshot("inner", iteration, state)
        return state

    def outer_loop(self, state: BilevelState, iteration: int) -> BilevelState:
        self.begin("outer", iteration)
        jobs = [self.propose_system(state, iteration, c) for c in range(self.o.num_system_candidates)]
        proposals = self.finish_proposals(self.proposer.run_all(jobs), {state.system_prompt})
        candidates = []
        for proposal in proposals:
            beams = {}
            for name, ids in state.beams.items():
                children = [
                    self.store.child(self.store[i], system_prompt=proposal.text, origin="outer", iteration=iteration)
                    for i in ids
                ]
                beams[name] = [c.id for c in children]
                proposal.node_ids.extend(beams[name])
            candidates.append((proposal, BilevelState(proposal.text, beams)))
        every = [self.store[i] for _, cand in candidates for ids in cand.beams.values() for i in ids]
        self.evaluate(every, "train", f"iteration {iteration + 1}: outer loop")
        current, current_score = state, state.meta_score(self.store)
        for proposal, candidate in candidates:
            score = candidate.meta_score(self.store)
            accepted = score > current_score
            self.decisions.append(
                {
                    "iteration": iteration,
                    "candidate": proposal.candidate,
                    "proposal": proposal.id,
                    "system_prompt": proposal.text,
                    "meta_score": score,
                    "incumbent_meta_score": current_score,
                    "accepted": accepted,
                }
            )
            if accepted:
                candidate.beams = {t: self.store.sorted_beam(ids) for t, ids in candidate.beams.items()}
                current, current_score = candidate, score
        self.end()
        self.snapshot("outer", iteration, current)
        return current

    def propose_system(self, state: BilevelState, iteration: int, candidate: int):
        if self.o.method == "metaspo_ape":
            proposal = self.new_proposal("ape_system", iteration, candidate, None, None)
            pairs = []
            for name, task in self.tasks.items():
                rng = rng_for(self.seed, iteration, "outer", name, candidate)
                pairs += io_pairs(rng.sample(task.trainset, min(5, len(task.trainset))))
            rng_for(self.seed, iteration, "outer", "shuffle", candidate).shuffle(pairs)
            return lambda: self.proposer.induce(proposal, pairs)
        proposal = self.new_proposal("system", iteration, candidate, None, None)
        blocks, shown = [], []
        for name in self.tasks:
            best = self.store[state.best(name)]
            rng = rng_for(self.seed, iteration, "outer", name, candidate)
            wrong = self.shown_wrong(best, self.num_wrong_system, rng)
            shown += wrong
            blocks.append("\n\n".join(w.render() for w in wrong))
        rng_for(self.seed, iteration, "outer", "shuffle", candidate).shuffle(blocks)
        return lambda: self.proposer.system_prompt(proposal, state.system_prompt, blocks, shown)

    def test(self, state: BilevelState) -> None:
        nodes = [self.store[i] for name, ids in state.beams.items() if self.tasks[name].testset for i in ids]
        if not nodes:
            return
        self.begin("test", None)
        self.evaluate(nodes, "test", "test evaluation")
        self.end()
        # The last snapshot holds the final beams: refresh it with the test scores.
        self.steps[-1]["nodes"] = self._beam_dicts(state)

    # -- results -----------------------------------------------------------------------------
    def _beam_dicts(self, state: BilevelState) -> dict[str, list[dict[str, Any]]]:
        return {name: [self.store[i].to_dict() for i in ids] for name, ids in state.beams.items()}

    def snapshot(self, phase: str, iteration: int | None, state: BilevelState) -> None:
        self.steps.append(
            {
                "phase": phase,
                "iteration": iteration,
                "system_prompt": state.system_prompt,
                "meta_score": state.meta_score(self.store),
                "beams": {t: list(ids) for t, ids in state.beams.items()},
                "nodes": self._beam_dicts(state),
            }
        )

    def artifact(self, state: BilevelState) -> dict[str, Any]:
        o = self.o
        per_task = {}
        for name, ids in state.beams.items():
            best = self.store[ids[0]]
            per_task[name] = {
                "best_node": best.id,
                "user_prompt": best.user_prompt,
                "train_score": best.train_score,
                "test_score": best.test_score,
                "beam": [
                    {
                        "id": i,
                        "train_score": self.store[i].train_score,
                        "test_score": self.store[i].test_score,
                    }
                    for i in ids
                ],
            }
        return {
            "format": ARTIFACT_FORMAT,
            "method": o.method,
            "settings": {
                "num_iterations": o.num_iterations,
                "num_system_candidates": o.num_system_candidates,
                "num_user_candidates": o.num_user_candidates,
                "user_top_k": o.user_top_k,
                "seed": o.seed,
                "instructions_in": o.instructions_in,
                "adapter": adapter_name(o.adapter),
                "num_wrong_user": o.num_wrong_user,
                "num_wrong_system": o.num_wrong_system,
                "task_lm": getattr(o.task_lm or dspy.settings.lm, "model", None),
                "optimizer_lm": getattr(o.optimizer_lm, "model", None),
                "tasks": {n: {"train": len(t.trainset), "test": len(t.testset or [])} for n, t in self.tasks.items()},
            },
            "initial_system_prompt": o.initial_system_prompt,
            "optimized_system_prompt": state.system_prompt,
            "meta_score": state.meta_score(self.store),
            "tasks": per_task,
            "steps": self.steps,
            "outer_decisions": self.decisions,
            "proposals": [p.to_dict() for p in self.proposals],
            "nodes": [n.to_dict() for n in self.store.nodes.values()],
            "phases": [p.to_dict() for p in self.phases],
            "calls": {
                "task_lm": sum(p.task_lm_calls for p in self.phases),
                "optimizer_lm": sum(p.optimizer_calls for p in self.phases),
            },
        }

    def result(self, state: BilevelState) -> MetaSPOProgram:
        data = self.artifact(state)
        programs = {
            name: self.tasks[name].prepared(self.store[ids[0]].user_prompt).deepcopy()
            for name, ids in state.beams.items()
        }
        best = MetaSPOProgram(
            SystemPrompt(state.system_prompt, self.o.instructions_in),
            programs,
            adapter=self.o.adapter,
            detailed_results=data,
        )
        if self.o.log_dir is not None:
            atomic_write_json(self.o.log_dir / "metaspo_run.json", data)
            atomic_write_json(self.o.log_dir / "bilevel_nodes.json", reference_bilevel_nodes(data))
        return best


def reference_bilevel_nodes(artifact: Mapping[str, Any]) -> dict[str, Any]:
    """The reference code's ``bilevel_nodes_*.json`` shape, from a run artifact.

    ``{"optimized_system_prompt", "nodes": [[[node, ...] per task] per step]}`` with each node as
    ``{id, task, system_prompt, instruction, parent_id, depth, eval_metric, test_metric}``
    (``test_metric`` -1 where not tested); multi-predictor user prompts are joined into one text.
    """

    def convert(node: Mapping[str, Any]) -> dict[str, Any]:
        prompt = node["user_prompt"]
        instruction = (
            next(iter(prompt.values())) if len(prompt) == 1 else "\n\n".join(f"[{k}]\n{v}" for k, v in prompt.items())
        )
        return {
            "id": node["id"],
            "task": node["task"],
            "system_prompt": node["system_prompt"],
            "instruction": instruction,
            "parent_id": node["parent_id"],
            "depth": node["depth"],
            "eval_metric": node["train_score"] if node["train_score"] is not None else -1,
            "test_metric": node["test_score"] if node["test_score"] is not None else -1,
        }

    return {
        "optimized_system_prompt": artifact["optimized_system_prompt"],
        "nodes": [[[convert(n) for n in nodes] for nodes in step["nodes"].values()] for step in artifact["steps"]],
    }
