"""Loading run artifacts and metaspo test results, and the data derived from them."""

from __future__ import annotations

import json
import statistics
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from metaspo_dspy.errors import ConfigError

INSTALL_HINT = "pip install 'metaspo-dspy[notebook]' (or: pip install matplotlib)"
#: Figure files written by :func:`report` (name -> caption).
FIGURES = {
    "meta_score.png": "Meta-score per step, with the outer loop's candidates",
    "task_scores.png": "Per-task scores, initial vs final",
    "task_progress.png": "Best train score per task after every step",
    "phases.png": "Calls and time per phase",
    "unseen.png": "Unseen generalization",
    "tta.png": "Test-time adaptation",
}


class ReportError(ConfigError):
    """A run directory or results file cannot be reported on; the message says why."""


class MatplotlibMissing(ReportError, ImportError):
    """matplotlib is not installed (it comes with the ``notebook`` extra)."""


# -- loading -----------------------------------------------------------------------------------
def _read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise ReportError(f"{path} is not valid JSON ({exc})") from None
    except OSError as exc:
        raise ReportError(f"cannot read {path}: {exc.strerror or exc}") from None


def load_run(run: str | Path | Mapping[str, Any]) -> dict[str, Any]:
    """The run artifact of a run directory: ``metaspo_run.json`` when the run finished, else its
    last ``checkpoint.json`` (``"complete": False``). Also accepts the path of either file, or an
    artifact dict (returned as is).

    Raises :class:`ReportError` when the folder holds no run or no phase has finished yet.
    """
    if isinstance(run, Mapping):
        return _check_artifact(dict(run), "the given artifact")
    path = Path(run)
    if path.is_file():
        return _check_artifact(_read_json(path), str(path))
    if not path.is_dir():
        raise ReportError(f"{path} does not exist; give a run directory made by MetaSPO(log_dir=...) or metaspo train")
    for name in ("metaspo_run.json", "checkpoint.json"):
        if (path / name).is_file():
            return _check_artifact(_read_json(path / name), str(path / name))
    if (path / "run.json").is_file():
        raise ReportError(f"{path} holds a run that has not finished its first phase yet (no checkpoint.json)")
    raise ReportError(f"{path} holds no MetaSPO run (no metaspo_run.json or checkpoint.json)")


def _check_artifact(data: Any, where: str) -> dict[str, Any]:
    if not isinstance(data, dict) or "steps" not in data or "optimized_system_prompt" not in data:
        raise ReportError(f"{where} is not a MetaSPO run artifact (no 'steps' / 'optimized_system_prompt')")
    return data


def load_results(results: str | Path | Mapping[str, Any]) -> dict[str, Any]:
    """A ``metaspo test`` results file (``unseen_results.json`` or ``tta_results.json``) as a dict
    in the CLI's shape ``{"analysis", "system_prompts", "results": {label: ...}}``.

    Also accepts that dict, ``{label: unseen_generalization(...) result}``, one
    ``unseen_generalization`` result (labelled by its system prompt), or
    ``{label: test_time_adaptation(...) result}``.
    """
    data = _read_json(Path(results)) if not isinstance(results, Mapping) else dict(results)
    if not isinstance(data, dict):
        raise ReportError("not a metaspo test results file (expected a JSON object)")
    if "results" in data and "analysis" in data:
        return data
    if "tasks" in data and "average" in data:  # one unseen_generalization result
        label = _short(data.get("system_prompt", "system prompt"), 30)
        data = {label: data}
    if data and all(isinstance(v, Mapping) and "tasks" in v and "average" in v for v in data.values()):
        return {
            "analysis": "unseen_generalization",
            "system_prompts": {k: v.get("system_prompt", "") for k, v in data.items()},
            "results": dict(data),
        }
    if data and all(isinstance(v, Mapping) and "rounds" in v for v in data.values()):  # {label: tta result}
        return {
            "analysis": "test_time_adaptation",
            "system_prompts": {k: v.get("system_prompt", "") for k, v in data.items()},
            "results": {k: {v.get("task", "task"): v} for k, v in data.items()},
        }
    raise ReportError("not a metaspo test results file (expected 'analysis' and 'results')")


def merge_unseen_results(*results: str | Path | Mapping[str, Any]) -> dict[str, Any]:
    """Pool several unseen-generalization results (e.g. one per seed, each with its own user
    prompts) into one: per system prompt and task, the scores of every prompt of every result,
    with their mean and spread (sample stdev); ``average`` is the mean of the task means."""
    merged: dict[str, dict[str, Any]] = {}
    prompts: dict[str, str] = {}
    for item in results:
        data = load_results(item)
        if data["analysis"] != "unseen_generalization":
            raise ReportError("merge_unseen_results takes unseen-generalization results only")
        prompts.update(data.get("system_prompts", {}))
        for label, run in data["results"].items():
            entry = merged.setdefault(label, {"system_prompt": run.get("system_prompt", ""), "tasks": {}})
            for task, values in run["tasks"].items():
                target = entry["tasks"].setdefault(task, {"scores": [], "user_prompts": [], "failures": 0})
                target["scores"] += list(values["scores"])
                target["user_prompts"] += list(values.get("user_prompts", []))
                target["failures"] += values.get("failures", 0)
                target["parsed"] = add_parsed(target.get("parsed", {"parsed": 0, "answers": 0}), values.get("parsed"))
            entry["task_lm_calls"] = entry.get("task_lm_calls", 0) + run.get("task_lm_calls", 0)
    for entry in merged.values():
        for values in entry["tasks"].values():
            values["mean"] = statistics.fmean(values["scores"])
            values["stdev"] = statistics.stdev(values["scores"]) if len(values["scores"]) > 1 else 0.0
        entry["average"] = statistics.fmean(v["mean"] for v in entry["tasks"].values())
    return {"analysis": "unseen_generalization", "system_prompts": prompts, "results": merged}


def add_parsed(total: Mapping[str, int] | None, more: Mapping[str, int] | None) -> dict[str, int] | None:
    """The sum of two ``{"parsed", "answers"}`` counts; None when either is unknown (a result
    written before parsed answers were counted)."""
    if total is None or more is None:
        return None
    return {"parsed": total["parsed"] + more["parsed"], "answers": total["answers"] + more["answers"]}


def parsed_share(counts: Mapping[str, int] | None) -> float | None:
    """The share of parsed answers in a ``{"parsed", "answers"}`` count (None: unknown or n/a)."""
    if not counts or not counts.get("answers"):
        return None
    return counts["parsed"] / counts["answers"]


# -- derived data ------------------------------------------------------------------------------
def step_label(step: Mapping[str, Any]) -> str:
    """``initial``, ``it1 inner``, ``it1 outer``... for a step or phase record."""
    if step.get("iteration") is None:
        return str(step["phase"])
    return f"it{step['iteration'] + 1} {step['phase']}"


def _best_node(step: Mapping[str, Any], task: str) -> Mapping[str, Any] | None:
    nodes = step.get("nodes", {}).get(task) or []
    return nodes[0] if nodes else None


def task_scores(artifact: Mapping[str, Any]) -> dict[str, dict[str, float | None]]:
    """Per task: ``initial_train`` (the initial node), ``final_train`` / ``final_test`` (the best
    node of the final beam) and ``initial_test`` (known only when the initial node was tested,
    i.e. it is still in the final beam; else None); ``initial_parsed`` / ``final_parsed`` (train) and
    ``final_parsed_test``: the shares of answers parsed (None: not applicable, or a run recorded
    before parsed answers were counted)."""
    steps = artifact["steps"]
    initial = steps[0] if steps else {}
    nodes = {n["id"]: n for n in artifact.get("nodes", [])}
    out = {}
    names = list(artifact.get("tasks") or (steps[-1].get("nodes", {}) if steps else {}))
    for task in names:
        first = _best_node(initial, task) or {}
        first_full = nodes.get(first.get("id"), first)
        final = (artifact.get("tasks") or {}).get(task) or {}
        if not final and steps:
            best = _best_node(steps[-1], task) or {}
            final = {"train_score": best.get("train_score"), "test_score": best.get("test_score")}
        out[task] = {
            "initial_train": first.get("train_score"),
            "initial_test": first_full.get("test_score"),
            "final_train": final.get("train_score"),
            "final_test": final.get("test_score"),
            "initial_parsed": (first_full.get("parsed") or {}).get("train"),
            "final_parsed": (final.get("parsed") or {}).get("train"),
            "final_parsed_test": (final.get("parsed") or {}).get("test"),
        }
    return out


def parsed_change(initial: float | None, final: float | None) -> str:
    """``"40% -> 100%"``: a task's share of parsed answers from its initial to its final node."""
    shown = ["-" if share is None else f"{share:.0%}" for share in (initial, final)]
    return shown[0] if shown[0] == shown[1] else f"{shown[0]} -> {shown[1]}"


def _short(text: str, n: int = 80) -> str:
    text = " ".join(str(text).split())
    return text if len(text) <= n else text[: n - 1] + "…"
