"""Run configuration: YAML files -> a validated, frozen :class:`RunConfig`.

``load_config("configs/base.yaml", "configs/review.yaml", overrides=["search.num_iterations=5"])``
reads the files in order (later ones override earlier ones, key by key), then the overrides (from
the CLI), and validates every layer as it is applied, so an error names the key and the file (or
``<overrides>``). Every problem raises one :class:`ConfigError` (a ``ValueError``). A bare name such
as ``"review"`` is looked up among the shipped configs: the repository's ``configs/`` folder, which
the wheel carries as ``metaspo_dspy/configs``.

Schema (defaults are the paper's; all keys optional unless stated)::

    method: metaspo             # metaspo | outer_loop | metaspo_ape | protegi | ape | none
    seed: 42                    # run seed (train shuffle, optimizer sampling)
    num_threads: 16             # parallel task-LM calls
    initial_system_prompt: "You are a helpful assistant."
    tasks:
      source: [beauty, game]    # meta-train tasks: required, non-empty (task names or aliases)
      unseen: [electronics]     # meta-test tasks (may be empty)
    data:
      data_dir: null            # reference-layout folder; null = $METASPO_DATA_DIR or ../shared/data
      source: auto              # auto | local | bigbench | hub
      prompt_format: dspy       # dspy | reference
      train_size: 50
      test_size: 500
    search:
      num_iterations: 3
      num_system_candidates: 9
      num_user_candidates: 3
      user_top_k: 3
      screening: null           # frugal screening: minibatch fraction (e.g. 0.2); null = faithful
      screening_keep: 0.5       # share of candidates promoted to the full evaluation
    meta_test:
      num_unseen_user_prompts: 10
      tta_iterations: 6
    budget:
      max_lm_calls: null        # stop cleanly before a phase that could exceed this many calls
      max_cost: null            # ... or this many dollars (LiteLLM prices; unpriced models: no limit)
      max_failure_share: 0.5    # stop (resumably) when more task calls fail in one grid
    task_lm:                    # the model whose prompts are optimised
      model: null               # a dspy.LM model string, e.g. openai/meta-llama/Llama-3.2-3B-Instruct
      temperature: 0.0
      max_tokens: null
      api_base: null            # e.g. http://localhost:8000/v1
      api_key_env: null         # NAME of the environment variable holding the key
      engine: litellm           # litellm | native (DSPy's own client, OpenAI-compatible servers)
      num_retries: 3            # retries with backoff on transient errors (LiteLLM)
      timeout: null             # seconds per request before it is retried (null: LiteLLM's 600)
    optimizer_lm:               # the model that proposes prompts
      model: openai/gpt-4o-mini
      temperature: 1.0
      max_tokens: null
      api_base: null
      api_key_env: OPENAI_API_KEY

API keys never go into a config: an ``api_key`` entry is rejected; name the environment variable
in ``api_key_env`` and :meth:`LMConfig.lm_kwargs` reads it when the LM is built.
"""

from __future__ import annotations

import dataclasses
import difflib
import os
import types
import typing
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Union

import yaml

from metaspo_dspy.optimize.common import ConfigError as _OptimizerConfigError

# The shipped configs: inside the installed package (a link to configs/ in a checkout), or the
# repository's own folder where the link is not followed (e.g. a checkout without symlinks).
_PACKAGED, _REPOSITORY = Path(__file__).parent / "configs", Path(__file__).resolve().parents[1] / "configs"
CONFIG_DIR = _PACKAGED if (_PACKAGED / "base.yaml").is_file() else _REPOSITORY
OVERRIDES = "<overrides>"
METHODS = ("metaspo", "outer_loop", "metaspo_ape", "protegi", "ape", "none")
DATA_SOURCES = ("auto", "local", "bigbench", "hub")
PROMPT_FORMATS = ("dspy", "reference")


class ConfigError(_OptimizerConfigError):
    """A configuration problem; the message names the key and the file it came from.

    A ``ValueError``, and a subclass of the optimizers' ``metaspo_dspy.ConfigError``, so one
    ``except`` catches both."""


@dataclass(frozen=True)
class LMConfig:
    """One language model's settings (never the API key itself)."""

    model: str | None = None
    temperature: float = 0.0
    max_tokens: int | None = None
    api_base: str | None = None
    api_key_env: str | None = None
    engine: str = "litellm"
    num_retries: int = 3
    timeout: float | None = None

    def lm_kwargs(self) -> dict[str, Any]:
        """Keyword arguments for ``dspy.LM``: ``model`` plus the set options; ``api_key`` read from
        ``$api_key_env`` now (a ConfigError if that variable is unset)."""
        if not self.model:
            raise ConfigError("no model set for this LM (set <lm>.model)")
        kwargs: dict[str, Any] = {"model": self.model, "temperature": self.temperature}
        if self.max_tokens is not None:
            kwargs["max_tokens"] = self.max_tokens
        if self.api_base:
            kwargs["api_base"] = self.api_base
        if self.api_key_env:
            key = os.environ.get(self.api_key_env)
            if not key:
                raise ConfigError(f"environment variable {self.api_key_env} (api_key_env) is not set")
            kwargs["api_key"] = key
        return kwargs


@dataclass(frozen=True)
class TasksConfig:
    source: tuple[str, ...] = ()
    unseen: tuple[str, ...] = ()


@dataclass(frozen=True)
class DataConfig:
    data_dir: str | None = None
    source: str = "auto"
    prompt_format: str = "dspy"
    train_size: int = 50
    test_size: int = 500


@dataclass(frozen=True)
class SearchConfig:
    num_iterations: int = 3
    num_system_candidates: int = 9
    num_user_candidates: int = 3
    user_top_k: int = 3
    screening: float | None = None
    screening_keep: float = 0.5


@dataclass(frozen=True)
class BudgetConfig:
    max_lm_calls: int | None = None
    max_cost: float | None = None
    max_failure_share: float = 0.5


@dataclass(frozen=True)
class MetaTestConfig:
    num_unseen_user_prompts: int = 10
    tta_iterations: int = 6


@dataclass(frozen=True)
class RunConfig:
    """A validated run configuration (see the module docstring for the schema)."""

    method: str = "metaspo"
    seed: int = 42
    num_threads: int = 16
    initial_system_prompt: str = "You are a helpful assistant."
    tasks: TasksConfig = field(default_factory=TasksConfig)
    data: DataConfig = field(default_factory=DataConfig)
    search: SearchConfig = field(default_factory=SearchConfig)
    meta_test: MetaTestConfig = field(default_factory=MetaTestConfig)
    budget: BudgetConfig = field(default_factory=BudgetConfig)
    task_lm: LMConfig = field(default_factory=LMConfig)
    optimizer_lm: LMConfig = field(
        default_factory=lambda: LMConfig(model="openai/gpt-4o-mini", temperature=1.0, api_key_env="OPENAI_API_KEY")
    )
    sources: tuple[str, ...] = ()  # the files (and overrides) this config was built from

    def to_dict(self) -> dict[str, Any]:
        """Plain nested dict (tuples as lists), e.g. to save next to a run."""
        return _plain(dataclasses.asdict(self))


def _plain(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    return value


ENGINES = ("litellm", "native")
_CHOICES = {
    "method": METHODS,
    "data.source": DATA_SOURCES,
    "data.prompt_format": PROMPT_FORMATS,
    "task_lm.engine": ENGINES,
    "optimizer_lm.engine": ENGINES,
}
_MINIMUM = {
    "seed": 0,
    "num_threads": 1,
    "data.train_size": 1,
    "data.test_size": 0,
    "search.num_iterations": 0,
    "search.num_system_candidates": 0,
    "search.num_user_candidates": 0,
    "search.user_top_k": 1,
    "meta_test.num_unseen_user_prompts": 1,
    "meta_test.tta_iterations": 0,
    "task_lm.temperature": 0,
    "optimizer_lm.temperature": 0,
    "task_lm.max_tokens": 1,
    "optimizer_lm.max_tokens": 1,
    "task_lm.num_retries": 0,
    "task_lm.timeout": 0.001,
    "optimizer_lm.timeout": 0.001,
    "optimizer_lm.num_retries": 0,
    "search.screening": 0.01,
    "search.screening_keep": 0.01,
    "budget.max_lm_calls": 1,
    "budget.max_cost": 0.0,
    "budget.max_failure_share": 0.0,
}


def _hints(cls: type) -> dict[str, Any]:
    return typing.get_type_hints(cls)


def _schema(cls: type = RunConfig, prefix: str = "") -> dict[str, Any]:
    """Dotted key -> type, for every leaf of the schema (``sources`` excluded)."""
    out: dict[str, Any] = {}
    for f in dataclasses.fields(cls):
        if f.name == "sources":
            continue
        hint = _hints(cls)[f.name]
        key = prefix + f.name
        if dataclasses.is_dataclass(hint):
            out.update(_schema(hint, key + "."))
        else:
            out[key] = hint
    return out


SCHEMA: dict[str, Any] = _schema()
SECTIONS = {key.split(".")[0] for key in SCHEMA if "." in key}


def _type_name(hint: Any) -> str:
    args = typing.get_args(hint)
    if typing.get_origin(hint) in (Union, types.UnionType):
        return " or ".join(_type_name(a) for a in args)
    if typing.get_origin(hint) is tuple:
        return "a list of strings"
    return {int: "an integer", float: "a number", str: "a string", bool: "true/false", type(None): "null"}.get(
        hint, str(hint)
    )


def _matches(value: Any, hint: Any) -> bool:
    origin = typing.get_origin(hint)
    if origin in (Union, types.UnionType):
        return any(_matches(value, a) for a in typing.get_args(hint))
    if origin is tuple:
        return isinstance(value, list) and all(isinstance(v, str) for v in value)
    if hint is type(None):
        return value is None
    if hint is float:
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if hint is int:
        return isinstance(value, int) and not isinstance(value, bool)
    return isinstance(value, hint)


def _suggest(key: str, candidates: Iterable[str]) -> str:
    close = difflib.get_close_matches(key, list(candidates), n=1, cutoff=0.5)
    return f"; did you mean {close[0]!r}?" if close else ""


def _flatten(data: Mapping[str, Any], where: str, prefix: str = "") -> dict[str, Any]:
    flat: dict[str, Any] = {}
    for raw_key, value in data.items():
        key = prefix + str(raw_key)
        if key.rsplit(".", 1)[-1] == "api_key":
            raise ConfigError(
                f"{where}: key {key!r}: never store API keys in a config; set "
                f"{key.rsplit('.', 1)[0] + '.' if '.' in key else ''}api_key_env to the NAME of an environment variable"
            )
        if key in SECTIONS:
            if value is None:
                continue
            if not isinstance(value, Mapping):
                raise ConfigError(f"{where}: key {key!r} must be a mapping of settings, got {value!r}")
            flat.update(_flatten(value, where, key + "."))
        elif key in SCHEMA:
            flat[key] = value
        else:
            valid = [k for k in SCHEMA if k.startswith(prefix)] if prefix else [*SCHEMA, *SECTIONS]
            raise ConfigError(f"{where}: unknown key {key!r}{_suggest(key, valid)}")
    return flat


def _check_tasks(key: str, value: list[str], where: str) -> tuple[str, ...]:
    from metaspo_dspy.tasks import canonical_name
    from metaspo_dspy.tasks.specs import suggest

    if key == "tasks.source" and not value:
        raise ConfigError(f"{where}: key {key!r} is an empty task list; name at least one source task")
    names: list[str] = []
    for name in value:
        canonical = canonical_name(name)
        if canonical is None:
            hint = suggest(name)
            extra = f"; did you mean {hint[0]!r}?" if hint else ""
            raise ConfigError(f"{where}: key {key!r}: unknown task {name!r}{extra}")
        if canonical in names:
            raise ConfigError(f"{where}: key {key!r}: task {name!r} is listed twice")
        names.append(canonical)
    return tuple(names)


def _check(key: str, value: Any, where: str, from_cli: bool) -> Any:
    hint = SCHEMA[key]
    if from_cli and typing.get_origin(hint) is tuple and isinstance(value, str):
        value = [v.strip() for v in value.split(",") if v.strip()]
    if not _matches(value, hint):
        raise ConfigError(f"{where}: key {key!r} must be {_type_name(hint)}, got {value!r}")
    if key in _CHOICES and value not in _CHOICES[key]:
        raise ConfigError(
            f"{where}: key {key!r} must be one of {', '.join(_CHOICES[key])}, got {value!r}"
            f"{_suggest(str(value), _CHOICES[key])}"
        )
    if key in _MINIMUM and value is not None and value < _MINIMUM[key]:
        raise ConfigError(f"{where}: key {key!r} must be >= {_MINIMUM[key]}, got {value!r}")
    if key.startswith("tasks."):
        return _check_tasks(key, value, where)
    if hint is float:
        return float(value)
    return value


def resolve_path(path: str | os.PathLike) -> Path:
    """``path`` itself if it exists, else the shipped ``configs/<path>.yaml`` if that exists."""
    candidate = Path(path)
    if candidate.exists() or candidate.suffix:
        return candidate
    shipped = CONFIG_DIR / f"{candidate}.yaml"
    return shipped if shipped.exists() else candidate


def read_yaml(path: Path) -> dict[str, Any]:
    """A YAML file's top-level mapping ({} for an empty file); ConfigError when unreadable."""
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read config file ({exc.strerror or exc})") from None
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        at = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        problem = getattr(exc, "problem", None) or str(exc)
        raise ConfigError(f"{path}: malformed YAML{at}: {problem}") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: the top level must be a mapping of keys, got {type(data).__name__}")
    return data


def _override_layer(overrides: Mapping[str, Any] | Iterable[str]) -> dict[str, Any]:
    if isinstance(overrides, Mapping):
        return dict(overrides)
    layer: dict[str, Any] = {}
    for item in overrides:
        if "=" not in str(item):
            raise ConfigError(f"{OVERRIDES}: {item!r} must look like key=value")
        key, text = str(item).split("=", 1)
        try:
            layer[key.strip()] = yaml.safe_load(text) if text.strip() else None
        except yaml.YAMLError:
            layer[key.strip()] = text
    return layer


def _unflatten(flat: Mapping[str, Any]) -> dict[str, Any]:
    nested: dict[str, Any] = {}
    for key, value in flat.items():
        *heads, leaf = key.split(".")
        node = nested
        for head in heads:
            node = node.setdefault(head, {})
        node[leaf] = value
    return nested


def _lookup(nested: Mapping[str, Any], key: str) -> Any:
    for part in key.split("."):
        nested = nested[part]
    return nested


def _build(cls: type, values: Mapping[str, Any]) -> Any:
    kwargs = {}
    for f in dataclasses.fields(cls):
        if f.name not in values:
            continue
        hint = _hints(cls)[f.name]
        kwargs[f.name] = _build(hint, values[f.name]) if dataclasses.is_dataclass(hint) else values[f.name]
    return cls(**kwargs)


def load_config(
    *paths: str | os.PathLike,
    overrides: Mapping[str, Any] | Iterable[str] | None = None,
    require_tasks: bool = True,
) -> RunConfig:
    """Merge ``paths`` (later wins, per key) and ``overrides`` over the defaults; validate.

    Args:
        paths: YAML files, or names of shipped configs (``"base"``, ``"review"``...).
        overrides: ``{"search.num_iterations": 5}`` or ``["search.num_iterations=5", ...]``
            (values parsed as YAML; a list key also accepts ``a,b,c``).
        require_tasks: fail when the result has no source task.

    Raises:
        ConfigError: malformed YAML, unknown key, unknown task, wrong type or value, empty task
            list, an API key in a file -- one message naming the key and the file.
    """
    defaults = dataclasses.asdict(RunConfig())
    flat: dict[str, Any] = {key: _lookup(defaults, key) for key in SCHEMA}
    origins: list[str] = []
    for raw in paths:
        path = resolve_path(raw)
        layer = _flatten(read_yaml(path), str(path))
        flat.update({k: _check(k, v, str(path), False) for k, v in layer.items()})
        origins.append(str(path))
    if overrides:
        layer = _flatten(_unflatten(_override_layer(overrides)), OVERRIDES)
        flat.update({k: _check(k, v, OVERRIDES, True) for k, v in layer.items()})
        origins.append(OVERRIDES)
    if require_tasks and not flat.get("tasks.source"):
        where = ", ".join(origins) or "no config files"
        raise ConfigError(f"{where}: key 'tasks.source' is missing; name the source tasks (e.g. load a domain config)")
    return dataclasses.replace(_build(RunConfig, _unflatten(flat)), sources=tuple(origins))
