"""BIG-bench tasks from the ``bigbench`` PyPI package's ``task.json`` files (offline real data).

The package is located with ``importlib.util.find_spec("bigbench")``, which does not import it
(importing BIG-bench pulls in heavy dependencies); ``bigbench_root=`` or ``$METASPO_BIGBENCH_ROOT``
point at any folder laid out like ``bigbench/benchmark_tasks`` instead (tests use this).

Questions are built as for the bundled BIG-bench files (``metaspo_dspy/data/bigbench``, see its
``NOTICE.md``):

==========================  ======================================  =============================
task                        question                                answer
==========================  ======================================  =============================
logic_grid_puzzle           input                                   the target (house number)
tracking_shuffled_objects   input + ``Options:`` (key order)        letter; sub-tasks stratified
logical_deduction           task_prefix + input + ``Options:``      letter; sub-tasks stratified
temporal_sequences          input + ``Options:`` shuffled           letter
object_counting             input                                   digit string
reasoning_colored_objects   input                                   colour / yes / no / digits
epistemic                   task_prefix + input                     entailment / non-entailment
navigate                    task_prefix + input + Yes/No options    yes / no
==========================  ======================================  =============================

BIG-bench has no train/test split: examples are de-duplicated, shuffled with a fixed task seed and
cut into 200 train / 300 test (per sub-task shares for the sub-task families). The construction
follows the bundled files' rule; it is not guaranteed to pick the very same examples.
"""

from __future__ import annotations

import importlib.util
import os
import random
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from metaspo_dspy.errors import TaskLoadError
from metaspo_dspy.tasks.answers.parsing import number_from_words
from metaspo_dspy.tasks.sources.local import read_json

BIGBENCH_ROOT_ENV = "METASPO_BIGBENCH_ROOT"
LETTERS = "ABCDEFG"
_SUBTASKS = ("three_objects", "five_objects", "seven_objects")

#: our task -> (BIG-bench task folder, sub-task folders, question style, use task_prefix)
BIGBENCH_LAYOUT: dict[str, tuple[str, tuple[str, ...], str, bool]] = {
    "logic_grid_puzzle": ("logic_grid_puzzle", (), "text", False),
    "tracking_shuffled_objects": ("tracking_shuffled_objects", _SUBTASKS, "option", False),
    "logical_deduction": ("logical_deduction", _SUBTASKS, "option", True),
    "temporal_sequences": ("temporal_sequences", (), "shuffled_option", False),
    "object_counting": ("object_counting", (), "text", False),
    "reasoning_colored_objects": ("reasoning_about_colored_objects", (), "text", False),
    "epistemic": ("epistemic_reasoning", (), "text", True),
    "navigate": ("navigate", (), "yes_no", True),
}


def option_block(choices: Sequence[str]) -> str:
    """``"\\nOptions:\\n(A) ..\\n(B) .."`` for the given option texts."""
    return "\nOptions:\n" + "\n".join(f"({LETTERS[i]}) {c}" for i, c in enumerate(choices))


def bigbench_answer_text(targets: Sequence[Any]) -> str:
    """The gold of a text task: a digit target if any, else the first target; lower case, a number
    word turned into digits."""
    texts = [str(t).strip() for t in targets if str(t).strip()]
    for text in texts:
        if text.isdigit():
            return text
    first = texts[0].lower() if texts else ""
    number = number_from_words(first)
    return str(number) if number is not None else first


def find_bigbench_root(root: str | os.PathLike | None = None) -> Path | None:
    """The ``benchmark_tasks`` folder: ``root`` if given, else ``$METASPO_BIGBENCH_ROOT``, else the
    installed ``bigbench`` package's (found without importing it); None when there is none."""
    if root is None:
        root = os.environ.get(BIGBENCH_ROOT_ENV) or None
    if root is not None:
        path = Path(root).expanduser()
        return path if path.is_dir() else None
    try:
        spec = importlib.util.find_spec("bigbench")
    except (ImportError, ValueError):
        return None
    if spec is None or not spec.submodule_search_locations:
        return None
    for location in spec.submodule_search_locations:
        path = Path(location) / "benchmark_tasks"
        if path.is_dir():
            return path
    return None


def _join(prefix: str, text: str) -> str:
    if not prefix:
        return text
    return prefix + text if prefix[-1].isspace() else f"{prefix}\n{text}"


def _best_keys(target_scores: dict[str, Any]) -> list[str]:
    top = max(target_scores.values())
    return [k for k, v in target_scores.items() if v == top]


def build_row(example: dict[str, Any], style: str, prefix: str, rng: random.Random) -> dict[str, Any] | None:
    """One reference-format row from a BIG-bench example, or None if it cannot be used."""
    text = _join(prefix, str(example.get("input", "")).strip())
    scores = example.get("target_scores")
    if style in ("option", "shuffled_option"):
        if not isinstance(scores, dict) or not scores or len(scores) > len(LETTERS):
            return None
        choices = list(scores.items())
        if style == "shuffled_option":
            rng.shuffle(choices)
        best = max(v for _, v in choices)
        letter = LETTERS[next(i for i, (_, v) in enumerate(choices) if v == best)]
        return {"question": text + option_block([c for c, _ in choices]), "answer": letter}
    if isinstance(scores, dict) and scores:
        targets: list[Any] = _best_keys(scores)
    else:
        target = example.get("target")
        targets = list(target) if isinstance(target, list) else [target] if target is not None else []
    if not targets:
        return None
    answer = bigbench_answer_text(targets)
    if style == "yes_no":
        answer = {"true": "yes", "false": "no"}.get(answer, answer)
        if answer not in ("yes", "no"):
            return None
        return {"question": text + "\nOptions:\n- Yes\n- No", "answer": answer}
    return {"question": text, "answer": answer}


def _rows_of(task_json: Path, style: str, use_prefix: bool, rng: random.Random, subtask: str) -> list[dict]:
    data = read_json(task_json)
    prefix = str(data.get("task_prefix", "")) if use_prefix else ""
    rows, seen = [], set()
    for example in data.get("examples", []):
        row = build_row(example, style, prefix, rng)
        if row is not None and row["question"] not in seen:
            seen.add(row["question"])
            rows.append({**row, "subtask": subtask} if subtask else row)
    return rows


def _shares(total: int, parts: int) -> list[int]:
    return [total // parts + (1 if i < total % parts else 0) for i in range(parts)]


def bigbench_splits(
    task: str, root: str | os.PathLike | None = None, n_train: int = 200, n_test: int = 300
) -> dict[str, list[dict[str, Any]]]:
    """``task``'s train/test rows built from BIG-bench ``task.json`` files under ``root``.

    Raises :class:`TaskLoadError` naming the folder when the package (or root) or a task file is
    missing.
    """
    if task not in BIGBENCH_LAYOUT:
        raise TaskLoadError(f"task {task!r} is not a BIG-bench task")
    base = find_bigbench_root(root)
    if base is None:
        where = root or os.environ.get(BIGBENCH_ROOT_ENV) or "the 'bigbench' package"
        raise TaskLoadError(f"BIG-bench task files not found ({where} is not installed or not a folder)")
    folder, subtasks, style, use_prefix = BIGBENCH_LAYOUT[task]
    rng = random.Random(f"42:bigbench/{task}")
    groups = []
    for sub in subtasks or ("",):
        path = base / folder / sub / "task.json" if sub else base / folder / "task.json"
        if not path.is_file():
            raise TaskLoadError(f"BIG-bench task file not found: {path}")
        rows = _rows_of(path, style, use_prefix, rng, sub)
        rng.shuffle(rows)
        groups.append(rows)
    train: list[dict[str, Any]] = []
    test: list[dict[str, Any]] = []
    for rows, k_train, k_test in zip(groups, _shares(n_train, len(groups)), _shares(n_test, len(groups)), strict=True):
        train += rows[:k_train]
        test += rows[k_train : k_train + k_test]
    return {"train": train, "test": test}
