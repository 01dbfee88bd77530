"""Faithfulness to the reference: what the optimizer is shown as the parsed prediction, and the test
scores in the exported ``bilevel_nodes.json`` (the reference's steps share node objects)."""

from __future__ import annotations

import json

import pytest

from metaspo_dspy import MetaSPO, compile_kwargs, load_task
from metaspo_dspy.optimize.engine.artifact import reference_bilevel_nodes
from metaspo_dspy.optimize.proposer.shown import parser_of

INITIAL = "You are a helpful assistant."
TASKS = ("gen_counting", "gen_boolean")


def _tasks(prompt_format: str, train: int = 8, test: int = 4):
    tasks = [load_task(t, prompt_format=prompt_format, train_size=train, test_size=test) for t in TASKS]
    gold = {e.question: e.answer for t in tasks for e in t.train + t.test}
    return tasks, gold


def test_reference_format_shows_the_parsed_answer_not_the_raw_completion(engine_factory):
    tasks, gold = _tasks("reference")
    # Mostly wrong answers, so every proposal is shown wrong examples.
    _engine, task_lm, opt_lm = engine_factory("parsed", gold=gold, skill=lambda s, u: 0.2)
    best = MetaSPO(
        optimizer_lm=opt_lm, task_lm=task_lm, adapter="reference", num_iterations=1,
        num_system_candidates=1, num_user_candidates=1, user_top_k=1, progress=False,
    ).compile(**compile_kwargs(tasks))  # fmt: skip
    by_name = {t.name: t for t in tasks}
    shown = [w for p in best.detailed_results["proposals"] for w in p["shown"]]
    assert shown, "the proposals were shown wrong examples"
    for example in shown:
        task = by_name[example["task"]]
        row = task.train[example["example_index"]]
        assert "<answer>" in example["response"], "the raw completion is still shown as the model response"
        expected = task.metric.parse(row, {"response": example["response"]})
        assert example["prediction"] == str(expected)
        assert "<answer>" not in example["prediction"] and example["prediction"] != example["correct"]


def test_parser_of_finds_the_task_metric_parser_and_leaves_plain_metrics_alone():
    counting = load_task("gen_counting", prompt_format="reference", train_size=2, test_size=0)
    parse = parser_of(counting.metric)
    assert parse is not None and parse(counting.train[0], {"response": "so <answer>Seven</answer>"}) == 7
    safety_like = type("M", (), {"per_example": counting.metric})()  # a TaskMetric-shaped object
    assert parser_of(safety_like) is not None
    assert parser_of(lambda example, prediction, trace=None: True) is None


@pytest.mark.parametrize("iterations", [1, 2])
def test_bilevel_nodes_carry_a_final_node_test_score_in_every_step_it_appears_in(engine_factory, tmp_path, iterations):
    tasks, gold = _tasks("dspy")
    # Only the initial system prompt is any good: every outer candidate is rejected, so the final
    # beams hold nodes that were already in earlier steps.
    skill = lambda s, u: 0.9 if s == INITIAL else 0.1  # noqa: E731
    _engine, task_lm, opt_lm = engine_factory(f"nodes{iterations}", gold=gold, skill=skill)
    run_dir = tmp_path / "run"
    best = MetaSPO(
        optimizer_lm=opt_lm, task_lm=task_lm, num_iterations=iterations, num_system_candidates=2,
        num_user_candidates=1, user_top_k=2, progress=False, log_dir=run_dir,
    ).compile(**compile_kwargs(tasks))  # fmt: skip
    artifact = best.detailed_results
    exported = json.loads((run_dir / "bilevel_nodes.json").read_text())
    assert exported == reference_bilevel_nodes(artifact)
    tested = {n["id"]: n["test_score"] for n in artifact["nodes"] if n["test_score"] is not None}
    assert set(tested) == {i for entry in artifact["tasks"].values() for i in (b["id"] for b in entry["beam"])}
    seen_in = {}
    for step in exported["nodes"]:
        for task_nodes in step:
            for node in task_nodes:
                expected = tested.get(node["id"], -1)
                assert node["test_metric"] == expected, f"node {node['id']} in an earlier step"
                seen_in[node["id"]] = seen_in.get(node["id"], 0) + 1
    assert any(seen_in[i] > 1 for i in tested), "some final node appears in more than one step"
    # The run artifact's own steps keep their snapshots (test scores only in the last step).
    first = artifact["steps"][0]["nodes"]
    assert all(node["test_score"] is None for nodes in first.values() for node in nodes)


def test_reference_bilevel_nodes_falls_back_to_the_step_snapshot_without_a_nodes_list():
    node = {
        "id": 0, "task": "t", "system_prompt": "s", "user_prompt": {"self": "u"}, "parent_id": None,
        "depth": 0, "train_score": 0.5, "test_score": None,
    }  # fmt: skip
    artifact = {"optimized_system_prompt": "s", "steps": [{"nodes": {"t": [node]}}]}
    out = reference_bilevel_nodes(artifact)
    assert out["nodes"] == [[[{**_converted(node), "eval_metric": 0.5, "test_metric": -1}]]]


def _converted(node: dict) -> dict:
    return {
        "id": node["id"],
        "task": node["task"],
        "system_prompt": node["system_prompt"],
        "instruction": node["user_prompt"]["self"],
        "parent_id": node["parent_id"],
        "depth": node["depth"],
    }
