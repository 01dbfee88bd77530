"""Every benchmark script runs end to end in its --quick mode (so none rots unnoticed), writing its
JSON and README section into a temporary folder instead of the recorded results. Real subprocesses
against the real mock server; no timing is asserted, only that each measured what it says."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import needs_embedded

BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"


@pytest.fixture(scope="module")
def out(tmp_path_factory):
    return tmp_path_factory.mktemp("benchmarks")


def _run(out: Path, script: str, *args: str, data_dir: Path | None = None) -> dict:
    env = {k: v for k, v in os.environ.items() if not k.endswith("_API_KEY")}
    env.update(METASPO_BENCHMARK_OUT=str(out), DSPY_CACHEDIR=str(out / "cache"))
    if data_dir is not None:  # benchmarks/common.py reads its data folder from METASPO_DATA_DIR
        env["METASPO_DATA_DIR"] = str(data_dir)
    result = subprocess.run(
        [sys.executable, str(BENCHMARKS / f"{script}.py"), "--quick", *args],
        cwd=BENCHMARKS, env=env, capture_output=True, text=True, timeout=300, stdin=subprocess.DEVNULL,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    name = args[args.index("--name") + 1] if "--name" in args else script
    readme = (out / "README.md").read_text()
    assert f"<!-- {name}:start -->" in readme and f"results/{name}.json" in readme
    return json.loads((out / f"{name}.json").read_text())


def test_throughput(out):
    data = _run(out, "throughput")
    rows = {(r["engine"], r["processes"], r["concurrency"]) for r in data["rows"]}
    assert rows == {(e, 1, c) for e in ("litellm", "native") for c in (1, 8, 32)} | {("native", 2, 32)}
    for row in data["rows"]:
        for key in ("ours_calls_per_s", "dspy_evaluate_calls_per_s", "sequential_calls_per_s"):
            if key in row:
                assert 0 < row[key] <= 1.2 * row["ideal_calls_per_s"]


def test_layers(out):
    data = _run(out, "layers")
    for engine in ("litellm", "native", "lm15"):
        layers = data["results"][engine]
        assert layers["cpu_ms_per_call"] > 0 and layers["ours (metaspo_dspy)"] > 0
    assert data["results"]["litellm"]["LiteLLM"] > 0 and data["results"]["native"].get("LiteLLM", 0) == 0


def test_full_run_beside_the_openai_loop(out, fetched_cache):
    """full_run.py trains on Amazon tasks: here the cache fetched from test-made originals. Every mode
    sends the same requests, and the openai-SDK baseline replays exactly those."""
    data = _run(out, "full_run", "--name", "full_run_zero", data_dir=fetched_cache)
    assert [(r["engine"], r["processes"]) for r in data["runs"]] == [("auto", 1), ("auto", 2), ("litellm", 1)]
    assert {r["calls"] for r in data["runs"]} == {data["baseline"]["calls"]}
    for run in data["runs"]:
        assert run["client_cpu_s"] > 0 and run["wall_vs_openai"] > 0 and not run["faults"]


def test_router(out):
    data = _run(out, "router")
    assert data["one_server_calls_per_s"] > 0 and data["two_servers_calls_per_s"] > 0


def test_ceiling(out):
    data = _run(out, "ceiling")
    assert [(r["engine"], r["processes"]) for r in data["rows"]] == [
        ("litellm", 1), ("litellm", 2), ("native", 1), ("native", 2),
    ]  # fmt: skip
    assert all(r["calls_per_s"] > 0 and r["client_cpu_ms_per_call"] > 0 for r in data["rows"])


@needs_embedded
def test_embedded_profile(out):
    data = _run(out, "embedded_profile", "--compare")
    calls = [c for command in data["calls"].values() for c in command]
    assert {c["temperature"] for c in calls} == {0.0, 1.0}  # task and optimizer calls both timed
    assert all(0 <= c["reused_tokens"] < c["prompt_tokens"] and c["prompt_seconds"] >= 0 for c in calls)
    assert set(data["wall_s"]) == set(data["stock_wall_s"]) == {"train", "test"}
    # The fast greedy sampler ran on every greedy grammar call, the stock chain on none.
    assert all((c["grammar_checks"] is not None) == (c["temperature"] == 0 and c["grammar"]) for c in calls)
    stock = [c for command in data["stock_calls"].values() for c in command]
    assert len(stock) == len(calls) and all(c["grammar_checks"] is None for c in stock)
    assert data["identical"] == {"evaluations": True, "program": True, "unseen": True}
