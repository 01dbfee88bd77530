"""Shared CLI plumbing: config from arguments, models, system-prompt specs, output helpers."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from metaspo_dspy.config import RunConfig, load_config
from metaspo_dspy.errors import ConfigError
from metaspo_dspy.presets import PRESETS
from metaspo_dspy.program.system_prompt import SystemPrompt

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
    """Merge base.yaml, the given configs, ``--set``, the flags and ``extra`` into one validated config."""
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
    return load_config(
        *layers,
        overrides=[*args.set, *(f"{k}={json.dumps(v)}" for k, v in overrides.items())],
        require_tasks=require_tasks,
    )


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
    """A system prompt from a preset name, a run directory, or a file; returns (label, prompt)."""
    if spec in PRESETS:
        return spec, SystemPrompt(PRESETS[spec])
    path = Path(spec)
    try:
        if path.is_dir():
            for name in ("program.json", "metaspo_run.json", "checkpoint.json"):
                if (path / name).exists():
                    return f"{path.name or spec}", SystemPrompt.load(path / name)
            raise ConfigError(f"{path} holds no MetaSPO run (no program.json / metaspo_run.json / checkpoint.json)")
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
