"""The ``metaspo`` command line: train, test, show, presets, tasks.

Exit codes: 0 success; 2 bad input (one ``error:`` line naming the problem and the fix, no
traceback); 130 interrupted (the run directory stays resumable); 1 an unexpected error (a bug:
the traceback is shown).
"""

from __future__ import annotations

import argparse
import logging
import os
import sys

os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")

DESCRIPTION = """\
MetaSPO for DSPy: optimize one system prompt that works across many tasks.

  metaspo train   optimize a system prompt on a config's source tasks (writes a run directory)
  metaspo test    score system prompts on unseen tasks (unseen generalization, test-time adaptation)
  metaspo show    summarize a run directory
  metaspo report  write a Markdown report with PNG figures for a run directory
  metaspo presets print the preset system prompts
  metaspo tasks   list the tasks by domain

Models are LiteLLM model strings (openai/gpt-4o-mini, hosted_vllm/..., ollama_chat/...; API keys
come from the environment) or 'embedded' for the offline SmolLM2-135M model. Run
`metaspo train --help` for an example.
"""


def build_parser() -> argparse.ArgumentParser:
    from metaspo_dspy import report as report_command
    from metaspo_dspy.cli import evaluate, show, train

    parser = argparse.ArgumentParser(
        prog="metaspo", description=DESCRIPTION, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--version", action="version", version=_version())
    parser.add_argument("--verbose", "-v", action="store_true", help="log details (DSPy, LiteLLM) to stderr")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND")
    train.add_parser(subparsers)
    evaluate.add_parser(subparsers)
    show.add_parsers(subparsers)
    report_command.add_parser(subparsers)
    return parser


def _version() -> str:
    from metaspo_dspy import __version__

    return f"metaspo-dspy {__version__}"


def _user_errors() -> tuple[type[BaseException], ...]:
    """Exceptions that mean bad input, not a bug: reported in one line with exit code 2."""
    from metaspo_dspy.metrics import MetricError
    from metaspo_dspy.optimize.common import ConfigError
    from metaspo_dspy.runs import RunDirError
    from metaspo_dspy.tasks import TaskLoadError

    errors: list[type[BaseException]] = [ConfigError, RunDirError, TaskLoadError, MetricError]
    try:
        from metaspo_dspy.lm import ModelConfigError

        errors.append(ModelConfigError)
    except ImportError:  # pragma: no cover - the lm package always defines it
        pass
    try:
        from metaspo_dspy.lm.embedded import EmbeddedModelUnavailable

        errors.append(EmbeddedModelUnavailable)
    except ImportError:  # pragma: no cover
        pass
    return tuple(errors)


def main(argv: list[str] | None = None) -> int:
    from metaspo_dspy.optimize.common import TooManyFailures

    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help()
        return 2
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING, format="%(levelname)s %(message)s")
    if not args.verbose:
        _quiet_libraries()
    try:
        return args.handler(args)
    except KeyboardInterrupt:
        where = getattr(args, "log_dir", None) or getattr(args, "resume", None)
        hint = f"; continue with: metaspo train --resume {where}" if args.command == "train" and where else ""
        print(f"interrupted{hint}", file=sys.stderr)
        return 130
    except _user_errors() as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except TooManyFailures as exc:
        where = getattr(args, "log_dir", None) or getattr(args, "resume", None)
        hint = f" Resume with: metaspo train --resume {where}" if args.command == "train" and where else ""
        print(f"stopped: {exc}{hint}", file=sys.stderr)
        return 1
    except OSError as exc:
        if exc.filename is None:
            raise
        print(f"error: {exc.strerror or exc} ({exc.filename})", file=sys.stderr)
        return 2


def _quiet_libraries() -> None:
    for name in ("LiteLLM", "litellm", "dspy", "httpx"):
        logging.getLogger(name).setLevel(logging.ERROR)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
