"""Answers that never parse: a run notices, stops before the search, and every table says so.

An answer is *parsed* when the task's parser read something from it (the reference format's
format-error value, or -1 for Amazon, means it did not; grounding scores the whole response: n/a).
A reference-format run whose model never writes the ``<answer>`` tag used to pay for the whole
search and print zeros with exit 0.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

import dspy
import pytest
from conftest import mock_server

from metaspo_dspy import MetaSPO, compile_kwargs, load_task
from metaspo_dspy.cli import build_parser
from metaspo_dspy.cli.compare import default_format
from metaspo_dspy.errors import NothingParsed
from metaspo_dspy.program.metrics import answer_parsed
from metaspo_dspy.report import compare_table
from metaspo_dspy.report.tables import task_table
from metaspo_dspy.tasks import SPECS
from metaspo_dspy.tasks.answers.scoring import build_metric

TASKS = ("gen_counting", "gen_boolean")
SMALL = dict(num_iterations=1, num_system_candidates=2, num_user_candidates=1, user_top_k=1, progress=False)


def _tasks(prompt_format: str = "reference", train: int = 6, test: int = 2):
    tasks = [load_task(t, prompt_format=prompt_format, train_size=train, test_size=test) for t in TASKS]
    gold = {e.question: e.answer for t in tasks for e in t.train + t.test}
    return tasks, gold


# -- what "parsed" means -----------------------------------------------------------------------
@pytest.mark.parametrize(
    ("task", "response", "parsed"),
    [
        ("gen_counting", "Let me think. <answer>4</answer>", True),
        ("gen_counting", "The answer is (4).", False),
        ("gen_counting", "<answer> </answer>", False),
        ("ob_gyn", "<answer>(C) Polyhydramnios</answer>", True),
        ("ob_gyn", "(C) Polyhydramnios", False),
        ("beauty", "<answer>4 stars</answer>", True),
        ("beauty", "<answer>four stars</answer>", False),  # Amazon's parser returns -1
        ("liar", "<answer>yes</answer>", True),
        ("squad", "Paris", None),  # grounding scores the whole response: not applicable
    ],
)
def test_reference_format_answers_parse_when_the_parser_reads_something(task, response, parsed):
    example = dspy.Example(question="q", answer="1").with_inputs("question")
    metric = build_metric(SPECS[task], "reference")
    assert answer_parsed(metric, example, dspy.Prediction(response=response)) is parsed


def test_dspy_format_answers_parse_when_the_normaliser_reads_an_answer():
    metric = build_metric(SPECS["ob_gyn"], "dspy")
    example = dspy.Example(question="Which?\n(A) x\n(B) y\n(C) z\n(D) w", answer="B").with_inputs("question")
    assert answer_parsed(metric, example, dspy.Prediction(answer="B")) is True
    assert answer_parsed(metric, example, dspy.Prediction(answer="I cannot tell")) is False
    assert answer_parsed(metric, example, None) is False  # a failed call


def test_a_plain_metric_counts_every_successful_run_as_parsed():
    def metric(example, prediction, trace=None):
        return prediction.answer == example.answer

    example = dspy.Example(question="q", answer="a").with_inputs("question")
    assert answer_parsed(metric, example, dspy.Prediction(answer="zzz")) is True
    assert answer_parsed(metric, example, None) is False


# -- the run stops before the search -----------------------------------------------------------
def test_a_reference_run_whose_model_never_tags_its_answer_stops_after_the_initial_evaluation(engine_factory, tmp_path):
    tasks, gold = _tasks()
    engine, task_lm, opt_lm = engine_factory("untagged", gold=gold, tag_answers=False)
    teleprompter = MetaSPO(optimizer_lm=opt_lm, task_lm=task_lm, adapter="reference", log_dir=tmp_path / "run", **SMALL)
    with pytest.raises(NothingParsed) as stop:
        teleprompter.compile(**compile_kwargs(tasks))
    assert engine.counts["task"] == sum(len(t.train) for t in tasks)  # the initial evaluation only
    assert engine.counts["optimizer"] == 0
    message = str(stop.value)
    assert "no answer of any task could be parsed" in message and "'reference'" in message
    assert "metaspo-fake/untagged-task" in message and "gen_counting 0/6" in message
    assert stop.value.shares == {"gen_counting": (0, 6), "gen_boolean": (0, 6)}
    checkpoint = json.loads((tmp_path / "run" / "checkpoint.json").read_text())
    assert checkpoint["parsed"]["initial"] == {"gen_counting": 0.0, "gen_boolean": 0.0}

    # Resumed with allow_unparsed (it does not shape results), the search runs; nothing is asked twice.
    engine.reset()
    best = MetaSPO(
        optimizer_lm=opt_lm,
        task_lm=task_lm,
        adapter="reference",
        log_dir=tmp_path / "run",
        resume=True,
        allow_unparsed=True,
        **SMALL,
    ).compile(**compile_kwargs(tasks))
    artifact = best.detailed_results
    assert artifact["complete"] and artifact["calls"]["task_lm_reused"] >= sum(len(t.train) for t in tasks)
    assert engine.counts["optimizer"] > 0
    assert all(entry["parsed"]["train"] == 0.0 for entry in artifact["tasks"].values())
    assert artifact["warnings"] == []  # no task parsed, so no single task is singled out


def test_a_task_that_parses_nothing_beside_tasks_that_do_is_a_warning(engine_factory):
    tasks, gold = _tasks()
    untagged = {e.question for e in tasks[1].train + tasks[1].test}  # gen_boolean never tags its answers

    def strip_tags(request):
        if request.kind == "task" and any(q in request.user for q in untagged):
            return "I think the answer is yes."
        return None

    _engine, task_lm, opt_lm = engine_factory("half", gold=gold, override=strip_tags)
    best = MetaSPO(optimizer_lm=opt_lm, task_lm=task_lm, adapter="reference", **SMALL).compile(**compile_kwargs(tasks))
    artifact = best.detailed_results
    assert artifact["parsed"]["initial"] == {"gen_counting": 1.0, "gen_boolean": 0.0}
    assert len(artifact["warnings"]) == 1 and "'gen_boolean'" in artifact["warnings"][0]
    initial = {n["task"]: n for n in artifact["nodes"] if n["origin"] == "initial"}
    assert initial["gen_counting"]["parsed"]["train"] == 1.0
    assert initial["gen_boolean"]["parsed"]["train"] == 0.0
    initial_phase = artifact["phases"][0]
    assert initial_phase["parsed"] == {
        "gen_counting": {"parsed": 6, "answers": 6},
        "gen_boolean": {"parsed": 0, "answers": 6},
    }
    report = task_table(artifact)
    assert "parsed (train)" in report and "warning: task 'gen_boolean'" in report


def test_dspy_format_runs_record_their_parsed_shares_and_do_not_stop(engine_factory):
    tasks, gold = _tasks("dspy")
    _engine, task_lm, opt_lm = engine_factory("dspy-parsed", gold=gold)
    artifact = MetaSPO(optimizer_lm=opt_lm, task_lm=task_lm, **SMALL).compile(**compile_kwargs(tasks)).detailed_results
    assert artifact["parsed"]["initial"] == {"gen_counting": 1.0, "gen_boolean": 1.0}
    assert all(entry["parsed"] == {"train": 1.0, "test": 1.0} for entry in artifact["tasks"].values())


# -- the command line ----------------------------------------------------------------------------
def _metaspo(tmp_path: Path, *args: str) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if not k.endswith("_API_KEY")}
    env.update(DSPY_CACHEDIR=str(tmp_path / "cache"), MOCK_KEY="mock-key")
    return subprocess.run(
        [sys.executable, "-m", "metaspo_dspy.cli", *args],
        env=env, cwd=tmp_path, capture_output=True, text=True, timeout=300, stdin=subprocess.DEVNULL,
    )  # fmt: skip


def _train(tmp_path: Path, url: str, *extra: str) -> subprocess.CompletedProcess:
    return _metaspo(
        tmp_path, "train", "-c", "generated", "--set", "tasks.source=[gen_counting,gen_boolean]",
        f"task_lm.api_base={url}", f"optimizer_lm.api_base={url}", "task_lm.num_retries=0",
        "optimizer_lm.num_retries=0", "task_lm.api_key_env=MOCK_KEY", "optimizer_lm.api_key_env=MOCK_KEY",
        "--task-model", "openai/mock", "--optimizer-model", "openai/mock",
        "--iterations", "1", "--system-candidates", "2", "--user-candidates", "1", "--user-top-k", "1",
        "--train-size", "5", "--test-size", "2", "--quiet", *extra,
    )  # fmt: skip


def test_train_in_the_reference_format_on_a_server_that_never_tags_stops_with_the_command_to_rerun(tmp_path):
    run_dir = tmp_path / "run"
    log = tmp_path / "server.jsonl"
    with mock_server("--latency", "0", "--untagged", log=log) as url:
        result = _train(tmp_path, url, "--prompt-format", "reference", "--log-dir", str(run_dir))
        requests = [json.loads(line) for line in log.read_text().splitlines()]
        assert result.returncode == 1, result.stderr
        assert result.stderr.count("stopped: ") == 1 and "Traceback" not in result.stderr
        line = next(x for x in result.stderr.splitlines() if x.startswith("stopped: "))
        assert "'openai/mock'" in line and "'reference'" in line and "gen_counting 0/5, gen_boolean 0/5" in line
        assert "--prompt-format dspy`" in line and f"--log-dir {run_dir}" not in line
        assert f"metaspo train --resume {run_dir} --allow-unparsed" in line
        # Preflight (one request: both roles use the same model and server) and the initial evaluation.
        assert [r["kind"] for r in requests].count("task") == 10
        assert not [r for r in requests if r["kind"] == "optimizer"]
        assert not (run_dir / "metaspo_run.json").exists()

        resumed = _metaspo(tmp_path, "train", "--resume", str(run_dir), "--allow-unparsed", "--quiet")
    assert resumed.returncode == 0, resumed.stderr
    artifact = json.loads((run_dir / "metaspo_run.json").read_text())
    assert artifact["complete"] and artifact["parsed"]["initial"] == {"gen_counting": 0.0, "gen_boolean": 0.0}
    assert "0%" in resumed.stderr  # the summary's parsed column


# -- metaspo compare -----------------------------------------------------------------------------
def _compare_args(*extra: str) -> argparse.Namespace:
    return build_parser().parse_args(["compare", "-c", "generated", "--methods", "default", *extra])


def test_compare_runs_the_embedded_model_in_dspy_format_unless_told_otherwise():
    assert default_format(_compare_args("--task-model", "embedded")) == "dspy"
    assert default_format(_compare_args("--task-model", "embedded", "--prompt-format", "reference")) == "reference"
    assert default_format(_compare_args("--task-model", "openai/gpt-4o-mini")) == "reference"


def _unseen(scores: list[float], parsed: int, answers: int) -> dict:
    return {
        "scores": scores,
        "user_prompts": ["p"] * len(scores),
        "failures": 0,
        "parsed": {"parsed": parsed, "answers": answers},
    }


def test_compare_marks_a_cell_where_nothing_parsed_and_writes_the_share_to_the_csv():
    results = {
        "default": [{"tasks": {"a": _unseen([0.0, 0.0], 0, 8), "b": _unseen([0.5, 0.25], 6, 8)}}],
        "metaspo": [{"tasks": {"a": _unseen([0.5, 0.5], 8, 8), "b": _unseen([0.75, 0.5], 8, 8)}}],
    }
    table = compare_table.build(
        {
            "domain": "d", "tasks": ["a", "b"], "methods": ["default", "metaspo"], "results": results,
            "test_sizes": {"a": 4, "b": 4}, "caveats": {}, "task_model": "m", "prompt_format": "reference",
            "seeds": 1, "spread": "user prompts and seeds",
        },
        "unseen",
    )  # fmt: skip
    text = compare_table.markdown(table)
    row_a = next(line for line in text.splitlines() if line.startswith("| a |"))
    assert "nothing parsed" in row_a and "0.000" not in row_a.split("|")[3]
    row_b = next(line for line in text.splitlines() if line.startswith("| b |"))
    assert "(75% parsed)" in row_b
    average = next(line for line in text.splitlines() if line.startswith("| average |"))
    assert "(38% parsed)" in average and "nothing parsed" not in average
    rows = {(r["task"], r["method"]): r for r in compare_table.csv_rows(table)}
    assert rows[("a", "default")]["parsed"] == "0.000000" and rows[("a", "metaspo")]["parsed"] == "1.000000"
    assert "Some answers could not be parsed" in text


def test_a_compare_table_from_results_without_parsed_counts_shows_plain_scores():
    old = {"scores": [0.5], "user_prompts": ["p"], "failures": 0}  # written before parsed answers were counted
    table = compare_table.build(
        {
            "domain": "d", "tasks": ["a"], "methods": ["default"], "results": {"default": [{"tasks": {"a": old}}]},
            "test_sizes": {"a": 4}, "caveats": {}, "task_model": "m", "prompt_format": "dspy", "seeds": 1,
            "spread": "user prompts and seeds",
        },
        "unseen",
    )  # fmt: skip
    assert "| a | 4 | 0.500 ± 0.000 |" in compare_table.markdown(table)
    assert compare_table.csv_rows(table)[0]["parsed"] == ""
