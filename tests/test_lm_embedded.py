"""The embedded offline model (SmolLM2-135M through llama.cpp behind LiteLLM).

Tests that run the model skip when the ``[embedded]`` extra is not installed.
"""

from __future__ import annotations

import asyncio
import threading
from concurrent.futures import ThreadPoolExecutor
from typing import Literal

import dspy
import litellm
import pytest
from conftest import needs_embedded

from metaspo_dspy.lm import EMBEDDED_MODEL, LMSettings, build_lm, recommended_adapter
from metaspo_dspy.lm.embedded import engine as llama_engine
from metaspo_dspy.lm.embedded import json_grammar
from metaspo_dspy.lm.embedded import model as embedded_model
from metaspo_dspy.lm.embedded import provider as emb
from metaspo_dspy.optimize.proposer.signatures import DiagnoseUserPrompt

needs_model = needs_embedded


class Arithmetic(dspy.Signature):
    """Answer the arithmetic question with a number, and say whether it is below 10."""

    question: str = dspy.InputField()
    answer: int = dspy.OutputField()
    size: Literal["small", "large"] = dspy.OutputField(desc="small if the answer is below 10")


def lm(**extra):
    extra.setdefault("cache", False)
    return build_lm(LMSettings.for_task(EMBEDDED_MODEL, max_tokens=64, extra=extra))


@pytest.fixture
def spy(monkeypatch):
    """Record the parameters every embedded call receives (after LiteLLM)."""
    seen: list[dict] = []
    engine = emb.engine()
    original = engine.complete

    def complete(messages, params):
        seen.append(dict(params))
        return original(messages, params)

    monkeypatch.setattr(engine, "complete", complete)
    return seen


def predict(signature, model, **inputs):
    with dspy.context(lm=model, adapter=recommended_adapter()):
        return dspy.Predict(signature)(**inputs)


# -- without the model -----------------------------------------------------------------------------
def test_registration_appends_and_declares_schema_support():
    from metaspo_dspy.testing.fake_lm import install_provider as install_fake

    install_fake()
    emb.install_provider()
    emb.install_provider()
    providers = [entry["provider"] for entry in litellm.custom_provider_map]
    assert providers.count("embedded") == 1
    assert "metaspo-fake" in providers
    model = dspy.LM(EMBEDDED_MODEL, engine="litellm")
    assert model.supports_response_schema  # so JSONAdapter sends the signature's schema
    assert "response_format" in model.supported_params


def test_recommended_adapter():
    assert type(recommended_adapter()) is dspy.JSONAdapter
    assert type(emb.recommended_adapter()) is dspy.JSONAdapter


@pytest.mark.parametrize(
    ("response_format", "schema"),
    [
        (None, None),
        ({"type": "text"}, None),
        ({"type": "json_object"}, {}),
        ({"type": "json_schema", "json_schema": {"name": "x", "schema": {"type": "object"}}}, {"type": "object"}),
    ],
)
def test_response_schema(response_format, schema):
    assert json_grammar.response_schema(response_format) == schema


def test_string_caps_share_the_token_budget():
    schema = {
        "type": "object",
        "properties": {
            "reasoning": {"type": "string"},
            "answer": {"type": "string", "enum": ["a", "b"]},
            "notes": {"type": "array", "items": {"type": "string"}},
        },
    }
    capped = json_grammar.cap_strings(schema, max_tokens=100)
    assert capped["properties"]["reasoning"]["maxLength"] == 150
    assert capped["properties"]["notes"]["items"]["maxLength"] == 150
    assert "maxLength" not in capped["properties"]["answer"]
    assert "maxLength" not in schema["properties"]["reasoning"]  # input untouched
    assert list(capped["properties"]) == ["reasoning", "answer", "notes"]  # order kept
    big = json_grammar.cap_strings(schema, max_tokens=100_000)
    assert big["properties"]["reasoning"]["maxLength"] == embedded_model.MAX_STRING_CHARS


@pytest.mark.parametrize(("n", "size"), [(0, 4), (1, 4), (5, 4), (8, 4), (9, 4), (13, 4), (1025, 512)])
def test_chunks_never_leave_a_single_token_batch(n, size):
    chunks = llama_engine._chunks(list(range(n)), size)
    assert [t for c in chunks for t in c] == list(range(n))
    assert all(1 <= len(c) <= size for c in chunks)
    if n > 1:
        assert all(len(c) >= 2 for c in chunks)


def test_missing_extra_error_is_not_retried(monkeypatch):
    monkeypatch.setattr(embedded_model, "_has_llama_cpp", lambda: False)
    monkeypatch.setattr(emb, "_ENGINE", emb.EmbeddedEngine())  # an engine that has not loaded
    emb.install_provider()
    model = dspy.LM(EMBEDDED_MODEL, engine="litellm", cache=False, num_retries=3)
    with pytest.raises(Exception, match=r"pip install 'metaspo-dspy\[embedded\]'"):
        model("hello")


# -- with the model --------------------------------------------------------------------------------
@needs_model
def test_predict_parses_typed_outputs_through_litellm(spy):
    model = lm()
    assert model.model == EMBEDDED_MODEL and model.engine == "litellm"
    prediction = predict(Arithmetic, model, question="What is 2 + 3?")
    assert isinstance(prediction.answer, int)
    assert prediction.size in ("small", "large")
    # The signature's JSON schema reached the provider (and became the llama.cpp grammar).
    schema = json_grammar.response_schema(spy[-1]["response_format"])
    assert schema["properties"]["answer"]["type"] == "integer"
    assert schema["properties"]["size"]["enum"] == ["small", "large"]
    assert spy[-1]["temperature"] == 0.0
    usage = model.history[-1]["usage"]
    assert usage["prompt_tokens"] == emb.engine().count_tokens(model.history[-1]["messages"])
    assert usage["prompt_tokens"] > 50 and 0 < usage["completion_tokens"] <= 64
    assert model.history[-1]["cost"] == 0


@needs_model
def test_optimizer_signature_parses():
    model = build_lm(LMSettings.for_optimizer(EMBEDDED_MODEL, max_tokens=96, extra={"cache": False}))
    prediction = predict(
        DiagnoseUserPrompt,
        model,
        system_prompt="You are a helpful assistant.",
        user_prompt="Answer the question. <Question>{question}</Question>",
        wrong_examples="Question: 2+2\nModel response: 5\nCorrect answer: 4",
    )
    assert isinstance(prediction.user_prompt_analysis, str)


@needs_model
def test_deterministic_at_temperature_zero():
    model = lm()
    first = predict(Arithmetic, model, question="What is 7 + 8?")
    other = predict(Arithmetic, model, question="Is 3 bigger than 2? Give 1 for yes.")
    again = predict(Arithmetic, model, question="What is 7 + 8?")
    assert (first.answer, first.size) == (again.answer, again.size)
    assert len(model.history) == 3  # cache off: three real calls
    assert other is not None


@needs_model
def test_prefix_reuse_does_not_change_answers():
    """The KV-cache prefix reuse gives the same tokens as evaluating every prompt from scratch."""
    system = "You are a careful assistant who answers math and trivia questions briefly. " * 6
    prompts = [
        [{"role": "system", "content": system}, {"role": "user", "content": f"What is {i} plus {3 * i + 1}?"}]
        for i in range(4)
    ]
    params = {"temperature": 0, "max_tokens": 24}
    fresh = emb.EmbeddedEngine(prefix_reuse=False)
    expected = [fresh.complete(p, params)["choices"][0]["text"] for p in prompts]
    fresh.close()
    reused = emb.engine()
    for i in [2, 0, 3, 1, 1, 2]:
        assert reused.complete(prompts[i], params)["choices"][0]["text"] == expected[i]


@needs_model
def test_concurrent_calls_are_serialised():
    model = lm()
    questions = [f"What is {i} + {i}?" for i in range(8)]
    sequential = [predict(Arithmetic, model, question=q).answer for q in questions]

    def run(question):
        return predict(Arithmetic, model, question=question).answer

    with ThreadPoolExecutor(max_workers=8) as pool:
        parallel = list(pool.map(run, questions))
    assert parallel == sequential


@needs_model
def test_async_call():
    model = lm()

    async def main():
        with dspy.context(lm=model, adapter=recommended_adapter()):
            return await dspy.Predict(Arithmetic).acall(question="What is 1 + 1?")

    assert isinstance(asyncio.run(main()).answer, int)


@needs_model
def test_generation_parameters_are_honoured():
    engine = emb.engine()
    messages = [{"role": "user", "content": "Write a long story about a dragon."}]
    out = engine.complete(messages, {"temperature": 0, "max_tokens": 12})
    assert out["completion_tokens"] <= 12 and out["choices"][0]["finish_reason"] == "length"
    story = engine.complete(messages, {"temperature": 0, "max_tokens": 40})["choices"][0]["text"]
    word = story.split()[3]
    stopped = engine.complete(messages, {"temperature": 0, "max_tokens": 40, "stop": [word]})["choices"][0]["text"]
    assert word not in stopped and story.startswith(stopped)
    hot = {"temperature": 1.0, "max_tokens": 24, "seed": 7}
    assert engine.complete(messages, hot)["choices"][0]["text"] == engine.complete(messages, hot)["choices"][0]["text"]
    two = engine.complete(messages, {**hot, "n": 2})
    assert len(two["choices"]) == 2


@needs_model
def test_too_long_prompt_raises_clearly():
    model = lm()
    with pytest.raises(Exception, match=r"context is 8192 tokens") as info:
        predict(Arithmetic, model, question="one two three four " * 3000)
    assert "Shorten the prompt" in str(info.value)


@needs_model
def test_small_context_engine_raises_before_evaluating():
    engine = emb.EmbeddedEngine(n_ctx=256)
    try:
        with pytest.raises(litellm.ContextWindowExceededError, match="METASPO_EMBEDDED_N_CTX"):
            engine.complete([{"role": "user", "content": "word " * 300}], {"max_tokens": 64})
    finally:
        engine.close()


@needs_model
def test_model_loads_once_per_process():
    engine = emb.engine()
    engine.load()
    loaded = engine._loaded
    barrier = threading.Barrier(4)

    def call(_):
        barrier.wait()
        return emb.engine().load()

    with ThreadPoolExecutor(max_workers=4) as pool:
        list(pool.map(call, range(4)))
    assert emb.engine()._loaded is loaded
