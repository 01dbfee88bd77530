"""``metaspo compare``: train each method per seed, meta-test every system prompt, write one table.

Layout of the log dir (one folder per domain with ``--domains``, else the log dir itself)::

    compare.json                  the command's settings (compared on --resume)
    [<domain>/]train/<method>-seed<k>/   a `metaspo train` run dir (resumable on its own)
    [<domain>/]eval/<analysis>-<label>.json   one system prompt's meta-test result
    compare.md, compare.csv, compare.png

Training goes through :mod:`metaspo_dspy.cli.train` (prepare/execute) and evaluation through
:mod:`metaspo_dspy.cli.evaluate` (unseen_runs/tta_run), so a sub-run is exactly a `metaspo train`
run and a cell exactly a `metaspo test` result.
"""

from __future__ import annotations

import argparse
import copy
import json
from pathlib import Path
from typing import Any

from metaspo_dspy.cli import evaluate, train
from metaspo_dspy.cli.common import add_config_arguments, config_from_args, config_tasks, read_recorded, say
from metaspo_dspy.cli.models import add_preflight_argument, build_models, check_models, names_embedded
from metaspo_dspy.config import TRAIN_METHODS
from metaspo_dspy.errors import ConfigError, RunDirError
from metaspo_dspy.optimize.estimate import estimate_tokens_and_cost
from metaspo_dspy.presets import PRESETS
from metaspo_dspy.program.adapters import make_adapter
from metaspo_dspy.program.system_prompt import SystemPrompt
from metaspo_dspy.report import compare_table
from metaspo_dspy.store.io import atomic_write_json, atomic_write_text, shown
from metaspo_dspy.store.run_dir import check_new_log_dir

HELP = "train methods over seeds and compare them with the presets on unseen tasks (one table)"
DESCRIPTION = """\
Train each requested method (metaspo, outer_loop, metaspo_ape, sprig) on a config's source tasks
once per seed, then meta-test every resulting system prompt next to the presets (default, cot,
service) on the config's unseen tasks, and write a Markdown + CSV table (stdout: the Markdown), and a
figure when matplotlib is installed. One prompt format is used for training and testing (default:
the reference format, as in the paper; DSPy's format for the embedded model, which cannot follow the
reference's answer tags). Each cell's share of parsed answers is reported beside its score. Every
sub-run has its own resumable run directory; a killed compare continues with --resume.

examples:
  metaspo compare -c review --methods default cot service sprig outer_loop metaspo --seeds 3 \\
      --task-model openai/gpt-4o-mini --log-dir runs/review-table
  metaspo compare --domains review medical --methods default metaspo --seeds 1 --task-model ... --log-dir runs/t
  metaspo compare --resume runs/review-table
"""
#: the columns ``--methods`` names: the preset system prompts and the methods ``metaspo train`` runs
METHODS = (*PRESETS, *TRAIN_METHODS)
# Flags that may change on --resume (they do not change results).
_RESUME_OK = {
    "resume",
    "log_dir",
    "threads",
    "quiet",
    "verbose",
    "handler",
    "command",
    "preflight",
    "debug",
    "allow_unparsed",
}


def add_parser(subparsers) -> None:
    parser = subparsers.add_parser(
        "compare", help=HELP, description=DESCRIPTION, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    add_config_arguments(parser, search=True)
    for action in parser._actions:  # compare takes --methods; a --method given is refused by name
        if action.dest == "method":
            action.choices, action.help = None, argparse.SUPPRESS
    group = parser.add_argument_group("comparison")
    group.add_argument("--methods", nargs="+", metavar="METHOD", help=f"columns, of {', '.join(METHODS)}")
    group.add_argument("--seeds", type=int, help="training runs per trained method (default 3)")
    group.add_argument("--domains", nargs="+", metavar="CONFIG", help="one table per config (e.g. review medical)")
    group.add_argument("--analysis", choices=["unseen", "tta"], help="unseen generalization (default) or tta")
    group.add_argument("--num-user-prompts", type=int, help="user prompts per unseen task (paper: 10)")
    group.add_argument(
        "--tta-iterations",
        type=int,
        help="test-time adaptation: ProTeGi rounds after the first (N: rounds 0..N, N+1 in all; paper: 6)",
    )
    group.add_argument("--log-dir", type=Path, help="folder for the sub-runs and the table (required)")
    group.add_argument("--resume", type=Path, metavar="LOG_DIR", help="continue a compare with its recorded settings")
    add_preflight_argument(parser)
    parser.set_defaults(handler=run)


def _settings(args: argparse.Namespace) -> dict[str, Any]:
    """The settings that decide results, as recorded in compare.json."""
    out = {}
    for key, value in sorted(vars(args).items()):
        if key in _RESUME_OK:
            continue
        out[key] = value
    return out


def _resolve_args(args: argparse.Namespace) -> tuple[argparse.Namespace, Path]:
    """The arguments to run with (recorded ones on --resume) and the log dir; checks them all."""
    if args.resume is not None:
        given = [k for k, v in _settings(args).items() if v not in (None, False, [])]
        if given:
            names = ", ".join("--" + k.replace("_", "-") for k in given)
            raise ConfigError(f"--resume uses the compare's recorded settings; drop {names} (only --threads/--quiet)")
        recorded = _recorded_settings(args.resume)
        for key, value in recorded.items():
            setattr(args, key, value)
        args.log_dir = args.resume  # the folder may have moved since
    if args.log_dir is None:
        raise ConfigError("metaspo compare needs --log-dir DIR (where the sub-runs and the table go)")
    if not args.methods:
        raise ConfigError(f"--methods is required: any of {', '.join(METHODS)}")
    unknown = [m for m in args.methods if m not in METHODS]
    if unknown:
        raise ConfigError(f"unknown method {', '.join(map(repr, unknown))}: choose from {', '.join(METHODS)}")
    if len(set(args.methods)) != len(args.methods):
        raise ConfigError("--methods lists a method twice")
    if args.method is not None:
        raise ConfigError("metaspo compare takes --methods (several), not --method")
    args.seeds = 3 if args.seeds is None else args.seeds
    if args.seeds < 1:
        raise ConfigError(f"--seeds must be at least 1, got {args.seeds}")
    if not args.domains and not args.config:
        raise ConfigError("give a config (-c review) or --domains review medical ...")
    args.analysis = args.analysis or "unseen"
    return args, args.log_dir


class Domain:
    """One config's comparison: its trainings (prepared, no call made) and its evaluations."""

    def __init__(self, args: argparse.Namespace, name: str | None, root: Path):
        self.args, self.root = args, root
        layered = copy.copy(args)
        layered.config = [*args.config, *([name] if name else [])]
        self.layered = layered
        self.config = self._config({})
        self.name = name or "+".join(args.config)
        if not self.config.tasks.unseen:
            raise ConfigError(f"{self.name}: no unseen tasks (tasks.unseen) to compare on")
        self.trainings = {}
        base_seed = self.config.seed
        for method in (m for m in args.methods if m in TRAIN_METHODS):
            for k in range(args.seeds):
                config = self._config({"method": method, "seed": base_seed + k})
                run_dir = root / "train" / f"{method}-seed{k}"
                resume = (run_dir / "run.json").is_file()
                self.trainings[f"{method}-seed{k}"] = train.prepare(
                    config, run_dir, resume, quiet=args.quiet, allow_unparsed=args.allow_unparsed
                )
        self.tasks = config_tasks(self.config, self.config.tasks.unseen)
        self.models = build_models(self.config)

    def _config(self, extra: dict[str, Any]):
        layered = copy.copy(self.layered)
        for key, value in extra.items():
            setattr(layered, key, value)  # flags win over config files, as in `metaspo train`
        return config_from_args(layered, extra={"data.prompt_format": default_format(layered)})

    def check(self) -> None:
        """Every check of the trainings still to run that needs no model (their run directories
        writable and not in use, recorded settings unchanged, the budget against the initial
        evaluation): :func:`metaspo_dspy.cli.train.check`, each folder left as it was."""
        for training in self.trainings.values():
            if not (training.resume and (training.run_dir / "metaspo_run.json").is_file()):
                train.check(training)

    def labels(self) -> list[str]:
        return [m for m in self.args.methods if m in PRESETS] + list(self.trainings)

    def estimate(self) -> dict[str, int]:
        """Upper bounds on the calls still to make (finished trainings and evaluations count zero)."""
        calls = {"task_lm": 0, "optimizer_lm": 0}
        for training in self._to_train():
            calls["task_lm"] += training.estimate["task_lm"]
            calls["optimizer_lm"] += training.estimate["optimizer_lm"]
        calls["task_lm"] += self._evaluation_calls()
        return calls

    def rough(self) -> dict[str, Any]:
        """Rough tokens and cost of :meth:`estimate`'s calls, from the data's real lengths: each
        training's (:func:`metaspo_dspy.cli.train.rough_cost`) and the evaluations' (unseen test sets)."""
        parts = [train.rough_cost(training) for training in self._to_train()]
        evaluations = self._evaluation_calls()
        calls = {"task_lm_train": 0, "task_lm_test": evaluations, "task_lm": evaluations, "optimizer_lm": 0}
        adapter = make_adapter(self.models.task_adapter)
        models = self.models
        parts.append(estimate_tokens_and_cost(calls, self.tasks, models.task_label, models.optimizer_label, adapter))
        costs = [part["cost"] for part in parts if part["tokens"]]
        return {
            "tokens": sum(part["tokens"] for part in parts),
            "cost": None if None in costs else sum(costs),
        }

    def _to_train(self) -> list[train.Training]:
        return [t for t in self.trainings.values() if not (t.run_dir / "metaspo_run.json").is_file()]

    def _evaluation_calls(self) -> int:
        if self.args.analysis != "unseen":
            return 0
        todo = [label for label in self.labels() if not self.result_path(label).is_file()]
        return self.config.meta_test.num_unseen_user_prompts * sum(len(t.test) for t in self.tasks) * len(todo)

    def result_path(self, label: str) -> Path:
        return self.root / "eval" / f"{self.args.analysis}-{label}.json"

    def run(self) -> dict[str, Any]:
        for label, training in self.trainings.items():
            if (training.run_dir / "metaspo_run.json").is_file() and training.resume:
                say(f"{self.name}: {label} already trained ({training.run_dir})")
                continue
            say(f"{self.name}: training {label}")
            train.execute(training, preflight=False)  # the command's preflight came first
        results = {label: self._evaluate(label) for label in self.labels()}
        by_method = {m: [results[m]] if m in PRESETS else [] for m in self.args.methods}
        for label in self.trainings:
            by_method[label.rsplit("-seed", 1)[0]].append(results[label])
        return compare_table.build(
            {
                "domain": self.name,
                "tasks": [t.name for t in self.tasks],
                "methods": list(self.args.methods),
                "results": by_method,
                "test_sizes": {t.name: len(t.test) for t in self.tasks},
                "caveats": _caveats(self.config, self.tasks),
                "task_model": self.models.task_label,
                "prompt_format": self.config.data.prompt_format,
                "seeds": self.args.seeds,
                "spread": "user prompts and seeds" if self.args.analysis == "unseen" else "seeds",
            },
            self.args.analysis,
        )

    def _prompt(self, label: str) -> SystemPrompt:
        if label in PRESETS:
            return SystemPrompt(PRESETS[label])
        return SystemPrompt.load(self.trainings[label].run_dir / "metaspo_run.json")

    def _evaluate(self, label: str) -> dict[str, Any]:
        prompt = self._prompt(label)
        path = self.result_path(label)
        if path.is_file():
            saved = json.loads(path.read_text(encoding="utf-8"))
            if saved["system_prompt"] == prompt.text:
                return saved["result"]
        say(f"{self.name}: {self.args.analysis} evaluation of {label}")
        if self.args.analysis == "unseen":
            result = evaluate.unseen_runs(
                self.config, self.tasks, [(label, prompt)], self.models, self.root / "eval", quiet=self.args.quiet
            )[label]
        else:
            result = evaluate.tta_run(self.config, self.tasks, prompt, self.models)
        atomic_write_json(path, {"label": label, "system_prompt": prompt.text, "result": result})
        return result


#: Why compare runs the embedded model in DSPy's format unless --prompt-format says otherwise.
EMBEDDED_FORMAT_NOTE = (
    "the embedded model follows DSPy's format (its JSON grammar) but not the reference format's <answer> tags; "
    "--prompt-format reference forces the paper's format"
)


def default_format(args: argparse.Namespace) -> str:
    """The prompt format of a comparison: ``--prompt-format`` when given, else the paper's reference
    format, except for the embedded task model, which can only follow DSPy's (:data:`EMBEDDED_FORMAT_NOTE`)."""
    if args.prompt_format:
        return args.prompt_format
    model = args.task_model or config_from_args(args).task_lm.model
    return "dspy" if names_embedded(model) else "reference"


def _caveats(config, tasks) -> dict[str, list[str]]:
    from metaspo_dspy.tasks.provenance import availability, caveats

    return {t.name: [str(c) for c in caveats(t.name, availability(t.name, config.data.data_dir))] for t in tasks}


def _recorded_settings(log_dir: Path) -> dict[str, Any]:
    """The settings ``log_dir/compare.json`` records; a :class:`ConfigError` when it is damaged."""
    recorded = read_recorded(log_dir, "compare.json", "metaspo compare").get("settings")
    if not isinstance(recorded, dict):
        raise ConfigError(
            f"cannot resume {shown(log_dir)}: {shown(log_dir / 'compare.json')} holds no valid settings; it was "
            "damaged -- restore it, or start a new compare in another folder"
        )
    return recorded


def run(args: argparse.Namespace) -> int:
    args, log_dir = _resolve_args(args)
    if args.resume is None:  # empty, or a compare of ours: never over the user's files
        check_new_log_dir(log_dir, f"`metaspo compare --resume {shown(log_dir)}`", marker="compare.json")
    settings = _settings(args)
    saved = log_dir / "compare.json"
    if saved.is_file() and args.resume is None:
        recorded = _recorded_settings(log_dir)
        differ = sorted(k for k in set(recorded) | set(settings) if recorded.get(k) != settings.get(k))
        if differ:
            raise RunDirError(
                f"{log_dir} holds a compare with other settings ({', '.join(differ)}); continue it with "
                f"`metaspo compare --resume {log_dir}` or choose another --log-dir"
            )
    names = args.domains or [None]
    domains = [Domain(args, name, log_dir / name if name else log_dir) for name in names]  # checks, no call
    _announce(domains, args)
    try:
        log_dir.mkdir(parents=True, exist_ok=True)
        atomic_write_json(saved, {"settings": settings})
    except OSError as exc:
        raise RunDirError(
            f"cannot write to log dir {log_dir}: {exc.strerror or exc}; choose a writable folder"
        ) from None
    for domain in domains:  # every check that needs no model, before the preflight's requests
        domain.check()
    if args.preflight:
        check_models(domains[0].models)
    tables = [domain.run() for domain in domains]
    text = "\n".join(compare_table.markdown(t) for t in tables)
    atomic_write_text(log_dir / "compare.md", text)
    atomic_write_text(log_dir / "compare.csv", compare_table.to_csv(tables))
    missing = compare_table.figure(tables, log_dir / "compare.png")
    say(
        f"table: {log_dir / 'compare.md'}, {log_dir / 'compare.csv'}"
        + ("" if missing else f", figure: {log_dir / 'compare.png'}")
    )
    if missing:
        say(f"  note: {missing}")
    print(text, end="")
    return 0


def _announce(domains: list[Domain], args: argparse.Namespace) -> None:
    """Calls and rough cost still to spend, before any call; the budget flags stop it here."""
    total = {"task_lm": 0, "optimizer_lm": 0}
    tokens, cost = 0, 0.0
    for domain in domains:
        calls = domain.estimate()
        total = {k: total[k] + calls[k] for k in total}
        rough = domain.rough()
        tokens += rough["tokens"]
        cost = None if cost is None or rough["cost"] is None else cost + rough["cost"]
        fmt = domain.config.data.prompt_format
        why = f" ({EMBEDDED_FORMAT_NOTE})" if fmt == "dspy" and not args.prompt_format else ""
        say(
            f"{domain.name}: {len(domain.trainings)} training run(s), {len(domain.labels())} system prompts on "
            f"{', '.join(t.name for t in domain.tasks)}; format {fmt}{why}"
        )
    tta = " (test-time adaptation calls not included)" if args.analysis == "tta" else ""
    price = f", about ${cost:.2f} at LiteLLM's prices" if cost else ""
    say(
        f"estimated calls still to make: {total['task_lm']} task-model, {total['optimizer_lm']} optimizer{tta}; "
        f"roughly {tokens / 1e6:.2f}M tokens{price}"
    )
    budget = domains[0].config.budget
    if budget.max_lm_calls is not None and sum(total.values()) > budget.max_lm_calls:
        raise ConfigError(
            f"the comparison needs up to {sum(total.values())} calls, over --max-lm-calls {budget.max_lm_calls}; "
            "raise it or use fewer methods/seeds/smaller sizes"
        )
    if budget.max_cost is not None and cost and cost > budget.max_cost:
        raise ConfigError(f"the comparison may cost about ${cost:.2f}, over --max-cost {budget.max_cost}")
