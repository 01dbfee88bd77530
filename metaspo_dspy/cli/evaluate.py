"""``metaspo test``: meta-test system prompts on unseen tasks (unseen generalization or test-time adaptation)."""

from __future__ import annotations

import argparse
import contextlib
import statistics
import time
from collections.abc import Iterator
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from metaspo_dspy.cli.common import (
    add_config_arguments,
    config_from_args,
    config_tasks,
    resolve_system_prompt,
    say,
    table,
)
from metaspo_dspy.cli.models import add_preflight_argument, build_models, check_models
from metaspo_dspy.errors import ConfigError, TaskLoadError
from metaspo_dspy.meta_test import (
    EVALUATIONS_JOURNAL,
    PROPOSALS_JOURNAL,
    test_time_adaptation,
    unseen_generalization,
)
from metaspo_dspy.report.compare_table import UNPARSED_NOTE, cell_text, parsed_note, unseen_parsed
from metaspo_dspy.store.io import atomic_write_json
from metaspo_dspy.store.run_dir import check_new_log_dir, check_writable, lock_log_dir, log_dir_entries
from metaspo_dspy.tasks import load_unseen_user_prompts

HELP = "score system prompts on unseen tasks (unseen generalization or test-time adaptation)"
DESCRIPTION = """\
Meta-test one or more system prompts on the unseen tasks of a config.

  unseen generalization (default): each task's test split with N user prompts that were never
    optimized (the authors' stored prompts when the data folder has them, else generated once
    with APE by the optimizer model and stored in the log dir), mean and spread per task;
  test-time adaptation: ProTeGi on each task's user prompt with the system prompt fixed,
    test score of the best kept prompt per round; --tta-iterations N runs N+1 rounds (0..N:
    the first expansion of the initial prompt, then N more, as the reference does).

A system prompt is a preset (default, cot, service), a run directory made by `metaspo train` (an
unfinished one gives its best prompt so far, and says so), or a text/JSON file.

Unseen generalization journals every answer in the log dir as it comes (evaluations.jsonl,
proposals.jsonl): the same command rerun with the same --log-dir (after Ctrl-C or a kill, or to redo
the table) asks nothing already answered.

examples:
  metaspo test -c review --task-model openai/gpt-4o-mini --system-prompt default service runs/review
  metaspo test -c generated --task-model embedded --optimizer-model embedded --system-prompt default runs/demo
  metaspo test -c review --analysis tta --system-prompt runs/review --tta-iterations 6
"""


def add_parser(subparsers) -> None:
    parser = subparsers.add_parser(
        "test", help=HELP, description=DESCRIPTION, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    add_config_arguments(parser, search=False)
    parser.add_argument(
        "--system-prompt", "-s", nargs="+", default=["default"], metavar="SPEC", help="system prompts to compare"
    )
    parser.add_argument(
        "--analysis", choices=["unseen", "tta"], default="unseen", help="which protocol (default unseen)"
    )
    parser.add_argument("--tasks", nargs="+", metavar="TASK", help="unseen tasks to use (default: the config's)")
    parser.add_argument("--num-user-prompts", type=int, help="user prompts per task for unseen (paper: 10)")
    parser.add_argument(
        "--user-prompts",
        choices=["auto", "authors", "generate"],
        default="auto",
        help="auto: the authors' stored prompts where they exist, else APE-generated",
    )
    parser.add_argument(
        "--tta-iterations",
        type=int,
        help="test-time adaptation: ProTeGi rounds after the first (N: rounds 0..N, N+1 in all; paper: 6)",
    )
    parser.add_argument("--log-dir", type=Path, help="where results go (default: runs/test-<time>)")
    add_preflight_argument(parser)
    parser.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    extra = {"tasks.unseen": args.tasks} if args.tasks else {}
    config = config_from_args(args, require_tasks=False, extra=extra)
    if not config.tasks.unseen:
        raise ConfigError("no unseen tasks: use a config with tasks.unseen (e.g. -c review) or pass --tasks")
    prompts = [resolve_system_prompt(spec) for spec in args.system_prompt]
    tasks = config_tasks(config, config.tasks.unseen)
    models = build_models(config) if _needs_optimizer(args) else build_models(config, task_only=True)
    stamp = datetime.now(timezone.utc).strftime("%Y%m%d-%H%M%S")
    log_dir = args.log_dir or Path("runs") / f"test-{stamp}"
    with _locked(log_dir):  # the log dir writable and ours alone, before any request
        if args.preflight:
            check_models(models)
        say(
            f"{'unseen generalization' if args.analysis == 'unseen' else 'test-time adaptation'} on "
            f"{', '.join(t.name for t in tasks)} with {len(prompts)} system prompt(s); model {models.task_label}"
        )
        journaled = _journaled(log_dir) if args.analysis == "unseen" else 0  # (tta keeps no journal yet)
        if journaled:
            say(f"  {journaled} answers journaled in {log_dir} are reused, not asked again")
        started = time.perf_counter()
        if args.analysis == "unseen":
            results = _unseen(args, config, tasks, prompts, models, log_dir)
        else:
            results = _tta(config, tasks, prompts, models)
        results["seconds"] = round(time.perf_counter() - started, 1)
        results["prompt_format"] = config.data.prompt_format
        path = log_dir / f"{args.analysis}_results.json"
        atomic_write_json(path, results)
    say(f"results: {path}   time {results['seconds']}s")
    return 0


#: What ``metaspo test`` writes in its log dir: a folder holding one of them is a test's to rerun.
TEST_FILES = frozenset(
    {EVALUATIONS_JOURNAL, PROPOSALS_JOURNAL, "unseen_results.json", "tta_results.json", "unseen_user_prompts"}
)


@contextlib.contextmanager
def _locked(log_dir: Path) -> Iterator[None]:
    """Hold ``log_dir`` (created) for this command: a :class:`RunDirError` with the fix when it
    holds files that are not a test's (nothing of the user's is written over), cannot be written,
    or another process holds it (two processes would interleave its journals)."""
    if not set(log_dir_entries(log_dir) or []) & TEST_FILES:
        check_new_log_dir(log_dir, resume="a new --log-dir (a training run's folder is not a test's)")
    check_writable(log_dir)
    lock = lock_log_dir(log_dir, then="then rerun")
    try:
        yield
    finally:
        lock.release()


def _journaled(log_dir: Path) -> int:
    """How many answers the log dir's journals hold (lines; a torn or bad one is asked again)."""
    count = 0
    for name in (EVALUATIONS_JOURNAL, PROPOSALS_JOURNAL):
        with contextlib.suppress(OSError), open(log_dir / name, "rb") as handle:
            count += sum(1 for line in handle if line.strip())
    return count


def _needs_optimizer(args: argparse.Namespace) -> bool:
    return args.analysis == "tta" or args.user_prompts != "authors"


def _user_prompts(mode: str, config, tasks) -> dict[str, list[str]]:
    """The authors' stored prompts per task where wanted and available (``mode``: auto, authors, generate)."""
    if mode == "generate":
        return {}
    given = {}
    for task in tasks:
        try:
            given[task.name] = load_unseen_user_prompts(
                task.name,
                data_dir=config.data.data_dir,
                prompt_format=config.data.prompt_format,
                num=config.meta_test.num_unseen_user_prompts,
            )
        except TaskLoadError:
            if mode == "authors":
                raise
    return given


def unseen_run(config, tasks, prompt, models, log_dir: Path, user_prompts: str = "auto", quiet: bool = False):
    """Unseen generalization of one system prompt, as `metaspo test` runs it (shared with `metaspo compare`)."""
    return unseen_runs(config, tasks, [("", prompt)], models, log_dir, user_prompts, quiet)[""]


def unseen_runs(
    config, tasks, prompts, models, log_dir: Path, user_prompts: str = "auto", quiet: bool = False
) -> dict[str, Any]:
    """Unseen generalization of each ``(label, prompt)``: ``{label: unseen_generalization(...)}``;
    the user prompts, the journals (a rerun asks nothing already answered) and the generated user
    prompts live in ``log_dir``."""
    given = _user_prompts(user_prompts, config, tasks)
    runs = {}
    for label, prompt in prompts:
        runs[label] = unseen_generalization(
            prompt,
            tasks,
            user_prompts=given,
            num_user_prompts=config.meta_test.num_unseen_user_prompts,
            task_lm=models.task_lm,
            optimizer_lm=models.optimizer_lm,
            adapter=models.task_adapter,
            optimizer_adapter=models.optimizer_adapter,
            prompts_dir=log_dir / "unseen_user_prompts",
            num_threads=models.threads(config.num_threads),
            num_processes=config.num_processes,
            seed=config.seed,
            progress=not quiet,
            journal_dir=log_dir,
        )
    return runs


def _unseen(args, config, tasks, prompts, models, log_dir: Path) -> dict[str, Any]:
    runs = unseen_runs(config, tasks, prompts, models, log_dir, args.user_prompts, args.quiet)
    names = [task.name for task in tasks]
    shares = {label: unseen_parsed([runs[label]], names) for label, _ in prompts}
    rows = []
    for name in names:
        row: list[Any] = [name]
        for label, _ in prompts:
            entry = runs[label]["tasks"][name]
            row.append(cell_text((entry["mean"], entry["stdev"], 0), shares[label][name]))
        rows.append(row)
    average = [f"{runs[label]['average']:.3f}{parsed_note(shares[label]['average'])}" for label, _ in prompts]
    rows.append(["average", *average])
    print(table(rows, ["task", *(label for label, _ in prompts)]))
    say(
        f"(mean ± stdev over {config.meta_test.num_unseen_user_prompts} user prompts, test split, "
        f"{config.data.prompt_format} format; scores are fractions in [0, 1])"
    )
    if any(share is not None and share < 1 for label in shares for share in shares[label].values()):
        say(UNPARSED_NOTE)
    return {
        "analysis": "unseen_generalization",
        "system_prompts": {label: p.text for label, p in prompts},
        "results": runs,
    }


def tta_run(config, tasks, prompt, models) -> dict[str, Any]:
    """Test-time adaptation from one system prompt on each task, as `metaspo test --analysis tta`
    runs it (shared with `metaspo compare`): ``{task: result without its program}``."""
    out = {}
    for task in tasks:
        result = test_time_adaptation(
            prompt,
            task,
            iterations=config.meta_test.tta_iterations,
            optimizer_lm=models.optimizer_lm,
            task_lm=models.task_lm,
            adapter=models.task_adapter,
            optimizer_adapter=models.optimizer_adapter,
            num_threads=models.threads(config.num_threads),
            num_processes=config.num_processes,
            seed=config.seed,
        )
        result.pop("program")
        out[task.name] = result
    return out


def _tta(config, tasks, prompts, models) -> dict[str, Any]:
    runs: dict[str, dict[str, Any]] = {}
    rows = []
    for label, prompt in prompts:
        runs[label] = tta_run(config, tasks, prompt, models)
        for task in tasks:
            result = runs[label][task.name]
            rows.append([label, task.name, *(r["test_of_best"] for r in result["rounds"])])
    rounds = config.meta_test.tta_iterations + 1
    print(table(rows, ["system prompt", "task", *(f"round {r}" for r in range(rounds))]))
    averages = {
        label: [
            statistics.fmean(runs[label][t.name]["rounds"][r]["test_of_best"] for t in tasks) for r in range(rounds)
        ]
        for label, _ in prompts
    }
    say(
        "average test score of the best kept prompt per round: "
        + "; ".join(f"{label}: " + " ".join(f"{v:.3f}" for v in values) for label, values in averages.items())
    )
    return {
        "analysis": "test_time_adaptation",
        "system_prompts": {label: p.text for label, p in prompts},
        "results": runs,
        "averages": averages,
    }
