"""Local data in the reference's on-disk format: ``{data_dir}/{folder}/{task}.json``.

Each file is ``{"train": [row, ...], "test": [row, ...]}``; a row has ``question`` and either
``answer`` (a string, or an int 1-5 for Amazon) or ``answers`` (a list of strings, grounding).
Extra keys are kept and ignored.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from metaspo_dspy.io import NotUtf8Error, read_text

DATA_DIR_ENV = "METASPO_DATA_DIR"


class TaskLoadError(ValueError):
    """A task could not be loaded; the message names the task and every place that was tried."""


def default_data_dir() -> Path | None:
    """``$METASPO_DATA_DIR`` if set, else ``../shared/data`` (relative to the current directory)
    if that folder exists, else None."""
    env = os.environ.get(DATA_DIR_ENV)
    if env:
        return Path(env).expanduser()
    candidate = Path.cwd().parent / "shared" / "data"
    return candidate if candidate.is_dir() else None


def resolve_data_dir(data_dir: str | os.PathLike | None) -> Path | None:
    """``data_dir`` as a Path, or :func:`default_data_dir` when it is None."""
    return Path(data_dir).expanduser() if data_dir is not None else default_data_dir()


def local_path(data_dir: Path, folder: str, task: str) -> Path:
    """Where the reference layout keeps ``task``'s file."""
    return data_dir / folder / f"{task}.json"


def read_json(path: Path) -> Any:
    """Parse a UTF-8 JSON file (a UTF-8 BOM is accepted); a missing, unreadable, non-UTF-8 or
    malformed file raises :class:`TaskLoadError` naming it."""
    try:
        return json.loads(read_text(path))
    except FileNotFoundError:
        raise TaskLoadError(f"file not found: {path}") from None
    except NotUtf8Error as exc:
        raise TaskLoadError(f"data file {exc}") from None
    except (OSError, json.JSONDecodeError) as exc:
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
