"""Run directories: journals, checkpoints, resume after a crash, refusal of incompatible settings."""

from __future__ import annotations

import json

import dspy
import pytest
from conftest import exact_metric, load_examples

from metaspo_dspy import MetaSPO, MetaSPOProgram
from metaspo_dspy.errors import RunDirError

SIG = dspy.Signature(
    "question -> answer", "Given the following question and candidate answers, choose the best answer."
)
SMALL = dict(num_iterations=2, num_system_candidates=3, num_user_candidates=2, user_top_k=2, progress=False)


class Crash(RuntimeError):
    pass


def _setup(data_dir):
    train = {t: load_examples(data_dir, "medmcqa", t, 10) for t in ("ob_gyn", "medicine")}
    test = {t: load_examples(data_dir, "medmcqa", t, 6, split="test") for t in ("ob_gyn", "medicine")}
    gold = {e.question: e.answer for sets in (train, test) for exs in sets.values() for e in exs}
    return train, test, gold


def _strip(artifact):
    """An artifact without what legitimately differs between runs (timings, reuse counters)."""
    out = {k: v for k, v in artifact.items() if k not in ("phases", "calls")}
    return json.loads(json.dumps(out))


def test_resume_after_a_crash_replays_without_asking_again(data_dir, engine_factory, tmp_path):
    train, test, gold = _setup(data_dir)
    engine, task_lm, opt_lm = engine_factory("uninterrupted", gold=gold)
    reference = MetaSPO(exact_metric, opt_lm, task_lm, **SMALL).compile(
        dspy.Predict(SIG), trainsets=train, testsets=test
    )
    total = dict(engine.counts)

    engine2, task_lm2, opt_lm2 = engine_factory("crashing", gold=gold)

    def crash_after_second_inner_loop(log):
        if log.phase == "inner" and log.iteration == 1:
            raise Crash("simulated crash")

    run_dir = tmp_path / "run"
    with pytest.raises(Crash):
        MetaSPO(
            exact_metric, opt_lm2, task_lm2, log_dir=run_dir, phase_callback=crash_after_second_inner_loop, **SMALL
        ).compile(dspy.Predict(SIG), trainsets=train, testsets=test)
    before = dict(engine2.counts)
    checkpoint = json.loads((run_dir / "checkpoint.json").read_text())
    assert checkpoint["complete"] is False and checkpoint["steps"][-1]["phase"] == "inner"
    assert (run_dir / "evaluations.jsonl").stat().st_size > 0 and not (run_dir / "metaspo_run.json").exists()

    # Same model name as the interrupted run: the settings must match to resume.
    with pytest.raises(RunDirError, match="already holds a run"):
        MetaSPO(exact_metric, opt_lm2, task_lm2, log_dir=run_dir, **SMALL).compile(dspy.Predict(SIG), trainsets=train)
    resumed = MetaSPO(exact_metric, opt_lm2, task_lm2, log_dir=run_dir, resume=True, **SMALL).compile(
        dspy.Predict(SIG), trainsets=train, testsets=test
    )
    after = dict(engine2.counts)
    assert after["task"] + after["optimizer"] == total["task"] + total["optimizer"], "nothing asked twice"
    assert after["task"] - before["task"] == total["task"] - before["task"]
    assert _strip(resumed.detailed_results)["nodes"] == _strip(reference.detailed_results)["nodes"]
    assert resumed.system_prompt == reference.system_prompt
    assert resumed.detailed_results["calls"]["task_lm_reused"] == before["task"]
    assert MetaSPOProgram.from_file(run_dir / "program.json").system_prompt == reference.system_prompt

    # Resuming a finished run asks nothing at all.
    engine2.reset()
    MetaSPO(exact_metric, opt_lm2, task_lm2, log_dir=run_dir, resume=True, **SMALL).compile(
        dspy.Predict(SIG), trainsets=train, testsets=test
    )
    assert engine2.counts["task"] == 0 and engine2.counts["optimizer"] == 0


def test_resume_refuses_different_settings(data_dir, engine_factory, tmp_path):
    train, _, gold = _setup(data_dir)
    _, task_lm, opt_lm = engine_factory("settings", gold=gold)
    MetaSPO(exact_metric, opt_lm, task_lm, log_dir=tmp_path, **SMALL).compile(dspy.Predict(SIG), trainsets=train)
    changed = {**SMALL, "num_system_candidates": 4, "seed": 1}
    with pytest.raises(RunDirError, match=r"num_system_candidates: 3 -> 4; seed: 42 -> 1"):
        MetaSPO(exact_metric, opt_lm, task_lm, log_dir=tmp_path, resume=True, **changed).compile(
            dspy.Predict(SIG), trainsets=train
        )
    with pytest.raises(RunDirError, match="nothing to resume"):
        MetaSPO(exact_metric, opt_lm, task_lm, log_dir=tmp_path / "empty", resume=True, **SMALL).compile(
            dspy.Predict(SIG), trainsets=train
        )


def test_torn_journal_line_is_ignored(tmp_path):
    from metaspo_dspy.store.journal import Journal

    journal = Journal(tmp_path / "j.jsonl")
    journal.put("a", {"x": 1})
    journal.close()
    with open(tmp_path / "j.jsonl", "a") as handle:
        handle.write('{"key": "b", "value": {"x"')  # killed mid-write
    reopened = Journal(tmp_path / "j.jsonl")
    assert reopened.get("a") == {"x": 1} and "b" not in reopened
    reopened.put("c", {"x": 3})  # appended after the torn line, on a line of its own
    reopened.close()
    assert Journal(tmp_path / "j.jsonl").get("c") == {"x": 3}


def test_a_run_dir_is_opened_by_one_runner_at_a_time(tmp_path):
    from metaspo_dspy.store.run_dir import RunDir

    first = RunDir(tmp_path / "run", {"seed": 1})
    with pytest.raises(RunDirError, match="in use by another running process"):
        RunDir(tmp_path / "run", {"seed": 1}, resume=True)
    first.close()
    RunDir(tmp_path / "run", {"seed": 1}, resume=True).close()
    # A refused resume (settings differ) leaves the folder unlocked.
    with pytest.raises(RunDirError, match="seed: 1 -> 2"):
        RunDir(tmp_path / "run", {"seed": 2}, resume=True)
    RunDir(tmp_path / "run", {"seed": 1}, resume=True).close()
