"""End to end against a real OpenAI-compatible server (issue 11, item 10): llama-cpp-python's own
server (its ``[server]`` extra) serves the embedded GGUF on a loopback port; `metaspo train` runs
with preflight on, then again with the server killed mid-run: the run stops resumably (exit 1, one
message), and after a restart on the same port `--resume` completes it."""

from __future__ import annotations

import json
import socket
import subprocess
import sys
import time
import urllib.request
from contextlib import contextmanager
from pathlib import Path

import pytest
from test_cli import metaspo

from metaspo_dspy.lm.embedded.provider import is_available

pytestmark = [pytest.mark.slow]


def _server_available() -> bool:
    try:
        import llama_cpp.server  # noqa: F401
    except ImportError:
        return False
    return is_available()


pytestmark.append(
    pytest.mark.skipif(
        not _server_available(),
        reason="llama-cpp-python's [server] extra or the embedded model is not installed (scripts/bootstrap does it)",
    )
)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextmanager
def llama_server(port: int, log: Path):
    """Run ``python -m llama_cpp.server`` with the embedded GGUF on 127.0.0.1:port until exit."""
    from metaspo_dspy.lm.embedded.provider import gguf_path

    command = [
        sys.executable, "-m", "llama_cpp.server", "--model", str(gguf_path()), "--model_alias", "smollm2",
        "--host", "127.0.0.1", "--port", str(port), "--n_ctx", "4096", "--n_threads", "2",
    ]  # fmt: skip
    with open(log, "ab") as out:
        process = subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 120
        while True:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/v1/models", timeout=2):
                    break
            except OSError:
                if process.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(f"llama_cpp.server did not start: {log.read_text()[-2000:]}") from None
                time.sleep(0.5)
        yield process
    finally:
        if process.poll() is None:
            process.kill()
        process.wait(timeout=30)


def _train_args(port: int, run_dir: Path) -> list[str]:
    """A tiny run: the task model behind the server as ``hosted_vllm/`` (DSPy's client sends ``max_tokens``,
    which llama.cpp's server honours; ``openai/`` sends ``max_completion_tokens``), raw reference-format
    messages (so the 135M model's free text is the answer), the optimizer in-process (its JSON grammar
    keeps proposals whole). The 135M model rarely writes the reference's ``<answer>`` tag, so no answer
    parses: ``--allow-unparsed`` searches anyway (the scores mean nothing; the pipeline is under test)."""
    url = f"http://127.0.0.1:{port}/v1"
    return [
        "train", "-c", "generated", "--set", "tasks.source=[gen_boolean]", f"task_lm.api_base={url}",
        "task_lm.max_tokens=256", "task_lm.num_retries=0", "task_lm.timeout=300",
        "--task-model", "hosted_vllm/smollm2", "--optimizer-model", "embedded", "--prompt-format", "reference",
        "--iterations", "1", "--system-candidates", "1", "--user-candidates", "1", "--user-top-k", "1",
        "--train-size", "3", "--test-size", "2", "--threads", "1", "--quiet", "--allow-unparsed",
        "--log-dir", str(run_dir),
    ]  # fmt: skip


def test_train_against_llama_cpp_server_with_preflight(tmp_path):
    port = _free_port()
    with llama_server(port, tmp_path / "server.log"):
        result = metaspo(*_train_args(port, tmp_path / "run"), cwd=tmp_path, timeout=900)
    assert result.returncode == 0, result.stderr
    assert "preflight: task model hosted_vllm/smollm2 ok" in result.stderr
    artifact = json.loads((tmp_path / "run" / "metaspo_run.json").read_text())
    assert artifact["complete"] is True and artifact["stopped"] is None
    phases = {p["phase"]: p["task_lm_calls"] for p in artifact["phases"]}
    assert phases["initial"] == 3 and phases["test"] == 2  # the outer grid depends on the model's proposal
    served = (tmp_path / "server.log").read_text().count('"POST /v1/chat/completions HTTP/1.1" 200')
    assert served == artifact["calls"]["task_lm"] + 1, "every task call (and the preflight) reached the server"
    assert result.stdout.strip() == artifact["optimized_system_prompt"]


def test_a_server_killed_mid_run_stops_resumably_and_resume_completes(tmp_path):
    port, run_dir = _free_port(), tmp_path / "run"
    with llama_server(port, tmp_path / "server.log") as server:
        process = subprocess.Popen(
            [sys.executable, "-m", "metaspo_dspy.cli", *_train_args(port, run_dir)],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            cwd=tmp_path,
        )
        journal = run_dir / "evaluations.jsonl"
        deadline = time.monotonic() + 300
        while not (journal.exists() and journal.read_text().strip()) and process.poll() is None:
            assert time.monotonic() < deadline, "no evaluation was journaled"
            time.sleep(0.05)
        server.kill()
        server.wait(timeout=30)
        _stdout, stderr = process.communicate(timeout=600)
    assert process.returncode == 1, stderr
    assert "Traceback" not in stderr and f"metaspo train --resume {run_dir}" in stderr
    assert not (run_dir / "metaspo_run.json").exists()

    with llama_server(port, tmp_path / "server2.log"):
        resumed = metaspo("train", "--resume", str(run_dir), "--allow-unparsed", cwd=tmp_path, timeout=900)
    assert resumed.returncode == 0, resumed.stderr
    assert "preflight: task model hosted_vllm/smollm2 ok" in resumed.stderr
    artifact = json.loads((run_dir / "metaspo_run.json").read_text())
    assert artifact["complete"] is True
    nodes = [n for n in artifact["nodes"] if n["train_score"] is not None]
    assert nodes and all(n["failures"].get("train", 0) == 0 for n in nodes if n["origin"] == "initial")
