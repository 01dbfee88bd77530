"""Local data in the reference's on-disk format: ``{root}/{folder}/{task}.json``.

Each file is ``{"train": [row, ...], "test": [row, ...]}``; a row has ``question`` and either
``answer`` (a string, or an int 1-5 for Amazon) or ``answers`` (a list of strings, grounding).
Extra keys are kept and ignored.

Where a task's file is looked for (:func:`data_roots`), first match wins:

1. ``data_dir`` when given (``--data-dir``, config ``data.data_dir``): that folder only;
2. else ``$METASPO_DATA_DIR`` when set: that folder only;
3. else the user cache (``$METASPO_CACHE_DIR``, default ``~/.cache/metaspo-dspy/data``, or
   ``$XDG_CACHE_HOME/metaspo-dspy/data``), where ``metaspo data fetch`` writes, **then** the data
   bundled in the package (``metaspo_dspy/data``). The cache wins so a file you put there
   replaces a bundled subset; ``metaspo data fetch`` itself only writes tasks that are not
   bundled, so the two never hold the same task unless you put it there.

A task file is read only when it is a regular file of at most :data:`DATA_FILE_MAX_BYTES`
(512 MB, far above any task's); anything else is a :class:`TaskLoadError` naming it, before a
byte is read. A ``data_dir`` path the system refuses (too long) is one too.
"""

from __future__ import annotations

import errno
import json
import os
from pathlib import Path
from typing import Any

from metaspo_dspy.errors import NotUtf8Error, TaskLoadError
from metaspo_dspy.store.io import path_error, read_text, shown

#: the largest task file read (the reference's largest is a few MB)
DATA_FILE_MAX_BYTES = 512 * 1024 * 1024
DATA_DIR_ENV = "METASPO_DATA_DIR"
CACHE_DIR_ENV = "METASPO_CACHE_DIR"
#: the bundled subsets (redistributable tasks only; see ``NOTICE.md`` there)
BUNDLED_DIR = Path(__file__).resolve().parents[2] / "data"


def default_data_dir() -> Path | None:
    """The folder named by ``$METASPO_DATA_DIR``, or None when it is unset (then the user cache
    and the bundled data are used, :func:`data_roots`)."""
    env = os.environ.get(DATA_DIR_ENV)
    return Path(env).expanduser() if env else None


def cache_dir() -> Path:
    """Where ``metaspo data fetch`` writes: ``$METASPO_CACHE_DIR``, else
    ``$XDG_CACHE_HOME/metaspo-dspy/data``, else ``~/.cache/metaspo-dspy/data``. Not created here."""
    env = os.environ.get(CACHE_DIR_ENV)
    if env:
        return Path(env).expanduser()
    xdg = os.environ.get("XDG_CACHE_HOME")
    base = Path(xdg).expanduser() if xdg else Path.home() / ".cache"
    return base / "metaspo-dspy" / "data"


def data_roots(data_dir: str | os.PathLike | None = None) -> list[tuple[str, Path]]:
    """The folders searched for task files, in order, each with its kind: ``[("data_dir", DIR)]``
    for an explicit ``data_dir``, ``[("$METASPO_DATA_DIR", DIR)]`` when that is set, else
    ``[("fetched", cache_dir()), ("bundled", BUNDLED_DIR)]``."""
    if data_dir is not None:
        return [("data_dir", _usable(Path(data_dir).expanduser(), "data dir"))]
    env = default_data_dir()
    if env is not None:
        return [(f"${DATA_DIR_ENV}", _usable(env, f"${DATA_DIR_ENV}"))]
    return [("fetched", cache_dir()), ("bundled", BUNDLED_DIR)]


def _usable(root: Path, what: str) -> Path:
    """``root``, unless the system refuses its path as too long (then a :class:`TaskLoadError`:
    looking for a task file in it would raise instead of saying "not found")."""
    try:
        os.stat(root / ("x" * 16) / ("x" * 40 + ".json"))  # as long as any task file's path under it
    except OSError as exc:
        if exc.errno == errno.ENAMETOOLONG:
            raise TaskLoadError(f"{what} {shown(root)}: {path_error(exc, root)}; use a shorter path") from None
    return root


def find_file(relative: str | Path, data_dir: str | os.PathLike | None = None) -> tuple[str, Path] | None:
    """The first ``root / relative`` that is a file, with its root's kind, else None."""
    for kind, root in data_roots(data_dir):
        path = root / relative
        if path.is_file():
            return kind, path
    return None


def local_path(data_dir: Path, folder: str, task: str) -> Path:
    """Where the reference layout keeps ``task``'s file."""
    return data_dir / folder / f"{task}.json"


def read_json(path: Path) -> Any:
    """Parse a UTF-8 JSON file (a UTF-8 BOM is accepted); a missing, unreadable, non-UTF-8 or
    malformed file, one that is not a regular file, or one over :data:`DATA_FILE_MAX_BYTES`
    raises :class:`TaskLoadError` naming it."""
    try:
        return json.loads(read_text(path, DATA_FILE_MAX_BYTES))
    except FileNotFoundError:
        raise TaskLoadError(f"file not found: {shown(path)}") from None
    except NotUtf8Error as exc:
        raise TaskLoadError(f"data file {exc}") from None
    except OSError as exc:
        raise TaskLoadError(f"cannot read data file {shown(path)}: {path_error(exc, path)}") from None
    except json.JSONDecodeError as exc:
        raise TaskLoadError(f"cannot read {path}: {exc}") from exc


def read_splits(path: Path, task: str) -> dict[str, list[dict[str, Any]]]:
    """The ``train``/``test`` rows of a reference-format file, validated.

    Raises :class:`TaskLoadError` naming ``task`` and ``path`` when the file is missing, is not a
    ``{"train": [...], "test": [...]}`` object, or has a row without ``question`` and an answer.
    """
    data = read_json(path)
    if not isinstance(data, dict) or not isinstance(data.get("train"), list) or not isinstance(data.get("test"), list):
        raise TaskLoadError(f"task {task!r}: {path} must hold {{'train': [...], 'test': [...]}}")
    for split in ("train", "test"):
        for i, row in enumerate(data[split]):
            check_row(row, task, f"{path}, {split} split, row {i}")
    return {"train": data["train"], "test": data["test"]}


def check_row(row: Any, task: str, where: str) -> None:
    """Raise :class:`TaskLoadError` unless ``row`` has a string ``question`` and an answer."""
    if not isinstance(row, dict) or not isinstance(row.get("question"), str):
        raise TaskLoadError(f"task {task!r}: {where}: the row has no string 'question'")
    if "answer" not in row and not isinstance(row.get("answers"), list):
        raise TaskLoadError(f"task {task!r}: {where}: the row has neither 'answer' nor an 'answers' list")
