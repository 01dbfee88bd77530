"""The run directory: settings, journals, checkpoints and results of one optimization run.

Layout (everything written atomically or append-only)::

    RUN_DIR/run.json           the directory's format (RUN_FORMAT, checked on resume), the version that
                               wrote it, and the settings that shape results (compared on resume)
    RUN_DIR/evaluations.jsonl  every completed program run, as it completes
    RUN_DIR/proposals.jsonl    every completed proposal, as it completes
    RUN_DIR/ledger.jsonl       every paid unit (a program run's task calls, an optimizer call) and
                               each process's time, as they happen, over every process of the run
                               (:mod:`metaspo_dspy.store.ledger`; the artifact's ``cumulative``)
    RUN_DIR/faults.jsonl       every LM fault, over every process (:mod:`metaspo_dspy.store.faults`)
    RUN_DIR/checkpoint.json    the run's history so far, after every phase
    RUN_DIR/metaspo_run.json   the final artifact (MetaSPO.detailed_results)
    RUN_DIR/bilevel_nodes.json the same history in the reference code's shape
    RUN_DIR/program.json       the optimized MetaSPOProgram (MetaSPOProgram.from_file)
    RUN_DIR/.lock              held (an OS file lock) by the one process running it; released when
                               the run ends or the process dies, so a killed run can be resumed
    RUN_DIR/config.json        (``metaspo train``) the CLI's whole config, read back by ``--resume``
    RUN_DIR/error.log          (the CLI) tracebacks of unexpected errors

A new run starts only in a folder that is absent or empty, or holds nothing but what a start of
ours that failed before any call leaves (:func:`check_new_log_dir`): nothing of the user's is ever
overwritten, and no stale journal is read as this run's memory. A folder with other files is
refused with their names and the fix.

Resuming replays the search from the start with the journals as its memory: completed
evaluations and proposals are read back instead of being asked again, so the run continues where
it stopped and, with a deterministic model, ends exactly as an uninterrupted run would. A journal
record of the wrong shape is skipped with a warning (and asked again). A directory whose
``run.json`` records another format (a newer version's, or none) is refused with the reason.

A *finished* run (:func:`finished_run`: ``metaspo_run.json`` complete, not stopped by its budget)
has nothing to resume: ``metaspo train --resume`` and ``MetaSPO(resume=True)`` send nothing and
write nothing (the latter returns the saved program). A run stopped by its budget, or unfinished,
resumes as above, and the calls that failed in it are asked again.
"""

from __future__ import annotations

import json
import os
import re
from pathlib import Path
from typing import Any

from filelock import FileLock, Timeout

from metaspo_dspy.errors import RunDirError
from metaspo_dspy.store.io import atomic_write_json, path_error, read_bytes, shown
from metaspo_dspy.store.journal import Journal
from metaspo_dspy.store.ledger import LEDGER_FILE, Ledger
from metaspo_dspy.version import version_text

RUN_FORMAT = "metaspo-dspy/run-dir/v1"
_FORMAT = re.compile(r"metaspo-dspy/run-dir/v(\d+)")
_OPENED: list[Path] = []

#: every file a run directory of ours holds (see the module docstring), and nothing else
RUN_FILES = frozenset(
    {
        "run.json",
        "config.json",
        "evaluations.jsonl",
        "proposals.jsonl",
        LEDGER_FILE,
        "faults.jsonl",
        "checkpoint.json",
        "metaspo_run.json",
        "bilevel_nodes.json",
        "program.json",
        ".lock",
        ".write-test",
        "error.log",
    }
)
#: what a start that failed before any call may leave behind; a new run may start over these
_LEFTOVERS = frozenset({".lock", ".write-test"})
#: the top-level keys of the config.json that `metaspo train` writes (how it is told from a user's)
_CONFIG_KEYS = frozenset({"method", "seed", "tasks", "data", "search", "task_lm", "optimizer_lm", "sources"})
#: the largest run.json / metaspo_run.json read back (regular files only: a FIFO never hangs a resume)
_RECORD_MAX_BYTES = 256 * 1024 * 1024
#: atomic_write_text's temporary files (a write killed halfway)
_TEMPORARY = re.compile(r"\.(?P<name>[^/\\]+?)\.[^./\\]+\.tmp")


def _is_ours(folder: Path, name: str) -> bool:
    """Whether ``folder/name`` is what a failed start of ours leaves: the lock or the write probe,
    a temporary file of a run file, the CLI's ``config.json`` (told by its keys) or ``error.log``
    (told by its header) -- never a user's file of the same name."""
    if name in _LEFTOVERS:
        return True
    temporary = _TEMPORARY.fullmatch(name)
    if temporary:
        return temporary.group("name") in RUN_FILES
    try:
        if name == "config.json":
            data = json.loads(read_bytes(folder / name, 16 << 20))
            return isinstance(data, dict) and set(data) >= _CONFIG_KEYS
        if name == "error.log":
            return read_bytes(folder / name, 64 << 20).startswith(b"--- ")
    except (OSError, ValueError):  # a folder, a FIFO, too large, not JSON...: not ours
        return False
    return False


def log_dir_entries(path: str | Path) -> list[str] | None:
    """The names in the folder ``path`` (sorted), or None when there is nothing there.

    Raises :class:`RunDirError` naming the fix when ``path`` cannot be a log dir: a file, a path
    the system refuses (too long, ...), or a folder that cannot be listed.
    """
    path = Path(path)
    try:
        names = sorted(os.listdir(path))
    except FileNotFoundError:
        return None
    except NotADirectoryError:
        raise RunDirError(
            f"log dir {shown(path)} is a file, not a folder (or a part of its path is); choose a new or empty folder"
        ) from None
    except OSError as exc:
        raise RunDirError(f"cannot use log dir {shown(path)}: {path_error(exc, path)}; choose another folder") from None
    return names


def check_new_log_dir(path: str | Path, resume: str | None = None, marker: str | None = None) -> bool:
    """Refuse (:class:`RunDirError`, before anything is written or sent) a folder a new run must
    not start in; the one rule for every log dir of ours.

    A new run may start in ``path`` when it is absent or empty, or holds nothing but what a start
    of ours that failed before any call leaves (the lock, the write probe, temporary files of run
    files, the CLI's own ``config.json`` and ``error.log``, told from a user's by their content).
    A folder with a ``run.json`` already holds a run: the error says to resume it (``resume``: the
    command that does, e.g. ``metaspo train --resume DIR``). Anything else -- ``.`` or ``''`` in a
    folder with other files, a user's own ``config.json`` -- is refused with a few of the names
    and the fix. ``marker``: a file that makes the folder one of ours for the caller to continue
    (``compare.json`` for ``metaspo compare``, whose folder holds no ``run.json`` of its own);
    returns True when it is there, else False.

    Also refused: a path that is a file, too long for the system, or cannot be listed.
    """
    path = Path(path)
    names = log_dir_entries(path) or []
    if marker is not None and marker in names:
        return True
    how = resume or "resume it"
    if "run.json" in names and marker is None:
        raise RunDirError(f"{shown(path)} already holds a run; continue it with {how} or choose another log dir")
    others = [name for name in names if not _is_ours(path, name)]
    if others:
        listed = ", ".join(others[:5]) + (f" and {len(others) - 5} more" if len(others) > 5 else "")
        where = "the log dir (the current folder)" if path == Path(".") else f"log dir {shown(path)}"
        raise RunDirError(
            f"{where} is not empty (it holds {listed}) and a run never writes over other files; "
            f"choose a new or empty folder (or, if it is a run of ours, {how})"
        )
    return False


def last_opened() -> Path | None:
    """The run directory this process opened most recently (None if none): where a failure's
    report belongs, even when the caller chose the folder's name itself."""
    return _OPENED[-1] if _OPENED else None


def finished_run(path: str | Path) -> dict[str, Any] | None:
    """The artifact of the finished run in ``path`` -- its ``metaspo_run.json`` says ``complete``
    and names no ``stopped`` reason -- else None (no artifact, an unreadable one, or a run stopped
    by its budget: those resume as usual)."""
    try:
        artifact = json.loads(read_bytes(Path(path) / "metaspo_run.json", _RECORD_MAX_BYTES))
    except (OSError, ValueError):
        return None
    if isinstance(artifact, dict) and artifact.get("complete") is True and artifact.get("stopped") is None:
        return artifact
    return None


def _fields_problem(value: Any, types: dict[str, tuple[type, ...]], what: str) -> str | None:
    if not isinstance(value, dict):
        return f"{what} must be a mapping, got {type(value).__name__}"
    for name, allowed in types.items():
        if name in value and not isinstance(value[name], allowed):
            return f"{what} field {name!r} must be {' or '.join(t.__name__ for t in allowed)}"
    return None


_TEXT = (str, type(None))
_EVALUATION_FIELDS = {
    "prediction": (dict, type(None)),
    "error": _TEXT,
    "calls": (list,),
    "usage": (dict, type(None)),
    "missing_inputs": (list,),
}
_MISSING_FIELDS = {"predictor": (str,), "missing": (list,), "given": (list,)}
_CALL_FIELDS = {"predictor": _TEXT, "user": (str,), "completion": (object,)}
_PROPOSAL_FIELDS = {"analysis": _TEXT, "text": _TEXT, "status": (str,), "reason": _TEXT, "optimizer_calls": (int,)}
_PROPOSAL_OPTIONAL = {"failed": (bool,)}


def evaluation_problem(value: Any) -> str | None:
    """Why ``value`` is not an evaluations-journal entry (``GridEvaluator``'s record), or None.
    ``usage`` and ``missing_inputs`` (predictors called without a required input: ``predictor``,
    ``missing`` and ``given``) are optional; a record without ``missing_inputs`` has none."""
    problem = _fields_problem(value, _EVALUATION_FIELDS, "an evaluation")
    if problem is None and not {"prediction", "error", "calls"} <= set(value):
        problem = "an evaluation needs 'prediction', 'error' and 'calls'"
    if problem is None:
        problem = _entries_problem(value.get("calls", []), _CALL_FIELDS, set(_CALL_FIELDS), "a call")
    if problem is None:
        problem = _entries_problem(
            value.get("missing_inputs", []), _MISSING_FIELDS, {"predictor", "missing"}, "a missing-inputs entry"
        )
    return problem


def _entries_problem(entries: list[Any], types: dict[str, tuple[type, ...]], needed: set[str], what: str) -> str | None:
    """Why one of ``entries`` is not ``what`` (field ``types``, the ``needed`` fields), or None."""
    for entry in entries:
        problem = _fields_problem(entry, types, what)
        if problem is None and not needed <= set(entry):
            problem = f"{what} needs {', '.join(repr(name) for name in types if name in needed)}"
        if problem:
            return problem
    return None


def proposal_problem(value: Any) -> str | None:
    """Why ``value`` is not a proposals-journal entry, or None. A finished proposal (one with a
    ``status``) must carry all of analysis, text, status, reason and optimizer_calls (``failed``
    optional); an analysis-only entry (``{"analysis": ...}``) is valid too."""
    problem = _fields_problem(value, {**_PROPOSAL_FIELDS, **_PROPOSAL_OPTIONAL}, "a proposal")
    if problem is None and "status" in value and not set(_PROPOSAL_FIELDS) <= set(value):
        problem = f"a finished proposal needs {', '.join(_PROPOSAL_FIELDS)}"
    return problem


def _diff(old: Any, new: Any, prefix: str = "") -> list[str]:
    if isinstance(old, dict) and isinstance(new, dict):
        keys = sorted(set(old) | set(new))
        out: list[str] = []
        for key in keys:
            out += _diff(old.get(key, "<missing>"), new.get(key, "<missing>"), f"{prefix}{key}.")
        return out
    if old != new:
        shown = lambda v: repr(v) if len(repr(v)) < 80 else repr(v)[:77] + "...'"  # noqa: E731
        return [f"{prefix.rstrip('.')}: {shown(old)} -> {shown(new)}"]
    return []


def _check_format(run_file: Path, recorded: Any) -> None:
    """Refuse a run directory whose format this version cannot continue, saying why."""
    if recorded == RUN_FORMAT:
        return
    match = _FORMAT.fullmatch(recorded) if isinstance(recorded, str) else None
    current = int(_FORMAT.fullmatch(RUN_FORMAT).group(1))  # type: ignore[union-attr]
    if match and int(match.group(1)) > current:
        why = "a newer metaspo-dspy wrote it; resume it with that version"
    elif match:
        why = "an older metaspo-dspy wrote it; resume it with that version"
    else:
        why = "it was not written by metaspo-dspy's run directory code"
    raise RunDirError(
        f"cannot resume {run_file.parent}: {run_file} records format {recorded!r}, but {version_text()} reads "
        f"{RUN_FORMAT!r} ({why}, or start a new run in another folder)"
    )


def check_writable(path: Path) -> None:
    """Create ``path`` (with its parents) and prove a file can be written in it; a
    :class:`RunDirError` naming the folder and the fix otherwise."""
    try:
        path.mkdir(parents=True, exist_ok=True)
        probe = path / ".write-test"
        probe.write_text("ok", encoding="utf-8")
        probe.unlink()
    except OSError as exc:
        raise RunDirError(
            f"cannot write to log dir {shown(path)}: {path_error(exc, path)}; choose a writable folder"
        ) from None
    if not os.access(path, os.W_OK):
        raise RunDirError(f"cannot write to log dir {path}; choose a writable folder")


def lock_log_dir(path: Path, then: str = "then resume") -> FileLock:
    """The exclusive lock of the log dir ``path`` (``path/.lock``), acquired; release it when the
    command ends (the operating system drops it when the process dies, SIGKILL included). A
    :class:`RunDirError` when another process (or another open in this one) holds it -- ``then``
    says what to do after that process ends -- or when it cannot be made."""
    # thread_local=False: the loop's worker threads share the run; is_singleton=False: a second
    # open of the same folder in this process is refused like another process would be.
    lock = FileLock(path / ".lock", timeout=0, thread_local=False, is_singleton=False)
    try:
        lock.acquire()
    except Timeout:
        raise RunDirError(
            f"{path} is in use by another running process (it holds {path / '.lock'}); "
            f"wait for it to finish or stop it, {then}, or choose another log dir"
        ) from None
    except OSError as exc:
        raise RunDirError(
            f"cannot lock log dir {shown(path)}: {path_error(exc, path)}; choose a writable folder"
        ) from None
    return lock


class RunDir:
    """Opens (or creates) a run directory.

    Args:
        path: the folder.
        settings: JSON-able settings that shape the run's results (no secrets).
        resume: continue the run recorded there; its settings must equal ``settings``.

    Its ``evaluations`` and ``proposals`` journals and its ``ledger`` (:class:`~metaspo_dspy.store.ledger.Ledger`)
    are open until :meth:`close`; opening writes nothing on resume.

    The open run directory holds an exclusive lock (``RUN_DIR/.lock``) until :meth:`close`: a
    second process (or a second open in this one) that tries to run or resume the same folder at
    the same time gets a :class:`RunDirError` instead of interleaving its journals with the first's.
    The operating system drops the lock when the process dies, SIGKILL included.

    Raises :class:`RunDirError` with the fix when ``resume`` is False and the folder holds another
    run or anything else but what a failed start of ours leaves (:func:`check_new_log_dir`), or
    when it holds nothing to resume, has incompatible settings (named one by one), is in use by
    another process, or is not writable.
    """

    def __init__(self, path: str | Path, settings: dict[str, Any], resume: bool = False):
        self.path = Path(path)
        self.settings = json.loads(json.dumps(settings, default=str))
        if not resume:
            check_new_log_dir(self.path, f"metaspo train --resume {shown(self.path)}, or MetaSPO(..., resume=True)")
            check_writable(self.path)
        self._lock = lock_log_dir(self.path)
        try:
            self._open(resume)
        except BaseException:
            self._lock.release()
            raise
        self.evaluations = Journal(self.path / "evaluations.jsonl", check=evaluation_problem)
        self.proposals = Journal(self.path / "proposals.jsonl", check=proposal_problem)
        ledger = self.path / LEDGER_FILE
        # Journaled work but no ledger: the run's earlier processes ran a version that kept none.
        legacy = resume and not ledger.exists() and (len(self.evaluations) + len(self.proposals)) > 0
        self.ledger = Ledger(ledger, unrecorded_before=legacy)
        _OPENED.append(self.path)

    def _open(self, resume: bool) -> None:
        run_file = self.path / "run.json"
        if resume:
            if not run_file.exists():
                raise RunDirError(
                    f"nothing to resume in {self.path}: it has no run.json (start a new run there instead)"
                )
            try:
                record = json.loads(read_bytes(run_file, _RECORD_MAX_BYTES))
                recorded = record["settings"]
            except (OSError, ValueError, KeyError, TypeError) as exc:
                raise RunDirError(f"{run_file} is unreadable ({exc}); cannot resume this run") from None
            _check_format(run_file, record.get("format"))
            differences = _diff(recorded, self.settings)
            if differences:
                raise RunDirError(
                    f"cannot resume {self.path}: these settings differ from the recorded run: "
                    + "; ".join(differences)
                    + ". Resume with the original settings, or start a new run in another folder."
                )
        else:
            if run_file.exists():
                raise RunDirError(
                    f"{self.path} already holds a run; resume it (metaspo train --resume {self.path}, or "
                    "MetaSPO(..., resume=True)) or choose another log dir"
                )
            atomic_write_json(run_file, {"format": RUN_FORMAT, "written_by": version_text(), "settings": self.settings})

    def checkpoint(self, history: dict[str, Any]) -> None:
        """Persist the history so far, make the journals durable and mark the time in the ledger
        (called after every phase)."""
        self.evaluations.sync()
        self.proposals.sync()
        atomic_write_json(self.path / "checkpoint.json", history)
        self.ledger.mark()
        self.ledger.sync()

    def write(self, name: str, data: Any) -> Path:
        path = self.path / name
        atomic_write_json(path, data)
        return path

    def close(self) -> None:
        """Close the journals and the ledger (its last time mark, if this process wrote to it) and
        release the folder's lock."""
        try:
            self.evaluations.close()
            self.proposals.close()
            self.ledger.close()
        finally:
            self._lock.release()
