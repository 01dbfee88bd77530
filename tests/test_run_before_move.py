"""Run directories written before the package was restructured (issue 19: modules moved into
subpackages) resume with the current code without a single model request, and end exactly as the
uninterrupted runs ended (system prompt, meta-score, each task's user prompt and scores).

The fixtures under ``tests/data`` were written by the code of commit 5b47fb3 (the last commit before
the move) from a detached worktree of it, run from a folder other than the repository root (with the
root as the current folder, ``python -c`` would import the checkout's package instead)::

    git worktree add --detach /tmp/before 5b47fb3
    cd /tmp && PYTHONPATH=/tmp/before:/work/main/tests /work/main/.venv/bin/python -c \
        "from test_run_before_move import make_fixtures_before_issue_19 as make; make('/tmp/fixgen/out')"
    cd /tmp/fixgen/out && cp -r run_made_before_issue_19 sprig_run_made_before_issue_19 \
        cli_run_made_before_issue_19 expected_before_issue_19.json /work/main/tests/data/

:func:`make_fixtures_before_issue_19` writes

* ``run_made_before_issue_19/`` (:func:`make_run_before_issue_19`, MetaSPO through the Python API)
  and ``sprig_run_made_before_issue_19/`` (:func:`make_sprig_run_before_issue_19`, SPRIG), with
  only run.json, evaluations.jsonl, proposals.jsonl and ledger.jsonl kept (the final files --
  metaspo_run.json, program.json, bilevel_nodes.json, checkpoint.json -- removed, so a resume
  works from the journals);
* ``cli_run_made_before_issue_19/`` (:func:`make_cli_run_before_issue_19`: ``python -m
  metaspo_dspy.cli`` with :data:`CLI_ARGS` ``--log-dir DIR``, the fake provider answering from a
  gold file of the generated tasks, an empty ``$DSPY_CACHEDIR``), config.json kept as well;
* ``expected_before_issue_19.json``: :func:`summary` of each uninterrupted run's metaspo_run.json.

Only public names (``MetaSPO``, ``SPRIG``, ``metaspo_dspy.testing``, and ``load_task`` when the
fixtures are made) and the ``metaspo_dspy.cli`` entry point are used, so this file runs unchanged
before and after the move.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import dspy
import pytest

from metaspo_dspy import SPRIG, MetaSPO
from metaspo_dspy.testing import FakeEngine, fake_lm

DATA = Path(__file__).parent / "data"
OLD_RUN = DATA / "run_made_before_issue_19"
OLD_SPRIG_RUN = DATA / "sprig_run_made_before_issue_19"
OLD_CLI_RUN = DATA / "cli_run_made_before_issue_19"
#: :func:`summary` of each uninterrupted run, by fixture name (written with the fixtures)
EXPECTED = DATA / "expected_before_issue_19.json"
FIXTURES = (OLD_RUN, OLD_SPRIG_RUN, OLD_CLI_RUN)
JOURNALS = ("run.json", "evaluations.jsonl", "proposals.jsonl", "ledger.jsonl")
CLI_FILES = ("config.json", *JOURNALS)

SIG = dspy.Signature("question -> answer", "Answer the arithmetic question with a number.")
QUESTIONS = {
    "add": [("2 + 3", "5"), ("7 + 8", "15"), ("10 + 21", "31"), ("4 + 4", "8")],
    "subtract": [("9 - 4", "5"), ("12 - 7", "5"), ("30 - 11", "19"), ("8 - 8", "0")],
    "multiply": [("3 * 4", "12"), ("6 * 7", "42"), ("2 * 9", "18"), ("5 * 5", "25")],
}
GOLD = {question: answer for rows in QUESTIONS.values() for question, answer in rows}
COMMON = dict(num_threads=2, progress=False)
METASPO = dict(num_iterations=1, num_system_candidates=2, num_user_candidates=2, user_top_k=1)
SPRIG_SIZES = dict(beam_size=2, num_candidates=3, max_iterations=2)
#: ``metaspo train`` arguments of the CLI fixture (the fake provider, the generated tasks)
CLI_ARGS = [
    "train", "-c", "generated", "--task-model", "metaspo-fake/before-task", "--optimizer-model",
    "metaspo-fake/before-opt", "--train-size", "4", "--test-size", "2", "--iterations", "1",
    "--system-candidates", "2", "--user-candidates", "1", "--user-top-k", "1", "--quiet",
]  # fmt: skip


def exact_answer(example: dspy.Example, prediction: dspy.Prediction, trace: Any = None) -> bool:
    return str(prediction.answer).strip() == example.answer


def skill(system_prompt: str, user_prompt: str) -> float:
    """The fake model's chance of a right answer: longer system prompts do better, so both searches
    move away from their start."""
    return min(0.95, len(system_prompt) / 80)


def engine_for_runs() -> FakeEngine:
    return FakeEngine(gold=GOLD, skill=skill)


def trainsets() -> dict[str, list[dspy.Example]]:
    return {
        task: [dspy.Example(question=q, answer=a).with_inputs("question") for q, a in rows]
        for task, rows in QUESTIONS.items()
    }


def optimizer(engine: FakeEngine, cls: type[MetaSPO], **kwargs: Any) -> MetaSPO:
    """A MetaSPO or SPRIG run served by ``engine`` (the model names are part of the run settings)."""
    task_lm = fake_lm("move-task", engine, temperature=0.0)
    optimizer_lm = fake_lm("move-opt", engine, temperature=1.0)
    sizes = METASPO if cls is MetaSPO else SPRIG_SIZES
    return cls(exact_answer, optimizer_lm, task_lm, **sizes, **COMMON, **kwargs)


def compile_run(cls: type[MetaSPO], engine: FakeEngine, path: str | Path, **kwargs: Any) -> Any:
    return optimizer(engine, cls, log_dir=path, **kwargs).compile(dspy.Predict(SIG), trainsets=trainsets())


def make_run_before_issue_19(path: str) -> str:
    """The MetaSPO run that :data:`OLD_RUN` holds; returns its final system prompt."""
    return compile_run(MetaSPO, engine_for_runs(), path).system_prompt.text


def make_sprig_run_before_issue_19(path: str) -> str:
    """The SPRIG run that :data:`OLD_SPRIG_RUN` holds; returns its final system prompt."""
    return compile_run(SPRIG, engine_for_runs(), path).system_prompt.text


def make_cli_run_before_issue_19(path: str | Path) -> None:
    """The ``metaspo train`` run that :data:`OLD_CLI_RUN` holds (a subprocess, the fake provider
    answering the generated source tasks from a gold file written next to ``path``)."""
    from metaspo_dspy import load_task

    path = Path(path)
    gold = {}
    for name in ("gen_counting", "gen_boolean", "gen_navigation", "gen_swaps"):
        task = load_task(name, train_size=10, test_size=10)
        gold.update({e.question: str(e.answer) for e in task.train + task.test})
    gold_file = path.parent / f"{path.name}.gold.json"
    gold_file.write_text(json.dumps(gold), encoding="utf-8")
    env = {k: v for k, v in os.environ.items() if not k.startswith(("METASPO_FAKE_", "METASPO_DATA_DIR"))}
    env.update(METASPO_FAKE_GOLD=str(gold_file), DSPY_CACHEDIR=str(path.parent / f"{path.name}.dspy-cache"))
    subprocess.run(
        [sys.executable, "-m", "metaspo_dspy.cli", *CLI_ARGS, "--log-dir", str(path)],
        env=env, cwd=path.parent, check=True, timeout=600, stdin=subprocess.DEVNULL,
    )  # fmt: skip


def make_fixtures_before_issue_19(out: str | Path) -> None:
    """Every fixture of this file, under ``out`` (see the module docstring)."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=False)
    make_run_before_issue_19(str(out / OLD_RUN.name))
    make_sprig_run_before_issue_19(str(out / OLD_SPRIG_RUN.name))
    make_cli_run_before_issue_19(out / OLD_CLI_RUN.name)
    runs = {fixture.name: CLI_FILES if fixture is OLD_CLI_RUN else JOURNALS for fixture in FIXTURES}
    summaries = {name: summary(json.loads((out / name / "metaspo_run.json").read_text())) for name in runs}
    (out / EXPECTED.name).write_text(json.dumps(summaries, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    for name, kept in runs.items():
        for file in (out / name).iterdir():
            if file.name not in kept:
                file.unlink()


def summary(artifact: dict[str, Any]) -> dict[str, Any]:
    """What a run ends with: the system prompt, the meta-score and each task's user prompt and scores."""
    tasks = {
        name: {key: entry[key] for key in ("user_prompt", "train_score", "test_score")}
        for name, entry in artifact["tasks"].items()
    }
    keep = ("optimized_system_prompt", "meta_score")
    return json.loads(json.dumps({**{key: artifact[key] for key in keep}, "tasks": tasks}))


def expected(fixture: Path) -> dict[str, Any]:
    return json.loads(EXPECTED.read_text(encoding="utf-8"))[fixture.name]


def _copy(fixture: Path, names: tuple[str, ...], tmp_path: Path) -> tuple[Path, dict[str, bytes]]:
    run_dir = tmp_path / "run"
    shutil.copytree(fixture, run_dir)
    assert sorted(p.name for p in run_dir.iterdir()) == sorted(names)
    return run_dir, {name: (run_dir / name).read_bytes() for name in names if name != "ledger.jsonl"}


@pytest.mark.parametrize(("cls", "fixture"), [(MetaSPO, OLD_RUN), (SPRIG, OLD_SPRIG_RUN)], ids=["metaspo", "sprig"])
def test_a_run_made_before_the_move_resumes_without_a_request(tmp_path, cls, fixture):
    run_dir, before = _copy(fixture, JOURNALS, tmp_path)
    engine = engine_for_runs()
    best = compile_run(cls, engine, run_dir, resume=True)
    assert engine.requests == [] and not engine.counts, "every journal key was found"
    assert {name: (run_dir / name).read_bytes() for name in before} == before, "the journals are kept as they were"
    artifact = best.detailed_results
    assert artifact["complete"] is True and artifact["calls"]["task_lm_reused"] > 0
    assert json.loads(json.dumps(artifact["settings"])) == json.loads(before["run.json"])["settings"]
    assert summary(artifact) == expected(fixture)
    assert best.system_prompt.text == expected(fixture)["optimized_system_prompt"]
    assert summary(json.loads((run_dir / "metaspo_run.json").read_text())) == expected(fixture)


def test_a_cli_run_made_before_the_move_resumes_without_a_request(tmp_path):
    run_dir, before = _copy(OLD_CLI_RUN, CLI_FILES, tmp_path)
    log = tmp_path / "fake.jsonl"
    env = {k: v for k, v in os.environ.items() if not k.endswith("_API_KEY") and k != "METASPO_FAKE_GOLD"}
    env.update(METASPO_FAKE_LOG=str(log), DSPY_CACHEDIR=str(tmp_path / "dspy-cache"))
    resumed = subprocess.run(
        [sys.executable, "-m", "metaspo_dspy.cli", "train", "--resume", str(run_dir), "--no-preflight", "--quiet"],
        capture_output=True, text=True, env=env, cwd=tmp_path, timeout=300, stdin=subprocess.DEVNULL,
    )  # fmt: skip
    assert resumed.returncode == 0, resumed.stderr
    assert not log.exists(), f"requests were made: {log.read_text()[:2000]}"
    assert {name: (run_dir / name).read_bytes() for name in before} == before
    artifact = json.loads((run_dir / "metaspo_run.json").read_text())
    assert artifact["complete"] is True and artifact["calls"]["task_lm_reused"] > 0
    assert summary(artifact) == expected(OLD_CLI_RUN)
    assert resumed.stdout.strip() == expected(OLD_CLI_RUN)["optimized_system_prompt"]
