"""A loopback OpenAI-compatible mock model server, for benchmarks and fault-injection tests.

``python -m metaspo_dspy.testing.mock_server --port 0 --latency 0.1`` serves
``POST /v1/chat/completions`` on 127.0.0.1 and prints ``READY <port>`` when listening. Answers are
computed from the request by :class:`~metaspo_dspy.testing.fake_lm.FakeEngine` (deterministic;
gold answers from ``--gold FILE`` or ``$METASPO_FAKE_GOLD``). Options:

* ``--latency S`` and ``--jitter F``: each response waits ``S * uniform(1 - F, 1 + F)`` seconds
  (drawn from a hash of the request, so it is repeatable);
* ``--max-concurrency N``: at most N requests are served at once, later ones queue (or get HTTP
  429 with ``--reject-over-cap``);
* ``--error-rate``, ``--timeout-rate``, ``--garbage-rate``: inject HTTP 500s, hangs (the response
  never comes within ``--hang`` seconds) and 200s whose content is not what the adapter expects.
  Faults are drawn from a hash of (request, attempt number of that request), so a retry of a failed
  request can succeed, and the same run gets the same faults;
* ``--empty-choices-rate``, ``--empty-content-rate``, ``--truncate-rate``: 200s with
  ``"choices": []``, with message content ``null``, or with the content cut in half and
  ``finish_reason: "length"`` (faults ``empty_choices``, ``empty_content``, ``truncated``);
* ``--rate-limit-rate F`` with ``--retry-after S``: HTTP 429 with a ``Retry-After: S`` header
  (fault ``rate_limited``). All rates above share one draw per (request, attempt): they are
  cumulative slices of [0, 1) and must sum to at most 1;
* ``--status CODE``: every chat request answers HTTP ``CODE`` with an OpenAI-style error body
  (e.g. 401, 403, 404; fault ``status_CODE``), before any draw;
* ``--start-delay S``: every request in the first S seconds after start answers 503 (a
  still-starting server; fault ``starting``), before any draw;
* ``--never-answer``: every chat request is read, logged (status 0, fault ``never_answered``) and
  never answered: the connection stays open, silent, until the client gives up or the server stops
  (``--max-seconds``), like a server that accepts work it cannot do. Before any draw;
* ``--untagged``: raw (reference-format) task answers carry no ``<answer>`` tag, like a model that
  ignores the answer format: the reference parsers read nothing;
* ``--echo-auth``: every error body the server sends (injected 500s, 429s, 503s, ``--status``,
  hangs) repeats the request's ``Authorization`` header value, as some servers do;
* ``--record FILE``: each chat request's JSON body, one per line (``benchmarks/full_run.py`` replays
  them with the plain ``openai`` SDK as the reference's sequential baseline);
* ``--log FILE``: one JSON line per request (time, digest, kind, status, fault) -- the server's own
  record, used by tests to check that every fault was seen by the client.

``GET /stats`` returns counts by kind, status and fault (``fault:<name>``). Every loop stops by
itself: ``--max-seconds`` (default one hour) ends the server.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import sys
import time
from collections import Counter
from typing import Any

from metaspo_dspy.testing.fake_lm import FakeEngine, Request, short_hash, unit


class MockState:
    """Counters, fault decisions and the request log of one server."""

    def __init__(self, args: argparse.Namespace, engine: FakeEngine):
        self.args = args
        self.engine = engine
        self.counts: Counter[str] = Counter()
        self.attempts: Counter[str] = Counter()
        self.log = open(args.log, "a", encoding="utf-8") if args.log else None  # noqa: SIM115
        self.bodies = open(args.record, "a", encoding="utf-8") if args.record else None  # noqa: SIM115
        self.semaphore = asyncio.Semaphore(args.max_concurrency) if args.max_concurrency else None
        self.in_flight = 0
        self.started = time.monotonic()

    def fault(self, digest: str) -> str | None:
        """The fault injected into this attempt of the request ``digest`` (None: answer normally).

        ``--start-delay`` and ``--status`` come first and consume no draw; the rates are
        consecutive slices of one hash draw of (digest, attempt number, seed)."""
        a = self.args
        if time.monotonic() - self.started < a.start_delay:
            return "starting"
        if a.status:
            return f"status_{a.status}"
        attempt = self.attempts[digest]
        self.attempts[digest] += 1
        draw = unit("fault", digest, attempt, a.seed)
        edge = 0.0
        for name, rate in (
            ("http_500", a.error_rate),
            ("timeout", a.timeout_rate),
            ("garbage", a.garbage_rate),
            ("empty_choices", a.empty_choices_rate),
            ("empty_content", a.empty_content_rate),
            ("truncated", a.truncate_rate),
            ("rate_limited", a.rate_limit_rate),
        ):
            edge += rate
            if draw < edge:
                return name
        return None

    def record(self, digest: str, kind: str, status: int, fault: str | None) -> None:
        self.counts["requests"] += 1
        self.counts[f"kind:{kind}"] += 1
        self.counts[f"status:{status}"] += 1
        if fault:
            self.counts[f"fault:{fault}"] += 1
        if self.log is not None:
            entry = {"t": round(time.time(), 4), "digest": digest, "kind": kind, "status": status, "fault": fault}
            self.log.write(json.dumps(entry) + "\n")
            self.log.flush()


def _completion(model: str, text: str | None, fault: str | None = None) -> dict[str, Any]:
    """An OpenAI chat completion answering ``text``, shaped by a content fault (``empty_choices``,
    ``empty_content``, ``truncated``) when one was drawn."""
    finish = "stop"
    if fault == "empty_content":
        text = None
    elif fault == "truncated":
        text, finish = (text or "")[: len(text or "") // 2], "length"
    words = max(1, len((text or "").split()))
    choices = [{"index": 0, "message": {"role": "assistant", "content": text}, "finish_reason": finish}]
    return {
        "id": "chatcmpl-mock",
        "object": "chat.completion",
        "created": int(time.time()),
        "model": model,
        "choices": [] if fault == "empty_choices" else choices,
        "usage": {"prompt_tokens": 10, "completion_tokens": words, "total_tokens": 10 + words},
    }


_ERRORS = {
    400: ("invalid_request_error", "bad request"),
    401: ("invalid_request_error", "Incorrect API key provided"),
    403: ("permission_denied", "You are not allowed to use this model"),
    404: ("not_found_error", "The model does not exist"),
    429: ("rate_limit_error", "Rate limit reached, retry later"),
    500: ("server_error", "injected server error"),
    503: ("service_unavailable", "The server is starting, try again shortly"),
    504: ("timeout", "hung"),
}


def _error(status: int, authorization: str | None, headers: dict[str, str] | None = None):
    """An OpenAI-style error response; with ``--echo-auth`` (``authorization`` not None) the message
    repeats the request's Authorization header."""
    from aiohttp import web

    kind, message = _ERRORS.get(status, ("api_error", f"error {status}"))
    if authorization is not None:
        message += f" (request Authorization: {authorization})"
    body = {"error": {"message": message, "type": kind, "param": None, "code": str(status)}}
    return web.json_response(body, status=status, headers=headers)


def make_app(state: MockState):
    from aiohttp import web

    async def chat(request: web.Request) -> web.Response:
        body = await request.json()
        if state.bodies is not None:
            state.bodies.write(json.dumps(body) + "\n")
            state.bodies.flush()
        messages = body.get("messages", [])
        params = {k: v for k, v in body.items() if k not in ("messages", "model")}
        digest = short_hash(messages, params.get("seed"))
        auth = request.headers.get("Authorization", "") if state.args.echo_auth else None
        if state.args.never_answer:
            state.record(digest, Request(messages, params).kind, 0, "never_answered")
            await asyncio.sleep(state.args.max_seconds)  # cancelled when the client goes or the server stops
            return _error(504, auth)
        fault = state.fault(digest)
        if fault == "starting" or (fault or "").startswith("status_"):
            status = 503 if fault == "starting" else state.args.status
            state.record(digest, Request(messages, params).kind, status, fault)
            return _error(status, auth)
        if state.semaphore is not None and state.args.reject_over_cap and state.semaphore.locked():
            state.record(digest, "rejected", 429, None)
            return _error(429, auth)
        if state.semaphore is not None:
            await state.semaphore.acquire()
        try:
            a = state.args
            delay = a.latency * (1 + a.jitter * (2 * unit("latency", digest, state.attempts[digest]) - 1))
            await asyncio.sleep(max(0.0, delay))
            parsed = Request(messages, params)
            text = state.engine.answer(parsed)
            kind = parsed.kind
            if fault == "timeout":
                state.record(digest, kind, 0, fault)
                await asyncio.sleep(a.hang)
                return _error(504, auth)
            if fault == "http_500":
                state.record(digest, kind, 500, fault)
                return _error(500, auth)
            if fault == "rate_limited":
                state.record(digest, kind, 429, fault)
                return _error(429, auth, headers={"Retry-After": _seconds(a.retry_after)})
            if fault == "garbage":
                text = "<<garbage: the server mangled this completion>>"
            state.record(digest, kind, 200, fault)
            return web.json_response(_completion(body.get("model", "mock"), text, fault))
        finally:
            if state.semaphore is not None:
                state.semaphore.release()

    async def stats(request: web.Request) -> web.Response:
        return web.json_response(dict(state.counts))

    async def models(request: web.Request) -> web.Response:
        return web.json_response({"object": "list", "data": [{"id": "mock", "object": "model"}]})

    app = web.Application(client_max_size=64 * 1024**2)
    app.router.add_post("/v1/chat/completions", chat)
    app.router.add_post("/chat/completions", chat)
    app.router.add_get("/v1/models", models)
    app.router.add_get("/stats", stats)
    app.router.add_get("/health", lambda r: web.json_response({"ok": True}))
    return app


def _seconds(value: float) -> str:
    """A Retry-After header value: whole seconds as an integer, else a decimal."""
    return str(int(value)) if float(value).is_integer() else str(value)


async def serve(args: argparse.Namespace) -> None:
    from aiohttp import web

    gold = None
    path = args.gold or os.environ.get("METASPO_FAKE_GOLD")
    if path:
        with open(path, encoding="utf-8") as handle:
            gold = json.load(handle)
    state = MockState(args, FakeEngine(gold=gold, keep_requests=False, tag_answers=not args.untagged))
    runner = web.AppRunner(make_app(state), access_log=None)
    await runner.setup()
    # A hanging handler (--never-answer, --timeout-rate) does not hold the server's exit for long.
    site = web.TCPSite(runner, "127.0.0.1", args.port, backlog=1024, shutdown_timeout=1.0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    print(f"READY {port}", flush=True)
    try:
        await asyncio.sleep(args.max_seconds)
    finally:
        await runner.cleanup()


@contextlib.contextmanager
def running(*args: str, log: str | os.PathLike | None = None):
    """Start this server in a subprocess (options as on the command line); yields its base URL
    (``http://127.0.0.1:PORT/v1``) and stops the server on exit."""
    import subprocess

    command = [sys.executable, "-m", "metaspo_dspy.testing.mock_server", "--port", "0", "--max-seconds", "3600", *args]
    if log is not None:
        command += ["--log", str(log)]
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    try:
        line = process.stdout.readline()
        if not line.startswith("READY"):
            raise RuntimeError(f"mock server did not start: {line!r}")
        yield f"http://127.0.0.1:{line.split()[1]}/v1"
    finally:
        process.terminate()
        process.wait(timeout=10)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--port", type=int, default=0, help="0: any free port (printed as READY <port>)")
    p.add_argument("--latency", type=float, default=0.1, help="seconds per response")
    p.add_argument("--jitter", type=float, default=0.0, help="relative latency spread, e.g. 0.2 for +-20%%")
    p.add_argument("--max-concurrency", type=int, default=0, help="requests served at once (0: unlimited)")
    p.add_argument("--reject-over-cap", action="store_true", help="answer 429 instead of queueing over the cap")
    p.add_argument("--error-rate", type=float, default=0.0)
    p.add_argument("--timeout-rate", type=float, default=0.0)
    p.add_argument("--garbage-rate", type=float, default=0.0)
    p.add_argument("--empty-choices-rate", type=float, default=0.0, help='200 with "choices": []')
    p.add_argument("--empty-content-rate", type=float, default=0.0, help="200 with message content null")
    p.add_argument("--truncate-rate", type=float, default=0.0, help='200, content halved, finish_reason "length"')
    p.add_argument("--rate-limit-rate", type=float, default=0.0, help="HTTP 429 with a Retry-After header")
    p.add_argument("--retry-after", type=float, default=1.0, help="the Retry-After seconds of --rate-limit-rate")
    p.add_argument("--status", type=int, default=0, help="every chat request answers this HTTP status (0: off)")
    p.add_argument("--start-delay", type=float, default=0.0, help="answer 503 for this many seconds after start")
    p.add_argument("--echo-auth", action="store_true", help="error bodies repeat the Authorization header")
    p.add_argument(
        "--never-answer",
        action="store_true",
        help="read every chat request and never answer it (until --max-seconds): a hanging server",
    )
    p.add_argument("--hang", type=float, default=30.0, help="seconds an injected timeout hangs")
    p.add_argument("--seed", type=int, default=0, help="fault and latency draws")
    p.add_argument("--gold", help="JSON {question: answer} for correct answers")
    p.add_argument(
        "--untagged", action="store_true", help="raw-format task answers without <answer> tags (nothing parses)"
    )
    p.add_argument("--log", help="JSON-lines request log")
    p.add_argument("--record", help="append each chat request's JSON body to this file (benchmarks replay them)")
    p.add_argument("--max-seconds", type=float, default=3600.0, help="the server stops by itself after this")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> None:
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(serve(parse_args(argv)))


if __name__ == "__main__":
    sys.exit(main())
