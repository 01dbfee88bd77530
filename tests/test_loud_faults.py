"""Fail loudly, never silently (issue 11): empty and truncated answers are faults, 429s wait as the
server asks, optimizer failures stop the run, and secrets echoed by a server stay out of every file.

Driven by the loopback mock server (real HTTP, real LiteLLM / native clients) and the fake LM."""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import sys
from collections import Counter, defaultdict
from itertools import pairwise
from pathlib import Path

import dspy
import pytest
from conftest import mock_server

from metaspo_dspy.evaluation.grid import GridEvaluator
from metaspo_dspy.evaluation.records import EvalJob
from metaspo_dspy.program.adapters import with_system_prompt
from metaspo_dspy.store.faults import FaultLog

SIG = dspy.Signature("question -> answer", "Answer with the number.")


def _examples(n: int) -> list[dspy.Example]:
    return [dspy.Example(question=f"What is {i} + 1?", answer=str(i + 1)).with_inputs("question") for i in range(n)]


def _exact(example, prediction, trace=None) -> bool:
    return str(getattr(prediction, "answer", "")).strip() == example.answer


def _served(log: Path) -> list[dict]:
    return [json.loads(line) for line in log.read_text().splitlines()] if log.exists() else []


def _mock_lm(url: str, engine: str = "litellm", num_retries: int = 0, **kwargs) -> dspy.LM:
    """``engine``: ``litellm`` or ``lm15`` (a plain ``dspy.LM``), or ``native`` (``build_lm``'s LM on
    DSPy's client with observed attempts, the default for OpenAI-compatible servers)."""
    if engine == "native":
        from metaspo_dspy.lm import LMSettings, build_lm

        settings = LMSettings(model="openai/mock", api_base=url, num_retries=num_retries, engine="native")
        return build_lm(settings, extra={"cache": False, **kwargs})
    return dspy.LM(
        "openai/mock",
        api_base=url,
        api_key="sk-mock",
        engine=engine,
        cache=False,
        num_retries=num_retries,
        **kwargs,
    )


def _grid(lm: dspy.LM, n: int, adapter=None) -> tuple[list, FaultLog]:
    """Evaluate ``n`` examples through the grid evaluator inside a fault log."""
    job = EvalJob("arith", dspy.Predict(SIG), "Be exact.", "user", _examples(n), _exact)
    with FaultLog() as faults:
        (result,) = GridEvaluator(task_lm=lm, adapter=adapter, num_threads=4, progress=False).evaluate([job])
    return result.results, faults


# -- item 2: answers that hold nothing are faults ------------------------------------------------
# (mock-server flags, engine, adapter) -> (error class of every example, fault kind, requests per example)
ANSWER_FAULTS = [
    (["--empty-choices-rate", "1"], "litellm", "chat", "EmptyResponse", "empty_response", 2),
    (["--empty-choices-rate", "1"], "lm15", "chat", "EmptyResponse", "empty_response", 2),
    (["--empty-content-rate", "1"], "litellm", "chat", "EmptyResponse", "empty_response", 2),
    (["--empty-content-rate", "1"], "lm15", "json", "EmptyResponse", "empty_response", 2),
    (["--truncate-rate", "1"], "litellm", "chat", "TruncatedResponse", "truncated", 1),
    (["--truncate-rate", "1"], "lm15", "chat", "TruncatedResponse", "truncated", 1),
    (["--truncate-rate", "1"], "litellm", "json", "TruncatedResponse", "truncated", 1),
    (["--status", "401"], "litellm", "chat", "LMAuthError", "auth", 1),
    (["--error-rate", "1"], "litellm", "chat", "LMServerError", "http_500", 2),
    # build_lm's native LM (the default for OpenAI-compatible servers) records the same faults.
    (["--empty-choices-rate", "1"], "native", "chat", "EmptyResponse", "empty_response", 2),
    (["--empty-content-rate", "1"], "native", "json", "EmptyResponse", "empty_response", 2),
    (["--truncate-rate", "1"], "native", "chat", "TruncatedResponse", "truncated", 1),
    (["--status", "401"], "native", "chat", "LMAuthError", "auth", 1),
    (["--error-rate", "1"], "native", "chat", "LMServerError", "http_500", 2),
]


@pytest.mark.parametrize(
    ("flags", "engine", "adapter", "error", "kind", "per_example"),
    ANSWER_FAULTS,
    ids=[f"{f[0].strip('-')}-{e}-{a}" for f, e, a, *_ in ANSWER_FAULTS],
)
def test_bad_answers_fail_the_example_and_are_recorded(tmp_path, flags, engine, adapter, error, kind, per_example):
    """Each example fails with the fault's own error (so it counts toward max_failure_share), every
    bad answer is one fault of its kind, an empty answer is asked exactly once more, a truncated
    one never, and a ChatAdapter makes no JSON-fallback request for either."""
    log = tmp_path / "server.jsonl"
    with mock_server("--latency", "0", *flags, log=log) as url:
        # num_retries=1: transient HTTP errors are retried once by DSPy; 401 is not retried at all.
        results, faults = _grid(
            _mock_lm(url, engine, num_retries=1), 3, {"chat": None, "json": dspy.JSONAdapter()}[adapter]
        )
    served = _served(log)
    assert [r.error.split(":")[0] for r in results] == [error] * 3, results[0].error
    assert all(r.score == 0 for r in results)
    assert len(served) == 3 * per_example
    assert faults.counts == Counter({kind: 3 * per_example})
    if kind == "empty_response":
        assert "returned an empty answer" in results[0].error and "openai/mock" in results[0].error


def test_a_cached_empty_answer_is_asked_again_never_replayed(engine_factory):
    """The first answer to each question is empty and lands in DSPy's cache. The retry bypasses the
    cache, so the example succeeds; a later identical call that hits the cached empty answer is
    asked again instead of being handed the empty answer."""
    examples = _examples(2)
    asked: Counter[str] = Counter()

    def empty_first(request):
        asked[request.inputs.get("question")] += 1
        return "" if asked[request.inputs.get("question")] == 1 else None

    gold = {e.question: e.answer for e in examples}
    engine, task_lm, _ = engine_factory("emptycache", gold=gold, skill=lambda s, u: 1.0, override=empty_first)
    dspy.configure_cache(enable_disk_cache=False, enable_memory_cache=True)
    try:
        with FaultLog() as faults, dspy.context(lm=task_lm.copy(cache=True), adapter=with_system_prompt(None, "S.")):
            answers = [dspy.Predict(SIG)(question=e.question).answer for e in examples + examples]
    finally:
        dspy.configure_cache(enable_disk_cache=False, enable_memory_cache=False)
    assert answers == [e.answer for e in examples + examples]
    # Per question: the empty answer, its uncached retry, and the retry after the cache replayed it.
    assert engine.counts["task"] == 3 * len(examples) and set(asked.values()) == {3}
    assert faults.counts == Counter({"empty_response": 2 * len(examples)})


@pytest.mark.parametrize("engine", ["litellm", "lm15", "native"])
def test_http_429_retry_waits_the_retry_after_seconds(tmp_path, engine):
    """Half the attempts get HTTP 429 with ``Retry-After: 2``. DSPy's own first backoff is 1 s, so a
    gap of about 2 s between a 429 and the next attempt of the same request (server timestamps)
    shows the header was honoured."""
    log = tmp_path / "server.jsonl"
    with mock_server("--latency", "0", "--rate-limit-rate", "0.5", "--retry-after", "2", log=log) as url:
        results, faults = _grid(_mock_lm(url, engine, num_retries=1), 8)
    attempts = defaultdict(list)
    for entry in _served(log):
        attempts[entry["digest"]].append(entry)
    gaps = [
        later["t"] - first["t"]
        for tries in attempts.values()
        for first, later in pairwise(tries)
        if first["fault"] == "rate_limited"
    ]
    assert gaps, "the seed gave no retried 429"
    assert all(1.9 <= gap <= 4.0 for gap in gaps), gaps
    limited = sum(1 for tries in attempts.values() for entry in tries if entry["fault"] == "rate_limited")
    if engine != "lm15":  # observed through LiteLLM's callbacks or build_lm's native engine
        assert faults.counts["rate_limit"] == limited
    # Every example whose last attempt was not a 429 succeeded.
    assert sum(r.error is None for r in results) == sum(t[-1]["fault"] is None for t in attempts.values())


# -- item 3: optimizer failures stop the run -----------------------------------------------------
def _failing_optimizer(engine_factory, name: str, fail: int, garbage: bool = False):
    """A fake task LM that answers everything right, and a fake optimizer LM whose calls fail
    (no retries) for the first ``fail`` distinct request seeds -- one seed per call, so exactly
    ``fail`` proposals fail -- or, with ``garbage``, answer unparsable text to every call."""
    chosen: set[int] = set()

    def override(request):
        if request.kind != "optimizer":
            return None
        if garbage:
            return "no fields here"
        seed = request.params.get("seed")
        if seed in chosen or len(chosen) < fail:
            chosen.add(seed)
            raise RuntimeError("optimizer backend down")
        return None

    examples = _examples(6)
    gold = {e.question: e.answer for e in examples}
    engine, task_lm, opt_lm = engine_factory(name, gold=gold, skill=lambda s, u: 0.5, override=override)
    return engine, task_lm, opt_lm.copy(num_retries=0), examples


# (proposals in the phase, proposals whose optimizer call fails) -> the run stops
PROPOSAL_FAILURES = [(1, 1, True), (3, 3, True), (3, 2, False), (4, 3, True), (4, 2, False), (5, 0, False)]


@pytest.mark.parametrize(("proposals", "failing", "stops"), PROPOSAL_FAILURES)
def test_a_phase_whose_optimizer_calls_fail_stops_the_search(engine_factory, proposals, failing, stops):
    """All of a phase's proposals failing, or more than max_failure_share (0.5) of at least 4, stop
    ProTeGi with TooManyFailures naming the optimizer model and the errors; fewer do not."""
    from metaspo_dspy import ProTeGi
    from metaspo_dspy.errors import TooManyFailures

    _, task_lm, opt_lm, examples = _failing_optimizer(engine_factory, f"fail{proposals}{failing}", failing)
    optimizer = ProTeGi(
        _exact, opt_lm, task_lm, num_iterations=0, num_candidates=proposals, beam_width=1, progress=False
    )
    compile_ = lambda: optimizer.compile(dspy.Predict(SIG), trainset=examples, task_name="arith")  # noqa: E731
    if stops:
        with pytest.raises(TooManyFailures) as stop:
            compile_()
        message = str(stop.value)
        assert f"{failing} of {proposals} proposals in round 0 failed" in message
        assert "metaspo-fake/fail" in message and "optimizer backend down" in message
    else:
        proposals_made = compile_().detailed_results["proposals"]
        assert sum(p["failed"] for p in proposals_made) == failing


def test_content_discards_do_not_stop_the_search(engine_factory):
    """An optimizer that answers, but unusably (unparsable for every proposal), discards them all;
    that is the search's normal business, not a model failure."""
    from metaspo_dspy import ProTeGi

    _, task_lm, opt_lm, examples = _failing_optimizer(engine_factory, "garbage", 0, garbage=True)
    result = ProTeGi(_exact, opt_lm, task_lm, num_iterations=0, num_candidates=4, progress=False).compile(
        dspy.Predict(SIG), trainset=examples, task_name="arith"
    )
    proposals = result.detailed_results["proposals"]
    assert len(proposals) == 4 and all(p["status"] == "discarded" and not p["failed"] for p in proposals)


@pytest.mark.parametrize(
    ("flags", "error"), [(["--error-rate", "1"], "LMServerError"), (["--empty-content-rate", "1"], "EmptyResponse")]
)
def test_metaspo_stops_resumably_when_the_optimizer_fails(engine_factory, tmp_path, flags, error):
    """Every optimizer call fails (HTTP 500 after retries, or empty answers): compile raises
    TooManyFailures after the initial grid instead of returning the initial prompts as a result;
    once the optimizer works, the run resumes, asks the failed proposals again and completes."""
    from metaspo_dspy import MetaSPO
    from metaspo_dspy.errors import TooManyFailures

    examples = _examples(4)
    gold = {e.question: e.answer for e in examples}
    _, task_lm, _ = engine_factory(f"stop{error}", gold=gold, skill=lambda s, u: 0.5)
    settings = dict(num_iterations=1, num_system_candidates=2, num_user_candidates=2, user_top_k=1, progress=False)
    trainsets = {"a": examples, "b": examples[::-1]}
    with mock_server("--latency", "0", *flags) as url:
        run = MetaSPO(_exact, _mock_lm(url, temperature=1.0), task_lm, log_dir=tmp_path / "run", **settings)
        with pytest.raises(
            TooManyFailures, match=r"4 of 4 proposals in iteration 1: inner loop failed \(all\)"
        ) as stop:
            run.compile(dspy.Predict(SIG), trainsets=trainsets)
    assert "the optimizer model 'openai/mock' could not be used" in str(stop.value) and error in str(stop.value)
    checkpoint = json.loads((tmp_path / "run" / "checkpoint.json").read_text())
    assert checkpoint["complete"] is False and [s["phase"] for s in checkpoint["steps"]] == ["initial"]
    with mock_server("--latency", "0") as url:
        best = MetaSPO(
            _exact, _mock_lm(url, temperature=1.0), task_lm, log_dir=tmp_path / "run", resume=True, **settings
        ).compile(dspy.Predict(SIG), trainsets=trainsets)
    proposals = best.detailed_results["proposals"]
    assert best.detailed_results["complete"] and not any(p["failed"] for p in proposals)
    assert sum(p["status"] == "ok" for p in proposals) >= 4


# -- item 9: small truths --------------------------------------------------------------------------
class _Killed(BaseException):
    """Stands for SIGKILL: nothing in the library catches it."""


def test_an_answered_analysis_is_journaled_and_not_asked_again(engine_factory, tmp_path):
    """The process dies while the rewrite call is in flight. A fresh Proposer on the same journal
    (DSPy's cache is off in tests) asks only for the rewrite: the analysis was journaled as soon as
    it was answered, and the finished proposal equals one made without the kill."""
    from metaspo_dspy.optimize.proposer.proposals import Proposal, Proposer
    from metaspo_dspy.store.journal import Journal

    alive = {"rewrite": False}

    def die_at_rewrite(request):
        if request.kind == "optimizer" and "improved_user_prompt" in request.outputs and not alive["rewrite"]:
            raise _Killed
        return None

    engine, _, opt_lm = engine_factory("killed", override=die_at_rewrite)
    path = tmp_path / "proposals.jsonl"

    def propose(proposer: Proposer) -> Proposal:
        proposal = Proposal(0, "user", 0, 0, "arith", None, "predict")
        return proposer.user_prompt(proposal, "Be exact.", "Answer.", [], ["question"])

    first = Proposer(opt_lm, journal=Journal(path))
    with pytest.raises(_Killed):
        propose(first)
    first.journal.close()
    assert engine.counts["optimizer"] == 1  # the analysis came back; the rewrite never did
    alive["rewrite"] = True
    engine.reset()
    resumed = propose(Proposer(opt_lm, journal=Journal(path)))
    assert engine.counts["optimizer"] == 1, "the analysis was asked again"
    engine.reset()
    reference = propose(Proposer(opt_lm))
    assert engine.counts["optimizer"] == 2
    assert resumed.ok and resumed.to_dict() == reference.to_dict() and resumed.optimizer_calls == 2


# -- the command line: real `metaspo train` processes against the mock server ---------------------
KEY = "Zq81-mock-key-NEVER-WRITE-THIS-9f3c"
# id -> (task-server flags, optimizer-server flags (None: the task server), extra CLI arguments,
#        exit code, text on stderr, fault kinds that faults.jsonl must hold)
# Two system candidates and two retries: a transient error stops no phase (each fails 1 in 125).
RETRY_TWICE = ["--system-candidates", "2", "--set", "task_lm.num_retries=2", "optimizer_lm.num_retries=2"]
CLI_CASES = {
    "empty-grid": (["--empty-choices-rate", "1"], None, ["--no-preflight"], 1, "EmptyResponse", {"empty_response"}),
    "truncated-grid": (["--truncate-rate", "1"], None, ["--no-preflight"], 1, "TruncatedResponse", {"truncated"}),
    "some-empty": (["--empty-content-rate", "0.2"], None, [], 0, "", {"empty_response"}),
    "optimizer-down": ([], ["--error-rate", "1"], ["--no-preflight"], 1, "inner loop failed (all)", {"http_500"}),
    "echoed-key": (["--echo-auth", "--error-rate", "0.2"], None, RETRY_TWICE, 0, "", {"http_500"}),
}


@pytest.mark.parametrize("case", sorted(CLI_CASES))
def test_train_against_the_mock_server(tmp_path, case):
    """Exit 0 means the search really ran; a grid of empty or truncated answers, or an optimizer
    that fails every proposal, is exit 1 with one "stopped:" line. The key, sent as a Bearer token
    and echoed back in every error body by the server, is in no file of the run and not in the
    output, while faults.jsonl shows where it was masked."""
    task_flags, optimizer_flags, extra, code, message, kinds = CLI_CASES[case]
    run_dir = tmp_path / "run"
    with contextlib.ExitStack() as stack:
        task_url = stack.enter_context(mock_server("--latency", "0", *task_flags))
        opt_url = (
            task_url
            if optimizer_flags is None
            else stack.enter_context(mock_server("--latency", "0", *optimizer_flags))
        )
        env = {k: v for k, v in os.environ.items() if not k.endswith("_API_KEY")}
        env.update(DSPY_CACHEDIR=str(tmp_path / "cache"), MY_KEY=KEY)
        args = [
            "train", "-c", "medical", "--set", "tasks.source=[ob_gyn]",
            f"task_lm.api_base={task_url}", f"optimizer_lm.api_base={opt_url}", "task_lm.api_key_env=MY_KEY",
            "optimizer_lm.api_key_env=MY_KEY", "task_lm.num_retries=1", "optimizer_lm.num_retries=1",
            "--task-model", "openai/mock", "--optimizer-model", "openai/mock", "--iterations", "1",
            "--system-candidates", "1", "--user-candidates", "2", "--train-size", "6", "--test-size", "2",
            "--quiet", "--log-dir", str(run_dir), *extra,
        ]  # fmt: skip
        result = subprocess.run(
            [sys.executable, "-m", "metaspo_dspy.cli", *args],
            env=env, cwd=tmp_path, capture_output=True, text=True, timeout=300, stdin=subprocess.DEVNULL,
        )  # fmt: skip
    assert result.returncode == code, result.stderr
    assert message in result.stderr and "Traceback" not in result.stderr
    if code == 1:
        assert result.stderr.count("stopped: ") == 1 and f"metaspo train --resume {run_dir}" in result.stderr
    faults = [json.loads(line) for line in (run_dir / "faults.jsonl").read_text().splitlines()]
    assert kinds <= {f["kind"] for f in faults}
    if code == 0:
        artifact = json.loads((run_dir / "metaspo_run.json").read_text())
        assert artifact["faults"] == dict(Counter(f["kind"] for f in faults))
    assert KEY not in result.stdout + result.stderr
    for path in (p for p in tmp_path.rglob("*") if p.is_file()):
        assert KEY.encode() not in path.read_bytes(), f"the key leaked into {path}"
    if case == "echoed-key":
        assert all("[REDACTED]" in f["message"] for f in faults if f["kind"] == "http_500")
