"""``metaspo data fetch``: download the tasks we may not ship into the user cache.

:func:`fetch_data` resolves its targets (task names, domain names or ``all``), downloads each
missing item's files (:mod:`.remote`), checks each file's SHA-256 against the one recorded in the
package, converts them to the reference layout (:mod:`.convert`), checks every row against the
task's answer type, and writes the result atomically under the cache folder
(:func:`~metaspo_dspy.tasks.sources.local.cache_dir`). Contracts:

* a file whose bytes do not match its recorded SHA-256, a download that fails, or a file that does
  not convert raises :class:`DataFetchError` (a :class:`TaskLoadError`) naming the URL and what
  went wrong; the item being fetched is not written, items fetched before it stay;
* an item already in the cache is not downloaded again unless ``force``;
* nothing is ever written outside ``cache_dir``, and never a partial file.
"""

from __future__ import annotations

import hashlib
import urllib.error
import urllib.request
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path

from metaspo_dspy.errors import ConvertError, TaskLoadError
from metaspo_dspy.store.io import atomic_write_json, atomic_write_text
from metaspo_dspy.tasks.sources.answer_kinds import check_rows
from metaspo_dspy.tasks.sources.convert import CONVERTERS, dump_splits
from metaspo_dspy.tasks.sources.local import cache_dir
from metaspo_dspy.tasks.sources.remote import REMOTE_ITEMS, SHA256, RemoteFile, RemoteItem, base_url
from metaspo_dspy.tasks.specs import DOMAIN_TASKS, SPECS, canonical_name, get_spec, suggest

#: a downloaded file larger than this is refused (the largest original is about 2.3 MB)
MAX_BYTES = 64 * 2**20


class DataFetchError(TaskLoadError):
    """A download failed, a checksum did not match, or a file did not convert."""


@dataclass(frozen=True)
class FetchRecord:
    """What :func:`fetch_data` did for one task's item.

    ``status``: ``fetched`` (downloaded and written now), ``present`` (already in the cache, not
    downloaded), or ``bundled`` (the task ships with the package and has nothing to fetch;
    ``kind`` is then ``data`` and ``path`` None). ``detail``: sizes written or found.
    """

    task: str
    kind: str
    status: str
    path: Path | None
    detail: str


def resolve_targets(targets: Iterable[str]) -> list[str]:
    """Task names for ``targets`` (each a task, an alias, a domain name, or ``all`` = ``global``:
    every benchmark task), in registry order, each once. Raises :class:`TaskLoadError` for an
    unknown target."""
    wanted: set[str] = set()
    for target in targets:
        key = str(target).strip().lower()
        if key in ("all", "global"):
            wanted.update(name for name in SPECS if SPECS[name].domain != "generated")
        elif key in DOMAIN_TASKS:
            wanted.update(DOMAIN_TASKS[key])
        elif canonical_name(key) is not None:
            wanted.add(canonical_name(key))  # type: ignore[arg-type]
        else:
            hint = suggest(key) + [d for d in DOMAIN_TASKS if d.startswith(key[:3])]
            extra = f"; did you mean {', '.join(map(repr, hint))}?" if hint else ""
            raise TaskLoadError(
                f"unknown data target {target!r}{extra} (give a task, a domain -- "
                f"{', '.join(d for d in DOMAIN_TASKS if d != 'generated')} -- or all)"
            )
    return [name for name in SPECS if name in wanted]


def download(url: str, timeout: float = 60.0) -> bytes:
    """The body of ``url``; raises :class:`DataFetchError` naming the URL for any failure (HTTP
    status, network, timeout, a body over :data:`MAX_BYTES`)."""
    request = urllib.request.Request(url, headers={"User-Agent": "metaspo-dspy data fetch"})
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            body = response.read(MAX_BYTES + 1)
    except urllib.error.HTTPError as exc:
        raise DataFetchError(f"cannot download {url}: HTTP {exc.code} {exc.reason}") from None
    except urllib.error.URLError as exc:
        raise DataFetchError(f"cannot download {url}: {exc.reason}") from None
    except (OSError, ValueError) as exc:
        raise DataFetchError(f"cannot download {url}: {type(exc).__name__}: {exc}") from None
    if len(body) > MAX_BYTES:
        raise DataFetchError(f"cannot download {url}: larger than {MAX_BYTES} bytes")
    return body


def _verified(file: RemoteFile, body: bytes, url: str, checksums: Mapping[str, str]) -> bytes:
    expected = checksums.get(file.key)
    actual = hashlib.sha256(body).hexdigest()
    if expected is None:
        raise DataFetchError(f"no checksum recorded for {file.key}: refusing {url}")
    if actual != expected:
        raise DataFetchError(
            f"checksum mismatch for {url}: SHA-256 {actual}, expected {expected} (a changed or corrupted file, "
            "or a mirror holding another version); nothing was written for it"
        )
    return body


def _write(item: RemoteItem, converted, root: Path, origin: str) -> str:
    """Check ``converted`` and write it atomically; the sizes written, in words."""
    path = root / item.target
    if item.kind == "prompts":
        atomic_write_json(path, converted)
        return f"{len(converted)} user prompts"
    try:
        check_rows(get_spec(item.task), converted, origin)
    except DataFetchError:
        raise
    except TaskLoadError as exc:
        raise DataFetchError(f"{exc}; nothing was written") from None
    if not converted["train"] and not converted["test"]:
        raise DataFetchError(f"task {item.task!r}: {origin} holds no examples")
    atomic_write_text(path, dump_splits(converted))
    return f"{len(converted['train'])} train / {len(converted['test'])} test"


def fetch_item(
    item: RemoteItem,
    root: Path,
    url_base: str,
    checksums: Mapping[str, str],
    timeout: float = 60.0,
) -> str:
    """Download, verify, convert and write one item; the sizes written, in words."""
    files: dict[str, bytes] = {}
    urls = []
    for role, remote in item.files:
        url = remote.url(url_base)
        urls.append(url)
        files[role] = _verified(remote, download(url, timeout), url, checksums)
    origin = urls[0] if len(urls) == 1 else f"{urls[0]} (+{len(urls) - 1} files)"
    try:
        converted = CONVERTERS[item.converter](files)
    except ConvertError as exc:
        raise DataFetchError(f"task {item.task!r}: {origin}: {exc}") from None
    return _write(item, converted, root, origin)


def fetch_data(
    targets: Iterable[str] = ("all",),
    *,
    cache: str | Path | None = None,
    base: str | None = None,
    force: bool = False,
    checksums: Mapping[str, str] | None = None,
    timeout: float = 60.0,
    on_record: Callable[[FetchRecord], None] | None = None,
) -> list[FetchRecord]:
    """Fetch what ``targets`` need into ``cache`` (default :func:`cache_dir`); one record per item.

    Args:
        targets: task names, aliases, domain names or ``all``.
        cache: the cache folder (created if missing).
        base: the download base URL (default ``$METASPO_DATA_URL``, else raw.githubusercontent.com).
        force: download and rewrite items already in the cache.
        checksums: SHA-256 per file key replacing the recorded :data:`~.remote.SHA256` (a mirror of
            other pinned versions; tests serving their own files).
        timeout: seconds per download.
        on_record: called with each record as soon as it is done (progress reporting).

    Raises:
        TaskLoadError: an unknown target.
        DataFetchError: a download, checksum or conversion failed (see the module docstring).
    """
    names = resolve_targets(targets)
    root = Path(cache).expanduser() if cache is not None else cache_dir()
    url_base = base_url(base)
    sums = SHA256 if checksums is None else checksums
    records = []
    for name in names:
        items = REMOTE_ITEMS.get(name, [])
        if not any(item.kind == "data" for item in items):
            generated = SPECS[name].domain == "generated"
            detail = "generated offline, needs no data" if generated else "ships with the package"
            records.append(FetchRecord(name, "data", "bundled", None, detail))
            if on_record:
                on_record(records[-1])
        for item in items:
            path = root / item.target
            if path.is_file() and not force:
                record = FetchRecord(name, item.kind, "present", path, "already in the cache")
            else:
                record = FetchRecord(name, item.kind, "fetched", path, fetch_item(item, root, url_base, sums, timeout))
            records.append(record)
            if on_record:
                on_record(record)
    return records
