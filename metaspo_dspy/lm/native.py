"""DSPy's own HTTP client (lm15) behind DSPy's public engine protocol, with every attempt observed.

``dspy.LM(model, engine="lm15")`` sends requests through DSPy's native client, which costs about a
third of LiteLLM's client CPU per call, but DSPy's retry loop gives no sign of an attempt that
failed and was retried, so a run's ``faults.jsonl`` would miss it. :class:`NativeEngine` is the
same client (``dspy.clients.engines.LM15Engine``, configured exactly as DSPy configures it for
that model) passed as a custom engine (``dspy.LM(model, engine=NativeEngine(...))``): DSPy's
execution layer still owns retries (``num_retries``, backoff, ``Retry-After``), caching, usage and
history, and calls :meth:`NativeEngine.complete` once per attempt; each failed attempt is reported
to every open :class:`~metaspo_dspy.store.faults.FaultLog` before it propagates.

Besides the observation, a custom engine skips DSPy's per-call backend selection (which rebuilds an
lm15 router for every call to decide between its engines), which is most of what the stock native
path costs on top of the HTTP exchange itself (``benchmarks/README.md``, table "client CPU per call").

Contracts:

* The request bytes, headers and answers are those of ``engine="lm15"`` (tests compare them).
* The engine holds no secret in its state: :meth:`dump_state` (used when DSPy saves an LM) and
  pickling (used to send programs to worker processes) keep the *name* of the key's environment
  variable, or the keyless placeholder, and read the key again where the engine is rebuilt.
* One engine may be shared by copies of an LM and by threads; async calls get one lm15 async
  engine per running event loop.
* ``Retry-After`` is capped: DSPy's execution layer waits as long as a failed attempt's
  ``retry_after`` says (the server's ``Retry-After`` header) before the next attempt, with no upper
  bound. The engine lowers that hint on the error it raises to ``max_retry_after`` seconds (default
  :data:`MAX_RETRY_AFTER`), and announces any wait of :data:`ANNOUNCE_WAIT` seconds or more (a
  ``logging`` warning, at most one per wait per engine), so a server that
  asks for minutes is neither obeyed blindly nor waited for in silence.
"""

from __future__ import annotations

import asyncio
import logging
import math
import os
import threading
import time
import weakref
from collections.abc import AsyncIterator, Iterator
from typing import Any

from metaspo_dspy.errors import ModelConfigError
from metaspo_dspy.lm.providers import OPENAI_COMPATIBLE, PLACEHOLDER_API_KEY
from metaspo_dspy.redact import redact
from metaspo_dspy.store import faults

logger = logging.getLogger(__name__)

#: The longest wait a server's ``Retry-After`` gets before the next attempt, in seconds (a setting:
#: ``max_retry_after``). A minute covers the usual rate-limit windows; a server asking for more
#: is retried after a minute anyway (and its 429 counts as a failed attempt again if it persists).
MAX_RETRY_AFTER = 60.0
#: Waits of at least this many seconds are announced (a warning naming the server's ask and the cap).
ANNOUNCE_WAIT = 10.0


def _router_config(model: str, api_base: str | None, api_key: str | None, timeout: Any):
    """The lm15 router configuration DSPy builds for ``model`` (see dspy.clients.execution), and
    what DSPy's native route reports the model can do (a custom engine must declare it itself)."""
    import dspy
    from dspy.clients.backend_selection import select_backend
    from dspy.clients.capabilities import capabilities
    from dspy.clients.engines.lm15_engine import timeouts_for
    from dspy.lm15 import RouterConfig

    clients: dict[str, Any] = {}
    if api_base is not None:
        clients["api_base"] = api_base
    if api_key is not None:
        clients["api_key"] = api_key
    if timeout is not None:
        clients["timeout"] = timeout
    stock = dspy.LM(model, engine="lm15", **clients)
    selection = select_backend(stock)
    provider = selection.resolution.provider
    config = RouterConfig(
        api_keys={provider: api_key} if api_key is not None else None,
        base_urls={provider: api_base} if api_base else None,
        timeouts=timeouts_for(timeout),
    )
    return config, capabilities(stock)


class NativeEngine:
    """A synchronous DSPy engine: one attempt per :meth:`complete`, failures reported as faults.

    Args:
        model: the LiteLLM-style model string (``openai/...``, ``hosted_vllm/...``).
        api_base: the server URL (None: the provider's default endpoint).
        api_key_env: environment variable holding the key (None: the provider's default
            variable, read by the client itself, or the placeholder when ``placeholder_key``).
        placeholder_key: send the keyless placeholder
            (:data:`~metaspo_dspy.lm.providers.PLACEHOLDER_API_KEY`; a local server needs none).
        timeout: seconds per wait (connect keeps lm15's short default), as ``dspy.LM(timeout=)``
            (None: lm15's defaults, 600 s to the next byte).
        max_retry_after: the longest wait a server's ``Retry-After`` gets before DSPy's next
            attempt, in seconds (None: no cap, the server's word).
    """

    def __init__(
        self,
        model: str,
        api_base: str | None = None,
        api_key_env: str | None = None,
        placeholder_key: bool = False,
        timeout: float | None = None,
        max_retry_after: float | None = MAX_RETRY_AFTER,
    ):
        self.model = model
        self.api_base = api_base
        self.api_key_env = api_key_env
        self.placeholder_key = placeholder_key
        self.timeout = timeout
        self.max_retry_after = max_retry_after
        self._announced = -math.inf  # monotonic time of the last Retry-After announcement
        self._config, found = _router_config(model, api_base, self._key(), timeout)
        # Read by DSPy (dspy.clients.capabilities) for a custom engine: what adapters may use, e.g.
        # structured outputs, and which parameters (``seed``) callers may send.
        self.supports_function_calling = bool(found.function_calling)
        self.supports_reasoning = bool(found.reasoning)
        self.supports_response_schema = bool(found.response_schema)
        self.supported_params = frozenset(found.params)
        self._lock = threading.Lock()
        self._sync: Any = None

    def _key(self) -> str | None:
        if self.api_key_env:
            return os.environ.get(self.api_key_env) or None
        return PLACEHOLDER_API_KEY if self.placeholder_key else None

    # -- the engine protocol -----------------------------------------------------------------
    def _engine(self):
        with self._lock:
            if self._sync is None:
                from dspy.clients.engines import LM15Engine

                self._sync = LM15Engine(self._config, model_type="chat")
            return self._sync

    def complete(self, request):
        try:
            return self._engine().complete(request)
        except Exception as exc:
            _report(exc, self.model)
            self._cap_retry_after(exc)
            raise

    def stream(self, request) -> Iterator[Any]:
        try:
            yield from self._engine().stream(request)
        except Exception as exc:
            _report(exc, self.model)
            self._cap_retry_after(exc)
            raise

    def _cap_retry_after(self, exc: BaseException) -> None:
        """Lower the ``retry_after`` hint of a failed attempt (what DSPy's retry loop waits) to
        ``max_retry_after``; announce a wait of :data:`ANNOUNCE_WAIT` seconds or more."""
        asked = getattr(exc, "retry_after", None)
        if isinstance(asked, bool) or not isinstance(asked, (int, float)) or not math.isfinite(asked):
            return
        cap = self.max_retry_after
        wait = asked if cap is None else min(asked, cap)
        if wait < asked:
            try:
                exc.retry_after = float(wait)  # type: ignore[attr-defined]
            except AttributeError:  # pragma: no cover - an error type with a read-only hint
                return
        if wait >= ANNOUNCE_WAIT:
            now = time.monotonic()
            with self._lock:  # one line per wait, not one per thread that got the same answer
                due = now - self._announced >= wait
                if due:
                    self._announced = now
            if due:
                where = f"{self.model} at {self.api_base}" if self.api_base else self.model
                capped = f"; capped at {wait:g} s (max_retry_after)" if wait < asked else ""
                logger.warning(
                    redact(f"{where}: the server asked to wait {asked:g} s (Retry-After){capped} before any retry")
                )

    def close(self) -> None:
        with self._lock:
            engine, self._sync = self._sync, None
        if engine is not None:
            engine.close()

    # -- state without secrets ---------------------------------------------------------------
    def settings(self) -> dict[str, Any]:
        """What rebuilds this engine elsewhere (no key: only where to read it)."""
        return {
            "model": self.model,
            "api_base": self.api_base,
            "api_key_env": self.api_key_env,
            "placeholder_key": self.placeholder_key,
            "timeout": self.timeout,
            "max_retry_after": self.max_retry_after,
        }

    def dump_state(self) -> dict[str, Any]:
        return self.settings()

    @classmethod
    def load_state(cls, state: dict[str, Any]) -> NativeEngine:
        return cls(**state)

    def __reduce__(self):
        return (type(self).load_state, (self.settings(),))

    def __deepcopy__(self, memo: dict) -> NativeEngine:
        return self  # copies of an LM share its client, as DSPy's own engine store does

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.model!r}, api_base={self.api_base!r})"


class AsyncNativeEngine(NativeEngine):
    """The async counterpart (``dspy.LM(async_engine=...)``): one lm15 async engine per event loop."""

    def __init__(self, *args: Any, **kwargs: Any):
        super().__init__(*args, **kwargs)
        self._per_loop: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, Any] = weakref.WeakKeyDictionary()

    def _async_engine(self):
        loop = asyncio.get_running_loop()
        with self._lock:
            engine = self._per_loop.get(loop)
            if engine is None:
                from dspy.clients.engines import AsyncLM15Engine

                engine = self._per_loop[loop] = AsyncLM15Engine(self._config, model_type="chat")
            return engine

    async def complete(self, request):  # type: ignore[override]
        try:
            return await self._async_engine().complete(request)
        except Exception as exc:
            _report(exc, self.model)
            self._cap_retry_after(exc)
            raise

    async def stream(self, request) -> AsyncIterator[Any]:  # type: ignore[override]
        try:
            async for event in self._async_engine().stream(request):
                yield event
        except Exception as exc:
            _report(exc, self.model)
            self._cap_retry_after(exc)
            raise

    async def aclose(self) -> None:
        with self._lock:
            engines, self._per_loop = list(self._per_loop.values()), weakref.WeakKeyDictionary()
        for engine in engines:
            await engine.aclose()

    def __deepcopy__(self, memo: dict) -> AsyncNativeEngine:
        return self


def _report(exc: BaseException, model: str) -> None:
    faults.report(faults.classify(exc), model, f"{type(exc).__name__}: {exc}")


def native_lm(
    model: str,
    *,
    api_base: str | None = None,
    api_key_env: str | None = None,
    placeholder_key: bool = False,
    timeout: float | None = None,
    max_retry_after: float | None = MAX_RETRY_AFTER,
    **kwargs: Any,
):
    """A ``dspy.LM`` on DSPy's native client with observed attempts (``kwargs``: temperature,
    max_tokens, num_retries, cache, ... -- everything but the connection, which the engine owns)."""
    import dspy

    connection = dict(
        api_base=api_base,
        api_key_env=api_key_env,
        placeholder_key=placeholder_key,
        timeout=timeout,
        max_retry_after=max_retry_after,
    )
    return dspy.LM(
        model, engine=NativeEngine(model, **connection), async_engine=AsyncNativeEngine(model, **connection), **kwargs
    )


def native_settings(lm: Any) -> dict[str, Any] | None:
    """The connection settings of an LM built by :func:`native_lm` (None for any other LM)."""
    engine = getattr(lm, "engine", None)
    return engine.settings() if isinstance(engine, NativeEngine) else None


def _key_source(settings: Any, provider: str, api_key: str | None) -> tuple[str | None, bool]:
    """(environment variable name, placeholder?) for the key :func:`build_lm` resolved: the named
    variable, the keyless placeholder, or the provider's default variable where it is set."""
    if settings.api_key_env:
        return settings.api_key_env, False
    if api_key == PLACEHOLDER_API_KEY:
        return None, True
    default = f"{provider.upper()}_API_KEY"
    if os.environ.get(default):
        return default, False
    return None, settings.api_base is not None


def _has_credentials(api_base: str | None) -> bool:
    """Whether ``api_base`` carries user information (``http://user:password@host/v1``)."""
    from urllib.parse import urlsplit

    return bool(api_base) and "@" in (urlsplit(str(api_base).strip()).netloc or "")


def build_native(settings: Any, provider: str, api_key: str | None, kwargs: dict[str, Any]):
    """The LM :func:`~metaspo_dspy.lm.settings.build_lm` makes for ``engine="native"`` or
    ``"auto"``; None where ``auto`` chooses LiteLLM (a provider that does not speak the OpenAI
    protocol, client settings DSPy's client cannot carry, such as extra headers, or an ``api_base``
    with a user and password, which DSPy's client would take for part of the host name; LiteLLM's
    client sends them as HTTP basic authentication).

    Raises :class:`~metaspo_dspy.errors.ModelConfigError` when ``native`` was asked for and
    cannot serve the model.
    """
    from dspy.clients.backend_selection import CLIENT_KEYS

    auto = settings.engine == "auto"
    if auto and provider not in OPENAI_COMPATIBLE:
        return None
    if _has_credentials(settings.api_base):
        if auto:
            return None
        raise ModelConfigError(
            f"engine='native' cannot send the user and password in the api_base of {settings.model!r} (DSPy's "
            "own client would take them for part of the host name); use engine='litellm' or 'auto'"
        )
    carried = sorted(k for k in kwargs if k in CLIENT_KEYS and k != "timeout")
    if carried:
        if auto:
            return None
        raise ModelConfigError(
            f"engine='native' cannot carry the client settings {carried} of {settings.model!r}; use engine='litellm'"
        )
    rest = {k: v for k, v in kwargs.items() if k != "timeout"}
    key_env, placeholder = _key_source(settings, provider, api_key)
    try:
        return native_lm(
            settings.model,
            api_base=settings.api_base,
            api_key_env=key_env,
            placeholder_key=placeholder,
            timeout=kwargs.get("timeout"),
            max_retry_after=getattr(settings, "max_retry_after", MAX_RETRY_AFTER),
            **rest,
        )
    except Exception as exc:
        if auto:
            return None
        raise ModelConfigError(
            f"engine='native' cannot serve {settings.model!r} ({type(exc).__name__}: {exc}). DSPy's own "
            "client covers openai/, hosted_vllm/, ollama_chat/, anthropic/, gemini/, groq/, ... models; "
            "use engine='litellm' for the others"
        ) from None
