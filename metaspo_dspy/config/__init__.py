"""Run configuration: YAML files -> a validated, frozen :class:`RunConfig`.

``load_config("configs/base.yaml", "configs/review.yaml", overrides=["search.num_iterations=5"])``
reads the files in order (later ones override earlier ones, key by key), then the overrides (from
the CLI), and validates every layer as it is applied, so an error names the key and the file (or
``<overrides>``). Every problem raises one :class:`ConfigError` (a ``ValueError``). A bare name such
as ``"review"`` is looked up among the shipped configs: the repository's ``configs/`` folder, which
the wheel carries as ``metaspo_dspy/configs``.

The parts: :mod:`~metaspo_dspy.config.schema` (the dataclasses), :mod:`~metaspo_dspy.config.files`
(reading YAML and overrides), :mod:`~metaspo_dspy.config.checks` (types, choices, ranges). This
module merges the layers and re-exports the public names.

Schema (defaults are the paper's; all keys optional unless stated)::

    method: metaspo             # metaspo | outer_loop | metaspo_ape | sprig | protegi | ape | none
    seed: 42                    # run seed (train shuffle, optimizer sampling)
    num_threads: 16             # parallel task-LM calls (over all processes)
    num_processes: 1            # client processes for evaluation grids (2+: for a fast server; not embedded)
    preflight_timeout: 30       # seconds each model gets to answer the preflight (--preflight-timeout)
    initial_system_prompt: "You are a helpful assistant."
    tasks:
      source: [beauty, game]    # meta-train tasks: required, non-empty (task names or aliases)
      unseen: [electronics]     # meta-test tasks (may be empty)
    data:
      data_dir: null            # reference-layout folder; null = $METASPO_DATA_DIR, else user cache + bundled
      source: auto              # auto | local | bigbench | hub
      prompt_format: dspy       # dspy | reference
      train_size: 50
      test_size: 500
    search:
      num_iterations: 3
      num_system_candidates: 9
      num_user_candidates: 3
      user_top_k: 3
      screening: null           # frugal screening: minibatch fraction in (0, 1), e.g. 0.2; null = faithful
      screening_keep: 0.5       # share of candidates promoted to the full evaluation, in (0, 1]
      components: null          # sprig: a component CSV (Prompt, Category); null = the built-in library
    meta_test:
      num_unseen_user_prompts: 10
      tta_iterations: 6
    budget:
      max_lm_calls: null        # stop cleanly before a phase that could exceed this many calls
      max_cost: null            # ... or this many dollars (> 0; LiteLLM prices; unpriced models: no limit)
      max_failure_share: 0.5    # stop (resumably) when more task calls fail in one grid; in [0, 1]
    task_lm:                    # the model whose prompts are optimised
      model: null               # a dspy.LM model string, e.g. openai/meta-llama/Llama-3.2-3B-Instruct
      temperature: 0.0
      max_tokens: null
      api_base: null            # e.g. http://localhost:8000/v1
      api_key_env: null         # NAME of the environment variable holding the key
      engine: auto              # auto (DSPy's client for OpenAI-compatible servers, else LiteLLM) | litellm | native
      num_retries: 3            # retries with backoff on transient errors
      timeout: null             # seconds per request before it is retried (null: 120 s task / 300 s optimizer)
      max_retry_after: 60       # the longest Retry-After wait obeyed (DSPy's client; a longer one is announced)
    optimizer_lm:               # the model that proposes prompts
      model: openai/gpt-4o-mini
      temperature: 1.0
      max_tokens: null
      api_base: null
      api_key_env: OPENAI_API_KEY

API keys never go into a config: an ``api_key`` entry is rejected; name the environment variable
in ``api_key_env`` and :func:`metaspo_dspy.lm.build_lm` reads it when the LM is built.
"""

from __future__ import annotations

import dataclasses
import os
import typing
from collections.abc import Iterable, Mapping
from typing import Any

from metaspo_dspy.config.checks import SCHEMA, check_value, flatten
from metaspo_dspy.config.files import CONFIG_DIR, OVERRIDES, override_layer, read_yaml, resolve_path
from metaspo_dspy.config.schema import (
    METASPO_METHODS,
    METHODS,
    TRAIN_METHODS,
    BudgetConfig,
    DataConfig,
    LMConfig,
    MetaTestConfig,
    RunConfig,
    SearchConfig,
    TasksConfig,
)
from metaspo_dspy.errors import ConfigError

__all__ = [
    "CONFIG_DIR",
    "METASPO_METHODS",
    "METHODS",
    "OVERRIDES",
    "SCHEMA",
    "TRAIN_METHODS",
    "BudgetConfig",
    "ConfigError",
    "DataConfig",
    "LMConfig",
    "MetaTestConfig",
    "RunConfig",
    "SearchConfig",
    "TasksConfig",
    "load_config",
    "read_yaml",
    "resolve_path",
]


def _unflatten(flat: Mapping[str, Any], where: str = OVERRIDES) -> dict[str, Any]:
    """``{"a.b": 1}`` as ``{"a": {"b": 1}}``; a ConfigError when a key is given both a value and
    settings below it (``task_lm=3`` and ``task_lm.model=...``)."""
    nested: dict[str, Any] = {}
    for key, value in flat.items():
        *heads, leaf = str(key).split(".")
        node = nested
        for depth, head in enumerate(heads):
            node = node.setdefault(head, {})
            if not isinstance(node, dict):
                section = ".".join(heads[: depth + 1])
                raise ConfigError(
                    f"{where}: key {section!r} is given the value {node!r} and also {key!r}; "
                    f"set the keys inside it (e.g. {key}=...), not {section} itself"
                )
        node[leaf] = value
    return nested


def _lookup(nested: Mapping[str, Any], key: str) -> Any:
    for part in key.split("."):
        nested = nested[part]
    return nested


def _build(cls: type, values: Mapping[str, Any]) -> Any:
    kwargs = {}
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        if f.name not in values:
            continue
        hint = hints[f.name]
        kwargs[f.name] = _build(hint, values[f.name]) if dataclasses.is_dataclass(hint) else values[f.name]
    return cls(**kwargs)


def load_config(
    *paths: str | os.PathLike,
    overrides: Mapping[str, Any] | Iterable[str] | None = None,
    values: Mapping[str, Any] | None = None,
    values_origin: str = OVERRIDES,
    require_tasks: bool = True,
) -> RunConfig:
    """Merge ``paths`` (later wins, per key), ``overrides`` and ``values`` over the defaults; validate.

    Args:
        paths: YAML files, or names of shipped configs (``"base"``, ``"review"``...).
        overrides: ``{"search.num_iterations": 5}`` or ``["search.num_iterations=5", ...]``
            (values parsed as YAML; a list key also accepts ``a,b,c``; a later item wins).
        values: typed values by dotted key, applied after ``overrides`` and validated the same way
            but never parsed: a string stays exactly that string (any Unicode, a path, text that
            YAML would read as a number). The CLI's flags and ``--resume``'s recorded settings.
        values_origin: how errors name ``values`` (default ``<overrides>``; e.g. a file's path).
        require_tasks: fail when the result has no source task.

    Raises:
        ConfigError: unreadable or non-UTF-8 file, malformed YAML, a duplicate key, unknown key,
            unknown task, wrong type, a value out of range, empty task list, an API key in a file
            -- one message naming the key and the file.
    """
    defaults = dataclasses.asdict(RunConfig())
    flat: dict[str, Any] = {key: _lookup(defaults, key) for key in SCHEMA}
    origins: list[str] = []
    for raw in paths:
        path = resolve_path(raw)
        layer = flatten(read_yaml(path), str(path))
        flat.update({k: check_value(k, v, str(path), False) for k, v in layer.items()})
        origins.append(str(path))
    if overrides:
        layer = flatten(_unflatten(override_layer(overrides)), OVERRIDES)
        flat.update({k: check_value(k, v, OVERRIDES, True) for k, v in layer.items()})
        origins.append(OVERRIDES)
    if values:
        layer = flatten(_unflatten(values, values_origin), values_origin)
        flat.update({k: check_value(k, v, values_origin, True) for k, v in layer.items()})
        if values_origin not in origins:
            origins.append(values_origin)
    if require_tasks and not flat.get("tasks.source"):
        where = ", ".join(origins) or "no config files"
        raise ConfigError(f"{where}: key 'tasks.source' is missing; name the source tasks (e.g. load a domain config)")
    return dataclasses.replace(_build(RunConfig, _unflatten(flat)), sources=tuple(origins))
