"""API keys given through the environment never reach a file the run writes, its output, or the
DSPy cache directory."""

from __future__ import annotations

import json
import os
import subprocess
import sys

KEY = "sk-test-Zq81-NEVER-WRITE-THIS-9f3c"


def test_api_key_appears_in_no_file_log_or_cache(tmp_path, fetched_cache):
    cache = tmp_path / "dspy-cache"
    env = {k: v for k, v in os.environ.items() if not k.endswith("_API_KEY")}
    env.update(
        METASPO_CACHE_DIR=str(fetched_cache),
        DSPY_CACHEDIR=str(cache),
        METASPO_TEST_KEY=KEY,
        METASPO_FAKE_LOG=str(tmp_path / "fake.jsonl"),
    )
    args = [
        "train", "-c", "medical", "--set", "tasks.source=[ob_gyn,medicine]", "task_lm.api_key_env=METASPO_TEST_KEY",
        "optimizer_lm.api_key_env=METASPO_TEST_KEY", "--task-model", "metaspo-fake/task",
        "--optimizer-model", "metaspo-fake/opt", "--iterations", "1", "--system-candidates", "2",
        "--user-candidates", "1", "--train-size", "5", "--test-size", "3", "--log-dir", str(tmp_path / "run"),
        "--verbose",
    ]  # fmt: skip
    result = subprocess.run(
        [sys.executable, "-m", "metaspo_dspy.cli", *args],
        env=env,
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr
    test = subprocess.run(
        [sys.executable, "-m", "metaspo_dspy.cli", "test", "-c", "medical", "--set",
         "task_lm.api_key_env=METASPO_TEST_KEY", "--task-model", "metaspo-fake/task", "--system-prompt",
         str(tmp_path / "run"), "--tasks", "dental", "--num-user-prompts", "2", "--test-size", "3",
         "--user-prompts", "authors", "--log-dir", str(tmp_path / "test")],
        env=env, cwd=tmp_path, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert test.returncode == 0, test.stderr
    assert KEY not in result.stdout + result.stderr + test.stdout + test.stderr
    written = [p for p in tmp_path.rglob("*") if p.is_file()]
    assert (any(p.name == "metaspo_run.json" for p in written) and any(p.parent == cache for p in written)) or cache
    for path in written:
        assert KEY.encode() not in path.read_bytes(), f"the API key leaked into {path}"
    # The config records where the key comes from, never the key.
    run = json.loads((tmp_path / "run" / "config.json").read_text())
    assert run["task_lm"]["api_key_env"] == "METASPO_TEST_KEY"
