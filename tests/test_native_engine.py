"""build_lm's native engine (issue 14): DSPy's own client behind DSPy's public engine protocol.

It must send exactly what ``dspy.LM(engine="lm15")`` sends, keep keys out of its state (pickles
and saved programs hold the variable's name), and work from async code. Fault recording on both
engines is tested in test_faults.py and test_loud_faults.py."""

from __future__ import annotations

import asyncio
import json
import pickle
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import cloudpickle
import dspy
import pytest

from metaspo_dspy.lm import LMSettings, build_lm
from metaspo_dspy.lm.native import NativeEngine, native_settings

SECRET = "sk-native-test-0123456789"
ANSWER = "[[ ## answer ## ]]\n42\n\n[[ ## completed ## ]]"


@contextmanager
def capture() -> Iterator[tuple[str, list[tuple[dict, bytes]]]]:
    """A loopback OpenAI-compatible server that records each request's headers and body."""
    seen: list[tuple[dict, bytes]] = []

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self):
            body = self.rfile.read(int(self.headers["content-length"]))
            seen.append((dict(self.headers), body))
            reply = {
                "id": "x",
                "object": "chat.completion",
                "created": 1,
                "model": "m",
                "choices": [{"index": 0, "message": {"role": "assistant", "content": ANSWER}, "finish_reason": "stop"}],
                "usage": {"prompt_tokens": 11, "completion_tokens": 5, "total_tokens": 16},
            }
            data = json.dumps(reply).encode()
            self.send_response(200)
            self.send_header("content-type", "application/json")
            self.send_header("content-length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def log_message(self, *args):
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_port}/v1", seen
    finally:
        server.shutdown()
        server.server_close()


def _ask(lm) -> tuple[str, dict]:
    with dspy.context(lm=lm), dspy.track_usage() as usage:
        answer = dspy.Predict("question -> answer")(question="What is 6 x 7?").answer
    return answer, usage.get_total_tokens()


@pytest.mark.parametrize("model", ["openai/served", "hosted_vllm/served"])
def test_native_sends_what_dspys_own_client_sends(model):
    with capture() as (url, seen):
        stock = dspy.LM(
            model,
            api_base=url,
            api_key="EMPTY",
            engine="lm15",
            cache=False,
            max_tokens=64,
            stop=["##"],
            temperature=0.0,
        )
        ours = build_lm(LMSettings(model, api_base=url, max_tokens=64, extra={"cache": False, "stop": ["##"]}))
        assert isinstance(ours.engine, NativeEngine)  # the default engine for an OpenAI-compatible server
        stock_answer, stock_usage = _ask(stock)
        our_answer, our_usage = _ask(ours)
    (stock_headers, stock_body), (our_headers, our_body) = seen
    assert our_body == stock_body and b'_tokens":64' in our_body
    assert {k: v for k, v in our_headers.items() if k != "Host"} == {
        k: v for k, v in stock_headers.items() if k != "Host"
    }
    assert our_answer == stock_answer == "42"
    assert our_usage == stock_usage and our_usage[model]["prompt_tokens"] == 11


def test_keys_are_read_where_the_engine_is_rebuilt_never_carried(monkeypatch):
    monkeypatch.setenv("MY_SERVER_KEY", SECRET)
    with capture() as (url, seen):
        lm = build_lm(LMSettings("openai/served", api_base=url, api_key_env="MY_SERVER_KEY", extra={"cache": False}))
        _ask(lm)
        data = cloudpickle.dumps(lm)
        assert SECRET.encode() not in data and SECRET not in json.dumps(lm.dump_state())
        monkeypatch.setenv("MY_SERVER_KEY", SECRET + "-rotated")
        copy = pickle.loads(data)
        assert native_settings(copy) == native_settings(lm)
        _ask(copy)
    assert [headers["Authorization"] for headers, _ in seen] == [f"Bearer {SECRET}", f"Bearer {SECRET}-rotated"]


def test_async_calls_work_from_several_event_loops():
    with capture() as (url, seen):
        lm = build_lm(LMSettings("openai/served", api_base=url, extra={"cache": False}))

        async def ask():
            with dspy.context(lm=lm):
                return (await dspy.Predict("question -> answer").acall(question="What is 6 x 7?")).answer

        assert asyncio.run(ask()) == asyncio.run(ask()) == "42"
    assert len(seen) == 2


@pytest.mark.parametrize("model", ["openai/gpt-4o-mini", "hosted_vllm/served"])
def test_capabilities_are_those_of_dspys_native_route(model, monkeypatch):
    """DSPy asks a custom engine what the model can do (structured outputs for JSONAdapter, which
    parameters such as ``seed`` may be sent): the answers must be those of the stock route."""
    from dspy.clients.capabilities import capabilities

    monkeypatch.setenv("OPENAI_API_KEY", SECRET)
    stock = dspy.LM(model, engine="lm15", api_base="http://localhost:9/v1", api_key="EMPTY")
    ours = build_lm(LMSettings(model, api_base="http://localhost:9/v1"))
    assert isinstance(ours.engine, NativeEngine)
    assert capabilities(ours) == capabilities(stock)
    assert ours.supported_params == stock.supported_params and "seed" in ours.supported_params
    assert ours.supports_response_schema == stock.supports_response_schema
