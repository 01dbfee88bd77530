"""SPRIG's candidates, its four edits and the upper-confidence bounds that pre-select them.

Pure data and arithmetic (no LM calls), so every choice is a deterministic function of the run's
history and a seeded random stream: a resumed run makes the same choices again.

* :class:`Candidate` -- a system prompt as an ordered list of components, with the edit that made
  it, its parent and its score (mean train score over the source tasks).
* :class:`EditTypeBandit` -- UCB1 over the edit types ``add``, ``rephrase``, ``swap``, ``delete``;
  an edit *succeeds* when its candidate scores strictly higher than its parent. It decides which
  edit type each of an iteration's candidate slots gets.
* :class:`ComponentBandit` -- UCB1 over library components, rewarded by the score change an edit
  caused (``child - parent`` when the component was added, ``parent - child`` when it was
  deleted), as SPRIG's published code ranks components for its ``add`` edit.
* :func:`pick_edit` -- one concrete edit of a type for a parent, never one that gives a prompt
  already made in the run.
"""

from __future__ import annotations

import math
import random
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

from metaspo_dspy.optimize.sprig.library import ComponentLibrary

EDIT_TYPES = ("add", "rephrase", "swap", "delete")
#: Joins components into the system prompt text (SPRIG joins its components with a space).
SEPARATOR = " "


def join(components: Sequence[str]) -> str:
    """The system prompt made of ``components``."""
    return SEPARATOR.join(components)


@dataclass
class Candidate:
    """One system prompt of the search.

    ``sources[i]`` is the library index ``components[i]`` came from (a rephrased component keeps
    its original's index), or None for text from the initial system prompt. ``edit`` describes how
    the candidate was made from ``parent`` (None for the initial prompt); ``node_ids`` maps each
    task to the node that scored this prompt with the task's initial user prompt.
    """

    id: int
    iteration: int | None
    parent: int | None
    components: list[str]
    sources: list[int | None]
    edit: dict[str, Any] | None = None
    node_ids: dict[str, int] = field(default_factory=dict)
    score: float | None = None
    test_score: float | None = None
    proposal: int | None = None

    @property
    def text(self) -> str:
        return join(self.components)

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "text": self.text}


@dataclass
class Edit:
    """A concrete edit of a parent: the new component list and what was done. For ``rephrase``
    the new component is known only after the optimizer's answer (``components`` is the parent's)."""

    type: str
    components: list[str]
    sources: list[int | None]
    detail: dict[str, Any]

    @property
    def text(self) -> str:
        return join(self.components)


def _ucb(mean: float, pulls: int, total: int, exploration: float) -> float:
    if pulls == 0:
        return math.inf
    return mean + math.sqrt(exploration * math.log(max(total, 1)) / pulls)


@dataclass
class EditTypeBandit:
    """UCB1 over edit types with success rates as rewards (see the module docstring).

    Within an iteration, the slots already given out count as pulls at the type's current mean
    (``pending``), so one iteration spreads its slots instead of giving all to the leader. A type
    never tried has an unbounded score; a type tried only as pending has mean 1 (optimistic).
    Ties go to the earlier type in :data:`EDIT_TYPES`.
    """

    exploration: float = 2.0
    pulls: dict[str, int] = field(default_factory=lambda: dict.fromkeys(EDIT_TYPES, 0))
    successes: dict[str, int] = field(default_factory=lambda: dict.fromkeys(EDIT_TYPES, 0))

    def record(self, edit_type: str, success: bool) -> None:
        self.pulls[edit_type] += 1
        self.successes[edit_type] += int(success)

    def score(self, edit_type: str, pending: Counter[str] | None = None) -> float:
        """The upper confidence bound of ``edit_type`` counting ``pending`` pulls."""
        pending = pending or Counter()
        pulls = self.pulls[edit_type] + pending[edit_type]
        mean = self.successes[edit_type] / self.pulls[edit_type] if self.pulls[edit_type] else 1.0
        total = sum(self.pulls.values()) + sum(pending.values())
        return _ucb(mean, pulls, total, self.exploration)

    def ranked(self, pending: Counter[str] | None = None) -> list[str]:
        """Edit types, highest upper confidence bound first."""
        return sorted(EDIT_TYPES, key=lambda t: (-self.score(t, pending), EDIT_TYPES.index(t)))

    def to_dict(self) -> dict[str, dict[str, Any]]:
        return {
            t: {"pulls": self.pulls[t], "successes": self.successes[t], "ucb": _finite(self.score(t))}
            for t in EDIT_TYPES
        }


@dataclass
class ComponentBandit:
    """UCB1 over library components with score changes as rewards (see the module docstring)."""

    exploration: float = 2.0
    rewards: dict[int, list[float]] = field(default_factory=dict)

    def record(self, index: int | None, reward: float) -> None:
        if index is not None:
            self.rewards.setdefault(index, []).append(reward)

    def score(self, index: int) -> float:
        rewards = self.rewards.get(index, [])
        total = sum(len(r) for r in self.rewards.values())
        return _ucb(sum(rewards) / len(rewards) if rewards else 0.0, len(rewards), total, self.exploration)

    def ranked(self, indices: Iterable[int], rng: random.Random) -> list[int]:
        """``indices`` by upper confidence bound, highest first; ties in a random order drawn from ``rng``."""
        keyed = [(-self.score(i), rng.random(), i) for i in indices]
        return [i for *_, i in sorted(keyed)]

    def to_dict(self, library: ComponentLibrary) -> list[dict[str, Any]]:
        """The components that were rewarded, best upper confidence bound first."""
        rows = [
            {
                "index": i,
                "text": library[i].text,
                "category": library[i].category,
                "rewards": list(r),
                "mean": sum(r) / len(r),
                "ucb": _finite(self.score(i)),
            }
            for i, r in self.rewards.items()
        ]
        return sorted(rows, key=lambda row: (-row["ucb"], row["index"]))


def _finite(value: float) -> float | None:
    return None if math.isinf(value) else value


def pick_edit(
    edit_type: str,
    parent: Candidate,
    library: ComponentLibrary,
    components: ComponentBandit,
    rng: random.Random,
    seen: set[str],
    max_chars: int,
) -> Edit | None:
    """One concrete ``edit_type`` edit of ``parent`` whose prompt is not in ``seen`` and at most
    ``max_chars`` long, or None when there is none.

    * ``add``: the component with the highest upper confidence bound that is not in the parent yet,
      at a random position (the next component or position when the prompt was made before);
    * ``swap``: a random pair of positions; ``delete``: a random position (only from prompts with
      at least two components, so an edit never empties the prompt);
    * ``rephrase``: a random position (the optimizer's answer is checked for duplicates later).
    """
    comps, srcs = parent.components, parent.sources
    if edit_type == "add":
        used, texts = set(srcs), set(comps)
        eligible = [i for i in range(len(library)) if i not in used and library[i].text not in texts]
        positions = list(range(len(comps) + 1))
        rng.shuffle(positions)
        for index in components.ranked(eligible, rng):
            for pos in positions:
                edit = Edit(
                    "add",
                    [*comps[:pos], library[index].text, *comps[pos:]],
                    [*srcs[:pos], index, *srcs[pos:]],
                    {"position": pos, "component": index, "text": library[index].text},
                )
                if edit.text not in seen and len(edit.text) <= max_chars:
                    return edit
        return None
    if edit_type == "swap":
        pairs = [(i, j) for i in range(len(comps)) for j in range(i + 1, len(comps))]
        rng.shuffle(pairs)
        for i, j in pairs:
            new, new_src = list(comps), list(srcs)
            new[i], new[j], new_src[i], new_src[j] = new[j], new[i], new_src[j], new_src[i]
            edit = Edit("swap", new, new_src, {"positions": [i, j]})
            if edit.text not in seen:
                return edit
        return None
    if edit_type == "delete":
        positions = list(range(len(comps))) if len(comps) >= 2 else []
        rng.shuffle(positions)
        for pos in positions:
            edit = Edit(
                "delete",
                comps[:pos] + comps[pos + 1 :],
                srcs[:pos] + srcs[pos + 1 :],
                {"position": pos, "component": srcs[pos], "text": comps[pos]},
            )
            if edit.text not in seen:
                return edit
        return None
    if edit_type == "rephrase":
        if not comps:
            return None
        pos = rng.randrange(len(comps))
        return Edit("rephrase", list(comps), list(srcs), {"position": pos, "original": comps[pos]})
    raise ValueError(f"unknown edit type {edit_type!r}; expected one of {EDIT_TYPES}")


def rephrased(edit: Edit, text: str) -> Edit:
    """``edit`` (a rephrase) with its component replaced by the optimizer's ``text``."""
    pos = edit.detail["position"]
    components = [*edit.components[:pos], " ".join(text.split()), *edit.components[pos + 1 :]]
    return Edit("rephrase", components, list(edit.sources), {**edit.detail, "rephrased": components[pos]})
