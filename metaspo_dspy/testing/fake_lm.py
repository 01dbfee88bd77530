"""A deterministic fake LM behind a LiteLLM custom provider, for tests and dry runs.

The fake computes each answer from the request itself, so it behaves the same under any thread
interleaving and in any process:

* **task calls**: it reads the system prompt, the instructions (user prompt) and the question out
  of the messages (Chat, JSON, XML or raw reference format) and answers correctly with a
  probability -- a deterministic hash draw -- given by ``skill(system_prompt, user_prompt)``;
  the correct answer comes from ``gold`` (a dict or callable keyed by the question text). Without a
  gold answer it picks an option letter or a rating from the question's hash.
* **optimizer calls** (the signatures in :mod:`metaspo_dspy.optimize.proposer.signatures`): it writes an
  analysis and a new prompt whose text is a hash of the request and of the ``seed`` parameter, so
  distinct requests give distinct prompts; slots like ``<Question>{question}</Question>`` and the
  text after them are kept.

Every request is counted by kind (``task``, ``optimizer``) in :attr:`FakeEngine.counts` and, when
``log_path`` is set (or ``METASPO_FAKE_LOG`` in the environment), appended to a JSON-lines file,
so tests count what reaches the provider independently of our own bookkeeping.

Use ``fake_lm("name", engine)`` to get a ``dspy.LM``; the model string ``metaspo-fake/<name>``
with no registered engine uses a default engine configured from the environment
(``METASPO_FAKE_LOG``, ``METASPO_FAKE_GOLD`` -- a JSON file ``{question: answer}`` --,
``METASPO_FAKE_LATENCY`` and ``METASPO_FAKE_OPTIMIZER_LATENCY`` in seconds, ``METASPO_FAKE_UNTAGGED=1``
for raw-format answers without the ``<answer>`` tag).
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import textwrap
import threading
import time
from collections import Counter
from collections.abc import Callable, Mapping
from typing import Any

from metaspo_dspy.lm.providers import PROBE as PREFLIGHT_PROBE

#: The model-string prefix the fake serves: the name of its ``metaspo_dspy.providers`` entry point
#: (``pyproject.toml``), through which :func:`metaspo_dspy.lm.build_lm` and worker processes run
#: :func:`install_provider`.
PROVIDER = "metaspo-fake"
OPTIMIZER_FIELDS = {
    "user_prompt_analysis",
    "improved_user_prompt",
    "system_prompt_analysis",
    "improved_system_prompt",
    "proposed_instruction",
    "paraphrased_instruction",
}
_HEADER = re.compile(r"^\[\[ ## (\w+) ## \]\]\s*$")
_OUTPUTS = re.compile(r"Your output fields are:\n(.*?)\nAll interactions", re.S)
_FIELD = re.compile(r"^\d+\. `(\w+)`", re.M)
_OPTION = re.compile(r"^\(([A-G])\)", re.M)


def unit(*parts: Any) -> float:
    """A deterministic number in [0, 1) from ``parts``."""
    digest = hashlib.sha256(json.dumps(parts, default=str).encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2**64


def short_hash(*parts: Any) -> str:
    return hashlib.sha256(json.dumps(parts, default=str).encode()).hexdigest()[:8]


def default_skill(system_prompt: str, user_prompt: str) -> float:
    """Pseudo-random prompt quality in [0.15, 0.95): each prompt text has its own fixed skill."""
    return 0.15 + 0.4 * unit("system", system_prompt) + 0.4 * unit("user", user_prompt)


class Request:
    """What the fake reads out of one chat request."""

    def __init__(self, messages: list[dict[str, Any]], params: Mapping[str, Any]):
        self.messages = messages
        self.params = dict(params)
        self.system = "\n".join(_text(m["content"]) for m in messages if m.get("role") == "system")
        users = [_text(m["content"]) for m in messages if m.get("role") == "user"]
        self.user = users[-1] if users else ""
        match = _OUTPUTS.search(self.system)
        self.outputs = _FIELD.findall(match.group(1)) if match else []
        if not self.outputs:
            self.format = "raw"
        elif "Outputs will be a JSON object" in self.system or self.params.get("response_format"):
            self.format = "json"
        elif "[[ ## completed ## ]]" in self.system:
            self.format = "chat"
        else:
            self.format = "xml"
        self.kind = "optimizer" if OPTIMIZER_FIELDS & set(self.outputs) else "task"
        if self.format == "raw" and self.user.strip() == PREFLIGHT_PROBE:
            self.kind = "preflight"  # metaspo_dspy.lm.preflight's connection check, counted apart
        self.inputs, self.instructions = self._parse_user()
        if self.format == "raw":
            self.system_prompt = self.system
        else:
            self.system_prompt = self.system.split("Your input fields are:")[0].strip()
            marker = "your objective is:"
            if marker in self.system and not self.instructions:
                self.instructions = textwrap.dedent(self.system.split(marker, 1)[1]).strip()

    def _parse_user(self) -> tuple[dict[str, str], str]:
        if self.format == "raw":
            match = re.search(r"<Question>(.*?)</Question>", self.user, re.S)
            question = match.group(1) if match else self.user
            return {"question": question}, self.user.replace(question, "{question}") if match else self.user
        if self.format == "xml":
            values = dict(re.findall(r"<(\w+)>\n?(.*?)\n?</\1>", self.user, re.S))
            head = self.user.split("<", 1)[0].strip()
            return {k: v.strip() for k, v in values.items()}, head
        sections: dict[str, list[str]] = {}
        head: list[str] = []
        current: list[str] = head
        for line in self.user.splitlines():
            match = _HEADER.match(line.strip())
            if match:
                current = sections.setdefault(match.group(1), [])
            else:
                current.append(line)
        values = {}
        for name, lines in sections.items():
            text = "\n".join(lines).strip()
            values[name] = re.split(r"\n\nRespond with ", text)[0].strip()
        return values, "\n".join(head).strip()


def _text(content: Any) -> str:
    if isinstance(content, list):
        return "\n".join(p.get("text", "") for p in content if isinstance(p, dict))
    return str(content or "")


class FakeEngine:
    """Computes responses; see the module docstring.

    Args:
        gold: question text -> correct answer (value or list of acceptable values).
        skill: ``skill(system_prompt, user_prompt) -> probability of a correct answer``.
        override: optional ``override(request) -> str | None``; a string replaces the normal
            response (e.g. malformed output), None keeps it.
        log_path: JSON-lines request log.
        latency: seconds to sleep per task request (and per optimizer request unless
            ``optimizer_latency`` is given).
        keep_requests: keep every parsed request in :attr:`requests` (tests inspect them; long
            benchmarks turn it off).
        tag_answers: in the raw (reference) format, wrap task answers in ``<answer>...</answer>``;
            False answers like a model that ignores the format (``The answer is (B).``), so the
            reference parsers read nothing.
    """

    def __init__(
        self,
        gold: Mapping[str, Any] | Callable[[str], Any] | None = None,
        skill: Callable[[str, str], float] = default_skill,
        override: Callable[[Request], str | None] | None = None,
        log_path: str | None = None,
        latency: float = 0.0,
        keep_requests: bool = True,
        optimizer_latency: float | None = None,
        tag_answers: bool = True,
    ):
        self.gold = gold
        self.tag_answers = tag_answers
        self.skill = skill
        self.override = override
        self.log_path = log_path
        self.latency = latency
        self.optimizer_latency = latency if optimizer_latency is None else optimizer_latency
        self.keep_requests = keep_requests
        self.counts: Counter[str] = Counter()
        self.requests: list[Request] = []
        self._lock = threading.Lock()

    @classmethod
    def from_env(cls) -> FakeEngine:
        gold = None
        path = os.environ.get("METASPO_FAKE_GOLD")
        if path:
            with open(path, encoding="utf-8") as handle:
                gold = json.load(handle)
        optimizer_latency = os.environ.get("METASPO_FAKE_OPTIMIZER_LATENCY")
        return cls(
            gold=gold,
            log_path=os.environ.get("METASPO_FAKE_LOG"),
            latency=float(os.environ.get("METASPO_FAKE_LATENCY", "0")),
            optimizer_latency=float(optimizer_latency) if optimizer_latency else None,
            tag_answers=os.environ.get("METASPO_FAKE_UNTAGGED", "") not in ("1", "true"),
        )

    # -- bookkeeping -------------------------------------------------------------------------
    def _record(self, request: Request) -> None:
        with self._lock:
            self.counts[request.kind] += 1
            self.counts[f"{request.kind}:{request.format}"] += 1
            if self.keep_requests:
                self.requests.append(request)
            if self.log_path:
                entry = {
                    "kind": request.kind,
                    "format": request.format,
                    "outputs": request.outputs,
                    "system_prompt": request.system_prompt,
                    "digest": hashlib.sha256(
                        json.dumps([request.messages, request.params.get("seed")], default=str).encode()
                    ).hexdigest()[:16],
                }
                with open(self.log_path, "a", encoding="utf-8") as handle:
                    handle.write(json.dumps(entry) + "\n")

    def reset(self) -> None:
        with self._lock:
            self.counts.clear()
            self.requests.clear()

    # -- answers -----------------------------------------------------------------------------
    def respond(self, messages: list[dict[str, Any]], params: Mapping[str, Any]) -> str:
        """The response text for one chat request (recorded, counted)."""
        return self.answer(Request(messages, params))

    def answer(self, request: Request) -> str:
        """The response text for a parsed request; counted and logged once the response is ready
        (after the configured latency), so the log lists completed requests."""
        replaced = self.override(request) if self.override else None
        if replaced is not None:
            text = replaced
        elif request.kind == "preflight":
            text = "OK"
        elif request.kind == "optimizer":
            text = _render(request, self._optimizer_values(request))
        else:
            text = _render(request, self._task_values(request), self.tag_answers)
        delay = self.optimizer_latency if request.kind == "optimizer" else self.latency
        if delay:
            time.sleep(delay)
        self._record(request)
        return text

    def _gold(self, question: str) -> Any:
        if self.gold is None:
            return None
        if callable(self.gold):
            return self.gold(question)
        return self.gold.get(question)

    def _task_values(self, request: Request) -> dict[str, Any]:
        question = next(iter(request.inputs.values()), request.user) if request.inputs else request.user
        question = request.inputs.get("question", question)
        gold = self._gold(question)
        draw = unit("answer", request.system_prompt, request.instructions, question)
        if gold is not None and draw < self.skill(request.system_prompt, request.instructions):
            answer = gold[0] if isinstance(gold, list) else gold
        else:
            answer = self._wrong(question, gold)
        outputs = request.outputs or ["answer"]
        values = {name: "Let me work through it." for name in outputs}
        values[outputs[-1]] = str(answer)
        return values

    @staticmethod
    def _wrong(question: str, gold: Any) -> str:
        options = _OPTION.findall(question)
        if gold is None:
            choices = options or ["1", "2", "3", "4", "5"]
            return choices[int(unit("pick", question) * len(choices))]
        text = str(gold[0] if isinstance(gold, list) else gold).strip()
        if len(text) == 1 and text.upper() in "ABCDEFG":
            letters = options or list("ABCD")
            others = [x for x in letters if x != text.upper()] or ["Z"]
            return others[int(unit("wrong", question) * len(others))]
        if text.isdigit():
            return str(int(text) % 5 + 1)
        if text.lower() in ("yes", "no"):
            return "no" if text.lower() == "yes" else "yes"
        return "unknown"

    def _optimizer_values(self, request: Request) -> dict[str, str]:
        tag = short_hash(request.inputs, request.params.get("seed"))
        values = {}
        for name in request.outputs:
            if name.endswith("analysis"):
                values[name] = f"Analysis {tag}: the prompt leaves the answer format and the method unclear."
            elif name == "improved_system_prompt":
                values[name] = f"System variant {tag}: reason step by step and answer precisely."
            else:
                base = request.inputs.get("user_prompt") or request.inputs.get("instruction") or ""
                values[name] = _keep_slots(f"Variant {tag}: read the input carefully and answer precisely.", base)
        return values


def _keep_slots(text: str, base: str) -> str:
    if "<Question>" in base:
        return text + base[base.index("<Question>") :]
    if "{question}" in base:
        return f"{text} {{question}}"
    return text


def _render(request: Request, values: dict[str, Any], tagged: bool = True) -> str:
    if request.format == "raw":
        answer = values.get("answer", next(iter(values.values())))
        return f"Let me think. <answer>{answer}</answer>" if tagged else f"Let me think. The answer is ({answer})."
    if request.format == "json":
        return json.dumps(values)
    if request.format == "xml":
        return "\n".join(f"<{k}>\n{v}\n</{k}>" for k, v in values.items())
    body = "\n\n".join(f"[[ ## {k} ## ]]\n{v}" for k, v in values.items())
    return f"{body}\n\n[[ ## completed ## ]]"


# -- LiteLLM provider ------------------------------------------------------------------------
_ENGINES: dict[str, FakeEngine] = {}
_DEFAULT: list[FakeEngine] = []
_REGISTER_LOCK = threading.Lock()


def _engine_for(model: str) -> FakeEngine:
    name = model.split("/", 1)[1] if model.startswith(PROVIDER + "/") else model
    engine = _ENGINES.get(name)
    if engine is None:
        with _REGISTER_LOCK:
            if not _DEFAULT:
                _DEFAULT.append(FakeEngine.from_env())
        engine = _DEFAULT[0]
    return engine


def install_provider() -> None:
    """Register the ``metaspo-fake`` provider with LiteLLM (idempotent; appends, never replaces)."""
    import litellm
    from litellm import CustomLLM

    with _REGISTER_LOCK:
        if any(entry.get("provider") == PROVIDER for entry in litellm.custom_provider_map):
            return

        class _FakeProvider(CustomLLM):
            def completion(self, model, messages, *args, **kwargs):
                params = kwargs.get("optional_params") or {}
                text = _engine_for(model).respond(messages, params)
                return _model_response(model, text)

            async def acompletion(self, model, messages, *args, **kwargs):
                return self.completion(model, messages, *args, **kwargs)

        litellm.custom_provider_map.append({"provider": PROVIDER, "custom_handler": _FakeProvider()})
        litellm.suppress_debug_info = True
        # Make LiteLLM list the provider now, not at its first completion: until then it reports no
        # supported params for it and DSPy's JSONAdapter would send no response_format.
        from litellm.utils import custom_llm_setup

        custom_llm_setup()


def _model_response(model: str, text: str):
    import litellm

    words = max(1, len(text.split()))
    return litellm.ModelResponse(
        model=model,
        choices=[{"index": 0, "finish_reason": "stop", "message": {"role": "assistant", "content": text}}],
        usage={"prompt_tokens": 10, "completion_tokens": words, "total_tokens": 10 + words},
    )


def register(name: str, engine: FakeEngine) -> str:
    """Route ``metaspo-fake/<name>`` to ``engine``; returns the model string."""
    install_provider()
    _ENGINES[name] = engine
    return f"{PROVIDER}/{name}"


def fake_lm(name: str = "default", engine: FakeEngine | None = None, **lm_kwargs: Any):
    """A ``dspy.LM`` served by a fake engine through LiteLLM (cache off unless asked)."""
    import dspy

    model = register(name, engine) if engine is not None else (install_provider() or f"{PROVIDER}/{name}")
    lm_kwargs.setdefault("cache", False)
    return dspy.LM(model, engine="litellm", **lm_kwargs)
