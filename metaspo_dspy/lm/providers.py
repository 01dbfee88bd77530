"""LiteLLM providers: the ones this process serves itself, registered through entry points, and
the provider facts the other ``lm`` modules share (a leaf of :mod:`metaspo_dspy.lm`).

**In-process providers.** A model string whose prefix (the text before the first ``/``) names an
entry point of the group :data:`GROUP` is answered inside this process by a LiteLLM custom
provider. A package declares one in its ``pyproject.toml``::

    [project.entry-points."metaspo_dspy.providers"]
    my-provider = "my_package.provider:install"     # serves 'my-provider/<model>'

This package declares ``embedded`` (the offline model, :mod:`metaspo_dspy.lm.embedded.provider`)
and ``metaspo-fake`` (the deterministic fake of the test helpers). The entry point's object is a
callable taking no arguments that registers the provider with LiteLLM: idempotent, appending to
``litellm.custom_provider_map`` (never replacing it), and raising
:class:`~metaspo_dspy.errors.ModelConfigError` with the fix when the provider cannot serve (the
embedded model without its extra). :func:`install` runs it wherever a provider is needed: when
:func:`~metaspo_dspy.lm.build_lm` or :func:`~metaspo_dspy.lm.router_lm` builds an LM, and in each
evaluation worker process before it runs the LMs it was sent (:func:`install_for`). The entry
points are read once per process (installing a package takes effect in the next process).

**Shared facts**, here so that :mod:`~metaspo_dspy.lm.native` and :mod:`~metaspo_dspy.lm.settings`
need not import each other: the providers that speak the OpenAI protocol, the keyless placeholder
key, and :data:`PROBE`, the connection check of :mod:`~metaspo_dspy.lm.preflight` that an
in-process provider may recognise (the fake answers it apart from task calls).
"""

from __future__ import annotations

import functools
from collections.abc import Iterable
from importlib.metadata import EntryPoint, entry_points

from metaspo_dspy.errors import ModelConfigError

#: The entry-point group that in-process providers register in.
GROUP = "metaspo_dspy.providers"
#: The one message a preflight request sends.
PROBE = "This is a connection check. Reply with the single word: OK"
#: Placeholder key sent to an OpenAI-compatible server at ``api_base`` when no key is set (the
#: OpenAI client refuses to send a request without one; local servers ignore it).
PLACEHOLDER_API_KEY = "EMPTY"
#: Providers that speak the OpenAI protocol and often run keyless behind ``api_base``.
OPENAI_COMPATIBLE = frozenset(
    {"openai", "text-completion-openai", "openai_like", "hosted_vllm", "lm_studio", "llamafile"}
)


def prefix_of(model: str) -> str:
    """The provider prefix of a model string (``"metaspo-fake/x"`` -> ``"metaspo-fake"``)."""
    return model.partition("/")[0]


@functools.cache
def _entry_points() -> dict[str, EntryPoint]:
    return {point.name: point for point in entry_points(group=GROUP)}


def is_local(provider: str) -> bool:
    """Whether ``provider`` (a model string's prefix) is served in-process by a registered entry point."""
    return provider in _entry_points()


def install(provider: str) -> None:
    """Register the in-process ``provider`` with LiteLLM (idempotent).

    Raises :class:`~metaspo_dspy.errors.ModelConfigError` when no entry point of :data:`GROUP` has
    that name, when its object cannot be loaded, or when the provider says it cannot serve.
    """
    point = _entry_points().get(provider)
    if point is None:
        known = ", ".join(sorted(_entry_points())) or "none"
        raise ModelConfigError(
            f"no in-process provider {provider!r} is registered (entry points {GROUP!r}: {known}); is the "
            "package that declares it installed?"
        )
    try:
        register = point.load()
    except Exception as exc:
        raise ModelConfigError(
            f"the in-process provider {provider!r} ({point.value}) cannot be loaded: {type(exc).__name__}: {exc}"
        ) from None
    register()


def install_for(models: Iterable[str]) -> list[str]:
    """Register the in-process provider of each model string that names one (others are left to
    LiteLLM); returns the providers registered, in first-seen order. Errors as :func:`install`."""
    done: list[str] = []
    for model in models:
        provider = prefix_of(model)
        if provider not in done and is_local(provider):
            install(provider)
            done.append(provider)
    return done
