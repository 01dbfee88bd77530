"""LM settings and the one function that turns them into a ``dspy.LM``.

Both LMs MetaSPO uses -- the *task LM* that answers the tasks and the *optimizer LM* that writes
new prompts -- are described by an :class:`LMSettings` and built by :func:`build_lm`:

* ``engine="auto"`` (the default) sends OpenAI-compatible endpoints (``openai/...``,
  ``hosted_vllm/...``, any ``api_base`` speaking the OpenAI protocol) through DSPy's own HTTP client
  with every attempt observed (:mod:`metaspo_dspy.lm.native`: a third of LiteLLM's client CPU per
  call) and every other provider through **LiteLLM** (``dspy.LM(..., engine="litellm")``), which
  reaches every provider. ``engine="litellm"`` forces LiteLLM; ``engine="native"`` forces DSPy's
  client for the providers it serves (openai, hosted_vllm, ollama_chat, anthropic, ...) and fails
  early for the others. Model strings are LiteLLM's on every engine, and retries, timeouts, fault
  recording, usage and cost behave the same (DSPy's execution layer owns retries on both).
* **API keys come from the environment only.** ``api_key_env`` names the variable; without it
  LiteLLM's conventions apply (``OPENAI_API_KEY``, ``ANTHROPIC_API_KEY``, ...). Settings never hold
  a key, so their ``repr``, :meth:`LMSettings.to_dict` and logs are safe, and ``extra`` refuses
  secret-looking entries (DSPy would write them into saved programs; it drops only ``api_key``).
* Defaults follow the MetaSPO paper: temperature 0 for the task LM
  (:meth:`LMSettings.for_task`), 1.0 for the optimizer LM (:meth:`LMSettings.for_optimizer`).
* **Every request has a finite timeout.** Unless ``extra`` sets ``timeout``, a model served over
  the network waits at most :data:`TASK_TIMEOUT` (120 s) for the next byte of an answer, an
  optimizer LM made by :meth:`LMSettings.for_optimizer` :data:`OPTIMIZER_TIMEOUT` (300 s); a timed-out
  attempt is retried (``num_retries``). The clients' own defaults were 600 s (DSPy's client) and
  6,000 s (LiteLLM) per attempt: with the retries, a server that accepts a request and never
  answers kept a call silent for 40 minutes. In-process models (the embedded one, the fake) have
  no timeout. A server's ``Retry-After`` is obeyed up to ``max_retry_after`` seconds (default 60,
  DSPy's client; see :mod:`metaspo_dspy.lm.native`).
* Mistakes fail early with a :class:`ModelConfigError` that says what to do: a model string
  without a provider LiteLLM knows, a missing API key (naming the variable to set), the embedded
  model without its ``[embedded]`` extra.

In-process providers need no key: ``embedded/smollm2-135m-instruct`` (the offline model, see
:mod:`metaspo_dspy.lm.embedded.provider`), ``metaspo-fake/<name>`` (the deterministic fake of the
test helpers) and any other registered through the ``metaspo_dspy.providers`` entry points
(:mod:`metaspo_dspy.lm.providers`); :func:`build_lm` registers the one a model names with LiteLLM.
"""

from __future__ import annotations

import dataclasses
import json
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

from metaspo_dspy.errors import ModelConfigError
from metaspo_dspy.lm import providers
from metaspo_dspy.lm.native import MAX_RETRY_AFTER
from metaspo_dspy.lm.providers import OPENAI_COMPATIBLE, PLACEHOLDER_API_KEY
from metaspo_dspy.redact import register_secret

Engine = Literal["auto", "litellm", "native"]
ENGINES: tuple[str, ...] = ("auto", "litellm", "native")
#: Paper defaults.
TASK_TEMPERATURE = 0.0
OPTIMIZER_TEMPERATURE = 1.0
#: Default seconds a task-LM request waits for the next byte of the answer (``extra["timeout"]``
#: overrides). A task answer is short (MetaSPO's tasks: a label or a few sentences, seconds on a
#: loaded server), so two minutes leave a wide margin while a stalled server is noticed, and
#: retried, within minutes rather than the clients' 10 (DSPy) to 100 (LiteLLM) minutes.
TASK_TIMEOUT = 120.0
#: Default for the optimizer LM (:meth:`LMSettings.for_optimizer`): its answers are long (an
#: analysis, then a whole new prompt) and a non-streamed answer sends nothing until it is complete.
OPTIMIZER_TIMEOUT = 300.0

#: Providers that authenticate with the machine's cloud identity rather than an API key.
_AMBIENT_AUTH = {"bedrock", "bedrock_converse", "sagemaker", "sagemaker_chat", "vertex_ai", "vertex_ai_beta"}
_ENV_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
_SECRET_KEY = re.compile(r"(key|secret|password|passwd|credential|authorization|cookie)|(^|[_-])token$", re.I)
#: ``dspy.LM`` arguments that LMSettings owns (``extra`` may not set them).
_OWNED = {"model", "temperature", "max_tokens", "api_base", "num_retries", "engine", "api_key", "max_retry_after"}


def _check_api_base(api_base: Any) -> None:
    """``api_base`` must be an http(s) URL with a host (a missing scheme is the usual slip)."""
    from urllib.parse import urlsplit

    if not isinstance(api_base, str) or not api_base.strip():
        raise ModelConfigError(f"api_base must be a URL or None, got {api_base!r}")
    try:
        parts = urlsplit(api_base.strip())
        parts.port  # noqa: B018 - raises ValueError for a malformed port
    except ValueError as exc:
        raise ModelConfigError(f"api_base {api_base!r} is not a valid URL ({exc})") from None
    if parts.scheme not in ("http", "https") or not parts.hostname:
        hint = f"; did you mean 'http://{api_base.strip()}'?" if "://" not in api_base else ""
        raise ModelConfigError(
            f"api_base {api_base!r} is not an http(s) URL with a host, such as 'http://localhost:8000/v1'{hint}"
        )
    if any(c.isspace() for c in api_base.strip()):
        raise ModelConfigError(f"api_base {api_base!r} contains white space")


def _secret_entries(mapping: Mapping[str, Any], where: str) -> list[str]:
    found = []
    for key, value in mapping.items():
        if _SECRET_KEY.search(str(key)):
            found.append(f"{where}{key}")
        if isinstance(value, Mapping):
            found.extend(_secret_entries(value, f"{where}{key}."))
    return found


@dataclass(frozen=True)
class LMSettings:
    """How to reach one LM. Holds no secrets; safe to print, log and save.

    Args:
        model: LiteLLM model string with its provider prefix, e.g. ``openai/gpt-4o-mini``,
            ``hosted_vllm/Qwen/Qwen2.5-7B-Instruct``, ``embedded/smollm2-135m-instruct``.
        temperature: sampling temperature (None: the provider's default).
        max_tokens: output token limit (None: the provider's default).
        api_base: server URL, for self-hosted or proxied models.
        api_key_env: name of the environment variable holding the API key (None: LiteLLM's
            default variable for the provider, e.g. ``OPENAI_API_KEY``).
        num_retries: retries on transient errors (rate limits, timeouts), with backoff.
        engine: ``"auto"`` (default: DSPy's own client for OpenAI-compatible endpoints, else
            LiteLLM), ``"litellm"`` or ``"native"`` (DSPy's own client, observed).
        extra: further ``dspy.LM`` keyword arguments (``cache``, ``top_p``, ``seed``, ``stop``,
            ``model_type``, ``timeout`` in seconds per request -- default :data:`TASK_TIMEOUT` --, ...).
            No secrets: keys go through ``api_key_env``.
        max_retry_after: the longest wait, in seconds, a server's ``Retry-After`` gets before the
            next attempt (None: no cap). DSPy's own client (``engine`` native or auto for an
            OpenAI-compatible server) applies it; through LiteLLM the server's value is obeyed.
    """

    model: str
    temperature: float | None = TASK_TEMPERATURE
    max_tokens: int | None = None
    api_base: str | None = None
    api_key_env: str | None = None
    num_retries: int = 3
    engine: Engine = "auto"
    extra: Mapping[str, Any] = field(default_factory=dict)
    max_retry_after: float | None = MAX_RETRY_AFTER

    def __post_init__(self) -> None:
        if not isinstance(self.model, str) or not self.model.strip():
            raise ModelConfigError("model must be a non-empty string such as 'openai/gpt-4o-mini'")
        if self.model != self.model.strip():
            object.__setattr__(self, "model", self.model.strip())
        if self.temperature is not None:
            if isinstance(self.temperature, bool) or not isinstance(self.temperature, (int, float)):
                raise ModelConfigError(f"temperature must be a number or None, got {self.temperature!r}")
            if not 0 <= self.temperature <= 2:
                raise ModelConfigError(f"temperature must be between 0 and 2, got {self.temperature}")
            object.__setattr__(self, "temperature", float(self.temperature))
        if self.max_tokens is not None and (
            isinstance(self.max_tokens, bool) or not isinstance(self.max_tokens, int) or self.max_tokens < 1
        ):
            raise ModelConfigError(f"max_tokens must be a positive integer or None, got {self.max_tokens!r}")
        if isinstance(self.num_retries, bool) or not isinstance(self.num_retries, int) or self.num_retries < 0:
            raise ModelConfigError(f"num_retries must be a non-negative integer, got {self.num_retries!r}")
        if self.engine not in ENGINES:
            raise ModelConfigError(f"engine must be one of {ENGINES}, got {self.engine!r}")
        if self.max_retry_after is not None:
            value = self.max_retry_after
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 <= value < float("inf"):
                raise ModelConfigError(f"max_retry_after must be a number of seconds >= 0 or None, got {value!r}")
            object.__setattr__(self, "max_retry_after", float(value))
        if any(c.isspace() for c in self.model):
            raise ModelConfigError(
                f"model {self.model!r} contains white space; a model string is '<provider>/<model>' without "
                "spaces, e.g. 'openai/gpt-4o-mini'"
            )
        if self.api_base is not None:
            _check_api_base(self.api_base)
        if self.api_key_env is not None and (
            not isinstance(self.api_key_env, str) or not _ENV_NAME.match(self.api_key_env)
        ):
            # Never echo the value: it may be a key pasted into the wrong field.
            raise ModelConfigError(
                "api_key_env must be the *name* of an environment variable (letters, digits, '_'), "
                "such as 'OPENAI_API_KEY' -- not the key itself"
            )
        if not isinstance(self.extra, Mapping):
            raise ModelConfigError(f"extra must be a mapping, got {type(self.extra).__name__}")
        clash = sorted(_OWNED & set(self.extra))
        if "api_key" in clash:
            raise ModelConfigError(
                "API keys are read from the environment only: put the key in an environment variable "
                "and set api_key_env to its name"
            )
        if clash:
            raise ModelConfigError(f"set {clash} with the LMSettings fields, not in extra")
        secrets = _secret_entries(self.extra, "extra.")
        if secrets:
            raise ModelConfigError(
                f"{secrets} look like credentials; settings must not hold secrets (DSPy would save them "
                "with the program). Put the API key in an environment variable named by api_key_env"
            )
        object.__setattr__(self, "extra", dict(self.extra))

    # -- constructors ----------------------------------------------------------------------------
    @classmethod
    def for_task(cls, model: str, **kwargs: Any) -> LMSettings:
        """Settings for the task LM: temperature 0 unless given."""
        kwargs.setdefault("temperature", TASK_TEMPERATURE)
        return cls(model=model, **kwargs)

    @classmethod
    def for_optimizer(cls, model: str, **kwargs: Any) -> LMSettings:
        """Settings for the optimizer LM: temperature 1.0 and, for a model served over the network,
        ``extra["timeout"]`` :data:`OPTIMIZER_TIMEOUT`, unless given."""
        kwargs.setdefault("temperature", OPTIMIZER_TEMPERATURE)
        extra = kwargs.get("extra")
        remote = isinstance(model, str) and not providers.is_local(providers.prefix_of(model.strip()))
        if remote and (extra is None or isinstance(extra, Mapping)):
            kwargs["extra"] = {"timeout": OPTIMIZER_TIMEOUT, **(extra or {})}
        return cls(model=model, **kwargs)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any], *, role: Literal["task", "optimizer"] = "task") -> LMSettings:
        """Settings from a config mapping (``model`` required; temperature defaults by ``role``)."""
        if not isinstance(data, Mapping):
            raise ModelConfigError(f"LM settings must be a mapping, got {type(data).__name__}")
        if "api_key" in data:
            raise ModelConfigError(
                "LM settings must not contain 'api_key': put the key in an environment variable and "
                "set 'api_key_env' to its name"
            )
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ModelConfigError(f"unknown LM setting(s) {unknown}; known: {sorted(known)}")
        if "model" not in data:
            raise ModelConfigError("LM settings need a 'model', e.g. 'openai/gpt-4o-mini'")
        kwargs = dict(data)
        factory = cls.for_optimizer if role == "optimizer" else cls.for_task
        return factory(**kwargs)

    def to_dict(self) -> dict[str, Any]:
        """A plain, JSON-ready mapping (holds no secrets; round-trips through :meth:`from_dict`)."""
        data = dataclasses.asdict(self)
        data["extra"] = dict(self.extra)
        return data

    def __hash__(self) -> int:
        return hash(json.dumps(self.to_dict(), sort_keys=True, default=str))

    def replace(self, **changes: Any) -> LMSettings:
        return dataclasses.replace(self, **changes)

    @property
    def provider(self) -> str:
        """The provider LiteLLM routes this model to (validates the model string)."""
        return resolve_provider(self.model, self.api_base)


# -- validation ------------------------------------------------------------------------------------
def _litellm():
    import litellm

    return litellm


def resolve_provider(model: str, api_base: str | None = None) -> str:
    """The LiteLLM provider of ``model``; :class:`ModelConfigError` if LiteLLM cannot route it."""
    prefix, slash, rest = model.partition("/")
    if providers.is_local(prefix):
        if not rest:
            raise ModelConfigError(f"model {model!r} names the provider {prefix!r} but no model after it")
        return prefix
    if slash and not rest:
        raise ModelConfigError(f"model {model!r} names the provider {prefix!r} but no model after it")
    litellm = _litellm()
    quiet = litellm.suppress_debug_info
    litellm.suppress_debug_info = True  # else LiteLLM prints a banner to stdout on a miss
    try:
        _, provider, _, _ = litellm.get_llm_provider(model, api_base=api_base)
    except Exception:
        hint = (
            f"{prefix!r} is not a provider LiteLLM knows"
            if slash
            else "LiteLLM cannot tell its provider from the name alone"
        )
        raise ModelConfigError(
            f"cannot route model {model!r}: {hint}. Write it as '<provider>/<model>', e.g. "
            "'openai/gpt-4o-mini', 'anthropic/claude-3-5-haiku-latest', 'hosted_vllm/<served model name>' "
            "(with api_base), 'ollama_chat/llama3.1', or 'embedded/smollm2-135m-instruct' for the offline "
            "model; providers: https://docs.litellm.ai/docs/providers"
        ) from None
    finally:
        litellm.suppress_debug_info = quiet
    return provider


def _is_credential(variable: str) -> bool:
    return bool(re.search(r"KEY|TOKEN|SECRET|PASSWORD", variable))


def resolve_api_key(settings: LMSettings, provider: str) -> str | None:
    """The key to pass to the client for ``settings`` served by ``provider``: the value of
    ``api_key_env``, :data:`~metaspo_dspy.lm.providers.PLACEHOLDER_API_KEY` for a keyless
    OpenAI-compatible server at ``api_base``, or None (in-process and cloud-identity providers, or
    the client reads its default variable itself). Raises :class:`ModelConfigError` naming the
    variable to set when a needed key is missing. The key is read, never stored."""
    if providers.is_local(provider):
        return None
    if settings.api_key_env:
        value = os.environ.get(settings.api_key_env, "").strip()
        if not value:
            raise ModelConfigError(
                f"model {settings.model!r}: the environment variable {settings.api_key_env} (api_key_env) "
                "is not set or empty; export the API key in it"
            )
        return value
    if provider in _AMBIENT_AUTH:
        return None
    litellm = _litellm()
    try:
        report = litellm.validate_environment(settings.model, api_base=settings.api_base)
    except Exception:  # pragma: no cover - LiteLLM could not inspect this provider
        return None
    missing = [name for name in report.get("missing_keys") or [] if _is_credential(name)]
    if not missing:
        return None
    if settings.api_base is not None:
        # A self-hosted server behind api_base usually needs no key.
        return PLACEHOLDER_API_KEY if provider in OPENAI_COMPATIBLE else None
    names = " or ".join(missing)
    raise ModelConfigError(
        f"model {settings.model!r} needs an API key: set the environment variable {names} "
        "(or put the key in another variable and name it with api_key_env)"
    )


# -- building --------------------------------------------------------------------------------------
def build_lm(settings: LMSettings | Mapping[str, Any] | str, **overrides: Any):
    """Build the ``dspy.LM`` that ``settings`` describe (a mapping goes through
    :meth:`LMSettings.from_dict`; a string is a task-LM model). ``overrides`` replace fields first.

    Raises :class:`ModelConfigError` for an unknown model string, a missing API key, the embedded
    model without its extra, or an engine that cannot serve the model. Makes no network call.
    """
    import dspy

    if isinstance(settings, str):
        settings = LMSettings.for_task(settings)
    elif isinstance(settings, Mapping):
        settings = LMSettings.from_dict(settings)
    elif not isinstance(settings, LMSettings):
        raise ModelConfigError(f"expected LMSettings, a mapping or a model string, got {type(settings).__name__}")
    if overrides:
        settings = settings.replace(**overrides)

    provider = resolve_provider(settings.model, settings.api_base)
    if provider == "hosted_vllm" and not (settings.api_base or os.environ.get("HOSTED_VLLM_API_BASE")):
        raise ModelConfigError(
            f"model {settings.model!r} needs the server's URL: set api_base (e.g. "
            "'http://localhost:8000/v1') or the environment variable HOSTED_VLLM_API_BASE"
        )
    if providers.is_local(provider):
        if settings.engine == "native":
            raise ModelConfigError(f"{settings.model!r} runs in-process through LiteLLM; use engine='litellm'")
        settings = settings.replace(engine="litellm")
        providers.install(provider)  # registers it with LiteLLM (and checks the embedded extra)
    api_key = resolve_api_key(settings, provider)
    _register_url_credentials(settings.api_base)

    kwargs: dict[str, Any] = dict(settings.extra)
    if not providers.is_local(provider):
        kwargs.setdefault("timeout", TASK_TIMEOUT)
    kwargs.update(
        temperature=settings.temperature,
        max_tokens=settings.max_tokens,
        num_retries=settings.num_retries,
    )
    if settings.engine != "litellm":
        from metaspo_dspy.lm.native import build_native

        lm = build_native(settings, provider, api_key, kwargs)
        if lm is not None:
            return lm
    kwargs["engine"] = "litellm"
    if settings.api_base is not None:
        kwargs["api_base"] = settings.api_base
    if api_key is not None:
        kwargs["api_key"] = api_key
    from dspy.utils.exceptions import LMConfigurationError

    try:
        lm = dspy.LM(settings.model, **kwargs)
    except (ValueError, TypeError, LMConfigurationError) as exc:
        raise ModelConfigError(f"dspy.LM rejected the settings for {settings.model!r}: {exc}") from None
    return lm


def _register_url_credentials(api_base: str | None) -> None:
    """The credentials in ``api_base``'s user information are redacted wherever they appear on their
    own: the password (or a lone token), and the HTTP basic authentication value made of them, which
    a server may echo in an error (the URL form is redacted by a pattern of :mod:`metaspo_dspy.redact`)."""
    if not api_base:
        return
    import base64
    from urllib.parse import unquote, urlsplit

    parts = urlsplit(api_base.strip())
    if parts.username is None and parts.password is None:
        return
    user, password = unquote(parts.username or ""), unquote(parts.password or "")
    for secret in (password or user, parts.password or parts.username):
        register_secret(secret)
    register_secret(base64.b64encode(f"{user}:{password}".encode()).decode())


def is_embedded(model: Any) -> bool:
    """Whether ``model`` (a model string, :class:`LMSettings` or ``dspy.LM``) is the embedded model."""
    name = getattr(model, "model", model)
    return isinstance(name, str) and name.startswith("embedded/")


def adapter_for(model: Any):
    """The adapter a model needs, or None for DSPy's default: ``dspy.JSONAdapter()`` for the
    embedded model (it cannot follow ChatAdapter's format)."""
    if is_embedded(model):
        from metaspo_dspy.lm.embedded.provider import recommended_adapter

        return recommended_adapter()
    return None
