"""The console corners of issue 25, table-driven, as real ``metaspo`` processes on the fake model:
a console that cannot encode the result, a full stdout, a closed pipe, and SIGTERM (what ``docker
stop`` and systemd send) -- each ends with one clear line (or none for a closed pipe), never a
traceback, and the run stays saved and resumable."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from killing import fake_env, requests_in, start, wait_for

TINY = [
    "train", "-c", "medical", "--set", "tasks.source=[ob_gyn]",
    "--task-model", "metaspo-fake/task", "--optimizer-model", "metaspo-fake/opt",
    "--iterations", "1", "--system-candidates", "1", "--user-candidates", "1", "--user-top-k", "1",
    "--train-size", "3", "--test-size", "2", "--threads", "2", "--quiet",
]  # fmt: skip
PROMPT = "You are a careful assistant. Réponds avec soin."


def _run(tmp_path: Path, name: str, stdout=subprocess.PIPE, **env: str) -> tuple[subprocess.CompletedProcess, Path]:
    (tmp_path / "prompt.txt").write_text(PROMPT, encoding="utf-8")
    run_dir = tmp_path / name
    result = subprocess.run(
        [sys.executable, "-m", "metaspo_dspy.cli", *TINY, "--initial-system-prompt", str(tmp_path / "prompt.txt"),
         "--log-dir", str(run_dir)],
        env=fake_env(tmp_path / f"{name}.jsonl", tmp_path / "gold.json", **env), cwd=tmp_path,
        stdout=stdout, stderr=subprocess.PIPE, text=True, errors="replace", timeout=300, stdin=subprocess.DEVNULL,
    )  # fmt: skip
    return result, run_dir


@pytest.fixture
def gold(tmp_path) -> Path:
    path = tmp_path / "gold.json"
    path.write_text("{}")
    return path


ENCODINGS = [("ascii", "PYTHONIOENCODING"), ("latin-1", "PYTHONIOENCODING"), ("C", "LANG")]


@pytest.mark.parametrize(("value", "variable"), ENCODINGS, ids=[f"{v}={e}" for e, v in ENCODINGS])
def test_a_console_that_cannot_encode_the_prompt_still_gets_it(gold, tmp_path, value, variable):
    env = {variable: value, **({"LC_ALL": "C"} if variable == "LANG" else {})}
    result, run_dir = _run(tmp_path, "run", **env)
    assert result.returncode == 0, result.stderr
    assert "Traceback" not in result.stderr and "a bug" not in result.stderr
    assert "avec soin" in result.stdout  # the prompt is printed, an unencodable letter escaped at worst
    assert (run_dir / "program.json").exists()


@pytest.mark.skipif(not Path("/dev/full").exists(), reason="needs /dev/full")
def test_a_full_stdout_says_the_run_is_saved_and_where(gold, tmp_path):
    with open("/dev/full", "w") as full:
        result, run_dir = _run(tmp_path, "run", stdout=full)
    assert result.returncode == 2, result.stderr
    lines = result.stderr.strip().splitlines()
    assert lines[-1].startswith("error: could not write the result to stdout"), result.stderr
    assert f"the run is saved in {run_dir}" in lines[-1]
    assert "Traceback" not in result.stderr and "Exception ignored" not in result.stderr
    assert (run_dir / "program.json").exists()


def test_a_closed_pipe_ends_quietly(tmp_path):
    reader, writer = os.pipe()
    os.close(reader)
    try:
        result = subprocess.run(
            [sys.executable, "-m", "metaspo_dspy.cli", "presets"], stdout=writer, stderr=subprocess.PIPE,
            text=True, timeout=120, cwd=tmp_path,
        )  # fmt: skip
    finally:
        os.close(writer)
    assert result.returncode == 0, result.stderr
    assert result.stderr == ""


def test_sigterm_ends_like_ctrl_c_and_the_run_resumes(gold, tmp_path):
    log, run_dir = tmp_path / "term.jsonl", tmp_path / "term"
    (tmp_path / "prompt.txt").write_text(PROMPT, encoding="utf-8")
    env = fake_env(log, gold, METASPO_FAKE_LATENCY="0.05", METASPO_FAKE_OPTIMIZER_LATENCY="0.3")
    args = [*TINY, "--initial-system-prompt", str(tmp_path / "prompt.txt"), "--log-dir", str(run_dir)]
    process = start(args, env, tmp_path)
    wait_for(process, log, lambda requests: sum(r["kind"] == "task" for r in requests) >= 2)
    time.sleep(0.1)
    process.send_signal(signal.SIGTERM)
    _, stderr = process.communicate(timeout=60)
    assert process.returncode == 143, stderr
    last = stderr.strip().splitlines()[-1]
    assert last == f"terminated (SIGTERM); the run is resumable: metaspo train --resume {run_dir}", stderr
    assert "Traceback" not in stderr and "leaked" not in stderr
    before = len(requests_in(log))
    resumed = subprocess.run(
        [sys.executable, "-m", "metaspo_dspy.cli", "train", "--resume", str(run_dir), "--quiet"],
        env=env, cwd=tmp_path, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert resumed.returncode == 0, resumed.stderr
    assert (run_dir / "program.json").exists()
    assert len(requests_in(log)) > before
