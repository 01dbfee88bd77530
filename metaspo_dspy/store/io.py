"""Small file helpers: atomic writes (temp file in the same folder, then rename), UTF-8 reads.

Errors keep their file: an ``OSError`` raised while writing (disk full, permission denied, ...)
always carries the path being written in ``filename``, so a caller can say which file failed and
why; a file that is not UTF-8 raises :class:`NotUtf8Error` naming the file and the fix.
"""

from __future__ import annotations

import contextlib
import json
import os
import tempfile
from pathlib import Path
from typing import Any

from metaspo_dspy.errors import NotUtf8Error


def read_text(path: str | Path) -> str:
    """The text of a UTF-8 file (a leading UTF-8 BOM is dropped).

    Raises :class:`NotUtf8Error` for any other encoding and ``OSError`` when unreadable.
    """
    data = Path(path).read_bytes()
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise NotUtf8Error(path, data, exc) from None


def read_named_file(path: str | Path, what: str, error: type[Exception] = ValueError, fix: str = "") -> str:
    """:func:`read_text` of a file the user named; every failure is one ``error`` whose message
    names ``what`` (e.g. "system prompt file"), the file, and ``fix`` for a missing file."""
    try:
        return read_text(path)
    except FileNotFoundError:
        raise error(f"{what} {path} does not exist{fix}") from None
    except NotUtf8Error as exc:
        raise error(f"{what} {exc}") from None
    except OSError as exc:
        raise error(f"cannot read {what} {path}: {exc.strerror or exc}") from None


def with_filename(exc: OSError, path: str | Path) -> OSError:
    """``exc`` itself when it names a file, else an equivalent ``OSError`` (same errno, hence the
    same subclass) naming ``path``."""
    if exc.filename is not None or exc.errno is None:
        return exc
    return OSError(exc.errno, exc.strerror or os.strerror(exc.errno), str(path))


def atomic_write_text(path: str | Path, text: str) -> None:
    """Write ``text`` to ``path`` so that readers see the old file or the new one, never a part.

    Creates missing parent folders. Raises ``OSError`` naming ``path`` (or the temporary file) when
    the folder is not writable or the disk is full; no temporary file is left behind.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            handle.write(text)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException as exc:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        if isinstance(exc, OSError) and exc.filename is None:
            raise with_filename(exc, path) from exc
        raise


def atomic_write_json(path: str | Path, data: Any) -> None:
    """``atomic_write_text`` of ``data`` as indented UTF-8 JSON."""
    atomic_write_text(path, json.dumps(data, indent=2, ensure_ascii=False, default=str) + "\n")
