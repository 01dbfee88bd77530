"""The ``metaspo`` command line: train, test, show, report, presets, tasks, data.

Exit codes: 0 success; 2 bad input (one ``error:`` line naming the problem and the fix, no
traceback; also a file that cannot be written, e.g. a full disk, stdout included); 130 interrupted
by Ctrl-C, 143 by SIGTERM (what ``docker stop`` and systemd send; both end the same way: the run
directory stays resumable once its ``run.json`` exists); 1 a stopped run (too many failures, or no
answer parsed in the initial evaluation: the line names the command to rerun) or an unexpected
error (a bug). A bug is one ``error:`` line too: the traceback goes to
``RUN_DIR/error.log`` when a run directory exists, else to a temporary file the line names, and to
the console with ``--debug``. Everything printed or logged passes through
:func:`metaspo_dspy.redact.redact`, so an API key never reaches the console or ``error.log``.
"""

from __future__ import annotations

import argparse
import contextlib
import errno
import logging
import os
import shlex
import signal
import sys
import tempfile
import threading
import traceback
from datetime import datetime, timezone
from pathlib import Path

from metaspo_dspy.redact import RedactingFilter, redact
from metaspo_dspy.version import version_text

DESCRIPTION = """\
MetaSPO for DSPy: optimize one system prompt that works across many tasks.

  metaspo train   optimize a system prompt on a config's source tasks (writes a run directory)
  metaspo test    score system prompts on unseen tasks (unseen generalization, test-time adaptation)
  metaspo compare train methods over seeds, compare them with the presets on unseen tasks (a table)
  metaspo show    summarize a run directory
  metaspo report  write a Markdown report with PNG figures for a run directory
  metaspo presets print the preset system prompts
  metaspo tasks   list the tasks: source, licence, sizes, whether on this machine, caveats
  metaspo data    download the task data that is not bundled (metaspo data fetch review)

Models are LiteLLM model strings (openai/gpt-4o-mini, hosted_vllm/..., ollama_chat/...; API keys
come from the environment) or 'embedded' for the offline SmolLM2-135M model. Run
`metaspo train --help` for an example.
"""


def build_parser() -> argparse.ArgumentParser:
    from metaspo_dspy import report as report_command
    from metaspo_dspy.cli import compare, evaluate, show, train
    from metaspo_dspy.cli import data as data_command

    parser = argparse.ArgumentParser(
        prog="metaspo", description=DESCRIPTION, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--version", action="version", version=version_text())
    parser.add_argument("--verbose", "-v", action="store_true", help="log details (DSPy, LiteLLM) to stderr")
    parser.add_argument("--debug", action="store_true", help="show the traceback of an unexpected error")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND")
    train.add_parser(subparsers)
    evaluate.add_parser(subparsers)
    compare.add_parser(subparsers)
    show.add_parsers(subparsers)
    report_command.add_parser(subparsers)
    data_command.add_parser(subparsers)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Run the ``metaspo`` command in ``argv`` (default ``sys.argv[1:]``); returns the exit code.

    Never lets an exception reach the console as a traceback (see the module docstring)."""
    argv = list(sys.argv[1:] if argv is None else argv)
    parsed: list[argparse.Namespace] = []
    _console_never_fails()
    with _sigterm_as_interrupt():
        try:
            code = _run(argv, parsed)
            sys.stdout.flush()  # a full device fails here, inside the error handling, not at exit
            return code
        except KeyboardInterrupt as exc:  # while starting up (imports, argument parsing)
            _error(_interruption(exc), prefix="")
            return _interrupted_code(exc)
        except OSError as exc:
            if exc.filename is not None or not _stdout_failed(exc):
                return report_bug(exc, parsed[0] if parsed else None, debug="--debug" in argv)
            return _result_not_printed(exc, parsed[0] if parsed else None)
        except Exception as exc:
            return report_bug(exc, parsed[0] if parsed else None, debug="--debug" in argv)


class Terminated(KeyboardInterrupt):
    """SIGTERM, raised in the main thread: the command ends as after Ctrl-C (journals closed, the
    run resumable), with exit code 143."""


@contextlib.contextmanager
def _sigterm_as_interrupt():
    """While the command runs, SIGTERM raises :class:`Terminated` in the main thread (only the
    main thread may install a handler; elsewhere SIGTERM keeps its default)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def terminate(signum: int, frame: object) -> None:
        raise Terminated()

    previous = signal.signal(signal.SIGTERM, terminate)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def _interruption(exc: BaseException) -> str:
    return "terminated (SIGTERM)" if isinstance(exc, Terminated) else "interrupted"


def _interrupted_code(exc: BaseException) -> int:
    return 128 + signal.SIGTERM if isinstance(exc, Terminated) else 130


def _console_never_fails() -> None:
    """Printing never fails on the console's encoding (``LANG=C``, ``PYTHONIOENCODING=ascii``): a
    character it cannot show is written as a backslash escape instead of stopping the command."""
    for stream in (sys.stdout, sys.stderr):
        encoding = (getattr(stream, "encoding", None) or "").lower().replace("-", "")
        if encoding != "utf8" and getattr(stream, "errors", None) == "strict" and hasattr(stream, "reconfigure"):
            with contextlib.suppress(Exception):
                stream.reconfigure(errors="backslashreplace")


def _stdout_failed(exc: OSError) -> bool:
    """Whether ``exc`` (no file name) came from writing the result to stdout."""
    return isinstance(exc, BrokenPipeError) or exc.errno in (
        errno.ENOSPC, errno.EIO, getattr(errno, "EDQUOT", errno.ENOSPC),
    )  # fmt: skip


def _result_not_printed(exc: OSError, args: argparse.Namespace | None) -> int:
    """The command's result could not be written to stdout (a closed pipe, a full device): say
    so and where the run is saved; exit 0 for a closed pipe (``metaspo show RUN | head``), else 2."""
    with contextlib.suppress(OSError, ValueError):  # what is still buffered goes nowhere at exit
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        os.close(devnull)
    if isinstance(exc, BrokenPipeError):
        return 0
    where = run_dir_of(args)
    saved = f"; the run is saved in {where}" if where is not None else ""
    _error(f"could not write the result to stdout ({exc.strerror or exc}){saved}")
    return 2


def _run(argv: list[str], parsed: list[argparse.Namespace]) -> int:
    from metaspo_dspy.errors import MetaSPOError, NothingParsed, TooManyFailures
    from metaspo_dspy.lm.embedded.model import EmbeddedModelUnavailable

    parser = build_parser()
    args = parser.parse_args(argv)
    vars(args).pop("debug", None)  # read from argv by main(); not a setting of the command
    parsed.append(args)
    if args.command is None:
        parser.print_help()
        return 2
    setup_logging(args.verbose)
    try:
        if args.command in MODEL_COMMANDS:
            _bound_open_files()
        return args.handler(args)
    except KeyboardInterrupt as exc:
        _error(f"{_interruption(exc)}{_resume_hint(args, '; ')}", prefix="")
        return _interrupted_code(exc)
    except (MetaSPOError, EmbeddedModelUnavailable) as exc:  # bad input, or the [embedded] extra missing
        _error(str(exc))
        return 2
    except NothingParsed as exc:
        _error(exc.describe(_unparsed_fix(args, argv)), prefix="stopped: ")
        return 1
    except TooManyFailures as exc:
        _error(f"{exc}{_resume_hint(args, ' ')}", prefix="stopped: ")
        return 1
    except OSError as exc:
        if exc.filename is None:
            raise
        _error(f"{_os_problem(exc)}{_resume_hint(args, '; ')}")
        return 2


#: The commands that call models: before them the open-file limit is raised and DSPy's disk cache
#: opens its files once instead of once per thread (:mod:`metaspo_dspy.lm.open_files`).
MODEL_COMMANDS = ("train", "test", "compare")


def _bound_open_files() -> None:
    """Raise the soft open-file limit to the hard one (a limit below 128 even then is one
    ``error:`` line naming ``ulimit -n``) and replace a stock DSPy disk cache (same
    directory; the size limit read from ``DSPY_CACHE_LIMIT`` as DSPy reads it) by one that holds
    its files once, whatever the threads. A cache set up otherwise (memory only, the user's own)
    is kept."""
    import dspy

    from metaspo_dspy.lm.open_files import SerialDiskCache, configure_bounded_cache, require_open_files

    require_open_files()
    cache = dspy.cache
    if getattr(cache, "enable_disk_cache", False) and not isinstance(cache, SerialDiskCache):
        configure_bounded_cache(
            enable_memory_cache=cache.enable_memory_cache,
            disk_cache_dir=cache.disk_cache_dir,
        )


def _error(message: str, prefix: str = "error: ") -> None:
    print(redact(f"{prefix}{message}"), file=sys.stderr, flush=True)


def _os_problem(exc: OSError) -> str:
    """One sentence for a file that could not be read or written."""
    if exc.errno in (errno.ENOSPC, getattr(errno, "EDQUOT", errno.ENOSPC)):
        return f"the disk is full (or over quota): cannot write {exc.filename}; free some space"
    return f"{exc.strerror or exc} ({exc.filename})"


def run_dir_of(args: argparse.Namespace | None) -> Path | None:
    """The run directory this command opened or was given, if it exists on disk, else None."""
    from metaspo_dspy.store.run_dir import last_opened

    candidates = [last_opened()]
    if args is not None:
        candidates += [getattr(args, "resume", None), getattr(args, "log_dir", None)]
    # os.path: Path.is_dir raises for an overlong name (ENAMETOOLONG) on Python 3.11
    return next((Path(c) for c in candidates if c is not None and os.path.isdir(c)), None)


def _resume_hint(args: argparse.Namespace, sep: str) -> str:
    """How to go on after ``metaspo train``, ``compare`` or ``test`` stopped: resume once
    ``run.json`` (or ``compare.json``) exists, else start again; ``test`` reruns with its journals."""
    if args.command == "compare":
        log_dir = getattr(args, "resume", None) or getattr(args, "log_dir", None)
        if log_dir is not None and os.path.isfile(Path(log_dir) / "compare.json"):
            return f"{sep}finished sub-runs are kept: metaspo compare --resume {log_dir}"
        return ""
    if args.command == "test":
        log_dir = getattr(args, "log_dir", None)
        if log_dir is not None and getattr(args, "analysis", None) == "unseen" and os.path.isdir(log_dir):
            return f"{sep}rerun the same command (--log-dir {log_dir}): journaled answers are not asked again"
        return ""
    if args.command != "train":
        return ""
    where = run_dir_of(args)
    if where is not None and os.path.isfile(where / "run.json"):
        return f"{sep}the run is resumable: metaspo train --resume {where}"
    return f"{sep}the run had not started yet (no run.json), so there is nothing to resume: run the same command again"


def _unparsed_fix(args: argparse.Namespace, argv: list[str]) -> str:
    """What to run after a :class:`~metaspo_dspy.errors.NothingParsed` stop: the same command
    in DSPy's format (a new run), or the stopped run resumed with ``--allow-unparsed``."""
    kept, skip = [], False
    for arg in argv:
        if skip:
            skip = False
        elif arg in ("--log-dir", "--resume", "--prompt-format"):
            skip = True
        elif not arg.startswith(("--log-dir=", "--resume=", "--prompt-format=")):
            kept.append(arg)
    where = run_dir_of(args)
    command = " ".join(map(shlex.quote, kept))
    if getattr(args, "resume", None) is not None:
        rerun = "start a new run with the same settings and --prompt-format dspy"
    elif args.command == "compare":
        rerun = f"rerun with DSPy's format in a new folder: `metaspo {command} --prompt-format dspy --log-dir NEW_DIR`"
    else:
        rerun = f"rerun with DSPy's format: `metaspo {command} --prompt-format dspy`"
    if args.command == "compare" or where is None or not os.path.isfile(where / "run.json"):
        return rerun
    return f"{rerun}; or search anyway: `metaspo train --resume {where} --allow-unparsed`"


def report_bug(exc: BaseException, args: argparse.Namespace | None, debug: bool) -> int:
    """One ``error:`` line for an unexpected exception; the traceback to ``error.log`` (and the
    console with ``debug``). Returns exit code 1."""
    trace = redact("".join(traceback.format_exception(type(exc), exc, exc.__traceback__)))
    if debug:
        print(trace, file=sys.stderr, end="", flush=True)
    where = _save_trace(trace, run_dir_of(args), temporary=not debug)
    summary = " ".join(str(exc).split())
    summary = f"{type(exc).__name__}: {summary[:300]}" if summary else type(exc).__name__
    saved = f"; the traceback is in {where}" if where else ""
    shown = "; the traceback is above" if debug else "; --debug shows it"
    _error(f"unexpected {summary} (a bug in metaspo-dspy{saved}{shown})")
    return 1


def _save_trace(trace: str, run_dir: Path | None, temporary: bool) -> Path | None:
    """Append ``trace`` to ``run_dir/error.log``, else (when ``temporary``) to a new temporary file;
    the path written, or None when nothing could be written."""
    header = f"--- {datetime.now(timezone.utc).isoformat(timespec='seconds')} {version_text()}: metaspo "
    header += redact(" ".join(sys.argv[1:])) + "\n"
    try:
        if run_dir is not None:
            path = run_dir / "error.log"
            with open(path, "a", encoding="utf-8") as handle:
                handle.write(header + trace)
            return path
        if temporary:
            fd, name = tempfile.mkstemp(prefix="metaspo-error-", suffix=".log")
            with os.fdopen(fd, "w", encoding="utf-8") as handle:
                handle.write(header + trace)
            return Path(name)
    except OSError:
        return None
    return None


def setup_logging(verbose: bool) -> None:
    """Log to stderr only (stdout is for results), redacted; details only with ``verbose``."""
    logging.basicConfig(
        level=logging.INFO if verbose else logging.WARNING, format="%(levelname)s %(message)s", stream=sys.stderr
    )
    for handler in [*logging.getLogger().handlers, *logging.getLogger("dspy").handlers]:  # DSPy: its own, stderr
        _add_redaction(handler)
    for name in _LITELLM_LOGGERS:  # logger-level: applies whatever handlers LiteLLM adds later
        _add_redaction(logging.getLogger(name))
    if verbose:
        _litellm_to_stderr()
    else:
        for name in ("LiteLLM", "litellm", "dspy", "httpx"):
            logging.getLogger(name).setLevel(logging.ERROR)


_LITELLM_LOGGERS = ("LiteLLM", "LiteLLM Router", "LiteLLM Proxy")


def _add_redaction(target: logging.Handler | logging.Logger) -> None:
    if not any(isinstance(f, RedactingFilter) for f in target.filters):
        target.addFilter(RedactingFilter())


def _litellm_to_stderr() -> None:
    """LiteLLM's own handler writes records below WARNING to *stdout*, and ``litellm.set_verbose``
    and its error banner ``print()`` there: detach that handler (its records then reach the root
    handler on stderr) and switch the prints off, so stdout carries only the command's result."""
    import litellm

    litellm.set_verbose = False
    litellm.suppress_debug_info = True
    for name in _LITELLM_LOGGERS:
        logger = logging.getLogger(name)
        for handler in list(logger.handlers):
            logger.removeHandler(handler)
        logger.propagate = True


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
