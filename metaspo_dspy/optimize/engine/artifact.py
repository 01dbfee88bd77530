"""The run artifact: settings fingerprint, history, and the reference's ``bilevel_nodes`` shape."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import dspy

from metaspo_dspy.evaluation.digests import lm_identity, program_state
from metaspo_dspy.evaluation.task_run import TaskRun
from metaspo_dspy.optimize.settings import SearchSettings
from metaspo_dspy.program.adapters import adapter_name
from metaspo_dspy.store.hashing import json_digest

ARTIFACT_FORMAT = "metaspo-dspy/run/v1"


def _examples_digest(examples: list[dspy.Example] | None) -> str | None:
    if examples is None:
        return None
    return json_digest([[dict(e.items()), sorted(e._input_keys)] for e in examples], length=16)


#: The order of the recorded settings (``run.json``, the artifact's ``settings``), fixed by the run
#: directories already written: a method's own settings that are named here take their place, the
#: others follow the shared ones in the method's order.
SETTINGS_ORDER = (
    "method", "num_iterations", "num_system_candidates", "num_user_candidates", "user_top_k", "seed",
    "initial_system_prompt", "instructions_in", "adapter", "optimizer_adapter", "num_wrong_user",
    "num_wrong_system", "max_prompt_chars", "screening", "screening_keep", "task_lm", "optimizer_lm", "tasks",
)  # fmt: skip


def run_settings(settings: SearchSettings, tasks: Mapping[str, TaskRun], own: Mapping[str, Any]) -> dict[str, Any]:
    """Everything that shapes a run's results (no secrets; equal settings, equal run): the shared
    ``settings``, the method's ``own`` ones (JSON-able, placed by :data:`SETTINGS_ORDER`), the
    LMs (the task LM in effect now) and the tasks."""
    s = settings
    shared = {
        "method": s.method,
        "num_iterations": s.num_iterations,
        "num_system_candidates": s.num_system_candidates,
        "num_user_candidates": s.num_user_candidates,
        "user_top_k": s.user_top_k,
        "seed": s.seed,
        "initial_system_prompt": s.initial_system_prompt,
        "instructions_in": s.instructions_in,
        "adapter": adapter_name(s.adapter),
        "optimizer_adapter": adapter_name(s.optimizer_adapter),
        "max_prompt_chars": s.max_prompt_chars,
        "task_lm": lm_identity(s.task_model),
        "optimizer_lm": lm_identity(s.optimizer_lm),
        "tasks": {name: _task_settings(t) for name, t in tasks.items()},
    }
    values = {**shared, **own}
    return {key: values[key] for key in dict.fromkeys([*SETTINGS_ORDER, *own]) if key in values}


def _task_settings(task: TaskRun) -> dict[str, Any]:
    """A task's part of :func:`run_settings`: its sizes, digests of its data and program, its suffix and metric."""
    t = task
    return {
        "train": len(t.trainset),
        "test": len(t.testset or []),
        "data": _examples_digest(t.trainset + (t.testset or [])),
        "program": json_digest(program_state(t.program), length=16),
        "suffix": t.suffix,
        "metric": getattr(t.metric, "name", None) or getattr(t.metric, "__qualname__", type(t.metric).__name__),
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
