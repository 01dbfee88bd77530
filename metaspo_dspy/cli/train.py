"""``metaspo train``: optimize a system prompt on a config's source tasks."""

from __future__ import annotations

import argparse
import time
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from metaspo_dspy.cli.common import (
    add_config_arguments,
    config_from_args,
    config_tasks,
    read_recorded,
    resolve_system_prompt,
    say,
    table,
)
from metaspo_dspy.cli.models import add_preflight_argument, build_models, check_models
from metaspo_dspy.config import TRAIN_METHODS, RunConfig, load_config
from metaspo_dspy.errors import ConfigError, RunDirError
from metaspo_dspy.optimize.engine.search import PhaseLog
from metaspo_dspy.optimize.engine.teleprompter import SearchTeleprompter
from metaspo_dspy.optimize.estimate import estimate_calls, estimate_sprig_calls, estimate_tokens_and_cost
from metaspo_dspy.optimize.metaspo.teleprompter import MetaSPO
from metaspo_dspy.optimize.sprig.teleprompter import SPRIG
from metaspo_dspy.program.adapters import make_adapter
from metaspo_dspy.report.data import parsed_change
from metaspo_dspy.store.io import atomic_write_json, path_error, shown
from metaspo_dspy.store.ledger import describe
from metaspo_dspy.store.run_dir import check_new_log_dir, finished_run
from metaspo_dspy.tasks import compile_kwargs

HELP = "optimize a system prompt on the source tasks of a config (MetaSPO, or the SPRIG baseline)"
DESCRIPTION = """\
Run MetaSPO (or, with --method sprig, the SPRIG baseline) on the source tasks of a config and write
a run directory holding the optimized system prompt, every prompt tried with its scores, and the
program (program.json).

examples:
  metaspo train -c review --task-model openai/gpt-4o-mini --log-dir runs/review
  metaspo train -c generated --task-model embedded --optimizer-model embedded --iterations 1
  metaspo train -c review --method sprig --task-model openai/gpt-4o-mini --log-dir runs/review-sprig
  metaspo train --resume runs/review          # continue an interrupted run
"""


def add_parser(subparsers) -> None:
    parser = subparsers.add_parser(
        "train", help=HELP, description=DESCRIPTION, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    add_config_arguments(parser, search=True)
    parser.add_argument(
        "--components",
        type=Path,
        metavar="CSV",
        help="SPRIG's component library: a CSV with Prompt and Category (or Catagory) columns "
        "(default: the built-in library; search.components)",
    )
    parser.add_argument(
        "--initial-system-prompt",
        metavar="SPEC",
        help="where the search starts: a preset (default, cot, service), a text/JSON file, or a run dir",
    )
    parser.add_argument("--log-dir", type=Path, help="run directory to create (default: runs/<time>-<method>)")
    parser.add_argument(
        "--resume", type=Path, metavar="RUN_DIR", help="continue the run in RUN_DIR with its recorded settings"
    )
    add_preflight_argument(parser)
    parser.set_defaults(handler=run)


# Settings that may change when resuming (they do not change results).
_RESUME_OK = {
    "resume",
    "threads",
    "processes",
    "quiet",
    "verbose",
    "handler",
    "command",
    "config",
    "set",
    "max_lm_calls",
    "max_cost",
    "preflight",
    "debug",
    "allow_unparsed",
}


def _config(args: argparse.Namespace) -> tuple[RunConfig, Path, bool]:
    """The run's config, its folder and whether it resumes; reads files, checks, sends nothing.

    A new run: the config from the arguments (:func:`config_from_args`; the initial system prompt
    read from its file). ``--resume DIR``: the settings recorded in ``DIR/config.json``, applied as
    typed values (no text round trip: any Unicode survives), with the flags that may change; a
    ``config.json`` that is missing, unreadable, not JSON or not a mapping is a :class:`ConfigError`.
    """
    if args.resume is None:
        extra = {}
        if args.initial_system_prompt:
            try:
                extra["initial_system_prompt"] = resolve_system_prompt(args.initial_system_prompt)[1].text
            except OSError as exc:  # a path the system refuses (too long, ...) while looking at it
                spec = args.initial_system_prompt
                raise ConfigError(f"cannot read system prompt {shown(spec)}: {path_error(exc, spec)}") from None
        if args.components is not None:
            extra["search.components"] = str(args.components.resolve())
        config = config_from_args(args, extra=extra)
        stamp = datetime.now(timezone.utc).strftime("%Y%m%d-%H%M%S")
        return config, args.log_dir or Path("runs") / f"{stamp}-{config.method}", False
    given = [k for k, v in vars(args).items() if k not in _RESUME_OK and v not in (None, False, [])]
    if given or args.config or args.set:
        names = ", ".join("--" + k.replace("_", "-") for k in given) or "--config/--set"
        raise ConfigError(
            f"--resume uses the run's recorded settings; drop {names} "
            "(only --threads/--processes/--quiet/--max-lm-calls/--max-cost/--no-preflight may change)"
        )
    data = read_recorded(args.resume, "config.json", "metaspo train")
    values = {k: v for k, v in _flat(data).items() if k != "sources"}
    for flag, key in (
        ("threads", "num_threads"),
        ("processes", "num_processes"),
        ("max_lm_calls", "budget.max_lm_calls"),
        ("max_cost", "budget.max_cost"),
    ):
        if getattr(args, flag, None) is not None:
            values[key] = getattr(args, flag)
    return load_config(values=values, values_origin=str(args.resume / "config.json")), args.resume, True


def _flat(data: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in data.items():
        if isinstance(value, dict):
            out.update(_flat(value, f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = value
    return out


def run(args: argparse.Namespace) -> int:
    config, run_dir, resume = _config(args)
    if not resume:  # empty, or a start of ours that sent nothing: never over the user's files
        check_new_log_dir(run_dir, f"`metaspo train --resume {shown(run_dir)}`")
    training = prepare(config, run_dir, resume, quiet=args.quiet, allow_unparsed=args.allow_unparsed)
    if resume and finished_run(run_dir) is not None:
        # compile() compares the recorded settings and returns the saved program: no preflight,
        # no call, no file written.
        best = training.tp.compile(**compile_kwargs(training.tasks))
        say(f"{run_dir} is a finished run; nothing to resume (metaspo show {run_dir})")
        print(best.system_prompt.text)
        return 0
    announce(training)
    best = execute(training, preflight=args.preflight)  # local checks, then the preflight, then the run
    if best.system_prompt.text == training.tp.initial_system_prompt:
        say("no candidate beat the initial system prompt, so it stays (stdout):")
    else:
        say("optimized system prompt (stdout):")
    print(best.system_prompt.text)
    return 0


@dataclass
class Training:
    """One `metaspo train` run, validated and ready to start (no call made yet)."""

    config: RunConfig
    run_dir: Path
    resume: bool
    tasks: list
    models: Any
    tp: SearchTeleprompter
    estimate: dict[str, int]


def prepare(
    config: RunConfig, run_dir: Path, resume: bool, quiet: bool = False, allow_unparsed: bool = False
) -> Training:
    """Load the source tasks, build the models and the teleprompter (which checks every setting)
    and estimate the calls; makes no call. Shared by `metaspo train` and `metaspo compare`."""
    if config.method not in TRAIN_METHODS:
        raise ConfigError(f"metaspo train runs method {', '.join(TRAIN_METHODS)}, not {config.method!r}")
    tasks = config_tasks(config, config.tasks.source)
    models = build_models(config)
    tp = _optimizer(config, models, run_dir, resume, quiet, allow_unparsed)  # checks every setting, no call
    return Training(config, run_dir, resume, tasks, models, tp, _estimate(config, tp, tasks))


def check(training: Training) -> None:
    """Make :func:`execute`'s checks that need no model and leave the run directory as it was
    (opened, then abandoned): `metaspo compare` checks every sub-run this way before its preflight."""
    run = training.tp.open_run(**compile_kwargs(training.tasks))
    run.abandon()


def rough_cost(training: Training) -> dict[str, Any]:
    """Rough tokens and cost of the run (estimate.estimate_tokens_and_cost)."""
    t = training
    return estimate_tokens_and_cost(
        t.estimate, t.tasks, t.models.task_label, t.models.optimizer_label, make_adapter(t.models.task_adapter),
        t.config.initial_system_prompt,
    )  # fmt: skip


def announce(training: Training) -> None:
    """What the run will do and roughly cost (stderr)."""
    config, tasks, models, tp, estimate = (
        training.config, training.tasks, training.models, training.tp, training.estimate,
    )  # fmt: skip
    say(f"{_title(config)} on {len(tasks)} source tasks: {', '.join(t.name for t in tasks)}")
    say(
        f"  task model: {models.task_label}   optimizer: {models.optimizer_label}   format: {config.data.prompt_format}"
    )
    say(
        f"  estimated calls: {estimate['task_lm']} task-model (train {estimate['task_lm_train']}, "
        f"test {estimate['task_lm_test']}), {estimate['optimizer_lm']} optimizer"
    )
    if config.method == "sprig":
        say(
            f"  SPRIG: search budget {estimate['task_lm_train']} task calls (a MetaSPO run's train calls), "
            f"{len(tp.library)} components ({tp.library.source}); optimizer calls above are an upper bound "
            "(one per rephrase edit)"
        )
    rough = rough_cost(training)
    price = f", about ${rough['cost']:.2f} at LiteLLM's prices" if rough["cost"] else ""
    say(f"  roughly {rough['tokens'] / 1e6:.2f}M tokens{price}")
    for warning in tp.budget_warnings():
        say(f"  warning: {warning}")


def execute(training: Training, preflight: bool = True):
    """Run the training: open its run directory with every check that needs no model
    (:meth:`~metaspo_dspy.optimize.engine.teleprompter.SearchTeleprompter.open_run`: the folder
    writable and not in use, ``run.json`` and the settings on resume, the budget against the initial
    evaluation, the open-file limit), write ``config.json`` (new runs), send the preflight
    (``preflight``: one request per model, its line on stderr), run the search and print the summary
    (stderr); returns the optimized program. Nothing is sent before the checks pass; a failure
    before the search (the preflight, Ctrl-C) leaves a new run's folder as it was found."""
    config, run_dir = training.config, training.run_dir
    run = training.tp.open_run(**compile_kwargs(training.tasks))
    if run.already_finished:  # nothing to resume: its saved program, nothing sent
        return run.reopen()
    try:
        if not training.resume:
            try:
                atomic_write_json(run_dir / "config.json", config.to_dict())
            except OSError as exc:
                raise RunDirError(
                    f"cannot write to log dir {run_dir}: {exc.strerror or exc}; choose a writable folder"
                ) from None
        if preflight:
            check_models(training.models)
    except BaseException:
        run.abandon(also=["config.json"])  # a resumed run's folder is left as it is
        raise
    say(f"  run directory: {run_dir}{'  (resuming)' if training.resume else ''}")
    started = time.perf_counter()
    best = run.execute()
    _summary(best.detailed_results, run_dir, time.perf_counter() - started)
    return best


def _partial_cost(usage: dict[str, Any]) -> str:
    """The priced part of a run's cost and the models LiteLLM cannot price."""
    from metaspo_dspy.budget import is_priced, priced_cost

    models = sorted({m for part in ("task_lm", "optimizer_lm") for m in usage[part]})
    unpriced = [m for m in models if not is_priced(m)]
    priced = priced_cost(usage["task_lm"]) + priced_cost(usage["optimizer_lm"])
    known = f"${priced:.4f} for priced models, " if len(unpriced) < len(models) else ""
    return f"{known}cost unknown for {', '.join(unpriced)} (no LiteLLM price)"


def _title(config: RunConfig) -> str:
    return "SPRIG (baseline)" if config.method == "sprig" else f"MetaSPO ({config.method})"


def _estimate(config: RunConfig, tp: SearchTeleprompter, tasks) -> dict[str, int]:
    """Upper bounds on the run's calls (MetaSPO: exact when every proposal is usable)."""
    sizes = {t.name: (len(t.train), len(t.test)) for t in tasks}
    if isinstance(tp, SPRIG):
        budget = tp.search_budget({name: train for name, (train, _) in sizes.items()})  # checked before any call
        return estimate_sprig_calls(budget, tp.beam_size, sizes)
    search = config.search
    args = (search.num_iterations, search.num_system_candidates, search.num_user_candidates, search.user_top_k)
    return estimate_calls(config.method, *args, sizes)


def _optimizer(
    config: RunConfig, models, run_dir: Path, resume: bool, quiet: bool, allow_unparsed: bool
) -> SearchTeleprompter:
    """The teleprompter for this run (MetaSPO, or SPRIG; its constructor checks every setting and
    loads SPRIG's component library, so a bad file stops the command before any call)."""
    common = dict(
        optimizer_lm=models.optimizer_lm,
        task_lm=models.task_lm,
        num_iterations=config.search.num_iterations,
        num_system_candidates=config.search.num_system_candidates,
        num_user_candidates=config.search.num_user_candidates,
        user_top_k=config.search.user_top_k,
        initial_system_prompt=config.initial_system_prompt,
        adapter=models.task_adapter,
        optimizer_adapter=models.optimizer_adapter,
        num_threads=models.threads(config.num_threads),
        num_processes=config.num_processes,
        seed=config.seed,
        log_dir=run_dir,
        resume=resume,
        progress=not quiet,
        phase_callback=_phase_printer(config),
        max_lm_calls=config.budget.max_lm_calls,
        max_cost=config.budget.max_cost,
        max_failure_share=config.budget.max_failure_share,
        allow_unparsed=allow_unparsed,
    )
    if config.method == "sprig":
        return SPRIG(components=config.search.components, **common)
    return MetaSPO(
        method=config.method,
        screening=config.search.screening,
        screening_keep=config.search.screening_keep,
        **common,
    )


def _phase_printer(config: RunConfig):
    total = config.search.num_iterations * (2 if config.method == "outer_loop" else 1)
    of = "" if config.method == "sprig" else f"/{total}"  # SPRIG runs until its budget is spent

    def show(log: PhaseLog) -> None:
        where = f"{log.phase}" if log.iteration is None else f"{log.phase} {log.iteration + 1}{of}"
        reused = f", {log.reused_evaluations} reused" if log.reused_evaluations else ""
        if log.screened_out:
            reused += f", {log.screened_out} candidates screened out ({log.evaluations_saved} calls saved)"
        say(
            f"  [{where}] {log.task_lm_calls} task calls{reused}, {log.optimizer_calls} optimizer calls, "
            f"{log.discarded} of {log.proposals} proposals discarded, {log.seconds:.1f}s"
        )

    return show


def _summary(artifact: dict[str, Any], run_dir: Path, seconds: float) -> None:
    nodes = {n["id"]: n for n in artifact["nodes"]}
    initial = {n["task"]: n for n in artifact["nodes"] if n["origin"] == "initial"}
    rows = []
    for task, entry in artifact["tasks"].items():
        parsed = parsed_change(initial[task].get("parsed", {}).get("train"), entry.get("parsed", {}).get("train"))
        rows.append([task, initial[task]["train_score"], entry["train_score"], entry["test_score"], parsed])
    say("")
    say(table(rows, ["task", "initial train", "final train", "final test", "parsed (train)"]))
    for warning in artifact.get("warnings", []):
        say(f"warning: {warning}")
    first = next(s for s in artifact["steps"] if s["phase"] == "initial")
    accepted = sum(1 for d in artifact["outer_decisions"] if d["accepted"])
    fate = "entered the beam" if artifact["method"] == "sprig" else "accepted"
    say(
        f"meta-score {first['meta_score']:.3f} -> {artifact['meta_score']:.3f}; "
        f"{accepted} of {len(artifact['outer_decisions'])} system-prompt candidates {fate}"
    )
    if artifact.get("search_budget"):
        spent = artifact["search_budget"]
        say(f"search budget: {spent['task_calls_used']} of {spent['task_calls']} task calls; {spent['finished']}")
    calls, usage = artifact["calls"], artifact["usage"]
    tokens = sum(
        c["prompt_tokens"] + c["completion_tokens"]
        for part in ("task_lm", "optimizer_lm")
        for c in usage[part].values()
    )
    cost = f"${usage['cost']:.4f}" if usage["cost"] is not None else _partial_cost(usage)
    say(
        f"calls: {calls['task_lm']} task-model ({calls['task_lm_reused']} reused), "
        f"{calls['optimizer_lm']} optimizer this process; {tokens} tokens, {cost}; {len(nodes)} prompts scored; "
        f"time {seconds:.1f}s"
    )
    if artifact.get("cumulative"):
        say(f"  {describe(artifact['cumulative'])}")
    if artifact.get("stopped"):
        say(f"budget: {artifact['stopped']}")
    say(f"artifact: {run_dir / 'metaspo_run.json'}   program: {run_dir / 'program.json'}")
