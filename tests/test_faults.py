"""LM faults: a run against a mock server injecting 10% HTTP 500, 5% timeouts and 5% garbage
completes, and every fault in the server's own log is recorded in the run."""

from __future__ import annotations

import json
from collections import Counter

import dspy
import pytest
from conftest import exact_metric, load_examples, mock_server

from metaspo_dspy import MetaSPO
from metaspo_dspy.errors import TooManyFailures
from metaspo_dspy.lm import LMSettings, build_lm

SIG = dspy.Signature(
    "question -> answer", "Given the following question and candidate answers, choose the best answer."
)


def _lm(url: str, temperature: float, retries: int = 3, engine: str = "litellm") -> dspy.LM:
    """LiteLLM, or (``native``) DSPy's own client as ``build_lm`` makes it for OpenAI-compatible
    servers by default: both must record every fault."""
    settings = LMSettings(
        model="openai/mock", api_base=url, temperature=temperature, num_retries=retries, engine=engine
    )
    return build_lm(settings, extra={"cache": False, "timeout": 1.0})


@pytest.mark.parametrize("engine", ["litellm", "native"])
def test_faults_are_retried_survived_and_all_recorded(data_dir, tmp_path, engine):
    train = {t: load_examples(data_dir, "medmcqa", t, 8) for t in ("ob_gyn", "medicine")}
    server_log = tmp_path / "server.jsonl"
    faults = [
        "--error-rate",
        "0.10",
        "--timeout-rate",
        "0.05",
        "--garbage-rate",
        "0.05",
        "--hang",
        "3",
        "--latency",
        "0.01",
        "--seed",
        "3",
    ]
    with mock_server(*faults, log=server_log) as url:
        best = MetaSPO(
            exact_metric,
            _lm(url, 1.0, engine=engine),
            _lm(url, 0.0, engine=engine),
            num_iterations=1,
            num_system_candidates=2,
            num_user_candidates=2,
            user_top_k=2,
            num_threads=8,
            log_dir=tmp_path / "run",
            progress=False,
        ).compile(dspy.Predict(SIG), trainsets=train)
    served = Counter(json.loads(line)["fault"] for line in server_log.read_text().splitlines())
    assert served["http_500"] > 0 and served["timeout"] > 0 and served["garbage"] > 0, served
    recorded = Counter(
        json.loads(line)["kind"] for line in (tmp_path / "run" / "faults.jsonl").read_text().splitlines()
    )
    assert recorded["http_500"] == served["http_500"]
    assert recorded["timeout"] == served["timeout"]
    assert recorded["parse_error"] == served["garbage"]
    assert best.detailed_results["faults"] == dict(recorded)
    assert best.detailed_results["complete"] is True


def test_a_dead_server_stops_the_run_with_a_clear_resumable_error(data_dir, tmp_path):
    train = {"ob_gyn": load_examples(data_dir, "medmcqa", "ob_gyn", 4)}
    with mock_server("--error-rate", "1.0", "--latency", "0") as url:
        lm = dspy.LM("openai/mock", api_base=url, api_key="sk-mock", engine="litellm", cache=False, num_retries=0)
        with pytest.raises(TooManyFailures, match=r"4 of 4 task-model calls failed in initial evaluation"):
            MetaSPO(exact_metric, lm, lm, num_iterations=1, log_dir=tmp_path / "run", progress=False).compile(
                dspy.Predict(SIG), trainsets=train
            )
    assert (tmp_path / "run" / "evaluations.jsonl").exists()


@pytest.mark.parametrize("engine", ["litellm", "native"])
def test_after_a_stop_the_run_resumes_and_counts_every_processs_faults(data_dir, tmp_path, engine):
    """A dead server stops the initial grid; resumed against a working (but flaky) server, the failed
    evaluations are asked again, the run completes, and the artifact's ``faults`` counts the faults
    of both sessions -- exactly what faults.jsonl holds."""
    train = {"ob_gyn": load_examples(data_dir, "medmcqa", "ob_gyn", 4)}
    settings = dict(num_iterations=1, num_system_candidates=1, num_user_candidates=1, progress=False)
    with mock_server("--error-rate", "1.0", "--latency", "0") as url, pytest.raises(TooManyFailures):
        MetaSPO(
            exact_metric, _lm(url, 1.0, 1, engine), _lm(url, 0.0, 1, engine), log_dir=tmp_path / "run", **settings
        ).compile(dspy.Predict(SIG), trainsets=train)
    first = Counter(json.loads(line)["kind"] for line in (tmp_path / "run" / "faults.jsonl").read_text().splitlines())
    assert first == Counter({"http_500": 4 * 2})  # 4 examples, each tried 1 + num_retries times
    with mock_server("--garbage-rate", "0.3", "--latency", "0", "--seed", "1") as url:
        best = MetaSPO(
            exact_metric,
            _lm(url, 1.0, 1, engine),
            _lm(url, 0.0, 1, engine),
            log_dir=tmp_path / "run",
            resume=True,
            **settings,
        ).compile(dspy.Predict(SIG), trainsets=train)
    recorded = Counter(
        json.loads(line)["kind"] for line in (tmp_path / "run" / "faults.jsonl").read_text().splitlines()
    )
    assert recorded["parse_error"] > 0 and recorded["http_500"] == first["http_500"]
    assert best.detailed_results["faults"] == dict(recorded)
    assert best.detailed_results["complete"] is True  # the 4 failed evaluations were asked again


def test_a_fault_log_counts_the_faults_already_in_its_file(tmp_path):
    """Opened again (a resumed run), a fault log starts from the faults on file; a line torn by a
    killed writer is skipped and the next record starts a line of its own."""
    from metaspo_dspy.store.faults import FaultLog

    path = tmp_path / "faults.jsonl"
    with FaultLog(path) as first:
        first.record("http_500", "m", "boom")
        first.record("timeout", "m", "slow")
    with open(path, "a") as handle:
        handle.write('{"t": 1, "kind": "http_5')  # killed mid-write
    with FaultLog(path) as second:
        assert second.counts == Counter({"http_500": 1, "timeout": 1})
        second.record("empty_response", "m", "no text (finish_reason=stop)")
    lines = path.read_text().splitlines()
    assert json.loads(lines[-1])["kind"] == "empty_response" and len(lines) == 4
    with FaultLog(path) as third:
        assert third.counts == Counter({"http_500": 1, "timeout": 1, "empty_response": 1})
