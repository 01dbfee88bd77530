"""What a run shows the optimizer and what it reports to DSPy's usage tracking (issue 12, items 6
and 7): real dspy.Parallel inside forward, real dspy.track_usage, the fake provider."""

from __future__ import annotations

import threading
import time

import dspy
from composing import SIG, accuracy, examples, gold, small_metaspo

from metaspo_dspy import ProTeGi
from metaspo_dspy.evaluation.grid import GridEvaluator
from metaspo_dspy.evaluation.records import EvalJob
from metaspo_dspy.optimize.proposer.shown import wrong_example

QUESTIONS = ("first?", "second?", "third?")
ANSWERS = {"first?": "1", "second?": "2", "third?": "3"}


class Staggered(dspy.Module):
    """Call ``predict`` once ``before`` (the previous call's request) has reached the model, so the
    three parallel calls start in a known order."""

    def __init__(self, predict, before):
        super().__init__()
        self.predict, self.before = predict, before

    def forward(self, question):
        if self.before is not None:
            assert self.before.wait(10)
        return self.predict(question=question)


class FanOut(dspy.Module):
    """Three calls of one predictor through dspy.Parallel inside forward."""

    def __init__(self, arrived):
        super().__init__()
        self.ask = dspy.Predict(SIG)
        self.arrived = arrived
        self.combine = dspy.Predict("question, parts -> answer")

    def forward(self, question):
        before = [None, self.arrived["first?"], self.arrived["second?"]]
        pairs = [(Staggered(self.ask, before[i]), {"question": q}) for i, q in enumerate(QUESTIONS)]
        parts = dspy.Parallel(num_threads=3)(pairs)
        return self.combine(question=question, parts=", ".join(p.answer for p in parts))


def test_each_completion_is_paired_with_its_own_call(engine_factory):
    """The first of three parallel calls is the slowest and the second answers first, while the
    third is still waiting: pairing by order would give the second call's answer to the third."""
    arrived = {q: threading.Event() for q in QUESTIONS}

    def timing(request):
        question = request.inputs.get("question")
        if question in arrived:
            arrived[question].set()
            assert arrived["third?"].wait(10)  # all three calls are out
            time.sleep({"first?": 1.0, "second?": 0.0, "third?": 0.5}[question])
        return None

    _engine, task_lm, _ = engine_factory(
        "pairs", gold={**ANSWERS, "all?": "6"}, skill=lambda s, u: 1.0, override=timing
    )
    example = dspy.Example(question="all?", answer="7").with_inputs("question")  # wrong on purpose
    job = EvalJob("fan", FanOut(arrived), "Be exact.", "user", [example], accuracy)
    (result,) = GridEvaluator(task_lm, num_threads=1, progress=False).evaluate([job])
    (item,) = result.results
    assert len(item.calls) == 4 and all(c.completion for c in item.calls)
    for call in item.calls:
        (question,) = [q for q in (*QUESTIONS, "all?") if f"\n{q}\n" in call.messages[-1]["content"]]
        expected = ANSWERS.get(question, "6")
        assert f"[[ ## answer ## ]]\n{expected}\n" in call.completion, (question, call.completion)
    # what the optimizer is shown for the predictor: one real (message, response) pair
    shown = wrong_example("fan", example, item, "Be exact.", predictor="ask")
    (question,) = [q for q in QUESTIONS if f"\n{q}\n" in shown.user_message]
    assert f"[[ ## answer ## ]]\n{ANSWERS[question]}\n" in shown.response


def _totals(tracker) -> dict[str, tuple[int, int]]:
    return {model: (u["prompt_tokens"], u["completion_tokens"]) for model, u in tracker.get_total_tokens().items()}


def test_track_usage_around_compile_sees_every_call_and_matches_the_phases(tmp_path, engine_factory):
    train = {"alpha": examples("alpha"), "beta": examples("beta")}
    engine, task_lm, opt_lm = engine_factory("usage", gold=gold(*train.values()))
    with dspy.track_usage() as tracker:
        best = small_metaspo(optimizer_lm=opt_lm, task_lm=task_lm, log_dir=tmp_path / "run").compile(
            dspy.Predict(SIG), trainsets=train
        )
    usage = tracker.usage_data
    assert len(usage[task_lm.model]) == engine.counts["task"] > 0
    assert len(usage[opt_lm.model]) == engine.counts["optimizer"] > 0
    phases = best.detailed_results["phases"]
    ours = {
        task_lm.model: tuple(
            sum(p["task_usage"][task_lm.model][k] for p in phases) for k in ("prompt_tokens", "completion_tokens")
        ),
        opt_lm.model: tuple(
            sum(p["optimizer_usage"].get(opt_lm.model, {}).get(k, 0) for p in phases)
            for k in ("prompt_tokens", "completion_tokens")
        ),
    }
    assert _totals(tracker) == ours, "DSPy's tracker and our per-phase accounting agree"
    # Resuming the finished run answers everything from the journals: nothing is asked, nothing counted.
    with dspy.track_usage() as again:
        small_metaspo(optimizer_lm=opt_lm, task_lm=task_lm, log_dir=tmp_path / "run", resume=True).compile(
            dspy.Predict(SIG), trainsets=train
        )
    assert again.get_total_tokens() == {}


def test_track_usage_sees_single_task_optimizers(engine_factory):
    train = examples("alpha")
    engine, task_lm, opt_lm = engine_factory("usage-protegi", gold=gold(train))
    with dspy.track_usage() as tracker:
        ProTeGi(accuracy, opt_lm, task_lm, num_iterations=0, progress=False).compile(dspy.Predict(SIG), trainset=train)
    assert len(tracker.usage_data[task_lm.model]) == engine.counts["task"] > 0
    assert len(tracker.usage_data[opt_lm.model]) == engine.counts["optimizer"] > 0
