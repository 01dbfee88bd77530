"""Where configuration layers come from: YAML files (shipped or the user's) and ``key=value`` overrides.

Each function returns plain nested data; validation is :mod:`metaspo_dspy.config.checks`' job.
Every problem is one :class:`~metaspo_dspy.errors.ConfigError` naming the file: unreadable,
not a regular file (a folder, a FIFO, a device: refused without reading), larger than
:data:`CONFIG_MAX_BYTES`, a path too long for the system, not UTF-8 (a UTF-8 BOM is accepted),
malformed YAML (with line and column), a key given twice in one mapping (with both lines), or a
top level that is not a mapping.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import yaml

from metaspo_dspy.errors import ConfigError, NotUtf8Error
from metaspo_dspy.store.io import path_error, read_text, shown

# The shipped configs: inside the installed package (a link to configs/ in a checkout), or the
# repository's own folder where the link is not followed (e.g. a checkout without symlinks).
_PACKAGED, _REPOSITORY = Path(__file__).parents[1] / "configs", Path(__file__).resolve().parents[2] / "configs"
CONFIG_DIR = _PACKAGED if (_PACKAGED / "base.yaml").is_file() else _REPOSITORY
#: how errors name the ``key=value`` layer
OVERRIDES = "<overrides>"
#: the largest config file read (a config is a few kB; even one holding a long prompt is far below)
CONFIG_MAX_BYTES = 1024 * 1024
_MERGE_TAG = "tag:yaml.org,2002:merge"


class _DuplicateKey(yaml.YAMLError):
    def __init__(self, key: Any, first: int, again: int):
        super().__init__(f"duplicate key {key!r}")
        self.key, self.first, self.again = key, first, again


class _UniqueKeyLoader(yaml.SafeLoader):
    """``yaml.SafeLoader`` that refuses a key given twice in one mapping (YAML says keys are
    unique; PyYAML would silently keep the last). Merge keys (``<<``) still override."""

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
        seen: dict[Any, int] = {}
        for key_node, _ in node.value:
            if key_node.tag == _MERGE_TAG:
                continue
            key, line = self.construct_object(key_node, deep=True), key_node.start_mark.line + 1
            try:
                if key in seen:
                    raise _DuplicateKey(key, seen[key], line)
                seen[key] = line
            except TypeError:  # an unhashable key: the base class reports it
                continue
        return super().construct_mapping(node, deep=deep)


def resolve_path(path: str | os.PathLike) -> Path:
    """``path`` itself if it exists, else the shipped ``configs/<path>.yaml`` if that exists."""
    candidate = Path(path)
    if os.path.exists(candidate) or candidate.suffix:  # os.path.exists: False for a path too long
        return candidate
    shipped = CONFIG_DIR / f"{candidate}.yaml"
    return shipped if os.path.exists(shipped) else candidate


def read_yaml(path: Path) -> dict[str, Any]:
    """A YAML file's top-level mapping ({} for an empty file); ConfigError when unreadable, not
    UTF-8, malformed, with a duplicate key, or not a mapping."""
    try:
        text = read_text(path, CONFIG_MAX_BYTES)
    except NotUtf8Error as exc:
        raise ConfigError(f"config file {exc}") from None
    except OSError as exc:
        raise ConfigError(f"{shown(path)}: cannot read config file ({path_error(exc, path)})") from None
    try:
        data = yaml.load(text, Loader=_UniqueKeyLoader)  # a SafeLoader subclass: safe
    except _DuplicateKey as exc:
        raise ConfigError(
            f"{path}: duplicate key {exc.key!r} at line {exc.again} (first given at line {exc.first}); "
            "give each key once"
        ) from None
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


def override_layer(overrides: Mapping[str, Any] | Iterable[str]) -> dict[str, Any]:
    """``{"a.b": value}`` from a mapping or from ``["a.b=value", ...]`` (values parsed as YAML,
    kept as text when they do not parse; a later item for the same key wins)."""
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
