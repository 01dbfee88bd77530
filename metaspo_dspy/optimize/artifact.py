"""The run artifact: settings fingerprint, history, and the reference's ``bilevel_nodes`` shape."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from typing import Any

import dspy

from metaspo_dspy.adapters import adapter_name
from metaspo_dspy.evaluation import lm_identity, program_state
from metaspo_dspy.optimize.task_run import TaskRun

ARTIFACT_FORMAT = "metaspo-dspy/run/v1"


def _digest(value: Any) -> str:
    text = json.dumps(value, sort_keys=True, ensure_ascii=False, default=repr)
    return hashlib.sha256(text.encode("utf-8")).hexdigest()[:16]


def _examples_digest(examples: list[dspy.Example] | None) -> str | None:
    if examples is None:
        return None
    return _digest([[dict(e.items()), sorted(e._input_keys)] for e in examples])


def run_settings(owner: Any, tasks: Mapping[str, TaskRun]) -> dict[str, Any]:
    """Everything that shapes a MetaSPO run's results (no secrets); equal settings, equal run."""
    o = owner
    return {
        "method": o.method,
        "num_iterations": o.num_iterations,
        "num_system_candidates": o.num_system_candidates,
        "num_user_candidates": o.num_user_candidates,
        "user_top_k": o.user_top_k,
        "seed": o.seed,
        "initial_system_prompt": o.initial_system_prompt,
        "instructions_in": o.instructions_in,
        "adapter": adapter_name(o.adapter),
        "optimizer_adapter": adapter_name(o.optimizer_adapter),
        "num_wrong_user": o.num_wrong_user,
        "num_wrong_system": o.num_wrong_system,
        "max_prompt_chars": o.max_prompt_chars,
        "screening": o.screening,
        "screening_keep": o.screening_keep if o.screening else None,
        "task_lm": lm_identity(o.task_lm or dspy.settings.lm),
        "optimizer_lm": lm_identity(o.optimizer_lm),
        "tasks": {
            name: {
                "train": len(t.trainset),
                "test": len(t.testset or []),
                "data": _examples_digest(t.trainset + (t.testset or [])),
                "program": _digest(program_state(t.program)),
                "suffix": t.suffix,
                "metric": getattr(t.metric, "name", None) or getattr(t.metric, "__qualname__", type(t.metric).__name__),
            }
            for name, t in tasks.items()
        },
    }


def reference_bilevel_nodes(artifact: Mapping[str, Any]) -> dict[str, Any]:
    """The reference code's ``bilevel_nodes_*.json`` shape, from a run artifact.

    ``{"optimized_system_prompt", "nodes": [[[node, ...] per task] per step]}`` with each node as
    ``{id, task, system_prompt, instruction, parent_id, depth, eval_metric, test_metric}``
    (``test_metric`` -1 where not tested); multi-predictor user prompts are joined into one text.

    The reference's steps hold the same node objects, so a node shows its latest scores in every
    step it appears in (a final-beam node carries its test score in earlier steps too): each node
    is written from the artifact's ``nodes`` list (the final state of every node) where it is
    there, else from the step's snapshot.
    """
    latest = {node["id"]: node for node in artifact.get("nodes", [])}

    def convert(snapshot: Mapping[str, Any]) -> dict[str, Any]:
        node = latest.get(snapshot["id"], snapshot)
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
