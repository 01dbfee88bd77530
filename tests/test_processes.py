"""num_processes (issue 14): evaluation grids over worker processes give a one-process run's results.

Real worker processes (forkserver/spawn) against the loopback mock server: a K=2 run equals a K=1
run outside timings (nodes, calls, faults, usage, journals), a resumed K=2 run asks nothing again,
and what cannot run in a worker is refused before any call."""

from __future__ import annotations

import json
import threading
import urllib.request
from collections import Counter
from pathlib import Path

import dspy
import pytest
from conftest import mock_server, needs_embedded
from test_cli import metaspo

from metaspo_dspy import MetaSPO
from metaspo_dspy.lm import LMSettings, build_lm
from metaspo_dspy.optimize.common import ConfigError

SIG = dspy.Signature("question -> answer", "Answer with the number.")
SIZES = dict(num_iterations=1, num_system_candidates=2, num_user_candidates=2, user_top_k=2, progress=False)


def _train() -> dict[str, list[dspy.Example]]:
    def examples(n: int, offset: int) -> list[dspy.Example]:
        return [
            dspy.Example(question=f"What is {i + offset} + 1?", answer=str(i + offset + 1)).with_inputs("question")
            for i in range(n)
        ]

    return {"a": examples(10, 0), "b": examples(10, 100)}


def _exact(example, prediction, trace=None) -> bool:
    return str(getattr(prediction, "answer", "")).strip() == example.answer


def _lm(url: str, temperature: float, engine: str = "auto"):
    settings = LMSettings(model="openai/mock", api_base=url, temperature=temperature, num_retries=2, engine=engine)
    return build_lm(settings, extra={"cache": False})


def _served(url: str) -> int:
    with urllib.request.urlopen(url.removesuffix("/v1") + "/stats", timeout=5) as response:
        return json.loads(response.read()).get("requests", 0)


def _run(url: str, processes: int, run_dir: Path, engine: str = "auto", **extra):
    with dspy.track_usage() as usage:
        best = MetaSPO(
            _exact,
            _lm(url, 1.0, engine),
            _lm(url, 0.0, engine),
            num_threads=4,
            num_processes=processes,
            log_dir=run_dir,
            **SIZES,
            **extra,
        ).compile(dspy.Predict(SIG), trainsets=_train())
    return best, usage.get_total_tokens()


def _comparable(best) -> dict:
    results = dict(best.detailed_results)
    phases = [{k: v for k, v in p.items() if k not in ("seconds", "started", "finished")} for p in results["phases"]]
    return {
        "nodes": results["nodes"],
        "phases": phases,
        "calls": results["calls"],
        "faults": results["faults"],
        "usage": results["usage"],
        "system_prompt": str(best.system_prompt),
    }


def _journal_keys(run_dir: Path) -> set[str]:
    lines = (run_dir / "evaluations.jsonl").read_text().splitlines()
    return {json.loads(line)["key"] for line in lines if line.strip()}


@pytest.mark.parametrize("engine", ["auto", "litellm"])
def test_two_processes_give_the_one_process_result(tmp_path, engine):
    """Same server behaviour (a fresh server per run: faults are drawn per request and attempt), same
    run: every node score, call count, fault, token count and journal entry."""
    flags = ("--latency", "0", "--error-rate", "0.1", "--garbage-rate", "0.05", "--seed", "5")
    runs = {}
    for k in (1, 2):
        with mock_server(*flags) as url:
            best, usage = _run(url, k, tmp_path / f"k{k}", engine)
        faults = Counter(
            json.loads(line)["kind"] for line in (tmp_path / f"k{k}" / "faults.jsonl").read_text().splitlines()
        )
        runs[k] = (_comparable(best), usage, faults, _journal_keys(tmp_path / f"k{k}"))
    (one, one_usage, one_faults, one_keys), (two, two_usage, two_faults, two_keys) = runs[1], runs[2]
    assert one_faults["http_500"] > 0 and one_faults["parse_error"] > 0, one_faults
    assert two == one
    assert two_usage == one_usage  # worker calls reach the caller's dspy.track_usage()
    assert two_faults == one_faults  # every worker's faults are in the parent's faults.jsonl
    assert two_keys == one_keys


def test_a_resumed_run_with_two_processes_asks_nothing_again(tmp_path):
    with mock_server("--latency", "0") as url:
        first, _ = _run(url, 2, tmp_path / "run")
        served = _served(url)
        again, _ = _run(url, 2, tmp_path / "run", resume=True)
        assert _served(url) == served
    assert _comparable(again)["nodes"] == _comparable(first)["nodes"]


class _Local(dspy.BaseLM):
    """An LM that exists only in this process (as the embedded model does)."""

    def __init__(self):
        super().__init__(model="local/x")

    def forward(self, prompt=None, messages=None, **kwargs):  # pragma: no cover - never called
        raise AssertionError("no call may be made")


class _Unpicklable(dspy.utils.callback.BaseCallback):
    def __init__(self):
        self.lock = threading.Lock()


def test_what_cannot_run_in_a_worker_is_refused_before_any_call(tmp_path):
    with mock_server("--latency", "0") as url:
        lm = _lm(url, 0.0)
        with pytest.raises(ConfigError, match=r"_Local is not a dspy\.LM.*num_processes=1"):
            MetaSPO(_exact, lm, _Local(), num_processes=2, **SIZES).compile(dspy.Predict(SIG), trainsets=_train())
        with dspy.context(callbacks=[_Unpicklable()]), pytest.raises(ConfigError, match=r"callback.*num_processes=1"):
            MetaSPO(_exact, lm, lm, num_processes=2, **SIZES).compile(dspy.Predict(SIG), trainsets=_train())
        assert _served(url) == 0


@needs_embedded
def test_cli_refuses_processes_for_the_embedded_model_in_one_line(tmp_path):
    result = metaspo(
        "train", "-c", "generated", "--task-model", "embedded", "--optimizer-model", "embedded",
        "--processes", "2", "--log-dir", str(tmp_path / "run"), cwd=tmp_path,
    )  # fmt: skip
    assert result.returncode == 2, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error:") and "--processes 1" in lines[0], result.stderr
    assert not (tmp_path / "run").exists()
