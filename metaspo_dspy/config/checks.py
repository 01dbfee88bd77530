"""Validation of configuration values, key by key: types, choices and ranges.

Every key of :class:`~metaspo_dspy.config.schema.RunConfig` is checked when its layer (a file or
the overrides) is applied, so a bad value fails with one :class:`ConfigError` naming the key and
where it came from -- before any run directory is created or any call is paid for. The ranges
here are the ones the optimizers enforce (``MetaSPO(...)``, ``Budget``), so a config that passes
never fails later on a value.
"""

from __future__ import annotations

import dataclasses
import difflib
import types
import typing
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any, Union

from metaspo_dspy.config.schema import METHODS, RunConfig
from metaspo_dspy.errors import ConfigError
from metaspo_dspy.lm.settings import ENGINES
from metaspo_dspy.program.system_prompt import text_problem
from metaspo_dspy.tasks.loader import PROMPT_FORMATS, SOURCES


@dataclass(frozen=True)
class Range:
    """An allowed numeric interval; ``None`` bounds are open-ended."""

    low: float | None = None
    high: float | None = None
    low_open: bool = False
    high_open: bool = False

    def contains(self, value: float) -> bool:
        """Whether ``value`` lies in the interval."""
        if self.low is not None and (value <= self.low if self.low_open else value < self.low):
            return False
        return not (self.high is not None and (value >= self.high if self.high_open else value > self.high))

    def __str__(self) -> str:
        if self.high is None:
            return f"{'>' if self.low_open else '>='} {self.low}"
        return f"in {'(' if self.low_open else '['}{self.low}, {self.high}{')' if self.high_open else ']'}"


def _at_least(low: float) -> Range:
    return Range(low)


_POSITIVE = Range(0, low_open=True)
_SHARE = Range(0, 1)

CHOICES: dict[str, tuple[str, ...]] = {
    "method": METHODS,
    "data.source": SOURCES,
    "data.prompt_format": PROMPT_FORMATS,
    "task_lm.engine": ENGINES,
    "optimizer_lm.engine": ENGINES,
}
RANGES: dict[str, Range] = {
    "seed": _at_least(0),
    "num_threads": _at_least(1),
    "num_processes": _at_least(1),
    "data.train_size": _at_least(1),
    "data.test_size": _at_least(0),
    "search.num_iterations": _at_least(1),
    "search.num_system_candidates": _at_least(1),
    "search.num_user_candidates": _at_least(1),
    "search.user_top_k": _at_least(1),
    "search.screening": Range(0, 1, low_open=True, high_open=True),
    "search.screening_keep": Range(0, 1, low_open=True),
    "meta_test.num_unseen_user_prompts": _at_least(1),
    "meta_test.tta_iterations": _at_least(0),
    "budget.max_lm_calls": _at_least(1),
    "budget.max_cost": _POSITIVE,
    "budget.max_failure_share": _SHARE,
    "preflight_timeout": _POSITIVE,
    **{
        f"{lm}.{key}": rng
        for lm in ("task_lm", "optimizer_lm")
        for key, rng in (
            ("temperature", _at_least(0)),
            ("max_tokens", _at_least(1)),
            ("num_retries", _at_least(0)),
            ("timeout", _POSITIVE),
            ("max_retry_after", _at_least(0)),
        )
    },
}


def _schema(cls: type = RunConfig, prefix: str = "") -> dict[str, Any]:
    """Dotted key -> type, for every leaf of the schema (``sources`` excluded)."""
    out: dict[str, Any] = {}
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        if f.name == "sources":
            continue
        key = prefix + f.name
        if dataclasses.is_dataclass(hints[f.name]):
            out.update(_schema(hints[f.name], key + "."))
        else:
            out[key] = hints[f.name]
    return out


#: dotted key -> type hint, for every setting
SCHEMA: dict[str, Any] = _schema()
#: the top-level keys that hold a mapping of settings
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


def suggest(key: str, candidates: Iterable[str]) -> str:
    """``"; did you mean 'x'?"`` for the closest candidate, or ``""``."""
    close = difflib.get_close_matches(key, list(candidates), n=1, cutoff=0.5)
    return f"; did you mean {close[0]!r}?" if close else ""


def flatten(data: Mapping[str, Any], where: str, prefix: str = "") -> dict[str, Any]:
    """A nested layer as ``{dotted key: value}``; raises :class:`ConfigError` for an unknown key,
    a section that is not a mapping, or an ``api_key`` entry."""
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
                inside = [k for k in SCHEMA if k.startswith(key + ".")]
                raise ConfigError(
                    f"{where}: key {key!r} must be a mapping of settings ({', '.join(inside[:4])}"
                    f"{', ...' if len(inside) > 4 else ''}), got {_shown(value)}; set a key inside it, "
                    f"e.g. {inside[0]}=..."
                )
            flat.update(flatten(value, where, key + "."))
        elif key in SCHEMA:
            flat[key] = value
        else:
            valid = [k for k in SCHEMA if k.startswith(prefix)] if prefix else [*SCHEMA, *SECTIONS]
            raise ConfigError(f"{where}: unknown key {key!r}{suggest(key, valid)}")
    return flat


def _check_tasks(key: str, value: list[str], where: str) -> tuple[str, ...]:
    from metaspo_dspy.tasks import canonical_name
    from metaspo_dspy.tasks.specs import suggest as suggest_task

    if key == "tasks.source" and not value:
        raise ConfigError(f"{where}: key {key!r} is an empty task list; name at least one source task")
    names: list[str] = []
    for name in value:
        canonical = canonical_name(name)
        if canonical is None:
            hint = suggest_task(name)
            extra = f"; did you mean {hint[0]!r}?" if hint else ""
            raise ConfigError(f"{where}: key {key!r}: unknown task {name!r}{extra}")
        if canonical in names:
            raise ConfigError(f"{where}: key {key!r}: task {name!r} is listed twice")
        names.append(canonical)
    return tuple(names)


def _is_unicode(text: str) -> bool:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def _joined(value: Any) -> Any:
    """``value`` with escaped surrogate pairs joined into the characters they stand for: YAML reads
    ``"\\ud83d\\ude00"`` as two surrogates, not as 😀. A lone surrogate stays (refused later)."""
    if isinstance(value, list):
        return [_joined(v) for v in value]
    if isinstance(value, str) and not _is_unicode(value):
        try:
            return value.encode("utf-16-le", "surrogatepass").decode("utf-16-le")
        except UnicodeDecodeError:
            return value
    return value


def _shown(value: Any) -> str:
    """``repr(value)``, cut to 200 characters (a whole file read into one key would drown the line)."""
    text = repr(value)
    return text if len(text) <= 200 else f"{text[:160]}... ({len(text):,} characters)"


def check_value(key: str, value: Any, where: str, from_cli: bool) -> Any:
    """``value`` for ``key`` validated and normalised (floats as float, task names canonical).

    ``from_cli``: a list key also accepts ``"a,b,c"``. Raises :class:`ConfigError` naming ``key``
    and ``where`` for a wrong type, an unknown choice, a value out of range or an unknown task.
    """
    hint = SCHEMA[key]
    value = _joined(value)
    if from_cli and typing.get_origin(hint) is tuple and isinstance(value, str):
        value = [v.strip() for v in value.split(",") if v.strip()]
    if not _matches(value, hint):
        raise ConfigError(f"{where}: key {key!r} must be {_type_name(hint)}, got {_shown(value)}")
    for text in value if isinstance(value, list) else [value]:
        if isinstance(text, str) and not _is_unicode(text):
            raise ConfigError(
                f"{where}: key {key!r} holds text that is not valid Unicode (a lone surrogate, e.g. from a file name "
                f"that is not UTF-8 or a broken \\u escape): {text!r:.200}; rename the file or fix the text"
            )
    if key == "initial_system_prompt" and text_problem(value):
        raise ConfigError(f"{where}: key {key!r} {text_problem(value)}; give the system prompt text")
    if key in CHOICES and value not in CHOICES[key]:
        raise ConfigError(
            f"{where}: key {key!r} must be one of {', '.join(CHOICES[key])}, got {value!r}"
            f"{suggest(str(value), CHOICES[key])}"
        )
    if key in RANGES and value is not None and not RANGES[key].contains(value):
        raise ConfigError(f"{where}: key {key!r} must be {RANGES[key]}, got {value!r}")
    if key.startswith("tasks."):
        return _check_tasks(key, value, where)
    if hint is float:
        return float(value)
    return value
