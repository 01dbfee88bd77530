"""router_lm: one model name, several deployments, through a LiteLLM Router."""

from __future__ import annotations

import json
from concurrent.futures import ThreadPoolExecutor

import dspy
import pytest

from metaspo_dspy.lm import LMSettings, ModelConfigError, router_lm
from metaspo_dspy.lm import router as router_module
from metaspo_dspy.testing.fake_lm import FakeEngine, register

SECRET = "sk-router-DO-NOT-LEAK-42"


def test_requests_are_spread_over_deployments():
    first, second = FakeEngine(), FakeEngine()
    register("router-a", first)
    register("router-b", second)
    model = router_lm("pool", ["metaspo-fake/router-a", LMSettings("metaspo-fake/router-b")], cache=False)
    assert model.model == "metaspo-router/pool"
    first.latency = second.latency = 0.05  # requests overlap, as in an evaluation grid
    predict = dspy.Predict("question -> answer")
    with ThreadPoolExecutor(max_workers=8) as pool:
        answers = list(pool.map(lambda i: predict(question=f"question {i}", lm=model).answer, range(24)))
    assert all(answers)
    assert first.counts["task"] + second.counts["task"] == 24
    assert first.counts["task"] > 0 and second.counts["task"] > 0
    assert model.kwargs["temperature"] == 0.0


def test_keys_stay_references(monkeypatch):
    monkeypatch.setenv("ROUTER_TEST_KEY", SECRET)
    register("router-c", FakeEngine())
    model = router_lm("keyed", [LMSettings("metaspo-fake/router-c", api_key_env="ROUTER_TEST_KEY")], cache=False)
    assert SECRET not in json.dumps(model.dump_state(), default=str)
    deployment = router_module._deployment(LMSettings("metaspo-fake/x", api_key_env="ROUTER_TEST_KEY"), "n")
    assert deployment["litellm_params"]["api_key"] == "os.environ/ROUTER_TEST_KEY"


@pytest.mark.parametrize(
    ("name", "deployments", "message"),
    [
        ("", ["metaspo-fake/x"], "router name"),
        ("a/b", ["metaspo-fake/x"], "router name"),
        ("empty", [], "at least one deployment"),
        ("bad", ["nope/model"], "not a provider LiteLLM knows"),
        ("nokey", [LMSettings("openai/gpt-4o-mini", api_key_env="ROUTER_MISSING_KEY")], "ROUTER_MISSING_KEY"),
    ],
)
def test_router_errors(name, deployments, message):
    with pytest.raises(ModelConfigError, match=message):
        router_lm(name, deployments)


def test_unknown_router_name_fails_clearly():
    router_module.install_provider()
    model = dspy.LM("metaspo-router/never-made", engine="litellm", cache=False, num_retries=0)
    with pytest.raises(Exception, match="call router_lm"):
        model("hello")
