"""Preflight and call-free validation (issue 11, item 1): an unusable model ends a run in seconds with
one message naming the model, the endpoint and the cause, before any grid is paid for; a usable one
(the fake, a weak model) passes; preflight requests stay out of the run's counts."""

from __future__ import annotations

import json
import socket
from collections import Counter

import dspy
import pytest
from conftest import mock_server
from test_cli import metaspo

from metaspo_dspy import MetaSPO
from metaspo_dspy.errors import ConfigError
from metaspo_dspy.lm import LMSettings, ModelConfigError
from metaspo_dspy.lm.preflight import PreflightError, preflight
from metaspo_dspy.lm.providers import PROBE
from metaspo_dspy.testing import FakeEngine, fake_lm
from metaspo_dspy.testing.fake_lm import PREFLIGHT_PROBE

GENERATED = ["-c", "generated", "--train-size", "3", "--test-size", "2", "--iterations", "1"]
SMALL = ["--system-candidates", "2", "--user-candidates", "1", "--user-top-k", "1", "--quiet"]


def _server_lm(url: str, num_retries: int = 0, **kwargs) -> dspy.LM:
    return dspy.LM("openai/mock", api_base=url, api_key="sk-mock", engine="litellm", num_retries=num_retries, **kwargs)


def _dead_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _served(log) -> Counter:
    return Counter(json.loads(line)["status"] for line in log.read_text().splitlines()) if log.exists() else Counter()


# -- validation that needs no call -------------------------------------------------------------
@pytest.mark.parametrize(
    ("settings", "message"),
    [
        ({"model": "openai/gpt 4o mini"}, "contains white space"),
        ({"model": "openai/x", "api_base": "localhost:8000/v1"}, "did you mean 'http://localhost:8000/v1'"),
        ({"model": "openai/x", "api_base": "ftp://host/v1"}, "not an http(s) URL"),
        ({"model": "openai/x", "api_base": "http://"}, "not an http(s) URL"),
        ({"model": "openai/x", "api_base": "http://host:port/v1"}, "not a valid URL"),
    ],
)
def test_malformed_model_strings_and_endpoints_fail_before_any_call(settings, message):
    with pytest.raises(ModelConfigError, match=message.replace("(", r"\(").replace(")", r"\)")):
        LMSettings.for_task(**settings)


def test_a_string_in_place_of_an_lm_is_refused_at_construction():
    with pytest.raises(ConfigError, match=r"optimizer_lm must be a dspy.LM .*build_lm\('openai/gpt-4o-mini'\)"):
        MetaSPO(metric=lambda e, p, t=None: 1.0, optimizer_lm="openai/gpt-4o-mini")
    with pytest.raises(ConfigError, match=r"task_lm must be a dspy\.LM"):
        MetaSPO(metric=lambda e, p, t=None: 1.0, optimizer_lm=fake_lm("p-opt", FakeEngine()), task_lm=42)


def test_the_fake_recognises_the_probe():
    assert PREFLIGHT_PROBE == PROBE


# -- preflight against real servers ------------------------------------------------------------
@pytest.mark.parametrize(
    ("flags", "cause"),
    [
        (["--status", "401"], "rejected the credentials"),
        (["--status", "403"], "rejected the credentials"),
        (["--status", "404"], "model or the endpoint was not found"),
        (["--status", "400"], "refused the request"),
        (["--empty-choices-rate", "1"], "empty message"),
        (["--empty-content-rate", "1"], "empty message"),
    ],
)
def test_non_retriable_causes_fail_at_once_with_one_request(flags, cause, tmp_path):
    log = tmp_path / "server.jsonl"
    with mock_server(*flags, "--latency", "0", log=log) as url, pytest.raises(PreflightError) as info:
        preflight([("task", _server_lm(url, num_retries=3))])
    text = str(info.value)
    assert cause in text and "task model 'openai/mock'" in text and url in text
    assert sum(_served(log).values()) == 1, "a non-retriable cause is not retried"


def test_an_unreachable_server_is_retried_per_the_settings_then_named(tmp_path):
    url = f"http://127.0.0.1:{_dead_port()}/v1"
    with pytest.raises(PreflightError, match=r"no usable answer after the LM's retries .*is the server running"):
        preflight([("optimizer", _server_lm(url, num_retries=1))])


def test_a_server_that_is_still_starting_gets_the_lms_retries(tmp_path):
    log = tmp_path / "server.jsonl"
    with mock_server("--start-delay", "0.5", "--latency", "0", log=log) as url:
        import time

        time.sleep(0.1)
        results = preflight([("task", _server_lm(url, num_retries=3))])
    assert [r.roles for r in results] == [("task",)]
    statuses = _served(log)
    assert statuses[503] >= 1 and statuses[200] == 1


def test_one_request_per_distinct_lm_and_never_from_the_cache():
    dspy.configure_cache(enable_disk_cache=False, enable_memory_cache=True)
    try:
        engine = FakeEngine()
        task = fake_lm("pf-task", engine, temperature=0.0, cache=True)
        optimizer = fake_lm("pf-opt", engine, temperature=1.0, cache=True)
        results = preflight([("task", task), ("optimizer", optimizer), ("judge", task)])
        assert [r.roles for r in results] == [("task", "judge"), ("optimizer",)]
        preflight([("task", task)])
        assert engine.counts["preflight"] == 3, "the second check of the same LM reached the model again"
        assert engine.counts["task"] == engine.counts["optimizer"] == 0
    finally:
        dspy.configure_cache(enable_disk_cache=False, enable_memory_cache=False)


def test_compile_with_preflight_keeps_the_run_counts_exact():
    engine = FakeEngine()
    train = [dspy.Example(question=f"q{i}", answer="1").with_inputs("question") for i in range(4)]
    best = MetaSPO(
        metric=lambda e, p, t=None: float(e.answer == p.answer),
        optimizer_lm=fake_lm("pc-opt", engine, temperature=1.0),
        task_lm=fake_lm("pc-task", engine, temperature=0.0),
        num_iterations=1,
        num_system_candidates=2,
        num_user_candidates=1,
        user_top_k=1,
        progress=False,
        preflight=True,
    ).compile(dspy.Predict("question -> answer"), trainsets={"a": train})
    calls = best.detailed_results["calls"]
    assert engine.counts["preflight"] == 2
    assert engine.counts["task"] == calls["task_lm"] and engine.counts["optimizer"] == calls["optimizer_lm"]


def test_compile_preflight_fails_before_any_task_call(tmp_path):
    with mock_server("--status", "401", "--latency", "0", log=tmp_path / "s.jsonl") as url:
        tp = MetaSPO(
            metric=lambda e, p, t=None: 1.0,
            optimizer_lm=_server_lm(url),
            task_lm=_server_lm(url),
            log_dir=tmp_path / "run",
            progress=False,
            preflight=True,
        )
        train = [dspy.Example(question="q", answer="1").with_inputs("question")]
        with pytest.raises(PreflightError, match="rejected the credentials"):
            tp.compile(dspy.Predict("question -> answer"), trainsets={"a": train})
    assert sum(_served(tmp_path / "s.jsonl").values()) == 1
    assert not (tmp_path / "run").exists()


# -- the CLI -----------------------------------------------------------------------------------
def _server_args(url: str) -> list[str]:
    return [
        "--task-model", "openai/mock", "--optimizer-model", "openai/mock",
        "--set", f"task_lm.api_base={url}", f"optimizer_lm.api_base={url}", "optimizer_lm.api_key_env=null",
    ]  # fmt: skip


@pytest.mark.parametrize(
    ("flags", "fragment"),
    [
        (["--status", "401"], "rejected the credentials; check the API key"),
        (["--status", "404"], "model or the endpoint was not found"),
        (["--empty-choices-rate", "1"], "empty message"),
    ],
)
def test_cli_train_fails_in_one_line_and_writes_nothing(flags, fragment, tmp_path):
    log = tmp_path / "server.jsonl"
    with mock_server(*flags, "--latency", "0", log=log) as url:
        result = metaspo("train", *GENERATED, *SMALL, *_server_args(url), "--log-dir", str(tmp_path / "run"))
    assert result.returncode == 2, result.stderr
    errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and fragment in errors[0] and "openai/mock" in errors[0] and url in errors[0]
    assert result.stderr.strip().endswith(errors[0]), "the error is one line, the last one"
    assert "Traceback" not in result.stderr
    assert not (tmp_path / "run").exists()
    assert sum(_served(log).values()) == 1, "one request, not a grid"


def test_cli_train_against_a_dead_port_fails_in_one_line(tmp_path):
    url = f"http://127.0.0.1:{_dead_port()}/v1"
    result = metaspo(
        "train", *GENERATED, *SMALL, *_server_args(url), "--set", "task_lm.num_retries=0",
        "optimizer_lm.num_retries=0", "--log-dir", str(tmp_path / "run"),
    )  # fmt: skip
    assert result.returncode == 2, result.stderr
    assert "is the server running" in result.stderr and "Traceback" not in result.stderr
    assert not (tmp_path / "run").exists()


def test_cli_preflight_is_reported_apart_and_skippable(tmp_path):
    log = tmp_path / "fake.jsonl"
    fake = ["--task-model", "metaspo-fake/t", "--optimizer-model", "metaspo-fake/o"]
    run = metaspo(
        "train", *GENERATED, *SMALL, *fake, "--log-dir", str(tmp_path / "a"),
        env={"METASPO_FAKE_LOG": str(log)}, cwd=tmp_path,
    )  # fmt: skip
    assert run.returncode == 0, run.stderr
    assert "preflight: task model metaspo-fake/t ok" in run.stderr and "optimizer model metaspo-fake/o ok" in run.stderr
    kinds = Counter(json.loads(line)["kind"] for line in log.read_text().splitlines())
    artifact = json.loads((tmp_path / "a" / "metaspo_run.json").read_text())
    assert kinds["preflight"] == 2
    assert kinds["task"] == artifact["calls"]["task_lm"] and kinds["optimizer"] == artifact["calls"]["optimizer_lm"]

    log.unlink()
    (tmp_path / "a" / "metaspo_run.json").unlink()  # unfinished: a finished run is not resumed at all
    resumed = metaspo("train", "--resume", str(tmp_path / "a"), env={"METASPO_FAKE_LOG": str(log)}, cwd=tmp_path)
    assert resumed.returncode == 0, resumed.stderr
    kinds = Counter(json.loads(line)["kind"] for line in log.read_text().splitlines())
    assert kinds == {"preflight": 2}, "a resume checks the models again and asks nothing else"

    log.unlink()
    skipped = metaspo(
        "train", *GENERATED, *SMALL, *fake, "--no-preflight", "--log-dir", str(tmp_path / "b"),
        env={"METASPO_FAKE_LOG": str(log)}, cwd=tmp_path,
    )  # fmt: skip
    assert skipped.returncode == 0, skipped.stderr
    assert "preflight:" not in skipped.stderr
    # (the DSPy cache of the first run may answer every other call, leaving no log at all)
    kinds = {json.loads(line)["kind"] for line in log.read_text().splitlines()} if log.exists() else set()
    assert "preflight" not in kinds
