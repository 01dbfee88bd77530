"""Open files and threads: a run at 64 threads must not die of "Too many open files" mid-run.

DSPy's disk cache (:class:`dspy.clients.cache.Cache` over a 16-shard ``diskcache.FanoutCache``)
opens one SQLite connection per shard *per thread that touches it* -- about 32 descriptors per
thread (each shard's database and its write-ahead log), kept until the thread's objects are
garbage-collected. A grid at 64 threads then holds over 2,000 descriptors, past the common limit
of 1,024, and the run stops after thousands of paid calls. Three tools, used before any call:

* :class:`SerialDiskCache` -- a subclass of DSPy's cache (same keys, same files on disk) whose disk
  tier is reached through one dedicated thread: its 16 connections are opened once, when it is
  made, and no calling thread opens any. :func:`configure_bounded_cache` installs one as
  ``dspy.cache`` (the signature of ``dspy.configure_cache``; ``DSPY_CACHEDIR`` and
  ``DSPY_CACHE_LIMIT`` are honoured as DSPy honours them).
* :func:`raise_open_file_limit` -- the soft ``RLIMIT_NOFILE`` raised to the hard one (capped at
  :data:`MAX_OPEN_FILES`).
* :func:`check_open_files` -- measures what one more calling thread of the configured
  ``dspy.cache`` opens, adds an allowance per thread for its connection to the model server, and
  raises :class:`~metaspo_dspy.errors.ConfigError` (naming ``ulimit -n`` and the fix) when even the
  raised limit cannot cover the run.

Measured (peak descriptors of a fake-model ``metaspo train``, 2 tasks x 100 examples, 1 iteration,
1,360 calls) at 8 / 16 / 32 / 64 threads: DSPy's cache 560 / 886 / 1,089 / 1,128 (and "Too many
open files" under a 1,024 limit at 64 threads); :class:`SerialDiskCache` 58 at each. In a 64-thread
get/put loop: 2,040 against 54, at the same throughput.
"""

from __future__ import annotations

import errno
import math
import os
import sqlite3
import threading
import weakref
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any, TypeVar

import dspy
from dspy.clients.cache import Cache
from dspy.utils.caching import default_cache_dir

from metaspo_dspy.errors import ConfigError

try:  # POSIX only; Windows has no RLIMIT_NOFILE to check
    import resource
except ImportError:  # pragma: no cover - Windows
    resource = None  # type: ignore[assignment]

__all__ = [
    "MAX_OPEN_FILES",
    "SerialDiskCache",
    "check_open_files",
    "configure_bounded_cache",
    "open_file_count",
    "raise_open_file_limit",
    "require_open_files",
    "thread_cost",
]

#: The soft limit is raised to the hard one, but never above this (an "unlimited" hard limit
#: included): more than any run needs, and some platforms refuse larger values.
MAX_OPEN_FILES = 65_536
#: Descriptors allowed per calling thread besides the cache: its connection to the model server
#: (one socket per call in flight) and one spare (a reconnect, a keep-alive socket being closed).
PER_THREAD_ALLOWANCE = 2
#: Descriptors allowed for what a run opens later besides its threads: its journals, lock and logs,
#: tokenizer and certificate files, DNS lookups.
HEADROOM = 64
#: Descriptors the parent holds per worker process (its pipes and process sentinel).
PER_WORKER = 4
#: Requests a probe thread looks up in the cache: enough to reach each of its shards (16 for DSPy's;
#: 256 keys miss one shard with probability 16 * (15/16)**256, about 1e-6). Lookups only: a probe
#: never writes to the cache.
PROBES = 256
#: Descriptors to spare before :func:`check_open_files` probes a cache (:func:`thread_cost`): a
#: probe of DSPy's cache opens 64, and other threads must not run out meanwhile.
PROBE_ROOM = 128
#: The fewest open files a command that calls models starts with (:func:`require_open_files`).
MIN_OPEN_FILES = 128
#: The largest soft limit macOS accepts when the hard limit is "unlimited" (``OPEN_MAX``).
_MACOS_OPEN_MAX = 10_240
#: What :func:`raise_open_file_limit` returns where no limit can be read (no ``resource`` module).
UNKNOWN_LIMIT = -1

_T = TypeVar("_T")


# -- the cache ---------------------------------------------------------------------------------------
class SerialDiskCache(Cache):
    """DSPy's :class:`~dspy.clients.cache.Cache` whose lookups and stores run on one dedicated
    thread, so its disk tier holds one SQLite connection per shard in all (16, opened when it is
    made) whatever the number of threads that call it.

    Contract: the same behaviour, keys and on-disk format as ``Cache`` with the same arguments (the
    methods are ``Cache``'s own, only run elsewhere): a run with it reads what DSPy's default cache
    wrote and the reverse. ``get``, ``put`` and ``in`` wait for the cache thread; the other methods
    touch only the memory tier and run in the caller. Safe to use after ``fork`` (the child starts
    its own cache thread). Measured throughput at 64 calling threads equals the per-thread
    connections' (the work is GIL-bound either way).
    """

    def __init__(
        self,
        enable_disk_cache: bool,
        enable_memory_cache: bool,
        disk_cache_dir: str | None,
        disk_size_limit_bytes: int | None = 1024 * 1024 * 10,
        memory_max_entries: int = 1000000,
        restrict_pickle: bool = False,
        safe_types: list[type[Any]] | None = None,
    ):
        self._thread_lock = threading.Lock()
        self._pool: ThreadPoolExecutor | None = None
        self._pool_pid = -1
        # Made on the cache thread: the connections diskcache opens while creating the shards are
        # that thread's, the ones every later lookup uses.
        self._serially(
            super().__init__,
            enable_disk_cache,
            enable_memory_cache,
            disk_cache_dir,
            disk_size_limit_bytes,
            memory_max_entries,
            restrict_pickle=restrict_pickle,
            safe_types=safe_types,
        )

    def _serially(self, function: Callable[..., _T], *args: Any, **kwargs: Any) -> _T:
        """``function(*args, **kwargs)`` run on this process's cache thread; its result or exception."""
        with self._thread_lock:
            if self._pool is None or self._pool_pid != os.getpid():  # none yet, or a forked child's copy
                self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="metaspo-dspy-cache")
                self._pool_pid = os.getpid()
            pool = self._pool
        return pool.submit(function, *args, **kwargs).result()

    def get(self, request: dict[str, Any], ignored_args_for_cache_key: list[str] | None = None) -> Any:
        return self._serially(super().get, request, ignored_args_for_cache_key)

    def put(
        self,
        request: dict[str, Any],
        value: Any,
        ignored_args_for_cache_key: list[str] | None = None,
        enable_memory_cache: bool = True,
    ) -> None:
        self._serially(super().put, request, value, ignored_args_for_cache_key, enable_memory_cache)

    def __contains__(self, key: str) -> bool:
        return self._serially(super().__contains__, key)


def configure_bounded_cache(
    enable_disk_cache: bool | None = True,
    enable_memory_cache: bool | None = True,
    disk_cache_dir: str | None = None,
    disk_size_limit_bytes: int | None = None,
    memory_max_entries: int = 1000000,
    restrict_pickle: bool = False,
    safe_types: list[type[Any]] | None = None,
) -> Cache:
    """``dspy.configure_cache`` with a :class:`SerialDiskCache`: make it, set ``dspy.cache`` to it,
    return it. Defaults are DSPy's, read now: ``disk_cache_dir`` ``$DSPY_CACHEDIR`` (else
    ``~/.dspy_cache``), ``disk_size_limit_bytes`` ``$DSPY_CACHE_LIMIT`` (else 30 GB). Without a
    disk tier this is ``dspy.configure_cache`` (a memory cache opens no files).

    Call it before any LM call (a CLI's start, a worker's initializer). Raises
    :class:`~metaspo_dspy.errors.ConfigError` if the cache's files cannot be opened because the
    open-file limit is reached."""
    if disk_cache_dir is None:
        disk_cache_dir = default_cache_dir()
    if disk_size_limit_bytes is None:
        disk_size_limit_bytes = int(os.environ.get("DSPY_CACHE_LIMIT", 3e10))
    kind = SerialDiskCache if enable_disk_cache else Cache
    try:
        cache = kind(
            bool(enable_disk_cache),
            bool(enable_memory_cache),
            disk_cache_dir,
            disk_size_limit_bytes,
            memory_max_entries,
            restrict_pickle=restrict_pickle,
            safe_types=safe_types,
        )
    except Exception as exc:
        if _out_of_descriptors(exc):
            soft, hard = _limits()
            raise ConfigError(
                f"DSPy's disk cache ({disk_cache_dir}) cannot be opened: the open-file limit "
                f"(`ulimit -n`: {_number(soft)}, hard limit {_number(hard)}) is reached; raise it "
                "(`ulimit -n 4096` before the run)"
            ) from exc
        raise
    dspy.cache = cache
    return cache


def _out_of_descriptors(exc: BaseException) -> bool:
    """Whether ``exc`` (or what caused it) is the process running out of file descriptors:
    ``EMFILE``, or SQLite's "unable to open database file" while the limit is (nearly) reached."""
    seen: BaseException | None = exc
    while seen is not None:
        if isinstance(seen, OSError) and seen.errno == errno.EMFILE:
            return True
        if isinstance(seen, sqlite3.OperationalError) and "unable to open" in str(seen):
            return _near_limit()
        seen = seen.__cause__ or seen.__context__
    return False


# -- the limit ---------------------------------------------------------------------------------------
def _limits() -> tuple[int, int]:
    if resource is None:
        return UNKNOWN_LIMIT, UNKNOWN_LIMIT
    return resource.getrlimit(resource.RLIMIT_NOFILE)


def _unlimited(value: int) -> bool:
    return resource is not None and value == resource.RLIM_INFINITY


def raise_open_file_limit() -> tuple[int, int]:
    """Raise this process's soft open-file limit (``RLIMIT_NOFILE``, what ``ulimit -n`` shows) to
    its hard limit, capped at :data:`MAX_OPEN_FILES`; never lowers it. Returns ``(soft, hard)`` as
    they are afterwards (``resource.RLIM_INFINITY`` for "unlimited"). Child processes started
    afterwards (worker processes) inherit the raised limit. Where the platform has no
    ``resource`` module (Windows) it does nothing and returns ``(-1, -1)`` (:data:`UNKNOWN_LIMIT`).
    Never raises: a limit the platform refuses to raise stays as it was."""
    if resource is None:
        return UNKNOWN_LIMIT, UNKNOWN_LIMIT
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = MAX_OPEN_FILES if _unlimited(hard) else min(hard, MAX_OPEN_FILES)
    if not _unlimited(soft) and soft < target:
        for value in (target, min(target, _MACOS_OPEN_MAX)):  # macOS refuses more than OPEN_MAX
            if value <= soft:
                break
            try:
                resource.setrlimit(resource.RLIMIT_NOFILE, (value, hard))
                break
            except (ValueError, OSError):
                continue
    return resource.getrlimit(resource.RLIMIT_NOFILE)


def require_open_files(minimum: int = MIN_OPEN_FILES) -> tuple[int, int]:
    """:func:`raise_open_file_limit`, then a :class:`~metaspo_dspy.errors.ConfigError` naming
    ``ulimit -n`` when even the raised soft limit is below ``minimum`` (a command that calls
    models cannot start its files, cache and connections under it). Returns ``(soft, hard)``."""
    soft, hard = raise_open_file_limit()
    if soft != UNKNOWN_LIMIT and not _unlimited(soft) and soft < minimum:
        raise ConfigError(
            f"the open-file limit is {soft:,} (`ulimit -n`, hard limit {_number(hard)}): a run needs at least "
            f"{minimum:,} open files (its data, cache and connections); raise it (`ulimit -n 4096` before the run)"
        )
    return soft, hard


def open_file_count() -> int | None:
    """The number of descriptors this process has open (``/proc/self/fd``, else ``/dev/fd``), or
    None where neither can be listed (Windows). Raises ``OSError`` (EMFILE) when no descriptor is
    left to list them with."""
    for folder in ("/proc/self/fd", "/dev/fd"):
        if os.path.isdir(folder):
            return len(os.listdir(folder)) - 1  # less the one listing them
    return None


def _near_limit() -> bool:
    """Whether this process's open descriptors are within a few of its soft limit."""
    soft, _ = _limits()
    if soft == UNKNOWN_LIMIT or _unlimited(soft):
        return False
    try:
        count = open_file_count()
    except OSError:
        return True
    return count is not None and count >= soft - 8


def thread_cost(cache: Any = None) -> int | None:
    """Descriptors one more thread holds while it uses ``cache`` (default ``dspy.cache``).

    0 without a probe for a :class:`SerialDiskCache` (its calling threads never reach the disk
    tier: the cache thread holds all of its connections) and for a cache without a disk tier.
    Any other cache is measured, once per cache object (later calls return the measure): two
    probe threads each look up :data:`PROBES` requests (reads only; nothing is written) and hold
    what they opened; the open descriptors are counted after the first (which pays any one-time
    cost) and after the second, then both close their connections. DSPy's disk cache measures 32
    (each shard's database and write-ahead log). None where descriptors cannot be counted
    (Windows). A probe opens up to twice the cost; raises ``OSError`` (EMFILE) if the open-file
    limit is reached while measuring (:func:`check_open_files` measures only with
    :data:`PROBE_ROOM` descriptors to spare, so the probe never starves other threads).

    Measure before threads have used and closed cache connections: SQLite keeps a closed
    connection's database descriptor open for reuse while another connection of the process holds
    the file, so a later probe would reuse those and read less."""
    if open_file_count() is None:
        return None
    if cache is None:
        cache = dspy.cache
    if isinstance(cache, SerialDiskCache) or getattr(cache, "enable_disk_cache", True) is False:
        return 0
    try:
        known = _MEASURED.get(cache)
    except TypeError:  # a cache object that cannot be a weak dictionary key: measured each time
        return _measure(cache)
    if known is None:
        known = _MEASURED[cache] = _measure(cache)
    return known


def _measured(cache: Any) -> bool:
    """Whether :func:`thread_cost` of ``cache`` needs no probe (structural, or measured before)."""
    if isinstance(cache, SerialDiskCache) or getattr(cache, "enable_disk_cache", True) is False:
        return True
    try:
        return cache in _MEASURED
    except TypeError:
        return False


#: thread_cost's measures, by cache object
_MEASURED: weakref.WeakKeyDictionary[Any, int] = weakref.WeakKeyDictionary()


def _measure(cache: Any) -> int:
    release = threading.Event()
    failures: list[BaseException] = []

    def lookups(holding: threading.Event) -> None:
        try:
            for n in range(PROBES):
                cache.get({"metaspo_dspy.open_files.probe": n})
        except Exception as exc:  # a cache that cannot be probed costs what it opened until then
            failures.append(exc)
        holding.set()
        release.wait()
        close = getattr(getattr(cache, "disk_cache", None), "close", None)
        if callable(close):  # diskcache: closes this thread's connections now, not at garbage collection
            close()

    counts: list[int] = []
    threads: list[threading.Thread] = []
    try:
        for _ in range(2):
            holding = threading.Event()
            thread = threading.Thread(target=lookups, args=(holding,), name="metaspo-dspy-open-files-probe")
            thread.daemon = True
            threads.append(thread)
            thread.start()
            holding.wait()
            counts.append(open_file_count() or 0)
    finally:
        release.set()
        for thread in threads:
            thread.join()
    soft, _ = _limits()
    exhausted = any(_out_of_descriptors(exc) for exc in failures)
    if exhausted or (not _unlimited(soft) and soft != UNKNOWN_LIMIT and counts[-1] >= soft - 8):
        raise OSError(errno.EMFILE, "the open-file limit was reached while measuring DSPy's cache")
    return max(0, counts[1] - counts[0])


def _number(value: int) -> str:
    return "unlimited" if _unlimited(value) else f"{value:,}"


def check_open_files(num_threads: int, num_processes: int = 1) -> None:
    """Make sure a run with ``num_threads`` calling threads over ``num_processes`` processes can
    open the files it needs, before any call: raise the soft limit (:func:`raise_open_file_limit`),
    estimate the need and raise :class:`~metaspo_dspy.errors.ConfigError` (naming ``ulimit -n`` and
    the fix: fewer threads, or a higher limit) if the limit cannot cover it -- or if fewer than
    :data:`PROBE_ROOM` descriptors are left to measure a cache that must be measured.

    The need, per process that makes calls (each worker process has its own descriptors and runs
    ``ceil(num_threads / num_processes)`` threads): the descriptors open now (the cache's own
    connections included) + that many threads x (:func:`thread_cost` of ``dspy.cache`` +
    :data:`PER_THREAD_ALLOWANCE`) + :data:`HEADROOM`; the parent of worker processes needs what it
    has open + :data:`PER_WORKER` per worker + the headroom. Worker processes are assumed to
    configure the cache as this process did. Checks nothing where the limit or the open
    descriptors cannot be read (Windows) or the limit is "unlimited"."""
    num_threads, num_processes = max(1, int(num_threads)), max(1, int(num_processes))
    soft, hard = raise_open_file_limit()
    if soft == UNKNOWN_LIMIT or _unlimited(soft):
        return
    try:
        configured = dspy.cache  # DSPy builds its default cache on first read: count after that
        in_use = open_file_count()
        if in_use is None:
            return
        cache: int | None = None
        if _measured(configured) or soft - in_use >= PROBE_ROOM:
            cache = thread_cost(configured)
            in_use = open_file_count() or in_use
    except OSError:  # the limit is reached already
        cache, in_use = None, soft
    threads = math.ceil(num_threads / num_processes)
    per_thread = (cache if cache is not None else 0) + PER_THREAD_ALLOWANCE
    calls = in_use + threads * per_thread + HEADROOM
    parent = in_use + (PER_WORKER * num_processes if num_processes > 1 else 0) + HEADROOM
    need = max(calls, parent)
    if cache is not None and need <= soft:
        return
    raise ConfigError(_too_few(num_threads, num_processes, need, soft, hard, in_use, cache))


def _too_few(
    num_threads: int, num_processes: int, need: int, soft: int, hard: int, in_use: int, cache: int | None
) -> str:
    """check_open_files's one line: what the run needs, the limit (``ulimit -n``) and the fixes;
    ``cache`` None: the cache could not be measured (too few descriptors left)."""
    threads = math.ceil(num_threads / num_processes)
    what = f"{num_threads} thread{'s' if num_threads > 1 else ''} (--threads, num_threads)"
    if num_processes > 1:
        what += f" over {num_processes} processes ({threads} each)"
    raised = "raised to its hard limit" if soft == hard else f"hard limit {_number(hard)}"
    limit = f"the open-file limit of {soft:,} (`ulimit -n`, {raised})"
    raise_it = (
        f"raise the limit (`ulimit -n {_suggested(need)}` before the run; past the hard limit, `ulimit -Hn` needs "
        "root or a `nofile` line in /etc/security/limits.conf)"
    )
    bounded = "; or call metaspo_dspy.lm.configure_bounded_cache() first (DSPy's cache with no files per thread)"
    if cache is None:
        return (
            f"{what}: {in_use:,} files are open, too close to {limit} to measure what DSPy's disk cache opens "
            f"per thread: {raise_it}{bounded}"
        )
    per_thread = cache + PER_THREAD_ALLOWANCE
    split = f": {cache} for DSPy's disk cache, {PER_THREAD_ALLOWANCE} for connections" if cache else ""
    fits = (soft - in_use - HEADROOM) // per_thread
    fewer = f"use at most {fits * num_processes} threads, or " if fits >= 1 else ""
    return (
        f"{what} need{'s' if num_threads == 1 else ''} about {need:,} open files ({in_use:,} open now + "
        f"{per_thread} per thread{split} + {HEADROOM} spare), more than {limit}: {fewer}{raise_it}"
        f"{bounded if cache else ''}"
    )


def _suggested(need: int) -> int:
    """A round limit above ``need``: the next power of two, at least 4,096."""
    return max(4096, 1 << (need - 1).bit_length())
