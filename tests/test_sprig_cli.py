"""`metaspo train --method sprig` as real processes on the generated tasks with the fake provider:
a run that `show` and `test` read, a component CSV, a bad CSV refused before any call (exit 2), and a
run killed with SIGKILL in the middle of a grid that resumes to exactly the uninterrupted result."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
from collections import Counter
from pathlib import Path

import pytest
from killing import fake_env, outcome, requests_in, start, wait_for

from metaspo_dspy.tasks.generated import GENERATED_TASKS, generate_splits

FAKE = ["--task-model", "metaspo-fake/task", "--optimizer-model", "metaspo-fake/opt"]
SPRIG_RUN = [
    "train", "-c", "generated", "--method", "sprig", *FAKE, "--iterations", "1", "--system-candidates", "3",
    "--user-candidates", "2", "--user-top-k", "2", "--train-size", "5", "--test-size", "3", "--quiet",
]  # fmt: skip
# 4 tasks x 5 train examples = 20 task calls a candidate; the budget (MetaSPO's train calls with these
# settings) is 20 + 2 x 20 + 3 x 2 x 20 = 180: 9 candidates, 3 a search iteration.
THREADS = 2


@pytest.fixture(scope="module")
def gold(tmp_path_factory) -> Path:
    """Every generated question's answer, so the fake model answers correctly at its skill level."""
    answers = {}
    for task in GENERATED_TASKS:
        splits = generate_splits(task)
        answers.update({row["question"]: row["answer"] for row in splits["train"] + splits["test"]})
    path = tmp_path_factory.mktemp("gold") / "gold.json"
    path.write_text(json.dumps(answers))
    return path


def _metaspo(args: list[str], env: dict[str, str], cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "metaspo_dspy.cli", *args], env=env, cwd=cwd, capture_output=True, text=True,
        timeout=300, stdin=subprocess.DEVNULL,
    )  # fmt: skip


def test_train_sprig_then_show_and_test_read_the_run(gold, tmp_path):
    log, run_dir = tmp_path / "fake.jsonl", tmp_path / "run"
    train = _metaspo([*SPRIG_RUN, "--log-dir", str(run_dir)], fake_env(log, gold), tmp_path)
    assert train.returncode == 0, train.stderr
    artifact = json.loads((run_dir / "metaspo_run.json").read_text())
    assert artifact["method"] == "sprig" and train.stdout.strip() == artifact["optimized_system_prompt"]
    assert "SPRIG (baseline) on 4 source tasks" in train.stderr
    assert "estimated calls: 216 task-model (train 180, test 36), 8 optimizer" in train.stderr
    assert "172 components (built-in)" in train.stderr and "search budget: 180 of 180 task calls" in train.stderr
    requests = Counter(r["kind"] for r in requests_in(log))
    assert requests["task"] == artifact["calls"]["task_lm"] == 180 + 3 * 4 * 3
    assert requests["optimizer"] == artifact["calls"]["optimizer_lm"] <= 8
    assert [s["phase"] for s in artifact["steps"]] == ["initial", "search", "search", "search"]
    assert len(artifact["candidates"]) == 9 and all(c["components"] for c in artifact["candidates"])
    assert all(entry["test_score"] is not None for entry in artifact["tasks"].values())
    assert not (run_dir / "bilevel_nodes.json").exists(), "the reference's MetaSPO format is for MetaSPO runs"

    show = _metaspo(["show", str(run_dir), "--proposals"], fake_env(log, gold), tmp_path)
    assert show.returncode == 0, show.stderr
    assert "sprig, finished" in show.stderr and show.stdout.strip() == artifact["optimized_system_prompt"]
    results = tmp_path / "unseen"
    test = _metaspo(
        ["test", "-c", "generated", *FAKE, "--system-prompt", "default", str(run_dir), "--test-size", "3",
         "--num-user-prompts", "1", "--tasks", "gen_parity", "--log-dir", str(results), "--quiet"],
        fake_env(tmp_path / "test.jsonl", gold), tmp_path,
    )  # fmt: skip
    assert test.returncode == 0, test.stderr
    tested = json.loads((results / "unseen_results.json").read_text())
    assert artifact["optimized_system_prompt"] in tested["system_prompts"].values()


def test_a_component_csv_is_used_and_a_bad_one_stops_before_any_call(gold, tmp_path):
    library = tmp_path / "corpus.csv"
    library.write_text("Prompt,Catagory\nBe exact.,good_property\nThink step by step.,CoT\n", encoding="utf-8")
    log, run_dir = tmp_path / "fake.jsonl", tmp_path / "run"
    good = _metaspo(
        [*SPRIG_RUN, "--components", str(library), "--log-dir", str(run_dir)], fake_env(log, gold), tmp_path
    )
    assert good.returncode == 0, good.stderr
    artifact = json.loads((run_dir / "metaspo_run.json").read_text())
    assert artifact["library"]["source"] == str(library) and artifact["library"]["size"] == 2
    added = {c["edit"]["text"] for c in artifact["candidates"] if c["edit"] and c["edit"]["type"] == "add"}
    assert added and added <= {"Be exact.", "Think step by step."}
    assert json.loads((run_dir / "config.json").read_text())["search"]["components"] == str(library)

    bad = tmp_path / "bad.csv"
    bad.write_text("Text,Kind\nBe exact.,style\n", encoding="utf-8")
    log2 = tmp_path / "bad.jsonl"
    refused = _metaspo(
        [*SPRIG_RUN, "--components", str(bad), "--log-dir", str(tmp_path / "r2")], fake_env(log2, gold), tmp_path
    )
    assert refused.returncode == 2
    lines = refused.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: component library") and "Prompt" in lines[0]
    assert "Traceback" not in refused.stderr and not requests_in(log2) and not (tmp_path / "r2").exists()


def test_sigkill_in_a_grid_then_resume_equals_an_uninterrupted_run(gold, tmp_path):
    args = [*SPRIG_RUN, "--threads", str(THREADS)]
    slow = {"METASPO_FAKE_LATENCY": "0.02"}
    reference_log = tmp_path / "reference.jsonl"
    reference = _metaspo(
        [*args, "--log-dir", str(tmp_path / "reference")], fake_env(reference_log, gold, **slow), tmp_path
    )
    assert reference.returncode == 0, reference.stderr
    total = Counter(r["kind"] for r in requests_in(reference_log))

    log, run_dir = tmp_path / "killed.jsonl", tmp_path / "killed"
    process = start([*args, "--log-dir", str(run_dir)], fake_env(log, gold, **slow), tmp_path)
    # Halfway through the second search iteration's grid (initial 20, first iteration 60).
    wait_for(process, log, lambda requests: sum(r["kind"] == "task" for r in requests) >= 20 + 60 + 30)
    process.send_signal(signal.SIGKILL)
    process.wait(timeout=30)
    before = requests_in(log)
    assert not (run_dir / "metaspo_run.json").exists()

    resumed = _metaspo(["train", "--resume", str(run_dir), "--quiet"], fake_env(log, gold, **slow), tmp_path)
    assert resumed.returncode == 0, resumed.stderr
    assert outcome(run_dir) == outcome(tmp_path / "reference")
    after = requests_in(log)[len(before) :]
    completed = Counter(r["digest"] for r in before if r["kind"] == "task")
    resent = sum(min(n, completed[d]) for d, n in Counter(r["digest"] for r in after if r["kind"] == "task").items())
    assert resent <= THREADS, f"{resent} completed evaluations were sent again"
    sent = Counter(r["kind"] for r in before + after)
    assert total["task"] <= sent["task"] <= total["task"] + THREADS
    assert total["optimizer"] <= sent["optimizer"] <= total["optimizer"] + 1
