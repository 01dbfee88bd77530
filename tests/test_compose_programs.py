"""Programs from other optimizers and already-wrapped programs go through MetaSPO, ProTeGi and APE,
and save/load, without losing work (issue 12, items 1, 2 and 8). Real BootstrapFewShot."""

from __future__ import annotations

import json
import logging

import dspy
import pytest
from composing import SIG, accuracy, examples, gold, small_metaspo

from metaspo_dspy import APE, ConfigError, MetaSPOProgram, MetricError, ProTeGi, SystemPrompt, WithSystemPrompt
from metaspo_dspy.evaluation.grid import GridEvaluator
from metaspo_dspy.evaluation.records import EvalJob

TRAIN = {"alpha": examples("alpha"), "beta": examples("beta")}
GOLD = gold(*TRAIN.values())


def _bootstrapped(task_lm) -> dspy.Module:
    """A ChainOfThought compiled by DSPy's own BootstrapFewShot (demos attached, marked compiled)."""
    with dspy.context(lm=task_lm):
        program = dspy.BootstrapFewShot(metric=accuracy, max_bootstrapped_demos=2, max_labeled_demos=2).compile(
            dspy.ChainOfThought(SIG), trainset=TRAIN["alpha"]
        )
    assert program._compiled and len(program.predict.demos) == 2
    return program


def _demos(program: dspy.Module) -> list[dict]:
    return [dict(demo) for demo in program.predict.demos]


def _state(program: dspy.Module) -> str:
    return json.dumps(program.dump_state(), sort_keys=True, default=str)


# -- item 1: programs compiled by other optimizers ----------------------------------------------
def test_a_wrapped_compiled_program_saves_and_loads_its_demos(tmp_path, engine_factory):
    _, task_lm, _ = engine_factory("compiled-wrap", gold=GOLD, skill=lambda s, u: 1.0)
    program = _bootstrapped(task_lm)
    wrapped = WithSystemPrompt(program, "Be exact.")
    assert [name for name, _ in wrapped.named_predictors()] == ["program.predict"]
    wrapped.save(tmp_path / "w.json")
    fresh = WithSystemPrompt(dspy.ChainOfThought(SIG), "something else")
    fresh.load(tmp_path / "w.json")
    assert fresh.system_prompt.text == "Be exact."
    assert _demos(fresh.program) == _demos(program)
    assert _state(fresh.program) == _state(program)


def test_metaspo_optimizes_a_compiled_program_and_saves_it_whole(tmp_path, engine_factory):
    engine, task_lm, opt_lm = engine_factory("compiled-metaspo", gold=GOLD)
    program = _bootstrapped(task_lm)
    before = _state(program)
    engine.reset()
    best = small_metaspo(optimizer_lm=opt_lm, task_lm=task_lm, log_dir=tmp_path / "run").compile(
        program, trainsets=TRAIN
    )
    assert _state(program) == before and program._compiled, "the caller's program is never modified"
    # the inner loop proposed (and evaluated) new instructions for the compiled program's predictor
    user = [p for p in best.detailed_results["proposals"] if p["kind"] == "user" and p["status"] == "ok"]
    assert user and {p["predictor"] for p in user} == {"predict"}
    asked = {r.instructions for r in engine.requests if r.kind == "task"}
    assert {p["text"] for p in user} <= asked
    for task_program in best.tasks.values():
        assert _demos(task_program) == _demos(program), "demos kept"
        assert task_program.predict.signature.instructions in asked
        assert task_program._compiled, "the mark is kept (see the decision test below)"
    # save/load: the run dir's program.json and an explicit save, with and without the structure
    best.save(tmp_path / "best.json")
    for path in (tmp_path / "best.json", tmp_path / "run" / "program.json"):
        for programs in (None, dspy.ChainOfThought(SIG)):
            loaded = MetaSPOProgram.from_file(path, programs=programs)
            assert loaded.system_prompt == best.system_prompt
            for name in TRAIN:
                assert _state(loaded.tasks[name]) == _state(best.tasks[name])
                assert _demos(loaded.tasks[name]) == _demos(program)


def test_decision_compiled_programs_stay_frozen_inside_other_programs(engine_factory):
    """The mark is kept: nested in a larger program a compiled task program stays frozen to other
    optimizers (as DSPy keeps the bare program), while the wrapper given to an optimizer itself
    exposes its predictors (GEPA and MIPROv2 optimize best.for_task(name) as the bare program)."""
    _, task_lm, _ = engine_factory("compiled-frozen", gold=GOLD, skill=lambda s, u: 1.0)
    program = _bootstrapped(task_lm)
    best = MetaSPOProgram(SystemPrompt("Be exact."), {"alpha": program})
    wrapped = best.for_task("alpha")
    assert wrapped._compiled and [n for n, _ in wrapped.named_predictors()] == ["program.predict"]
    assert [n for n, _ in best.named_predictors()] == ["tasks['alpha'].predict"]

    class Pipeline(dspy.Module):
        def __init__(self):
            super().__init__()
            self.answer = wrapped
            self.check = dspy.Predict("question, answer -> verdict")

    assert [n for n, _ in Pipeline().named_predictors()] == ["check"]


# -- item 2: already-wrapped programs are unwrapped, never re-wrapped ---------------------------
def test_metaspo_unwraps_a_wrapped_program_and_starts_from_its_system_prompt(engine_factory):
    engine, task_lm, opt_lm = engine_factory("unwrap-metaspo", gold=GOLD)
    wrapped = WithSystemPrompt(dspy.Predict(SIG), "Start here.")
    best = small_metaspo(optimizer_lm=opt_lm, task_lm=task_lm).compile(wrapped, trainsets=TRAIN)
    details = best.detailed_results
    assert details["initial_system_prompt"] == "Start here."
    candidates = {d["system_prompt"] for d in details["outer_decisions"]}
    sent = {r.system_prompt for r in engine.requests if r.kind == "task"}
    assert sent == {"Start here.", *candidates}, "every candidate was sent, none overridden"
    assert best.system_prompt.text in sent
    assert isinstance(best.tasks["alpha"], dspy.Predict), "the inner program, not a wrapper"
    # a MetaSPOProgram continues from its own system prompt
    engine.reset()
    again = small_metaspo(optimizer_lm=opt_lm, task_lm=task_lm, seed=7).compile(best, trainsets=TRAIN)
    assert again.detailed_results["initial_system_prompt"] == best.system_prompt.text


def test_metaspo_argument_wins_over_the_wrapper_and_conflicts_are_refused(engine_factory, caplog):
    engine, task_lm, opt_lm = engine_factory("unwrap-conflict", gold=GOLD)
    wrapped = WithSystemPrompt(dspy.Predict(SIG), "Wrapper's prompt.")
    with caplog.at_level(logging.WARNING):
        best = small_metaspo(optimizer_lm=opt_lm, task_lm=task_lm, initial_system_prompt="Mine.").compile(
            wrapped, trainsets=TRAIN
        )
    assert best.detailed_results["initial_system_prompt"] == "Mine."
    assert "Wrapper's prompt." not in {r.system_prompt for r in engine.requests}
    assert "which is not used" in caplog.text
    different = {"alpha": WithSystemPrompt(dspy.Predict(SIG), "X."), "beta": WithSystemPrompt(dspy.Predict(SIG), "Y.")}
    with pytest.raises(
        ConfigError, match=r"different values of initial_system_prompt .*MetaSPO\(initial_system_prompt"
    ):
        small_metaspo(optimizer_lm=opt_lm, task_lm=task_lm).compile(different, trainsets=TRAIN)

    class Hidden(dspy.Module):
        def __init__(self):
            super().__init__()
            self.inner = WithSystemPrompt(dspy.Predict(SIG), "Hidden.")

        def forward(self, question):
            return self.inner(question=question)

    with pytest.raises(ConfigError, match=r"contains a WithSystemPrompt at self.inner"):
        small_metaspo(optimizer_lm=opt_lm, task_lm=task_lm).compile(Hidden(), trainsets=TRAIN)


@pytest.mark.parametrize("optimizer", [ProTeGi, APE])
def test_single_task_optimizers_unwrap_and_keep_the_wrappers_prompt(engine_factory, optimizer):
    engine, task_lm, opt_lm = engine_factory(f"unwrap-{optimizer.__name__}", gold=GOLD)
    best = MetaSPOProgram(SystemPrompt("Tuned prompt.", "system"), {"alpha": dspy.Predict(SIG)}, adapter="json")
    sizes = {"num_iterations": 1} if optimizer is ProTeGi else {"num_candidates": 2, "top_k": 1}
    result = optimizer(accuracy, opt_lm, task_lm, progress=False, **sizes).compile(
        best.for_task("alpha"), trainset=TRAIN["alpha"]
    )
    tasks = [r for r in engine.requests if r.kind == "task"]
    assert {r.system_prompt for r in tasks} == {"Tuned prompt."} and {r.format for r in tasks} == {"json"}
    assert len({r.instructions for r in tasks}) > 1, "candidates differ in their user prompt, all were sent"
    assert result.system_prompt == best.system_prompt and type(result.adapter) is dspy.JSONAdapter
    assert isinstance(result.program, dspy.Predict), "never re-wrapped"
    assert result.detailed_results["system_prompt"] == "Tuned prompt."


# -- item 8: small contract gaps ----------------------------------------------------------------
@pytest.mark.parametrize("returned", ["1", b"1", "0.5"])
def test_a_metric_returning_a_numeric_string_is_a_metric_error(engine_factory, returned):
    _, task_lm, _ = engine_factory("string-metric", gold=GOLD)
    job = EvalJob("alpha", dspy.Predict(SIG), "Be exact.", "user", TRAIN["alpha"][:2], lambda e, p: returned)
    with pytest.raises(MetricError, match=r"metric returned .* for task 'alpha', example 0"):
        GridEvaluator(task_lm, num_threads=1, progress=False).evaluate([job])


def test_an_input_field_named_task_works(engine_factory):
    sig = dspy.Signature("task -> answer", "Answer the question with one number.")
    train = {
        name: [dspy.Example(task=e.question, answer=e.answer).with_inputs("task") for e in TRAIN[name]]
        for name in TRAIN
    }
    engine, task_lm, opt_lm = engine_factory("task-field", gold=GOLD)
    best = small_metaspo(optimizer_lm=opt_lm, task_lm=task_lm).compile(dspy.Predict(sig), trainsets=train)
    engine.reset()
    with dspy.context(lm=task_lm):
        by_position = best("beta", task="beta: item 2?")
        by_wrapper = best.for_task("beta")(task="beta: item 3?")
    assert by_position.answer and by_wrapper.answer
    assert [r.inputs["task"] for r in engine.requests] == ["beta: item 2?", "beta: item 3?"]
    assert {r.system_prompt for r in engine.requests} == {best.system_prompt.text}
    with pytest.raises(TypeError, match="name the task"):
        best(question="no task")
