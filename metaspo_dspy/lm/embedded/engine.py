"""The llama.cpp engine behind the embedded model: one model per process, calls serialised, JSON
schemas turned into grammars (:mod:`~metaspo_dspy.lm.embedded.json_grammar`), the KV cache of a shared prompt
prefix reused (see :meth:`EmbeddedEngine._prime`), greedy answers under a grammar sampled the fast
way (:mod:`~metaspo_dspy.lm.embedded.greedy_grammar`). The LiteLLM provider in :mod:`metaspo_dspy.lm.embedded.provider`
calls :meth:`EmbeddedEngine.complete`.
"""

from __future__ import annotations

import atexit
import itertools
import os
import threading
import time
from dataclasses import dataclass
from typing import Any

from metaspo_dspy.lm.embedded.json_grammar import grammar_for, response_schema
from metaspo_dspy.lm.embedded.model import (
    DEFAULT_MAX_TOKENS,
    EMBEDDED_MODEL,
    FINAL_BATCH,
    INSTALL_HINT,
    MAX_CONTEXT,
    MIN_OUTPUT_TOKENS,
    PROVIDER,
    SAMPLING_DEFAULTS,
    EmbeddedModelUnavailable,
    check_available,
)
from metaspo_dspy.lm.embedded.profile import CallProfile


@dataclass
class _Loaded:
    llama: Any
    formatter: Any
    eos_token: str
    load_seconds: float


class EmbeddedEngine:
    """One llama.cpp model and the lock that serialises its use."""

    def __init__(
        self,
        n_ctx: int | None = None,
        n_threads: int | None = None,
        prefix_reuse: bool | None = None,
        greedy_grammar: bool | None = None,
    ):
        """``prefix_reuse`` (default on; ``METASPO_EMBEDDED_PREFIX_REUSE=0``): see :meth:`_prime`.
        ``greedy_grammar`` (default on; ``METASPO_EMBEDDED_GREEDY_GRAMMAR=0``): at temperature 0
        with a grammar, ask the grammar only about the greedy pick
        (:mod:`~metaspo_dspy.lm.embedded.greedy_grammar`; the same tokens, a third less generation time in the demo).
        """
        self.n_ctx = int(n_ctx or os.environ.get("METASPO_EMBEDDED_N_CTX") or MAX_CONTEXT)
        if not 256 <= self.n_ctx <= MAX_CONTEXT:
            raise ValueError(f"n_ctx must be between 256 and {MAX_CONTEXT}, got {self.n_ctx}")
        self.n_threads = int(n_threads or os.environ.get("METASPO_EMBEDDED_THREADS") or _cpu_count())
        self.prefix_reuse = _switch(prefix_reuse, "METASPO_EMBEDDED_PREFIX_REUSE")
        self.greedy_grammar = _switch(greedy_grammar, "METASPO_EMBEDDED_GREEDY_GRAMMAR")
        self._loaded: _Loaded | None = None
        self._lock = threading.Lock()
        self.profile = CallProfile.from_env()  # per-call timings, when METASPO_EMBEDDED_PROFILE is set

    @property
    def load_seconds(self) -> float | None:
        return self._loaded.load_seconds if self._loaded else None

    def _load(self) -> _Loaded:
        # Under self._lock.
        if self._loaded is None:
            path = check_available()
            try:
                from llama_cpp.llama_chat_format import Jinja2ChatFormatter

                from metaspo_dspy.lm.embedded.greedy_grammar import GrammarLlama
            except ImportError as exc:  # pragma: no cover - a broken install
                raise EmbeddedModelUnavailable(f"llama-cpp-python fails to import ({exc}): {INSTALL_HINT}") from exc
            start = time.perf_counter()
            llama = GrammarLlama(
                model_path=str(path),
                n_ctx=self.n_ctx,
                n_batch=512,
                n_threads=self.n_threads,
                n_threads_batch=self.n_threads,
                verbose=False,
            )
            model = llama._model
            eos_id, bos_id = llama.token_eos(), llama.token_bos()
            eos = model.token_get_text(eos_id) if eos_id != -1 else ""
            bos = model.token_get_text(bos_id) if bos_id != -1 else ""
            formatter = Jinja2ChatFormatter(
                template=llama.metadata["tokenizer.chat_template"],
                eos_token=eos,
                bos_token=bos,
                stop_token_ids=[eos_id],
            )
            self._loaded = _Loaded(llama, formatter, eos, time.perf_counter() - start)
            # Free llama.cpp while the interpreter is intact (its __del__ at shutdown prints errors).
            atexit.register(self.close)
        return self._loaded

    def close(self) -> None:
        """Free the model (a later call loads it again)."""
        with self._lock:
            loaded, self._loaded = self._loaded, None
            if loaded is not None:
                loaded.llama.close()

    def load(self) -> float:
        """Load the model now (normally lazy); returns the load time in seconds."""
        with self._lock:
            return self._load().load_seconds

    def count_tokens(self, messages: list[dict[str, Any]]) -> int:
        """The prompt length of ``messages`` in tokens, chat template included."""
        with self._lock:
            loaded = self._load()
            return len(self._tokens(loaded, _plain_messages(messages))[0])

    @staticmethod
    def _tokens(loaded: _Loaded, messages: list[dict[str, str]]) -> tuple[list[int], Any]:
        result = loaded.formatter(messages=messages)
        tokens = loaded.llama.tokenize(result.prompt.encode("utf-8"), add_bos=not result.added_special, special=True)
        return tokens, result

    def _prime(self, llama: Any, tokens: list[int]) -> int:
        """Evaluate all but the last :data:`FINAL_BATCH` prompt tokens, reusing the KV cache.

        llama.cpp computes a token's values the same in any batch of two or more tokens, but
        differently alone. So: reuse the longest prefix the cache shares with ``tokens``, evaluate
        the rest up to the last ``FINAL_BATCH`` tokens in batches of at least two, and leave those
        last tokens to ``create_completion``, which evaluates them as one batch (its own prefix check
        finds exactly the primed part). Every call thus sees the same numbers as a call on a fresh
        model, whatever ran before it, and a prompt sharing a long prefix with the previous one (the
        same signature and system prompt, another example) costs only its new tokens. Returns the
        number of prompt tokens reused.
        """
        final = min(FINAL_BATCH, len(tokens) - 1)
        target = len(tokens) - final
        if not self.prefix_reuse:
            llama.reset()
        cached = llama.input_ids[: llama.n_tokens].tolist()
        shared = 0
        for a, b in zip(cached, tokens[:target], strict=False):
            if a != b:
                break
            shared += 1
        llama.n_tokens = shared
        llama._requires_eval = True
        for chunk in _chunks(tokens[shared:target], llama.n_batch):
            llama.eval(chunk)
        return shared

    def _greedy_grammar(self, llama: Any, grammar: Any, sampling: dict[str, float]) -> Any:
        """Set (and return) the fast sampler on ``llama`` for a greedy call with a grammar, or None."""
        if not (self.greedy_grammar and grammar is not None and sampling["temperature"] == 0.0):
            return None
        from metaspo_dspy.lm.embedded.greedy_grammar import GreedyGrammarSampler

        llama.greedy_grammar = GreedyGrammarSampler(
            llama,
            grammar,
            repeat_penalty=sampling["repeat_penalty"],
            frequency_penalty=sampling["frequency_penalty"],
            presence_penalty=sampling["presence_penalty"],
            last_n=llama.last_n_tokens_size,
        )
        return llama.greedy_grammar

    def complete(self, messages: list[dict[str, Any]], params: dict[str, Any]) -> dict[str, Any]:
        """Run one chat completion; ``params`` are OpenAI-style generation parameters.

        Returns ``{"choices": [{"text", "finish_reason"}...], "prompt_tokens", "completion_tokens"}``.
        """
        messages = _plain_messages(messages)
        unsupported = {"tools", "tool_choice", "functions", "function_call"} & {k for k, v in params.items() if v}
        if unsupported:
            raise ValueError(f"the embedded model does not support {sorted(unsupported)}")
        temperature = params.get("temperature")
        temperature = 0.0 if temperature is None else float(temperature)
        requested = params.get("max_tokens") or params.get("max_completion_tokens") or DEFAULT_MAX_TOKENS
        requested = int(requested)
        stop = params.get("stop") or []
        stop = [stop] if isinstance(stop, str) else list(stop)
        n = int(params.get("n") or 1)
        seed = params.get("seed")
        schema = response_schema(params.get("response_format"))

        with self._lock:
            loaded = self._load()
            tokens, formatted = self._tokens(loaded, messages)
            room = self.n_ctx - len(tokens)
            if room < min(requested, MIN_OUTPUT_TOKENS):
                raise _context_error(len(tokens), self.n_ctx, min(requested, MIN_OUTPUT_TOKENS))
            max_tokens = min(requested, room)
            grammar = grammar_for(loaded.llama, schema, max_tokens) if schema is not None else None
            sampling = {
                "temperature": temperature,
                "top_p": float(params.get("top_p") or SAMPLING_DEFAULTS["top_p"]),
                "top_k": SAMPLING_DEFAULTS["top_k"],
                "min_p": SAMPLING_DEFAULTS["min_p"],
                "repeat_penalty": SAMPLING_DEFAULTS["repeat_penalty"],
                "presence_penalty": float(params.get("presence_penalty") or 0.0),
                "frequency_penalty": float(params.get("frequency_penalty") or 0.0),
            }
            choices, completion_tokens = [], 0
            for i in range(n):
                started = time.perf_counter()
                reused = self._prime(loaded.llama, tokens)
                primed = time.perf_counter()
                fast = self._greedy_grammar(loaded.llama, grammar, sampling)
                try:
                    out = loaded.llama.create_completion(
                        prompt=tokens,
                        max_tokens=max_tokens,
                        stop=stop + [s for s in formatted.stop if s],
                        stopping_criteria=formatted.stopping_criteria,
                        grammar=grammar,
                        seed=None if seed is None else int(seed) + i,
                        **sampling,
                    )
                finally:
                    loaded.llama.greedy_grammar = None
                    if fast is not None:
                        fast.close()
                choice = out["choices"][0]
                choices.append({"text": choice["text"], "finish_reason": choice.get("finish_reason") or "stop"})
                completion_tokens += out["usage"]["completion_tokens"]
                if self.profile is not None:
                    self.profile.record(
                        temperature=temperature, prompt_tokens=len(tokens), reused_tokens=reused,
                        completion_tokens=out["usage"]["completion_tokens"], grammar=grammar is not None,
                        grammar_checks=None if fast is None else [fast.fast, fast.top, fast.full],
                        prompt_seconds=primed - started, completion_seconds=time.perf_counter() - primed,
                    )  # fmt: skip
        return {"choices": choices, "prompt_tokens": len(tokens), "completion_tokens": completion_tokens}


def _switch(value: bool | None, variable: str) -> bool:
    """``value`` if given, else on unless the environment variable is ``0``."""
    return value if value is not None else os.environ.get(variable, "1") != "0"


def _chunks(tokens: list[int], size: int) -> list[list[int]]:
    """Split into batches of at most ``size`` tokens, none of exactly one token."""
    bounds = [*range(0, len(tokens), size), len(tokens)]
    if len(bounds) > 2 and bounds[-1] - bounds[-2] == 1:
        bounds[-2] -= 1
    return [tokens[a:b] for a, b in itertools.pairwise(bounds) if b > a]


def _cpu_count() -> int:
    """CPUs this process may use (llama-cpp-python's default is half of ``os.cpu_count()``)."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except (AttributeError, OSError):  # pragma: no cover - not on Linux
        return os.cpu_count() or 1


def _plain_messages(messages: list[dict[str, Any]]) -> list[dict[str, str]]:
    plain = []
    for message in messages:
        content = message.get("content")
        if isinstance(content, list):
            parts = []
            for part in content:
                if isinstance(part, dict) and part.get("type", "text") == "text":
                    parts.append(str(part.get("text", "")))
                else:
                    raise ValueError("the embedded model accepts text content only")
            content = "\n".join(parts)
        plain.append({"role": str(message.get("role", "user")), "content": "" if content is None else str(content)})
    return plain


def _context_error(prompt_tokens: int, n_ctx: int, needed: int) -> Exception:
    import litellm

    return litellm.ContextWindowExceededError(
        message=(
            f"The prompt is {prompt_tokens} tokens; the embedded model's context is {n_ctx} tokens and "
            f"at least {needed} must stay free for the answer. Shorten the prompt (fewer wrong examples "
            f"or demos, a shorter system prompt) or lower max_tokens"
            + ("" if n_ctx >= MAX_CONTEXT else f", or raise METASPO_EMBEDDED_N_CTX (up to {MAX_CONTEXT})")
            + "."
        ),
        model=EMBEDDED_MODEL,
        llm_provider=PROVIDER,
    )


# -- the LiteLLM provider ----------------------------------------------------------------------
