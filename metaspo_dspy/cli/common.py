"""Shared CLI plumbing: config from arguments, models, system-prompt specs, output helpers."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from metaspo_dspy.config import RunConfig, load_config
from metaspo_dspy.errors import ConfigError, NotUtf8Error
from metaspo_dspy.presets import PRESETS
from metaspo_dspy.program.system_prompt import SystemPrompt
from metaspo_dspy.store.io import path_error, read_text, shown
from metaspo_dspy.store.run_dir import finished_run

#: CLI flag -> config key, for the flags that override a config value.
FLAG_KEYS = {
    "method": "method",
    "seed": "seed",
    "threads": "num_threads",
    "processes": "num_processes",
    "iterations": "search.num_iterations",
    "system_candidates": "search.num_system_candidates",
    "user_candidates": "search.num_user_candidates",
    "user_top_k": "search.user_top_k",
    "train_size": "data.train_size",
    "test_size": "data.test_size",
    "data_dir": "data.data_dir",
    "prompt_format": "data.prompt_format",
    "task_model": "task_lm.model",
    "optimizer_model": "optimizer_lm.model",
    "num_user_prompts": "meta_test.num_unseen_user_prompts",
    "tta_iterations": "meta_test.tta_iterations",
    "max_lm_calls": "budget.max_lm_calls",
    "max_cost": "budget.max_cost",
    "screening": "search.screening",
}


def add_config_arguments(parser: argparse.ArgumentParser, *, search: bool) -> None:
    """The options shared by ``train`` and ``test``."""
    group = parser.add_argument_group("configuration (later wins: config files, then --set, then flags)")
    # action="extend": a repeated -c/--set adds to the earlier ones instead of replacing them.
    group.add_argument(
        "--config",
        "-c",
        nargs="+",
        action="extend",
        default=[],
        metavar="FILE",
        help="YAML config files or names of shipped ones (base, review, medical, reasoning, safety, grounding, "
        "generated, global); configs/base.yaml is always read first; may be repeated",
    )
    group.add_argument(
        "--set",
        nargs="+",
        action="extend",
        default=[],
        metavar="KEY=VALUE",
        help="override any config key; may be repeated (a later value for the same key wins)",
    )
    models = parser.add_argument_group("models (any LiteLLM model string, or 'embedded' for the offline model)")
    models.add_argument("--task-model", help="the model whose prompts are optimized/evaluated (task_lm.model)")
    models.add_argument("--optimizer-model", help="the model that writes prompts (optimizer_lm.model)")
    models.add_argument(
        "--engine",
        choices=["auto", "litellm", "native"],
        help="client for both models: auto (default: DSPy's own client for OpenAI-compatible servers, LiteLLM "
        "for other providers), litellm, or native (DSPy's own client)",
    )
    data = parser.add_argument_group("data")
    data.add_argument(
        "--data-dir",
        help="folder with {domain}/{task}.json (default: $METASPO_DATA_DIR, else the user cache filled by "
        "`metaspo data fetch`, then the bundled tasks)",
    )
    data.add_argument("--prompt-format", choices=["dspy", "reference"], help="DSPy adapters or the paper's raw prompts")
    data.add_argument("--train-size", type=int, help="train examples per task (paper: 50)")
    data.add_argument("--test-size", type=int, help="test examples per task (paper: 500)")
    run = parser.add_argument_group("run")
    run.add_argument("--threads", type=int, help="concurrent task-model calls (default 16)")
    run.add_argument(
        "--processes",
        type=int,
        help="client processes for evaluation grids (default 1; 2+ uses more cores for a fast model server; "
        "not with the embedded model)",
    )
    run.add_argument("--seed", type=int, help="run seed (default 42)")
    run.add_argument("--quiet", "-q", action="store_true", help="no progress bars")
    add_common_flags(run)
    if search:
        s = parser.add_argument_group("search (paper defaults: 3 iterations, 9 system, 3 user candidates, top 3)")
        s.add_argument("--method", choices=["metaspo", "outer_loop", "metaspo_ape", "sprig"])
        s.add_argument("--iterations", type=int)
        s.add_argument("--system-candidates", type=int)
        s.add_argument("--user-candidates", type=int)
        s.add_argument("--user-top-k", type=int)
        s.add_argument(
            "--screening",
            type=float,
            metavar="FRACTION",
            help="frugal screening: score system-prompt candidates on this share of each train set first",
        )
        b = parser.add_argument_group("budget (checked before each phase; the run stops cleanly)")
        b.add_argument("--max-lm-calls", type=int, help="task + optimizer calls")
        b.add_argument("--max-cost", type=float, help="dollars, at LiteLLM's prices")
        b.add_argument(
            "--allow-unparsed",
            action="store_true",
            help="search even when no answer of any task parsed in the initial evaluation (by default the run "
            "stops there: every score would be 0)",
        )


def add_common_flags(group: argparse.ArgumentParser | argparse._ArgumentGroup) -> None:
    """``--verbose`` and ``--debug`` on a subcommand too (``metaspo train ... --verbose``)."""
    group.add_argument(
        "--verbose", "-v", action="store_true", default=argparse.SUPPRESS, help="log details (DSPy, LiteLLM) to stderr"
    )
    group.add_argument(
        "--debug", action="store_true", default=argparse.SUPPRESS, help="show the traceback of an unexpected error"
    )


def config_from_args(
    args: argparse.Namespace, require_tasks: bool = True, extra: dict[str, Any] | None = None
) -> RunConfig:
    """Merge base.yaml, the given configs, ``--set``, the flags and ``extra`` into one validated config.

    ``--set`` values are parsed as YAML; the flags and ``extra`` are passed as typed values
    (``load_config(values=...)``), never through text, so any Unicode in them (an emoji in a path,
    a prompt read from a file) reaches the config unchanged.
    """
    overrides: dict[str, Any] = dict(extra or {})
    for item in args.set:
        if "=" not in item:
            raise ConfigError(f"--set takes KEY=VALUE, got {item!r} (e.g. --set search.num_iterations=5)")
    for flag, key in FLAG_KEYS.items():
        value = getattr(args, flag, None)
        if value is not None:
            overrides[key] = value
    if getattr(args, "engine", None):
        overrides["task_lm.engine"] = overrides["optimizer_lm.engine"] = args.engine
    layers = ["base", *args.config]
    return load_config(*layers, overrides=list(args.set), values=overrides, require_tasks=require_tasks)


def config_tasks(config: RunConfig, names) -> list:
    """The named tasks, loaded with the config's data settings and seed."""
    from metaspo_dspy.tasks import load_tasks

    return load_tasks(
        names,
        data_dir=config.data.data_dir,
        source=config.data.source,
        prompt_format=config.data.prompt_format,
        train_size=config.data.train_size,
        test_size=config.data.test_size,
        seed=config.seed,
    )


def resolve_system_prompt(spec: str) -> tuple[str, SystemPrompt]:
    """A system prompt from a preset name, a run directory, or a file; returns (label, prompt).

    A run directory gives its optimized system prompt and says on stderr which one (file, phase,
    meta-score): a finished run's ``program.json``; for a run stopped by its budget or unfinished
    (no complete ``metaspo_run.json``: interrupted, or still running) the best prompt so far, from
    whichever of ``metaspo_run.json`` and ``checkpoint.json`` got further, with a warning that the
    run is not finished and how to finish it."""
    if spec in PRESETS:
        return spec, SystemPrompt(PRESETS[spec])
    path = Path(spec)
    try:
        if path.is_dir():
            return f"{path.name or spec}", _run_dir_prompt(path)
        if not path.exists():
            raise ConfigError(
                f"system prompt {spec!r} is neither a preset ({', '.join(sorted(PRESETS))}) nor an existing file "
                "or run dir"
            )
        return path.stem, SystemPrompt.load(path)
    except ConfigError:
        raise
    except ValueError as exc:  # SystemPrompt.load: empty, unreadable or unrecognised file
        raise ConfigError(str(exc)) from None
    except OSError as exc:  # Path.is_dir/exists raise for an overlong name on Python 3.11
        raise ConfigError(f"cannot read system prompt {shown(spec)}: {path_error(exc, spec)}") from None


def _run_dir_prompt(path: Path) -> SystemPrompt:
    """:func:`resolve_system_prompt` for a run directory (see there); ``ValueError`` for a folder
    that holds no run or an unreadable file."""
    finished = finished_run(path)
    if finished is not None:
        name = "program.json" if (path / "program.json").is_file() else "metaspo_run.json"
        prompt = SystemPrompt.load(path / name)
        say(f"  system prompt {path}: the optimized one of this finished run, {name} ({_where(finished)})")
        return prompt
    found = []
    for name in ("metaspo_run.json", "checkpoint.json"):
        try:
            data = json.loads((path / name).read_text(encoding="utf-8"))
        except (OSError, ValueError):
            continue
        if isinstance(data, dict) and isinstance(data.get("optimized_system_prompt"), str):
            found.append((len(data.get("steps") or []), name, data))
    if not found:
        if (path / "program.json").is_file():  # a program saved by hand (MetaSPOProgram.save)
            return SystemPrompt.load(path / "program.json")
        raise ConfigError(f"{path} holds no MetaSPO run (no program.json / metaspo_run.json / checkpoint.json)")
    _, name, data = max(found, key=lambda item: item[0])  # further along; a tie: metaspo_run.json
    placement = (data.get("settings") or {}).get("instructions_in") or "user"
    prompt = SystemPrompt(data["optimized_system_prompt"], placement if placement in ("user", "system") else "user")
    if not prompt.text.strip():
        raise ConfigError(f"the system prompt in {path / name} is empty")
    state = f"was stopped by its budget ({data['stopped']})" if data.get("stopped") else "is unfinished"
    say(
        f"warning: {path} {state}: using its best system prompt so far, from {name} ({_where(data)}); "
        f"`metaspo train --resume {path}` finishes it"
    )
    return prompt


def _where(artifact: dict[str, Any]) -> str:
    """Where a run's artifact stands: its last phase, best nodes and meta-score."""
    steps = artifact.get("steps") or [{}]
    last = steps[-1] if isinstance(steps[-1], dict) else {}
    phase = last.get("phase", "?")
    iteration = last.get("iteration")
    at = f"after the {phase} phase" + (f" of iteration {iteration + 1}" if isinstance(iteration, int) else "")
    nodes = [str(t.get("best_node")) for t in (artifact.get("tasks") or {}).values() if isinstance(t, dict)]
    score = artifact.get("meta_score")
    shown = f"{score:.3f}" if isinstance(score, (int, float)) else "unknown"
    return f"{at}; best node{'s' if len(nodes) != 1 else ''} {', '.join(nodes) or '-'}; meta-score {shown}"


#: The largest settings file a ``--resume`` reads (``config.json``, ``compare.json``).
RECORDED_MAX_BYTES = 16 * 1024 * 1024


def read_recorded(folder: Path, name: str, made_by: str) -> dict[str, Any]:
    """The mapping in ``folder/name``, the settings a command recorded for ``--resume``: a
    :class:`ConfigError` naming the file and the fix when it is missing (``made_by``: the command
    that writes it), unreadable, not a regular file, too large, not JSON or not a mapping."""
    saved = folder / name
    where = f"cannot resume {shown(folder)}"
    damaged = "it was damaged -- restore it, or start a new run in another folder"
    try:
        data = json.loads(read_text(saved, RECORDED_MAX_BYTES))
    except (FileNotFoundError, NotADirectoryError):
        raise ConfigError(f"nothing to resume in {shown(folder)}: no {name} (was it made by `{made_by}`?)") from None
    except OSError as exc:
        raise ConfigError(f"{where}: cannot read {shown(saved)}: {path_error(exc, saved)}") from None
    except NotUtf8Error as exc:
        raise ConfigError(f"{where}: {exc}") from None
    except ValueError as exc:
        raise ConfigError(f"{where}: {shown(saved)} is not valid JSON ({exc}); {damaged}") from None
    if not isinstance(data, dict):
        got = type(data).__name__
        raise ConfigError(f"{where}: {shown(saved)} must hold a mapping of settings, got {got}; {damaged}")
    return data


def say(*parts: Any) -> None:
    """Human-facing progress and summaries go to stderr; stdout stays for results."""
    print(*parts, file=sys.stderr, flush=True)


def table(rows: list[list[Any]], header: list[str]) -> str:
    """A plain-text table with aligned columns."""
    cells = [[str(c) for c in header]] + [[_cell(c) for c in row] for row in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(header))]
    lines = ["  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip() for row in cells]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


def _cell(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.3f}"
    return "-" if value is None else str(value)
