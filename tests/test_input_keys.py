"""Inputs reach the prompt (issue 23, item 3): examples whose input keys are not the inputs a program's
predictors need stop the run with a ConfigError -- before any call for a bare Predict or
ChainOfThought, after one program run per task for any other program (also when that run is read
back from a resumed run's journal, and in worker processes). Requests are counted where they reach
the deterministic fake LM (or the mock server)."""

from __future__ import annotations

import json
import logging
from typing import Optional

import dspy
import pytest
from composing import accuracy, small_metaspo
from conftest import mock_server
from test_processes import _lm, _served

from metaspo_dspy import APE, SPRIG, ConfigError, ProTeGi
from metaspo_dspy.evaluation.records import ItemRun as _Raw
from metaspo_dspy.store.run_dir import evaluation_problem


@pytest.fixture(autouse=True)
def _quiet_dspy_warnings(caplog):
    """DSPy logs a warning per call without an input; the tests count requests instead."""
    caplog.set_level(logging.ERROR, logger="dspy")


def _examples(task: str, keys: tuple[str, ...] = ("q",), n: int = 4) -> list[dspy.Example]:
    """``n`` examples whose question is stored under each of ``keys`` (all inputs)."""
    return [
        dspy.Example(**{key: f"{task}: item {i}?" for key in keys}, answer=str(i % 5 + 1)).with_inputs(*keys)
        for i in range(n)
    ]


def _asked(engine) -> int:
    return engine.counts["task"] + engine.counts["optimizer"]


class TwoStage(dspy.Module):
    """Drafts from the question, then answers from the question and the draft; passes the example's
    inputs on as they are (a custom ``forward``), so its predictors get what the examples hold."""

    def __init__(self):
        super().__init__()
        self.draft = dspy.Predict("question -> draft")
        self.answer = dspy.Predict(AnswerWithHint)

    def forward(self, **inputs):
        draft = self.draft(**inputs).draft
        return self.answer(**inputs, draft=draft)


class AnswerWithHint(dspy.Signature):
    """Answer the question with one number."""

    question: str = dspy.InputField()
    draft: str = dspy.InputField()
    hint: Optional[str] = dspy.InputField()  # noqa: UP045 - the typing spelling DSPy users write
    answer: str = dspy.OutputField()


class PassOn(dspy.Module):
    """One predictor behind a custom ``forward`` (not a bare program: checked on its first run)."""

    def __init__(self):
        super().__init__()
        self.predict = dspy.Predict("question -> answer")

    def forward(self, **inputs):
        return self.predict(**inputs)


FIX = r"with_inputs\('question'\)"


# -- bare programs: refused before any call --------------------------------------------------------
@pytest.mark.parametrize("module", [dspy.Predict, dspy.ChainOfThought])
def test_a_bare_program_with_other_input_keys_is_refused_before_any_call(module, engine_factory):
    engine, task_lm, opt_lm = engine_factory("bare-keys")
    train = {"alpha": _examples("alpha"), "beta": _examples("beta")}
    with pytest.raises(
        ConfigError, match=rf"task 'alpha'.*'question'.*train example 0 has the inputs 'q'; unused: 'q'.*{FIX}"
    ):
        small_metaspo(optimizer_lm=opt_lm, task_lm=task_lm).compile(module("question -> answer"), trainsets=train)
    assert _asked(engine) == 0


def test_a_test_set_with_other_input_keys_is_refused_too(engine_factory):
    engine, task_lm, opt_lm = engine_factory("bare-test-keys")
    train = {"alpha": _examples("alpha", ("question",)), "beta": _examples("beta", ("question",))}
    test = {"beta": _examples("beta", ("question",))[:2] + _examples("beta", ("q",))[2:]}
    with pytest.raises(ConfigError, match=rf"task 'beta'.*test example 2 has the inputs 'q'.*{FIX}"):
        small_metaspo(optimizer_lm=opt_lm, task_lm=task_lm).compile(
            dspy.Predict("question -> answer"), trainsets=train, testsets=test
        )
    assert _asked(engine) == 0


def test_a_field_that_is_not_marked_as_input_gets_the_with_inputs_fix(engine_factory):
    engine, task_lm, opt_lm = engine_factory("not-input")
    train = [dspy.Example(question="What is 1 + 1?", q="x", answer="2").with_inputs("q")]
    with pytest.raises(
        ConfigError, match=r"hold 'question' but not as inputs: build them with \.with_inputs\('question'\)"
    ):
        ProTeGi(accuracy, opt_lm, task_lm, progress=False).compile(dspy.Predict("question -> answer"), trainset=train)
    assert _asked(engine) == 0


@pytest.mark.parametrize("method", ["protegi", "ape", "sprig"])
def test_every_optimizer_refuses_a_bare_program_with_other_keys_before_any_call(method, engine_factory):
    engine, task_lm, opt_lm = engine_factory(f"bare-{method}")
    program = dspy.Predict("question -> answer")
    with pytest.raises(ConfigError, match=rf"task '\w+'.*'question'.*unused: 'q'.*{FIX}"):
        if method == "protegi":
            ProTeGi(accuracy, opt_lm, task_lm, progress=False).compile(program, trainset=_examples("alpha"))
        elif method == "ape":
            APE(accuracy, opt_lm, task_lm, progress=False).compile(program, trainset=_examples("alpha"))
        else:
            SPRIG(accuracy, opt_lm, task_lm, num_candidates=2, max_iterations=1, progress=False).compile(
                program, trainsets={"alpha": _examples("alpha"), "beta": _examples("beta")}
            )
    assert _asked(engine) == 0


def test_optional_and_defaulted_inputs_may_be_missing_as_dspy_allows(engine_factory):
    class Ask(dspy.Signature):
        """Answer the question with one number."""

        question: str = dspy.InputField()
        hint: str | None = dspy.InputField()
        style: str = dspy.InputField(default="short")
        answer: str = dspy.OutputField()

    engine, task_lm, opt_lm = engine_factory("optional")
    train = {"alpha": _examples("alpha", ("question",)), "beta": _examples("beta", ("question",))}
    best = small_metaspo(optimizer_lm=opt_lm, task_lm=task_lm).compile(dspy.Predict(Ask), trainsets=train)
    assert best.detailed_results["complete"] and engine.counts["task"] > 0


# -- other programs: stopped after the first program run of each task ------------------------------
def test_a_two_stage_program_fed_right_runs_through(engine_factory):
    """The answer stage's ``draft`` comes from the draft stage and its Optional ``hint`` from no one:
    neither counts as missing."""
    engine, task_lm, opt_lm = engine_factory("two-stage-ok")
    train = {"alpha": _examples("alpha", ("question",)), "beta": _examples("beta", ("question",))}
    best = small_metaspo(optimizer_lm=opt_lm, task_lm=task_lm).compile(TwoStage(), trainsets=train)
    assert best.detailed_results["complete"] and engine.counts["optimizer"] > 0


def _two_stage_error() -> str:
    return (
        r"task 'alpha': predictor 'draft' lacks its required input 'question'; predictor 'answer' lacks its required "
        r"input 'question' \(example 0 of node 0 has the inputs 'q'; unused: 'q'\).*" + FIX + r".* \| task 'beta': "
    )


def test_a_two_stage_program_with_other_keys_stops_after_one_run_per_task(engine_factory, tmp_path):
    engine, task_lm, opt_lm = engine_factory("two-stage-keys")
    train = {"alpha": _examples("alpha"), "beta": _examples("beta")}
    with pytest.raises(ConfigError, match=_two_stage_error()):
        small_metaspo(optimizer_lm=opt_lm, task_lm=task_lm, log_dir=tmp_path / "run").compile(
            TwoStage(), trainsets=train
        )
    # one program run (two predictor calls) per task, no optimizer call
    assert (engine.counts["task"], engine.counts["optimizer"]) == (2 * 2, 0)
    asked = [r.user for r in engine.requests]
    assert all("item" not in text for text in asked), "no request contained the question"
    records = [json.loads(line) for line in (tmp_path / "run" / "evaluations.jsonl").read_text().splitlines()]
    assert len(records) == 2 and all(evaluation_problem(r["value"]) is None for r in records)
    assert {m["predictor"] for r in records for m in r["value"]["missing_inputs"]} == {"draft", "answer"}

    # Resumed: the first runs come from the journal and stop the run the same way, asking nothing.
    before = dict(engine.counts)
    engine2, task_lm2, opt_lm2 = engine_factory("two-stage-keys")
    with pytest.raises(ConfigError, match=_two_stage_error()):
        small_metaspo(optimizer_lm=opt_lm2, task_lm=task_lm2, log_dir=tmp_path / "run", resume=True).compile(
            TwoStage(), trainsets=train
        )
    assert _asked(engine2) == 0 and dict(engine.counts) == before


@pytest.mark.parametrize("method", ["protegi", "ape"])
def test_single_task_optimizers_stop_a_custom_program_after_its_first_run(method, engine_factory):
    engine, task_lm, opt_lm = engine_factory(f"custom-{method}")
    optimizer = (ProTeGi if method == "protegi" else APE)(accuracy, opt_lm, task_lm, progress=False)
    with pytest.raises(
        ConfigError, match=rf"task 'task': predictor 'predict' lacks its required input 'question'.*{FIX}"
    ):
        optimizer.compile(PassOn(), trainset=_examples("alpha", n=6))
    assert (engine.counts["task"], engine.counts["optimizer"]) == (1, 0)


def test_the_check_holds_in_worker_processes(tmp_path):
    train = {"alpha": _examples("alpha"), "beta": _examples("beta")}
    with mock_server("--latency", "0") as url:
        with pytest.raises(ConfigError, match=_two_stage_error()):
            small_metaspo(optimizer_lm=_lm(url, 1.0), task_lm=_lm(url, 0.0), num_processes=2).compile(
                TwoStage(), trainsets=train
            )
        assert _served(url) == 2 * 2


def test_journal_records_without_missing_inputs_have_none():
    record = {"prediction": {"answer": "1"}, "error": None, "usage": {}, "calls": []}
    assert evaluation_problem(record) is None
    raw = _Raw.from_json(record)
    assert raw.missing_inputs == [] and "missing_inputs" not in raw.to_json()
    bad = {**record, "missing_inputs": [{"predictor": "draft"}]}
    assert "needs 'predictor', 'missing'" in evaluation_problem(bad)
