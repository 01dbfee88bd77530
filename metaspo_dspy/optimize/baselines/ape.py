"""APE: generate user prompts from input/output pairs, keep the best, resample paraphrases.

As in the reference: evaluate the initial prompt; make ``num_candidates`` prompts, each inferred
from ``num_pairs`` random train pairs (the task's prompt suffix appended); keep the ``top_k`` best
of initial + generated; for each kept prompt make ``num_candidates`` paraphrases ("same meaning,
different words"); the best of everything by train score (stable) is the result.
"""

from __future__ import annotations

from typing import Any

from metaspo_dspy.errors import ConfigError
from metaspo_dspy.optimize.baselines.single_task import SingleTaskOptimizer, SingleTaskSearch
from metaspo_dspy.program.system_prompt import WithSystemPrompt


class APE(SingleTaskOptimizer):
    """Automatic Prompt Engineer for one task's user prompt under a fixed system prompt.

    Args (beyond :class:`~metaspo_dspy.optimize.baselines.single_task.SingleTaskOptimizer`'s):
        num_candidates: prompts generated, and paraphrases per kept prompt (6).
        top_k: prompts kept for resampling (3).
        num_pairs: input/output pairs shown per generation (10).

    ``compile(student, *, trainset, testset=None, task_name="task", prompt_suffix="")`` (the base
    class's) optimizes a single-predictor ``student`` and returns it wrapped with the fixed system
    prompt; ``prompt_suffix`` is appended to every generated prompt (the reference format's
    question slot and answer-format line).
    """

    compile_options = ("prompt_suffix",)

    def __init__(
        self,
        metric,
        optimizer_lm,
        task_lm=None,
        num_candidates: int = 6,
        top_k: int = 3,
        num_pairs: int = 10,
        **kwargs: Any,
    ):
        super().__init__(metric, optimizer_lm, task_lm, **kwargs)
        for name, value in (("num_candidates", num_candidates), ("top_k", top_k), ("num_pairs", num_pairs)):
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ConfigError(f"{name} must be a positive integer, got {value!r}")
        self.num_candidates = num_candidates
        self.top_k = top_k
        self.num_pairs = num_pairs

    def _run(self, search: SingleTaskSearch, task_name: str, testset: Any) -> WithSystemPrompt:
        task = search.tasks[task_name]
        if len(task.predictor_names) != 1:
            raise ConfigError(f"APE optimizes one instruction; this program has predictors {task.predictor_names}")
        predictor = task.predictor_names[0]
        root = self._root(search, task_name)

        search.begin("generate", 0)
        search.evaluate([root], "train", "initial evaluation")
        jobs = [
            search.propose_ape_user(root, 0, c, predictor, "ape", self.num_pairs) for c in range(self.num_candidates)
        ]
        generated = search.user_children(
            search.run_proposals(jobs, "generation"), [(root, predictor)] * len(jobs), [root.id], "ape", 0
        )
        search.evaluate(generated, "train", "generated prompts")
        search.end()
        top = search.store.sorted_beam([root.id] + [n.id for n in generated], self.top_k)

        search.begin("resample", 1)
        jobs, owners = [], []
        for b, node_id in enumerate(top):
            parent = search.store[node_id]
            for c in range(self.num_candidates):
                proposal = search.new_proposal(
                    "ape_paraphrase", 1, b * self.num_candidates + c, task_name, parent, predictor
                )
                jobs.append(
                    lambda p=proposal, n=parent: search.proposer.paraphrase(
                        p, n.user_prompt[predictor], task.input_names
                    )
                )
                owners.append((parent, predictor))
        everything = [root.id] + [n.id for n in generated]
        proposals = search.run_proposals(jobs, "resampling")
        resampled = search.user_children(proposals, owners, everything, "ape_paraphrase", 1)
        search.evaluate(resampled, "train", "paraphrases")
        search.end()

        best = search.store[search.store.sorted_beam(everything + [n.id for n in resampled], 1)[0]]
        if testset is not None:
            search.begin("test", None)
            search.evaluate([root] if best.id == root.id else [root, best], "test", "test evaluation")
            search.end()
        details = {
            "method": "ape",
            "system_prompt": search.system_prompt.text,
            "initial": root.to_dict(),
            "best": best.to_dict(),
            "top_k": top,
            "nodes": [n.to_dict() for n in search.store.nodes.values()],
            "proposals": [p.to_dict() for p in search.proposals],
            "phases": [p.to_dict() for p in search.phases],
        }
        return self._result(search, best, details)
