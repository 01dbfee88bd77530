"""The MetaSPO search loop (one ``MetaSPO.compile`` call): state, phases, history, results.

See :mod:`metaspo_dspy.optimize.metaspo.teleprompter` for the algorithm. Every phase ends with a checkpoint of
the history (when a run directory is used), and all evaluations and proposals go through journals,
so a resumed run replays to where it stopped without asking the LMs again.
"""

from __future__ import annotations

import math
from typing import Any

from metaspo_dspy.evaluation.task_run import TaskRun
from metaspo_dspy.optimize.engine.artifact import reference_bilevel_nodes, run_settings
from metaspo_dspy.optimize.engine.run import SearchRun
from metaspo_dspy.optimize.engine.state import BilevelState, PromptNode
from metaspo_dspy.optimize.metaspo.settings import MetaSPOSettings
from metaspo_dspy.optimize.proposer.shown import io_pairs
from metaspo_dspy.program.system_prompt import MetaSPOProgram, SystemPrompt
from metaspo_dspy.seeding import rng_for

__all__ = ["BilevelRun"]


class BilevelRun(SearchRun):
    """One execution of MetaSPO.compile (state, history, artifact) with its settings; made by ``MetaSPO.make_run``."""

    settings: MetaSPOSettings

    def __init__(self, settings: MetaSPOSettings, tasks: dict[str, TaskRun]):
        own = {
            "num_wrong_user": settings.num_wrong_user,
            "num_wrong_system": settings.num_wrong_system,
            "screening": settings.screening,
            "screening_keep": settings.screening_keep if settings.screening else None,
        }
        super().__init__(
            settings,
            tasks,
            run_settings(settings, tasks, own),
            num_wrong_user=settings.num_wrong_user,
            num_wrong_system=settings.num_wrong_system,
        )
        self.iterations = settings.num_iterations * (2 if settings.method == "outer_loop" else 1)
        self.decisions: list[dict[str, Any]] = []

    # -- the loop ----------------------------------------------------------------------------
    def search(self, state: BilevelState) -> BilevelState:
        for iteration in range(self.iterations):
            if self.settings.method != "outer_loop":
                self.within_budget("inner", self.planned(state, "inner"))
                state = self.inner_loop(state, iteration)
            self.within_budget("outer", self.planned(state, "outer"))
            state = self.outer_loop(state, iteration)
        return state

    def planned_test(self, state: BilevelState) -> dict[str, int]:
        return self.planned(state, "test")

    # -- budget ------------------------------------------------------------------------------
    def planned(self, state: BilevelState, phase: str) -> dict[str, int]:
        """Upper bounds on the next phase's task and optimizer calls (every proposal usable)."""
        o, ape = self.settings, self.settings.method == "metaspo_ape"
        train = {name: len(task.trainset) for name, task in self.tasks.items()}
        if phase == "inner":
            return {
                "task": o.num_user_candidates * sum(train.values()),
                "optimizer": (1 if ape else 2) * o.num_user_candidates * len(self.tasks),
            }
        if phase == "outer":
            beam_examples = sum(len(ids) * train[name] for name, ids in state.beams.items())
            return {
                "task": o.num_system_candidates * beam_examples,
                "optimizer": (1 if ape else 2) * o.num_system_candidates,
            }
        tests = sum(len(ids) * len(self.tasks[name].testset or []) for name, ids in state.beams.items())
        return {"task": tests, "optimizer": 0}

    def initialize(self) -> BilevelState:
        self.begin("initial", None)
        nodes = [
            self.store.new(
                task=name,
                system_prompt=self.settings.initial_system_prompt,
                user_prompt=task.initial_user_prompt(),
                parent_id=None,
                depth=0,
            )
            for name, task in self.tasks.items()
        ]
        self.evaluate(nodes, "train", "initial evaluation")
        state = BilevelState(self.settings.initial_system_prompt, {n.task: [n.id] for n in nodes})
        self.end()
        self.snapshot("initial", None, state)
        return state

    def inner_loop(self, state: BilevelState, iteration: int) -> BilevelState:
        self.begin("inner", iteration)
        k = self.settings.num_user_candidates
        jobs, owners = [], []
        for name, task in self.tasks.items():
            parent = self.store[state.best(name)]
            predictors = task.predictor_names
            for candidate in range(k):
                predictor = predictors[(iteration * k + candidate) % len(predictors)]
                if self.settings.method == "metaspo_ape":
                    jobs.append(self.propose_ape_user(parent, iteration, candidate, predictor, "inner"))
                else:
                    jobs.append(self.propose_user(parent, iteration, candidate, predictor, "inner"))
                owners.append((name, parent, predictor))
        proposals = self.run_proposals(jobs, f"iteration {iteration + 1}: inner loop")
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
                state.beams[name] + [n.id for n in new_nodes[name]], self.settings.user_top_k
            )
        self.end()
        self.snapshot("inner", iteration, state)
        return state

    def outer_loop(self, state: BilevelState, iteration: int) -> BilevelState:
        self.begin("outer", iteration)
        jobs = [self.propose_system(state, iteration, c) for c in range(self.settings.num_system_candidates)]
        proposals = self.finish_proposals(
            self.run_proposals(jobs, f"iteration {iteration + 1}: outer loop"), {state.system_prompt}
        )
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
        screening = self.screen(state, candidates, iteration) if self.settings.screening else {}
        promoted = [(p, c) for p, c in candidates if screening.get(p.id, {}).get("promoted", True)]
        every = [self.store[i] for _, cand in promoted for ids in cand.beams.values() for i in ids]
        self.evaluate(every, "train", f"iteration {iteration + 1}: outer loop")
        current, current_score = state, state.meta_score(self.store)
        for proposal, candidate in candidates:
            screened = screening.get(proposal.id, {})
            if not screened.get("promoted", True):
                self.decisions.append(self._decision(iteration, proposal, None, current_score, False, screened))
                continue
            score = candidate.meta_score(self.store)
            accepted = score > current_score
            self.decisions.append(self._decision(iteration, proposal, score, current_score, accepted, screened))
            if accepted:
                candidate.beams = {t: self.store.sorted_beam(ids) for t, ids in candidate.beams.items()}
                current, current_score = candidate, score
        self.end()
        self.snapshot("outer", iteration, current)
        return current

    @staticmethod
    def _decision(iteration, proposal, score, incumbent, accepted, screened) -> dict[str, Any]:
        decision = {
            "iteration": iteration,
            "candidate": proposal.candidate,
            "proposal": proposal.id,
            "system_prompt": proposal.text,
            "meta_score": score,
            "incumbent_meta_score": incumbent,
            "accepted": accepted,
        }
        if screened:
            decision["screening"] = screened
        return decision

    def screen(self, state: BilevelState, candidates, iteration: int) -> dict[int, dict[str, Any]]:
        """Frugal screening: score every candidate (and the incumbent) on the same minibatch of each
        task's train set; promote the best ``screening_keep`` share that is at least as good as the
        incumbent there. Minibatch results are reused by the full evaluation."""
        o = self.settings
        rng = rng_for(self.seed, iteration, "screening")
        subsets = {}
        for name, task in self.tasks.items():
            n = len(task.trainset)
            subsets[name] = sorted(rng.sample(range(n), max(1, min(n, math.ceil(o.screening * n)))))
        incumbent_nodes = [self.store[i] for ids in state.beams.values() for i in ids]
        nodes = incumbent_nodes + [self.store[i] for _, c in candidates for ids in c.beams.values() for i in ids]
        results = self.evaluate_subset(nodes, subsets, f"iteration {iteration + 1}: screening")
        score = dict(zip((n.id for n in nodes), (r.score for r in results), strict=True))

        def mean(beams) -> float:
            values = [score[i] for ids in beams.values() for i in ids]
            return sum(values) / len(values)

        bar = mean(state.beams)
        ranked = sorted(candidates, key=lambda pc: -mean(pc[1].beams))
        keep = max(1, math.ceil(o.screening_keep * len(candidates)))
        chosen = {p.id for p, c in ranked[:keep] if mean(c.beams) >= bar}
        full = sum(len(self.tasks[name].trainset) * len(ids) for name, ids in state.beams.items())
        part = sum(len(subsets[name]) * len(ids) for name, ids in state.beams.items())
        out = {}
        for proposal, candidate in candidates:
            promoted = proposal.id in chosen
            out[proposal.id] = {"score": mean(candidate.beams), "incumbent": bar, "promoted": promoted}
            if not promoted and self._phase is not None:
                self._phase.screened_out += 1
                self._phase.evaluations_saved += full - part
        return out

    def propose_system(self, state: BilevelState, iteration: int, candidate: int):
        if self.settings.method == "metaspo_ape":
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
        self.checkpoint()
        self.notify(state.meta_score(self.store))

    # -- results -----------------------------------------------------------------------------
    def _beam_dicts(self, state: BilevelState) -> dict[str, list[dict[str, Any]]]:
        return {name: [self.store[i].to_dict() for i in ids] for name, ids in state.beams.items()}

    def snapshot(self, phase: str, iteration: int | None, state: BilevelState) -> None:
        self.state = state
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
        self.checkpoint()
        self.notify(state.meta_score(self.store))

    def artifact(self, state: BilevelState, complete: bool = True) -> dict[str, Any]:
        """The run history as plain data (see the README's "The run artifact")."""
        per_task = {name: self.task_entry(ids) for name, ids in state.beams.items()}
        return self.frame(
            complete,
            {
                "initial_system_prompt": self.settings.initial_system_prompt,
                "optimized_system_prompt": state.system_prompt,
                "meta_score": state.meta_score(self.store),
                "tasks": per_task,
                "steps": self.steps,
                "outer_decisions": self.decisions,
            },
        )

    def result(self, state: BilevelState) -> MetaSPOProgram:
        data = self.artifact(state)
        programs = {
            name: self.tasks[name].prepared(self.store[ids[0]].user_prompt).deepcopy()
            for name, ids in state.beams.items()
        }
        best = MetaSPOProgram(
            SystemPrompt(state.system_prompt, self.settings.instructions_in),
            programs,
            adapter=self.adapter_in_effect,
            detailed_results=data,
        )
        self.write_results(data, best, {"bilevel_nodes.json": reference_bilevel_nodes(data)})
        return best
