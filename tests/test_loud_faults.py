"""Fail loudly, never silently (issue 11): empty and truncated answers are faults, 429s wait as the
server asks, optimizer failures stop the run, and secrets echoed by a server stay out of every file.

Driven by the loopback mock server (real HTTP, real LiteLLM / native clients) and the fake LM."""

from __future__ import annotations

import json
from collections import Counter, defaultdict
from itertools import pairwise
from pathlib import Path

import dspy
import pytest
from conftest import mock_server

from metaspo_dspy.adapters import with_system_prompt
from metaspo_dspy.evaluation import EvalJob, GridEvaluator
from metaspo_dspy.faults import FaultLog

SIG = dspy.Signature("question -> answer", "Answer with the number.")


def _examples(n: int) -> list[dspy.Example]:
    return [dspy.Example(question=f"What is {i} + 1?", answer=str(i + 1)).with_inputs("question") for i in range(n)]


def _exact(example, prediction, trace=None) -> bool:
    return str(getattr(prediction, "answer", "")).strip() == example.answer


def _served(log: Path) -> list[dict]:
    return [json.loads(line) for line in log.read_text().splitlines()] if log.exists() else []


def _mock_lm(url: str, engine: str = "litellm", num_retries: int = 0, **kwargs) -> dspy.LM:
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


@pytest.mark.parametrize("engine", ["litellm", "lm15"])
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
    if engine == "litellm":  # failed attempts are observed through LiteLLM's callbacks
        assert faults.counts["rate_limit"] == limited
    # Every example whose last attempt was not a 429 succeeded.
    assert sum(r.error is None for r in results) == sum(t[-1]["fault"] is None for t in attempts.values())
