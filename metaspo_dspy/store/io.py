"""Small file helpers: atomic writes (temp file in the same folder, then rename), UTF-8 reads.

Errors keep their file: an ``OSError`` raised while writing (disk full, permission denied, ...)
always carries the path being written in ``filename``, so a caller can say which file failed and
why; a file that is not UTF-8 raises :class:`NotUtf8Error` naming the file and the fix.

Reads never hang and never grow without bound: :func:`read_bytes` (and so :func:`read_text` and
:func:`read_named_file`) opens without blocking and reads only a *regular file* -- a folder, a
FIFO, a socket or a device such as ``/dev/zero`` is an ``OSError`` saying what it is -- and, given
``max_bytes``, refuses a larger file before reading it (``errno.EFBIG``). A path the system refuses
as too long (``ENAMETOOLONG``) is an ``OSError`` too; :func:`path_error` words any of them in one
line and :func:`shown` shortens a long path for a message.
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import stat
import tempfile
from pathlib import Path
from typing import Any

from metaspo_dspy.errors import NotUtf8Error

#: the default cap of :func:`read_named_file` (a user's prompt, component library, ... file)
USER_FILE_MAX_BYTES = 64 * 1024 * 1024
_MiB = 1024 * 1024
_KINDS = (
    (stat.S_ISFIFO, "a named pipe (FIFO)"),
    (stat.S_ISCHR, "a character device"),
    (stat.S_ISBLK, "a block device"),
    (stat.S_ISSOCK, "a socket"),
)


def shown(path: str | os.PathLike) -> str:
    """``path`` for a message: as is up to 120 characters, else its start and end around an
    ellipsis and its length (a 4,000-character path would drown the line)."""
    text = os.fspath(path)
    text = text if isinstance(text, str) else os.fsdecode(text)
    if len(text) <= 120:
        return text
    return f"{text[:60]}...{text[-40:]} ({len(text):,} characters)"


def _size(n: int) -> str:
    return f"{n / _MiB:,.0f} MB" if n >= _MiB else f"{n:,} bytes"


def too_long(path: str | os.PathLike) -> str:
    """Why the system refuses ``path`` as too long, in words: its longest name in bytes when that
    is over the usual 255, else its whole length (the usual limit: 4,096 bytes)."""
    raw = os.fsencode(path)
    if os.altsep:
        raw = raw.replace(os.fsencode(os.altsep), os.fsencode(os.sep))
    longest = max((len(part) for part in raw.split(os.fsencode(os.sep))), default=0)
    if longest > 255:
        return f"the path is too long: a name in it has {longest:,} bytes (the usual limit is 255 per name)"
    return f"the path is too long: {len(raw):,} bytes (the usual limit is 4,096)"


def path_error(exc: OSError, path: str | os.PathLike) -> str:
    """One phrase for an ``OSError`` met on ``path``: a too-long path explained (:func:`too_long`),
    else the system's words (``strerror``)."""
    if exc.errno == errno.ENAMETOOLONG:
        return too_long(path)
    return exc.strerror or str(exc)


def read_bytes(path: str | os.PathLike, max_bytes: int | None = None) -> bytes:
    """The bytes of the regular file ``path``, at most ``max_bytes`` of them (None: no cap).

    Opens without blocking, so a FIFO never hangs. Raises ``OSError`` naming ``path``: the
    system's (missing file, no permission, a path too long...), ``IsADirectoryError`` for a folder,
    ``errno.EINVAL`` for anything else that is not a regular file (FIFO, device, socket), and
    ``errno.EFBIG`` for a file over ``max_bytes`` (checked on its size before reading, and again
    while reading, for a file that grows).
    """
    name = os.fspath(path)
    flags = os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_CLOEXEC", 0) | getattr(os, "O_BINARY", 0)
    fd = os.open(name, flags)
    try:
        info = os.fstat(fd)
        if stat.S_ISDIR(info.st_mode):
            raise IsADirectoryError(errno.EISDIR, "it is a folder, not a file", name)
        if not stat.S_ISREG(info.st_mode):
            kind = next((what for test, what in _KINDS if test(info.st_mode)), "not a regular file")
            raise OSError(errno.EINVAL, f"it is {kind}, not a regular file", name)
        too_big = OSError(errno.EFBIG, f"it is larger than {_size(max_bytes or 0)}, the limit for this file", name)
        if max_bytes is not None and info.st_size > max_bytes:
            raise too_big
        limit = max_bytes + 1 if max_bytes is not None else None
        chunks, total = [], 0
        while limit is None or total < limit:
            chunk = os.read(fd, 1 << 20 if limit is None else min(1 << 20, limit - total))
            if not chunk:
                break
            chunks.append(chunk)
            total += len(chunk)
        if max_bytes is not None and total > max_bytes:
            raise too_big
        return b"".join(chunks)
    finally:
        os.close(fd)


def read_text(path: str | Path, max_bytes: int | None = None) -> str:
    """The text of a UTF-8 regular file (a leading UTF-8 BOM is dropped), at most ``max_bytes``.

    Raises :class:`NotUtf8Error` for any other encoding and ``OSError`` when unreadable, not a
    regular file or too large (:func:`read_bytes`).
    """
    data = read_bytes(path, max_bytes)
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise NotUtf8Error(path, data, exc) from None


def read_named_file(
    path: str | Path,
    what: str,
    error: type[Exception] = ValueError,
    fix: str = "",
    max_bytes: int | None = USER_FILE_MAX_BYTES,
) -> str:
    """Read a user's text file: :func:`read_text` of a regular file of at most ``max_bytes``
    (default :data:`USER_FILE_MAX_BYTES`), never blocking. Every failure is one ``error`` whose
    message names ``what`` (e.g. "system prompt file"), the file (shortened when long), and why:
    missing (then ``fix``), a folder, a FIFO or device, too large, a path too long, not UTF-8."""
    try:
        return read_text(path, max_bytes)
    except FileNotFoundError:
        raise error(f"{what} {shown(path)} does not exist{fix}") from None
    except NotUtf8Error as exc:
        raise error(f"{what} {exc}") from None
    except OSError as exc:
        fix = _FIXES.get(exc.errno or 0, "")
        raise error(f"cannot read {what} {shown(path)}: {path_error(exc, path)}{fix}") from None


_FIXES = {
    errno.EISDIR: "; give a text file",
    errno.EINVAL: "; give a text file",
    errno.EFBIG: "; give a smaller file",
    errno.ENAMETOOLONG: "; use a shorter path",
}


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
