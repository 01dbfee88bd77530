"""End to end on the embedded offline model: `metaspo train` as a subprocess, a tiny config."""

from __future__ import annotations

import json

import pytest
from conftest import needs_embedded
from test_cli import metaspo

pytestmark = [pytest.mark.slow, needs_embedded]


def test_train_on_the_embedded_model(tmp_path):
    run_dir = tmp_path / "run"
    result = metaspo(
        "train",
        "-c",
        "generated",
        "--set",
        "tasks.source=[gen_counting,gen_boolean]",
        "--task-model",
        "embedded",
        "--optimizer-model",
        "embedded",
        "--iterations",
        "1",
        "--system-candidates",
        "2",
        "--user-candidates",
        "2",
        "--user-top-k",
        "2",
        "--train-size",
        "4",
        "--test-size",
        "4",
        "--log-dir",
        str(run_dir),
        "--quiet",
        cwd=tmp_path,
        timeout=900,
    )
    assert result.returncode == 0, result.stderr
    artifact = json.loads((run_dir / "metaspo_run.json").read_text())
    assert result.stdout.strip() == artifact["optimized_system_prompt"]
    nodes = artifact["nodes"]
    initial = [n for n in nodes if n["origin"] == "initial"]
    assert {n["task"] for n in initial} == {"gen_counting", "gen_boolean"}
    assert all(0.0 <= n["train_score"] <= 1.0 for n in nodes)
    assert all(entry["test_score"] is not None for entry in artifact["tasks"].values())
    assert artifact["calls"]["task_lm"] > 0 and artifact["calls"]["optimizer_lm"] > 0
    # At least one proposal was parsed from the model's own output and became a scored prompt.
    initial_prompts = {n["user_prompt"]["self"] for n in initial} | {artifact["initial_system_prompt"]}
    parsed = [p for p in artifact["proposals"] if p["status"] == "ok"]
    assert parsed, [p["reason"] for p in artifact["proposals"]]
    for proposal in parsed:
        assert proposal["text"] not in initial_prompts and proposal["optimizer_calls"] == 2
        assert proposal["node_ids"] and all(
            any(n["id"] == i and n["train_score"] is not None for n in nodes) for i in proposal["node_ids"]
        )
    # Every discarded proposal says why.
    assert all(p["reason"] for p in artifact["proposals"] if p["status"] == "discarded")
