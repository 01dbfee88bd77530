"""One model name served by several deployments through a LiteLLM ``Router``.

DSPy 3.4.1 has no Router support of its own (``dspy.LM`` takes one model string and no
``model_list``), so :func:`router_lm` registers the router behind a LiteLLM custom provider,
``metaspo-router/<name>``, and returns an ordinary ``dspy.LM`` for it: DSPy's cache, adapters,
history and threads work as for any model, while each request goes to one deployment picked by the
router (load balancing, per-deployment retries and cooldowns, fallbacks).

Keys stay in the environment: a deployment's ``api_key_env`` becomes LiteLLM's
``"os.environ/<NAME>"`` reference, resolved by the router itself. Generation settings
(temperature, max_tokens, ...) are the router LM's; a deployment contributes only where to send
the request (``model``, ``api_base``, ``api_key_env``, ``extra``).

Each deployment's requests time out like :func:`~metaspo_dspy.lm.build_lm`'s: after
:data:`~metaspo_dspy.lm.settings.TASK_TIMEOUT` seconds unless its ``extra`` sets ``timeout`` (LiteLLM's
own default is 6,000 s). Waits between the router's retries (``Retry-After`` included) are
LiteLLM's policy; ``max_retry_after`` applies to DSPy's own client only.

The router lives in this process: a program saved with a router LM names ``metaspo-router/<name>``,
and loading it elsewhere needs :func:`router_lm` to be called with that name first.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Sequence
from typing import Any

from metaspo_dspy.errors import ModelConfigError
from metaspo_dspy.lm import providers
from metaspo_dspy.lm.providers import PLACEHOLDER_API_KEY
from metaspo_dspy.lm.settings import TASK_TEMPERATURE, TASK_TIMEOUT, LMSettings, resolve_api_key, resolve_provider

PROVIDER = "metaspo-router"
_ROUTERS: dict[str, Any] = {}
_LOCK = threading.Lock()
#: Request parameters that belong to the outer call, not to the routed one.
_DROP = {"max_retries"}


def _deployment(settings: LMSettings, name: str) -> dict[str, Any]:
    provider = resolve_provider(settings.model, settings.api_base)
    if providers.is_local(provider):
        providers.install(provider)
    if settings.engine == "native":
        raise ModelConfigError(f"router deployment {settings.model!r}: a router always uses engine='litellm'")
    params: dict[str, Any] = dict(settings.extra)
    params.pop("cache", None)
    if not providers.is_local(provider):
        params.setdefault("timeout", TASK_TIMEOUT)
    params["model"] = settings.model
    if settings.api_base is not None:
        params["api_base"] = settings.api_base
    if settings.api_key_env:
        if not os.environ.get(settings.api_key_env, "").strip():
            raise ModelConfigError(
                f"router deployment {settings.model!r}: the environment variable {settings.api_key_env} "
                "(api_key_env) is not set or empty; export the API key in it"
            )
        params["api_key"] = f"os.environ/{settings.api_key_env}"
    else:
        key = resolve_api_key(settings, provider)  # raises when a needed key is missing
        if key == PLACEHOLDER_API_KEY:
            params["api_key"] = key
    return {"model_name": name, "litellm_params": params}


def _supports_schema(model: str) -> bool:
    import litellm

    try:
        return bool(litellm.supports_response_schema(model=model))
    except Exception:
        return False


def install_provider() -> None:
    """Register the ``metaspo-router`` provider with LiteLLM (idempotent; appends)."""
    import litellm
    from litellm import CustomLLM
    from litellm.utils import custom_llm_setup

    with _LOCK:
        if not any(entry.get("provider") == PROVIDER for entry in litellm.custom_provider_map):

            def lookup(model: str):
                name = model.split("/", 1)[1] if model.startswith(PROVIDER + "/") else model
                router = _ROUTERS.get(name)
                if router is None:
                    raise litellm.BadRequestError(
                        message=f"no router named {name!r} in this process; call router_lm({name!r}, ...) first",
                        model=model,
                        llm_provider=PROVIDER,
                    )
                return name, router

            def request(kwargs: dict[str, Any]) -> dict[str, Any]:
                params = dict(kwargs.get("optional_params") or {})
                return {k: v for k, v in params.items() if k not in _DROP}

            class RouterProvider(CustomLLM):
                def completion(self, model, messages, *args, **kwargs):
                    name, router = lookup(model)
                    return router.completion(model=name, messages=messages, **request(kwargs))

                async def acompletion(self, model, messages, *args, **kwargs):
                    name, router = lookup(model)
                    return await router.acompletion(model=name, messages=messages, **request(kwargs))

            litellm.custom_provider_map.append({"provider": PROVIDER, "custom_handler": RouterProvider()})
        custom_llm_setup()


def router_lm(
    name: str,
    deployments: Sequence[LMSettings | str],
    *,
    temperature: float | None = TASK_TEMPERATURE,
    max_tokens: int | None = None,
    num_retries: int = 3,
    routing_strategy: str = "least-busy",
    cache: bool = True,
    **router_kwargs: Any,
):
    """A ``dspy.LM`` whose calls are spread over ``deployments`` by a LiteLLM ``Router``.

    Args:
        name: the router's model name (the LM's model string is ``metaspo-router/<name>``).
            Calling again with the same name replaces that router.
        deployments: where to send requests: :class:`LMSettings` (only ``model``, ``api_base``,
            ``api_key_env`` and ``extra`` are used) or model strings.
        temperature, max_tokens, cache: the LM's generation settings (task-LM default: 0).
        num_retries: the router's retries across deployments.
        routing_strategy: ``"least-busy"`` (default: each request goes to the deployment with the
            fewest requests in flight; measured 1.9x the throughput of one capacity-bound server with
            two, against 1.5x for random ``"simple-shuffle"``, see benchmarks/README.md) or any
            LiteLLM strategy.
        router_kwargs: passed to ``litellm.Router`` (e.g. ``fallbacks``,
            ``allowed_fails``, ``cooldown_time``).
    """
    import dspy
    import litellm

    if not isinstance(name, str) or not name or "/" in name:
        raise ModelConfigError(f"router name must be a non-empty string without '/', got {name!r}")
    if not deployments:
        raise ModelConfigError("a router needs at least one deployment")
    settings = [LMSettings.for_task(d) if isinstance(d, str) else d for d in deployments]
    model_list = [_deployment(s, name) for s in settings]
    router = litellm.Router(
        model_list=model_list, routing_strategy=routing_strategy, num_retries=num_retries, **router_kwargs
    )
    install_provider()
    model = f"{PROVIDER}/{name}"
    with _LOCK:
        _ROUTERS[name] = router
    litellm.register_model(
        {
            model: {
                "litellm_provider": PROVIDER,
                "mode": "chat",
                "supports_response_schema": all(_supports_schema(s.model) for s in settings),
                "input_cost_per_token": 0.0,
                "output_cost_per_token": 0.0,
                "cache_creation_input_token_cost": 0.0,
                "cache_read_input_token_cost": 0.0,
            }
        }
    )
    # Retries happen inside the router; the outer call does not retry the whole router.
    return dspy.LM(model, engine="litellm", temperature=temperature, max_tokens=max_tokens, num_retries=0, cache=cache)


def remove_router(name: str) -> None:
    with _LOCK:
        _ROUTERS.pop(name, None)
