"""Plain-data search state: prompt nodes, task beams, the bilevel state and its history.

Everything here is a dataclass that round-trips through JSON (``to_dict``/``from_dict``), so a
checkpoint is the state itself. Node ids are given in creation order, as in the reference code
(outer-loop candidates consume ids for every task's node even when rejected).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any


@dataclass
class PromptNode:
    """One (system prompt, user prompt) pair for one task, with its scores.

    ``user_prompt`` maps each predictor name of the task program to its instructions; a
    single-predictor program has one entry.
    """

    id: int
    task: str
    system_prompt: str
    user_prompt: dict[str, str]
    parent_id: int | None
    depth: int
    origin: str = "initial"
    iteration: int | None = None
    train_score: float | None = None
    test_score: float | None = None
    failures: dict[str, int] = field(default_factory=dict)
    errors: list[str] = field(default_factory=list)
    #: per split, the share of answers the task's metric could read (None: not applicable)
    parsed: dict[str, float | None] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> PromptNode:
        return cls(**data)

    @property
    def user_prompt_text(self) -> str:
        """The user prompt as one string (predictor names shown when there are several)."""
        if len(self.user_prompt) == 1:
            return next(iter(self.user_prompt.values()))
        return "\n\n".join(f"[{name}]\n{text}" for name, text in self.user_prompt.items())


def _sort_key(node: PromptNode) -> float:
    return -(node.train_score if node.train_score is not None else -1.0)


@dataclass
class NodeStore:
    """All nodes ever made in a run, by id."""

    nodes: dict[int, PromptNode] = field(default_factory=dict)
    next_id: int = 0

    def new(self, **kwargs: Any) -> PromptNode:
        node = PromptNode(id=self.next_id, **kwargs)
        self.nodes[node.id] = node
        self.next_id += 1
        return node

    def child(
        self,
        parent: PromptNode,
        *,
        system_prompt: str | None = None,
        user_prompt: dict[str, str] | None = None,
        origin: str,
        iteration: int | None,
    ) -> PromptNode:
        return self.new(
            task=parent.task,
            system_prompt=parent.system_prompt if system_prompt is None else system_prompt,
            user_prompt=dict(parent.user_prompt if user_prompt is None else user_prompt),
            parent_id=parent.id,
            depth=parent.depth + 1,
            origin=origin,
            iteration=iteration,
        )

    def __getitem__(self, node_id: int) -> PromptNode:
        return self.nodes[node_id]

    def sorted_beam(self, ids: list[int], top_k: int | None = None) -> list[int]:
        """Ids sorted by train score, best first; stable, so earlier ids win ties."""
        ordered = sorted(ids, key=lambda i: _sort_key(self.nodes[i]))
        return ordered if top_k is None else ordered[:top_k]

    def to_dict(self) -> dict[str, Any]:
        return {"next_id": self.next_id, "nodes": [n.to_dict() for n in self.nodes.values()]}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> NodeStore:
        store = cls(next_id=data["next_id"])
        for item in data["nodes"]:
            node = PromptNode.from_dict(item)
            store.nodes[node.id] = node
        return store


@dataclass
class BilevelState:
    """The current system prompt and, per task, the beam of node ids (best first)."""

    system_prompt: str
    beams: dict[str, list[int]]

    def meta_score(self, store: NodeStore) -> float:
        """Mean train score over every node of every beam (pooled, as in the reference)."""
        scores = [store[i].train_score or 0.0 for ids in self.beams.values() for i in ids]
        return sum(scores) / len(scores) if scores else 0.0

    def best(self, task: str) -> int:
        return self.beams[task][0]

    def copy(self) -> BilevelState:
        return BilevelState(self.system_prompt, {t: list(ids) for t, ids in self.beams.items()})

    def to_dict(self) -> dict[str, Any]:
        return {"system_prompt": self.system_prompt, "beams": {t: list(ids) for t, ids in self.beams.items()}}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> BilevelState:
        return cls(data["system_prompt"], {t: list(ids) for t, ids in data["beams"].items()})
