"""ProTeGi / APO: beam search over one task's user prompt with the system prompt fixed.

As in the reference: evaluate the initial prompt; expand it into ``num_candidates`` children and
keep the best ``beam_width`` of those; then for each of ``num_iterations`` rounds expand every kept
node into ``num_candidates`` children (each an analysis + rewrite from that node's wrong examples)
and keep the best ``beam_width`` of old + new (stable: existing nodes win ties); finally score
every prompt kept at any round on the test set. With the defaults (6 rounds, 3 x 3) one task costs
1 + 3 + 6 x 9 = 58 train evaluations. This is also the paper's test-time adaptation.
"""

from __future__ import annotations

from typing import Any

from metaspo_dspy.errors import ConfigError
from metaspo_dspy.optimize.baselines.single_task import SingleTaskOptimizer, SingleTaskSearch, node_dicts
from metaspo_dspy.program.system_prompt import WithSystemPrompt


class ProTeGi(SingleTaskOptimizer):
    """Failure-driven beam search over the user prompt (instructions) of one task.

    Args (beyond :class:`~metaspo_dspy.optimize.baselines.single_task.SingleTaskOptimizer`'s):
        num_iterations: expansion rounds after the first (6 in test-time adaptation).
        num_candidates: children per expanded node (3).
        beam_width: prompts kept per round (3).

    ``compile(student, *, trainset, testset=None, task_name="task")`` (the base class's) returns
    ``student`` with its best instructions, wrapped with the fixed system prompt; its
    ``detailed_results["rounds"][r]`` lists the beam kept after round ``r`` (round 0 is the first
    expansion) with train and, given ``testset``, test scores.
    """

    def __init__(
        self,
        metric,
        optimizer_lm,
        task_lm=None,
        num_iterations: int = 6,
        num_candidates: int = 3,
        beam_width: int = 3,
        **kwargs: Any,
    ):
        super().__init__(metric, optimizer_lm, task_lm, **kwargs)
        for name, value in (
            ("num_iterations", num_iterations),
            ("num_candidates", num_candidates),
            ("beam_width", beam_width),
        ):
            if isinstance(value, bool) or not isinstance(value, int) or value < (0 if name == "num_iterations" else 1):
                raise ConfigError(f"{name} must be a positive integer, got {value!r}")
        self.num_iterations = num_iterations
        self.num_candidates = num_candidates
        self.beam_width = beam_width

    def _run(self, search: SingleTaskSearch, task_name: str, testset: Any) -> WithSystemPrompt:
        root = self._root(search, task_name)
        search.begin("initial", None)
        search.evaluate([root], "train", "initial evaluation")
        search.end()
        beam = [root.id]
        rounds = []
        for r in range(self.num_iterations + 1):
            parents = [root.id] if r == 0 else beam
            beam = self._expand(search, beam, parents, r)
            rounds.append(list(beam))
        kept = list(dict.fromkeys(i for ids in [[root.id], *rounds] for i in ids))
        if testset is not None:
            search.begin("test", None)
            search.evaluate([search.store[i] for i in kept], "test", "test evaluation")
            search.end()
        details = {
            "method": "protegi",
            "system_prompt": search.system_prompt.text,
            "initial": search.store[root.id].to_dict(),
            "rounds": [node_dicts(search, ids) for ids in rounds],
            "nodes": [n.to_dict() for n in search.store.nodes.values()],
            "proposals": [p.to_dict() for p in search.proposals],
            "phases": [p.to_dict() for p in search.phases],
        }
        return self._result(search, search.store[beam[0]], details)

    def _expand(self, search, beam: list[int], parents: list[int], r: int) -> list[int]:
        search.begin("expand", r)
        task = search.tasks[search.store[parents[0]].task]
        predictors = task.predictor_names
        jobs, parent_of = [], []
        for b, pid in enumerate(parents):
            parent = search.store[pid]
            for c in range(self.num_candidates):
                index = b * self.num_candidates + c
                predictor = predictors[(r * len(parents) * self.num_candidates + index) % len(predictors)]
                jobs.append(search.propose_user(parent, r, index, predictor, "protegi"))
                parent_of.append((parent, predictor))
        proposals = search.run_proposals(jobs, f"round {r}")
        children = search.user_children(proposals, parent_of, beam, "protegi", r)
        search.evaluate(children, "train", f"round {r}")
        search.end()
        return search.store.sorted_beam(beam + [c.id for c in children], self.beam_width)
