"""The grid evaluator: context reaches workers, order, failures, memo, metric contract."""

from __future__ import annotations

import dspy
import pytest
from conftest import exact_metric

from metaspo_dspy.errors import MetricError
from metaspo_dspy.evaluation.grid import GridEvaluator
from metaspo_dspy.evaluation.records import EvalJob
from metaspo_dspy.program.metrics import TaskMetric

SIG = dspy.Signature("question -> answer", "Answer with the number.")


def _examples(n):
    return [dspy.Example(question=f"What is {i} + 1?", answer=str(i + 1)).with_inputs("question") for i in range(n)]


def _job(examples, metric=exact_metric, system_prompt="Sys."):
    return EvalJob("arith", dspy.Predict(SIG), system_prompt, "user", examples, metric)


def test_caller_context_reaches_the_workers(engine_factory):
    """A plain thread pool would drop dspy.context: the LM and adapter would silently vanish."""
    examples = _examples(20)
    engine, task_lm, _ = engine_factory("ctx", gold={e.question: e.answer for e in examples}, skill=lambda s, u: 1.0)
    evaluator = GridEvaluator(task_lm=None, adapter=None, num_threads=8, progress=False)
    with dspy.context(lm=task_lm, adapter=dspy.JSONAdapter()):
        (result,) = evaluator.evaluate([_job(examples)])
    assert result.score == 1.0
    assert engine.counts["task:json"] == 20
    assert all(r.system_prompt == "Sys." for r in engine.requests)


def test_results_keep_input_order_and_capture_failures(engine_factory):
    examples = _examples(30)
    broken = {examples[3].question, examples[17].question}
    _engine, task_lm, _ = engine_factory(
        "order",
        gold={e.question: e.answer for e in examples},
        skill=lambda s, u: 1.0,
        override=lambda r: "???" if r.kind == "task" and r.inputs.get("question") in broken else None,
    )
    evaluator = GridEvaluator(task_lm=task_lm, num_threads=16, progress=False)
    (result,) = evaluator.evaluate([_job(examples)])
    assert [r.index for r in result.results] == list(range(30))
    assert [r.index for r in result.wrong] == [3, 17]
    assert result.failures == 2 and result.score == pytest.approx(28 / 30)
    assert all(result.results[i].error.startswith("AdapterParseError") for i in (3, 17))
    assert result.results[0].prediction == {"answer": "1"}
    assert result.lm_calls == 28 + 2 * 2  # failed examples: Chat try + JSON fallback


def test_identical_items_are_evaluated_once(engine_factory):
    examples = _examples(10)
    engine, task_lm, _ = engine_factory("memo", gold={e.question: e.answer for e in examples})
    evaluator = GridEvaluator(task_lm=task_lm, num_threads=4, progress=False)
    first, same_in_batch = evaluator.evaluate([_job(examples), _job(examples)])
    assert engine.counts["task"] == 10
    assert same_in_batch.score == first.score and same_in_batch.lm_calls == 0
    (again,) = evaluator.evaluate([_job(examples)])
    assert engine.counts["task"] == 10 and again.lm_calls == 0 and all(r.cached for r in again.results)
    (other,) = evaluator.evaluate([_job(examples, system_prompt="Other.")])
    assert engine.counts["task"] == 20 and other.lm_calls == 10


def test_task_level_metric_gets_none_for_failures(engine_factory):
    examples = _examples(6)
    seen = {}

    def aggregate(exs, preds):
        seen["preds"] = preds
        return sum(p is not None for p in preds) / len(preds)

    _engine, task_lm, _ = engine_factory(
        "taskmetric", override=lambda r: "bad" if r.inputs.get("question") == examples[0].question else None
    )
    metric = TaskMetric(aggregate=aggregate, per_example=exact_metric, name="coverage")
    (result,) = GridEvaluator(task_lm=task_lm, progress=False).evaluate([_job(examples, metric)])
    assert seen["preds"][0] is None and all(p is not None for p in seen["preds"][1:])
    assert result.score == pytest.approx(5 / 6)


@pytest.mark.parametrize(
    ("metric", "message"),
    [
        (lambda e, p, t=None: 1 / 0, r"metric raised ZeroDivisionError: division by zero for task 'arith', example 0"),
        (
            lambda e, p, t=None: 57,
            r"metric returned 57.0 for task 'arith', example 0; MetaSPO needs scores in \[0, 1\]",
        ),
        (lambda e, p, t=None: "yes", r"metric returned 'yes'"),
    ],
)
def test_bad_metrics_are_clear_errors(engine_factory, metric, message):
    _, task_lm, _ = engine_factory("badmetric")
    with pytest.raises(MetricError, match=message):
        GridEvaluator(task_lm=task_lm, progress=False).evaluate([_job(_examples(2), metric)])


def test_prediction_feedback_reaches_the_result(engine_factory):
    _, task_lm, _ = engine_factory("feedback")

    def metric(example, prediction, trace=None):
        return dspy.Prediction(score=0.25, feedback=f"expected {example.answer}")

    (result,) = GridEvaluator(task_lm=task_lm, progress=False).evaluate([_job(_examples(2), metric)])
    assert [r.feedback for r in result.results] == ["expected 1", "expected 2"]
    assert result.score == 0.25 and len(result.wrong) == 2
