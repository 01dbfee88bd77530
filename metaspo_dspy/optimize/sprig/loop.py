"""The SPRIG search loop (one ``SPRIG.compile`` call): population, edits, budget, history, results.

See :mod:`metaspo_dspy.optimize.sprig.teleprompter` for the method and every choice made where the paper is
silent. The loop runs on :class:`~metaspo_dspy.optimize.engine.run.SearchRun`: every evaluation and
rephrasing goes through the run's journals, a checkpoint follows every iteration, and all random
draws derive from (seed, iteration, slot), so a resumed run replays to where it stopped.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from metaspo_dspy.evaluation.task_run import TaskRun
from metaspo_dspy.optimize.engine.artifact import run_settings
from metaspo_dspy.optimize.engine.run import SearchRun
from metaspo_dspy.optimize.proposer.proposals import Proposal
from metaspo_dspy.optimize.sprig.edits import Candidate, ComponentBandit, Edit, EditTypeBandit, pick_edit, rephrased
from metaspo_dspy.optimize.sprig.library import ComponentLibrary
from metaspo_dspy.optimize.sprig.settings import SprigSettings
from metaspo_dspy.program.system_prompt import MetaSPOProgram, SystemPrompt
from metaspo_dspy.seeding import rng_for


def sprig_settings(settings: SprigSettings, tasks: dict[str, TaskRun], budget: int) -> dict[str, Any]:
    """Everything that shapes a SPRIG run's results (compared on resume): the shared settings and
    SPRIG's own under ``sprig``, with the search's task-call ``budget`` in effect."""
    own = {
        "beam_size": settings.beam_size,
        "num_candidates": settings.num_candidates,
        "max_iterations": settings.max_iterations,
        "exploration": settings.exploration,
        "task_call_budget": budget,
        "library": settings.library.describe(),
    }
    return run_settings(settings, tasks, {"sprig": own})


@dataclass
class Population:
    """The beam: candidate ids, best first."""

    beam: list[int]


class SprigRun(SearchRun):
    """One execution of SPRIG.compile with its settings (population, bandits, history, artifact)."""

    settings: SprigSettings

    def __init__(self, settings: SprigSettings, tasks: dict[str, TaskRun], budget: int):
        super().__init__(settings, tasks, sprig_settings(settings, tasks, budget))
        self.library: ComponentLibrary = settings.library
        self.budget_calls = budget
        self.per_candidate = sum(len(t.trainset) for t in self.tasks.values())
        self.candidates: list[Candidate] = []
        self.seen: set[str] = set()
        self.edit_types = EditTypeBandit(settings.exploration)
        self.components = ComponentBandit(settings.exploration)
        self.decisions: list[dict[str, Any]] = []
        self.finished: str | None = None

    @property
    def used_calls(self) -> int:
        """Search-budget calls spent: one per train example of every scored candidate."""
        return sum(1 for c in self.candidates if c.score is not None) * self.per_candidate

    # -- the loop ----------------------------------------------------------------------------
    def initialize(self) -> Population:
        self.begin("initial", None)
        text = self.settings.initial_system_prompt.strip()
        first = Candidate(0, None, None, [text] if text else [], [None] if text else [])
        self._score([first], "initial evaluation")
        self.end()
        state = Population([first.id])
        self.snapshot("initial", None, state)
        return state

    def search(self, state: Population) -> Population:
        iteration = 0
        while self.settings.max_iterations is None or iteration < self.settings.max_iterations:
            slots = min(self.settings.num_candidates, (self.budget_calls - self.used_calls) // self.per_candidate)
            if slots < 1:
                self.finished = f"search budget spent ({self.used_calls} of {self.budget_calls} task calls)"
                return state
            self.within_budget("search", {"task": slots * self.per_candidate, "optimizer": slots})
            made = len(self.candidates)
            state = self.step(state, iteration, slots)
            if len(self.candidates) == made:
                self.finished = f"iteration {iteration + 1} could make no new candidate"
                return state
            iteration += 1
        self.finished = f"max_iterations={self.settings.max_iterations} reached"
        return state

    def step(self, state: Population, iteration: int, slots: int) -> Population:
        """One iteration: ``slots`` edits of the beam pre-selected by UCB, scored, then the beam cut."""
        self.begin("search", iteration)
        where = f"iteration {iteration + 1}"
        beam = [self.candidates[i] for i in state.beam]
        pending: Counter[str] = Counter()
        picked: list[tuple[int, Candidate, Edit]] = []
        for slot in range(slots):
            parent = beam[slot % len(beam)]
            rng = rng_for(self.seed, iteration, "sprig", slot)
            for edit_type in self.edit_types.ranked(pending):
                limit = self.settings.max_prompt_chars
                edit = pick_edit(edit_type, parent, self.library, self.components, rng, self.seen, limit)
                if edit is not None:
                    pending[edit_type] += 1
                    picked.append((slot, parent, edit))
                    if edit.type != "rephrase":
                        self.seen.add(edit.text)
                    break
        made = self._rephrase(picked, iteration, where)
        self._score(made, where)
        for candidate in made:
            self._learn(candidate)
        ranked = sorted(state.beam + [c.id for c in made], key=lambda i: -(self.candidates[i].score or 0.0))
        state = Population(ranked[: self.settings.beam_size])
        for candidate in made:
            self.decisions.append(self._decision(candidate, candidate.id in state.beam))
        self.end()
        self.snapshot("search", iteration, state)
        return state

    def _rephrase(self, picked: Sequence[tuple[int, Candidate, Edit]], iteration: int, where: str) -> list[Candidate]:
        """Candidates for the picked edits; ``rephrase`` edits ask the optimizer LM first (one call
        each, concurrently) and are dropped when the answer is unusable or gives a prompt already made
        (a failed rephrase counts as an unsuccessful edit)."""
        jobs, owners = [], []
        for slot, parent, edit in picked:
            if edit.type == "rephrase":
                proposal = self.new_proposal("sprig_rephrase", iteration, slot, None, None)
                original = edit.detail["original"]
                jobs.append(lambda p=proposal, text=original: self.proposer.paraphrase(p, text, []))
                owners.append((slot, parent, edit))
        proposals = self.run_proposals(jobs, f"{where}: rephrasing") if jobs else []
        texts = {id(p): rephrased(e, p.text or "").text for p, (_, _, e) in zip(proposals, owners, strict=True)}
        usable = {id(p) for p in self.finish_proposals(proposals, self.seen, key=lambda p: texts[id(p)])}
        by_slot = {slot: p for p, (slot, _, _) in zip(proposals, owners, strict=True)}
        made = []
        for slot, parent, edit in picked:
            proposal: Proposal | None = by_slot.get(slot) if edit.type == "rephrase" else None
            if proposal is not None:
                if id(proposal) not in usable:
                    self.edit_types.record("rephrase", False)
                    continue
                edit = rephrased(edit, proposal.text or "")
                limit = self.settings.max_prompt_chars
                if len(edit.text) > limit:
                    proposal.discard(f"prompt too long ({len(edit.text)} > {limit} characters)")
                    self.edit_types.record("rephrase", False)
                    continue
                self.seen.add(edit.text)
            candidate = Candidate(
                id=len(self.candidates) + len(made),
                iteration=iteration,
                parent=parent.id,
                components=edit.components,
                sources=edit.sources,
                edit={"type": edit.type, "slot": slot, **edit.detail},
                proposal=proposal.id if proposal is not None else None,
            )
            made.append(candidate)
        return made

    def _score(self, made: list[Candidate], where: str) -> None:
        """Score ``made`` on every task's train set in one grid (one node per task each); a
        candidate's score is the mean of its task scores."""
        nodes = []
        for candidate in made:
            parent = self.candidates[candidate.parent] if candidate.parent is not None else None
            for name, task in self.tasks.items():
                above = self.store[parent.node_ids[name]] if parent is not None else None
                node = self.store.new(
                    task=name,
                    system_prompt=candidate.text,
                    user_prompt=task.initial_user_prompt(),
                    parent_id=above.id if above is not None else None,
                    depth=above.depth + 1 if above is not None else 0,
                    origin="sprig" if above is not None else "initial",
                    iteration=candidate.iteration,
                )
                candidate.node_ids[name] = node.id
                nodes.append(node)
        self.evaluate(nodes, "train", where)
        for candidate in made:
            scores = [self.store[i].train_score or 0.0 for i in candidate.node_ids.values()]
            candidate.score = sum(scores) / len(scores)
            self.candidates.append(candidate)
            self.seen.add(candidate.text)

    def _learn(self, candidate: Candidate) -> None:
        """Reward the edit type (success: strictly better than the parent) and the component."""
        parent = self.candidates[candidate.parent]  # type: ignore[index]
        edit = candidate.edit or {}
        delta = (candidate.score or 0.0) - (parent.score or 0.0)
        self.edit_types.record(edit["type"], delta > 0)
        if edit["type"] == "add":
            self.components.record(edit["component"], delta)
        elif edit["type"] == "delete":
            self.components.record(edit["component"], -delta)

    def _decision(self, candidate: Candidate, kept: bool) -> dict[str, Any]:
        parent = self.candidates[candidate.parent]  # type: ignore[index]
        return {
            "iteration": candidate.iteration,
            "candidate": candidate.id,
            "proposal": candidate.proposal,
            "system_prompt": candidate.text,
            "meta_score": candidate.score,
            "incumbent_meta_score": parent.score,
            "accepted": kept,
            "parent": parent.id,
            "edit": candidate.edit,
            "components": list(candidate.components),
        }

    # -- test, history, results ----------------------------------------------------------------
    def planned_test(self, state: Population) -> dict[str, int]:
        tests = sum(len(t.testset or []) for t in self.tasks.values())
        return {"task": len(state.beam) * tests, "optimizer": 0}

    def test(self, state: Population) -> None:
        beam = [self.candidates[i] for i in state.beam]
        nodes = [self.store[c.node_ids[name]] for c in beam for name, t in self.tasks.items() if t.testset]
        if not nodes:
            return
        self.begin("test", None)
        self.evaluate(nodes, "test", "test evaluation")
        self.end()
        for candidate in beam:
            scores = [self.store[i].test_score for i in candidate.node_ids.values()]
            known = [s for s in scores if s is not None]
            candidate.test_score = sum(known) / len(known) if known else None
        self.steps[-1]["nodes"] = self._beam_dicts(state)
        self.checkpoint()
        self.notify(beam[0].score or 0.0)

    def _beams(self, state: Population) -> dict[str, list[int]]:
        """Per task, the nodes of the beam's prompts (best first)."""
        return {name: [self.candidates[i].node_ids[name] for i in state.beam] for name in self.tasks}

    def _beam_dicts(self, state: Population) -> dict[str, list[dict[str, Any]]]:
        return {name: [self.store[i].to_dict() for i in ids] for name, ids in self._beams(state).items()}

    def snapshot(self, phase: str, iteration: int | None, state: Population) -> None:
        self.state = state
        best = self.candidates[state.beam[0]]
        self.steps.append(
            {
                "phase": phase,
                "iteration": iteration,
                "system_prompt": best.text,
                "meta_score": best.score,
                "population": list(state.beam),
                "beams": self._beams(state),
                "nodes": self._beam_dicts(state),
            }
        )
        self.checkpoint()
        self.notify(best.score or 0.0)

    def artifact(self, state: Population, complete: bool = True) -> dict[str, Any]:
        """The run history in MetaSPO's artifact shape, plus ``candidates`` (every prompt tried, with
        its component list and edit), ``edit_stats``, ``component_stats``, ``library`` and
        ``search_budget``. ``tasks[t]["beam"]`` lists task t's nodes of the final beam's prompts."""
        best = self.candidates[state.beam[0]]
        per_task = {name: self.task_entry(ids) for name, ids in self._beams(state).items()}
        return self.frame(
            complete,
            {
                "initial_system_prompt": self.settings.initial_system_prompt,
                "optimized_system_prompt": best.text,
                "optimized_components": list(best.components),
                "meta_score": best.score,
                "tasks": per_task,
                "steps": self.steps,
                "outer_decisions": self.decisions,
                "candidates": [c.to_dict() for c in self.candidates],
                "edit_stats": self.edit_types.to_dict(),
                "component_stats": self.components.to_dict(self.library),
                "library": self.library.describe(),
                "search_budget": {
                    "task_calls": self.budget_calls,
                    "task_calls_used": self.used_calls,
                    "per_candidate": self.per_candidate,
                    "finished": self.finished,
                },
            },
        )

    def result(self, state: Population) -> MetaSPOProgram:
        data = self.artifact(state)
        best = self.candidates[state.beam[0]]
        programs = {name: task.prepared(task.initial_user_prompt()).deepcopy() for name, task in self.tasks.items()}
        program = MetaSPOProgram(
            SystemPrompt(best.text, self.settings.instructions_in),
            programs,
            adapter=self.adapter_in_effect,
            detailed_results=data,
        )
        self.write_results(data, program)
        return program
