"""The metaspo CLI as real subprocesses: train / test / show on real (bundled) tasks with the fake
provider, and bad input (one clear message, exit code 2, no traceback, nothing half-written)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest
from conftest import REPO

from metaspo_dspy.tasks import DOMAIN_TASKS, SOURCE_TASKS

FAKE = ["--task-model", "metaspo-fake/task", "--optimizer-model", "metaspo-fake/opt"]
SMALL = ["--iterations", "1", "--system-candidates", "2", "--user-candidates", "2", "--user-top-k", "2"]


def metaspo(*args: str, env: dict[str, str] | None = None, cwd: Path | None = None, timeout: int = 300):
    """Run ``python -m metaspo_dspy.cli ...`` with a clean environment (no API keys)."""
    base = {k: v for k, v in os.environ.items() if not k.endswith("_API_KEY")}
    cache = cwd / ".dspy_cache_test" if cwd else Path(tempfile.gettempdir()) / "metaspo-dspy-test-cache"
    base.update({"DSPY_CACHEDIR": str(cache)})  # never a folder in the repository
    base.update(env or {})
    return subprocess.run(
        [sys.executable, "-m", "metaspo_dspy.cli", *args],
        capture_output=True,
        text=True,
        env=base,
        cwd=cwd or REPO,
        timeout=timeout,
        stdin=subprocess.DEVNULL,
    )


@pytest.fixture
def gold_file(data_dir, tmp_path):
    """Gold answers for the medical tasks, so the fake model answers correctly at its skill level."""
    gold = {}
    for task in DOMAIN_TASKS["medical"]:
        rows = json.loads((data_dir / "medmcqa" / f"{task}.json").read_text())
        for row in rows["train"] + rows["test"]:
            gold[row["question"]] = str(row["answer"])
    path = tmp_path / "gold.json"
    path.write_text(json.dumps(gold))
    return path


def test_train_test_show_on_real_tasks_with_the_fake_provider(gold_file, fetched_cache, tmp_path):
    """The bundled medical domain, with the authors' unseen user prompts fetched into the cache."""
    run_dir = tmp_path / "run"
    log = tmp_path / "fake.jsonl"
    env = {"METASPO_FAKE_GOLD": str(gold_file), "METASPO_FAKE_LOG": str(log), "METASPO_CACHE_DIR": str(fetched_cache)}
    train = metaspo(
        "train",
        "-c",
        "medical",
        *FAKE,
        *SMALL,
        "--train-size",
        "10",
        "--test-size",
        "10",
        "--log-dir",
        str(run_dir),
        "--quiet",
        env=env,
        cwd=tmp_path,
    )
    assert train.returncode == 0, train.stderr
    artifact = json.loads((run_dir / "metaspo_run.json").read_text())
    assert train.stdout.strip() == artifact["optimized_system_prompt"]
    assert "estimated calls: 360 task-model (train 280, test 80), 20 optimizer" in train.stderr
    requests = [json.loads(line) for line in log.read_text().splitlines()]
    assert sum(r["kind"] == "task" for r in requests) == artifact["calls"]["task_lm"] == 360
    assert sum(r["kind"] == "optimizer" for r in requests) == artifact["calls"]["optimizer_lm"] == 20
    assert set(artifact["tasks"]) == set(SOURCE_TASKS["medical"])
    assert all(entry["test_score"] is not None for entry in artifact["tasks"].values())
    for name in (
        "config.json",
        "run.json",
        "evaluations.jsonl",
        "proposals.jsonl",
        "bilevel_nodes.json",
        "program.json",
        "checkpoint.json",
    ):
        assert (run_dir / name).exists(), name

    log.unlink()
    test = metaspo(
        "test",
        "-c",
        "medical",
        *FAKE,
        "--system-prompt",
        "default",
        str(run_dir),
        "--num-user-prompts",
        "2",
        "--test-size",
        "10",
        "--log-dir",
        str(tmp_path / "unseen"),
        "--quiet",
        env=env,
        cwd=tmp_path,
    )
    assert test.returncode == 0, test.stderr
    results = json.loads((tmp_path / "unseen" / "unseen_results.json").read_text())
    labels = list(results["results"])
    assert labels == ["default", "run"]
    dental = results["results"]["default"]["tasks"]["dental"]
    stored = json.loads((fetched_cache / "unseen_user_prompts" / "dental.json").read_text())
    assert len(dental["scores"]) == 2 and stored[0].startswith(dental["user_prompts"][0])  # the authors' prompts
    assert "{question}" not in dental["user_prompts"][0]
    requests = [json.loads(line) for line in log.read_text().splitlines()]
    assert sum(r["kind"] == "preflight" for r in requests) == 2, "one check of each model"
    requests = [r for r in requests if r["kind"] != "preflight"]
    assert {r["kind"] for r in requests} == {"task"}, "stored user prompts: no optimizer call"
    distinct = len(set(results["system_prompts"].values()))
    # 4 tasks x 2 prompts x 10 examples per distinct system prompt (an identical one is served from the cache)
    assert len(requests) == distinct * 4 * 2 * 10
    assert "average" in test.stdout and "pediatrics" in test.stdout

    show = metaspo("show", str(run_dir), "--proposals", cwd=tmp_path)
    assert show.returncode == 0 and show.stdout.strip() == artifact["optimized_system_prompt"]
    assert "meta-score" in show.stderr


def test_test_time_adaptation_from_the_cli(gold_file, tmp_path):
    env = {"METASPO_FAKE_GOLD": str(gold_file)}
    result = metaspo(
        "test",
        "-c",
        "medical",
        *FAKE,
        "--analysis",
        "tta",
        "--tasks",
        "dental",
        "--tta-iterations",
        "1",
        "--train-size",
        "6",
        "--test-size",
        "6",
        "--log-dir",
        str(tmp_path / "tta"),  # tmp_path holds the gold file: a log dir must be new, empty or a test's
        "--quiet",
        env=env,
        cwd=tmp_path,
    )
    assert result.returncode == 0, result.stderr
    data = json.loads((tmp_path / "tta" / "tta_results.json").read_text())
    rounds = data["results"]["default"]["dental"]["rounds"]
    assert [r["round"] for r in rounds] == [0, 1]
    assert "round 0" in result.stdout


def test_an_existing_run_dir_is_not_overwritten(gold_file, tmp_path):
    run_dir = tmp_path / "run"
    env = {"METASPO_FAKE_GOLD": str(gold_file)}
    args = [
        "train",
        "-c",
        "medical",
        *FAKE,
        "--iterations",
        "1",
        "--system-candidates",
        "1",
        "--user-candidates",
        "1",
        "--train-size",
        "4",
        "--test-size",
        "2",
        "--log-dir",
        str(run_dir),
        "--quiet",
    ]
    assert metaspo(*args, env=env, cwd=tmp_path).returncode == 0
    before = {p.name: p.read_bytes() for p in run_dir.iterdir() if p.is_file()}
    again = metaspo(*[a if a != "1" else "2" for a in args], env=env, cwd=tmp_path)
    assert again.returncode == 2 and "already holds a run" in again.stderr
    assert {p.name: p.read_bytes() for p in run_dir.iterdir() if p.is_file()} == before
    resume_with_flags = metaspo("train", "--resume", str(run_dir), "--iterations", "3", cwd=tmp_path)
    assert resume_with_flags.returncode == 2 and "--iterations" in resume_with_flags.stderr
