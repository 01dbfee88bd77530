"""Never lose a run: SIGKILL a real `metaspo train` mid-grid and mid-proposal, resume it, and check
that it ends exactly like an uninterrupted run without re-sending completed evaluations (counted by
the fake model's own request log). Ctrl-C (SIGINT) stops cleanly and resumably."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
from collections import Counter
from pathlib import Path

import pytest
from killing import fake_env, outcome, requests_in, start, wait_for

THREADS = 4
ARGS = [
    "train", "-c", "medical", "--set", "tasks.source=[ob_gyn,medicine]",
    "--task-model", "metaspo-fake/task", "--optimizer-model", "metaspo-fake/opt",
    "--iterations", "2", "--system-candidates", "3", "--user-candidates", "2", "--user-top-k", "2",
    "--train-size", "6", "--test-size", "4", "--threads", str(THREADS), "--quiet",
]  # fmt: skip
# Task calls: initial 12, inner 24, outer 3 x 2 x 12 = 72 per iteration.
MID_FIRST_OUTER_GRID = 12 + 24 + 30


SLOW = {"METASPO_FAKE_LATENCY": "0.01", "METASPO_FAKE_OPTIMIZER_LATENCY": "0.4"}


def _env(log: Path, gold: Path) -> dict[str, str]:
    return fake_env(log, gold, **SLOW)


@pytest.fixture
def gold(data_dir, tmp_path) -> Path:
    answers = {}
    for task in ("ob_gyn", "medicine"):
        rows = json.loads((data_dir / "medmcqa" / f"{task}.json").read_text())
        answers.update({r["question"]: str(r["answer"]) for r in rows["train"] + rows["test"]})
    path = tmp_path / "gold.json"
    path.write_text(json.dumps(answers))
    return path


def _mid_grid(requests: list[dict]) -> bool:
    return sum(r["kind"] == "task" for r in requests) >= MID_FIRST_OUTER_GRID


def _mid_proposal(requests: list[dict]) -> bool:
    # The first outer-loop analysis has come back; its rewrite call is in flight (0.4 s).
    return any("system_prompt_analysis" in r["outputs"] for r in requests)


@pytest.mark.parametrize(("point", "condition"), [("outer grid", _mid_grid), ("proposal", _mid_proposal)])
def test_sigkill_then_resume_equals_an_uninterrupted_run(gold, tmp_path, point, condition):
    reference_log = tmp_path / "reference.jsonl"
    reference = subprocess.run(
        [sys.executable, "-m", "metaspo_dspy.cli", *ARGS, "--log-dir", str(tmp_path / "reference")],
        env=_env(reference_log, gold), cwd=tmp_path, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert reference.returncode == 0, reference.stderr
    total = Counter(r["kind"] for r in requests_in(reference_log))

    log, run_dir = tmp_path / "killed.jsonl", tmp_path / "killed"
    process = start([*ARGS, "--log-dir", str(run_dir)], _env(log, gold), tmp_path)
    wait_for(process, log, condition)
    process.send_signal(signal.SIGKILL)
    process.wait(timeout=30)
    before = requests_in(log)
    assert not (run_dir / "metaspo_run.json").exists()

    resumed = subprocess.run(
        [sys.executable, "-m", "metaspo_dspy.cli", "train", "--resume", str(run_dir), "--quiet"],
        env=_env(log, gold), cwd=tmp_path, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert resumed.returncode == 0, resumed.stderr
    assert outcome(run_dir) == outcome(tmp_path / "reference")
    after = requests_in(log)[len(before) :]
    completed = Counter(r["digest"] for r in before if r["kind"] == "task")
    resent = sum(min(n, completed[d]) for d, n in Counter(r["digest"] for r in after if r["kind"] == "task").items())
    # Only requests answered in the instant before the kill, not yet journaled, may be asked again.
    assert resent <= THREADS, f"{resent} completed evaluations were sent again"
    sent = Counter(r["kind"] for r in before + after)
    assert total["task"] <= sent["task"] <= total["task"] + THREADS
    assert total["optimizer"] <= sent["optimizer"] <= total["optimizer"] + 4


def test_ctrl_c_stops_cleanly_and_resumably(gold, tmp_path):
    log, run_dir = tmp_path / "log.jsonl", tmp_path / "run"
    process = start([*ARGS, "--log-dir", str(run_dir)], _env(log, gold), tmp_path)
    wait_for(process, log, _mid_grid)
    process.send_signal(signal.SIGINT)
    _, stderr = process.communicate(timeout=60)
    assert process.returncode == 130, stderr
    assert f"metaspo train --resume {run_dir}" in stderr and "Traceback" not in stderr
    resumed = subprocess.run(
        [sys.executable, "-m", "metaspo_dspy.cli", "train", "--resume", str(run_dir), "--quiet"],
        env=_env(log, gold), cwd=tmp_path, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert resumed.returncode == 0, resumed.stderr
    assert (run_dir / "metaspo_run.json").exists()


def test_resume_refuses_a_run_dir_made_for_other_settings(gold, tmp_path):
    run_dir = tmp_path / "run"
    env = _env(tmp_path / "log.jsonl", gold)
    first = subprocess.run(
        [sys.executable, "-m", "metaspo_dspy.cli", *ARGS, "--log-dir", str(run_dir)],
        env=env,
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert first.returncode == 0, first.stderr
    config = json.loads((run_dir / "config.json").read_text())
    config["search"]["num_system_candidates"] = 5
    (run_dir / "config.json").write_text(json.dumps(config))
    again = subprocess.run(
        [sys.executable, "-m", "metaspo_dspy.cli", "train", "--resume", str(run_dir)],
        env=env,
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert again.returncode == 2
    assert "num_system_candidates: 3 -> 5" in again.stderr and "Traceback" not in again.stderr


def test_a_running_run_dir_is_refused_to_a_second_process_until_the_first_dies(gold, tmp_path):
    log, run_dir = tmp_path / "log.jsonl", tmp_path / "run"
    env = {**_env(log, gold), "METASPO_FAKE_OPTIMIZER_LATENCY": "3"}  # keeps the first run busy
    first = start([*ARGS, "--log-dir", str(run_dir)], env, tmp_path)
    wait_for(first, log, lambda requests: len(requests) > 0)
    second = subprocess.run(
        [sys.executable, "-m", "metaspo_dspy.cli", "train", "--resume", str(run_dir), "--quiet"],
        env=env, cwd=tmp_path, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert first.poll() is None, "the first run ended before the second process tried the folder"
    assert second.returncode == 2, second.stderr
    assert "in use by another running process" in second.stderr and "Traceback" not in second.stderr
    first.send_signal(signal.SIGKILL)
    first.wait(timeout=30)
    resumed = subprocess.run(
        [sys.executable, "-m", "metaspo_dspy.cli", "train", "--resume", str(run_dir), "--quiet"],
        env=_env(log, gold), cwd=tmp_path, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert resumed.returncode == 0, resumed.stderr  # the OS dropped the dead process's lock
    assert (run_dir / "metaspo_run.json").exists()
