"""DSPy's own optimizers on an optimized program (issue 12, item 10): GEPA, MIPROv2 (light) and
BootstrapFewShot run on ``best.for_task(name)`` keep the system prompt on every task call and never
send it to their own proposer / reflection calls; ``test_time_adaptation`` takes any of them."""

from __future__ import annotations

import dspy
import pytest
from composing import SIG, accuracy, examples, feedback_metric, gold

from metaspo_dspy import MetaSPOProgram, SystemPrompt, WithSystemPrompt, test_time_adaptation
from metaspo_dspy.testing import FakeEngine, fake_lm

SP = "You are exact and brief."
TRAIN, TEST = examples("alpha", 8), examples("alpha", 6, start=8)


@pytest.fixture
def models():
    """A task model and a separate proposer/reflection model, each with its own fake engine."""
    task_engine, proposer_engine = FakeEngine(gold=gold(TRAIN, TEST)), FakeEngine()
    return (
        task_engine,
        fake_lm("interop-task", task_engine),
        proposer_engine,
        fake_lm("interop-prop", proposer_engine, temperature=1.0),
    )


def _optimizer(kind: str, proposer_lm, task_lm):
    if kind == "gepa":
        return dspy.GEPA(metric=feedback_metric, reflection_lm=proposer_lm, max_metric_calls=30, num_threads=2)
    if kind == "mipro":
        return dspy.MIPROv2(
            metric=accuracy, prompt_model=proposer_lm, task_model=task_lm, auto="light", num_threads=2, verbose=False
        )
    return dspy.BootstrapFewShot(metric=accuracy, max_bootstrapped_demos=2, max_labeled_demos=2)


def _compile(kind, optimizer, student):
    if kind == "gepa":
        return optimizer.compile(student, trainset=TRAIN[:4], valset=TRAIN[4:])
    if kind == "mipro":
        return optimizer.compile(student, trainset=TRAIN, max_bootstrapped_demos=1, max_labeled_demos=1)
    return optimizer.compile(student, trainset=TRAIN)


@pytest.mark.parametrize("kind", ["gepa", "mipro", "bootstrap"])
def test_dspy_optimizers_on_best_for_task(models, kind):
    task_engine, task_lm, proposer_engine, proposer_lm = models
    best = MetaSPOProgram(SystemPrompt(SP), {"alpha": dspy.Predict(SIG)})
    with dspy.context(lm=task_lm):
        optimized = _compile(kind, _optimizer(kind, proposer_lm, task_lm), best.for_task("alpha"))
    assert isinstance(optimized, WithSystemPrompt) and optimized.system_prompt.text == SP
    assert task_engine.requests and {r.system_prompt for r in task_engine.requests} == {SP}
    if kind != "bootstrap":
        assert proposer_engine.requests, "the optimizer made its own proposer/reflection calls"
    assert all(SP not in str(r.messages) for r in proposer_engine.requests), "never in the optimizer's own calls"
    if kind == "bootstrap":
        assert optimized.program.demos, "demos bootstrapped through the wrapper"
    task_engine.reset()
    with dspy.context(lm=task_lm):
        optimized(question=TEST[0].question)
    (request,) = task_engine.requests
    assert request.system_prompt == SP


@pytest.mark.parametrize("kind", ["gepa", "bootstrap"])
def test_test_time_adaptation_with_any_teleprompter(models, kind):
    task_engine, task_lm, proposer_engine, proposer_lm = models
    task = type("T", (), {"name": "alpha", "train": TRAIN, "test": TEST, "metric": staticmethod(accuracy)})()
    task.program = lambda: dspy.Predict(SIG)
    result = test_time_adaptation(
        SP, task, optimizer=_optimizer(kind, proposer_lm, task_lm), task_lm=task_lm, progress=False
    )
    assert set(result) == {"system_prompt", "task", "initial", "rounds", "program", "details"}
    (only,) = result["rounds"]
    assert set(only) == {"round", "train", "test", "best_train", "test_of_best", "mean_test"}
    assert only["round"] == 0 and len(only["train"]) == len(only["test"]) == 1
    assert only["best_train"] == only["train"][0] and only["test_of_best"] == only["mean_test"] == only["test"][0]
    final = result["details"]["final"]
    assert (final["train_score"], final["test_score"]) == (only["train"][0], only["test"][0])
    assert result["details"]["method"] == type(_optimizer(kind, proposer_lm, task_lm)).__name__
    assert 0 <= result["initial"]["train_score"] <= 1 and result["initial"]["test_score"] is not None
    assert {r.system_prompt for r in task_engine.requests} == {SP}
    assert all(SP not in str(r.messages) for r in proposer_engine.requests)
    # the scores are the final program's: scoring it by hand gives the same numbers
    program = result["program"]
    with dspy.context(lm=task_lm):
        right = sum(accuracy(e, program(**e.inputs())) for e in TEST)
    assert right / len(TEST) == only["test"][0]
