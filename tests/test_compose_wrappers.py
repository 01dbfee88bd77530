"""DSPy's module wrappers and BootstrapFinetune on a system-prompt program (issue 21, items 1-2):
``dspy.Refine``'s hinted retry and every ``dspy.BestOfN`` attempt carry the system prompt, and
``BootstrapFinetune`` with :func:`~metaspo_dspy.program.finetune.finetune_adapter` trains on the messages
the program sends at inference. Real DSPy classes, the deterministic fake model."""

from __future__ import annotations

import json

import dspy
import pytest
from composing import SIG

from metaspo_dspy import WithSystemPrompt, finetune_adapter
from metaspo_dspy.testing import FakeEngine, fake_lm
from metaspo_dspy.testing.fake_lm import register

SP = "You are exact and brief."
QUESTION = "alpha: item 2?"
HINT = "Answer with the digit 3."


def advises(request) -> str | None:
    """Answers Refine's feedback call (its ``advice`` is a dict of hints by predictor name) in the
    request's own format; task calls get the fake's normal answer."""
    if "advice" not in request.outputs:
        return None
    values = {"discussion": "The answer was wrong.", "advice": json.dumps({"program": HINT, "self": HINT})}
    if request.format == "json":
        return json.dumps({**values, "advice": {"program": HINT, "self": HINT}})
    return "\n\n".join(f"[[ ## {k} ## ]]\n{v}" for k, v in values.items()) + "\n\n[[ ## completed ## ]]"


def fails_first():
    """A reward function that fails the first attempt and passes every later one."""
    seen = []

    def reward(args, prediction):
        seen.append(prediction)
        return 1.0 if len(seen) > 1 else 0.0

    return reward


def task_requests(engine: FakeEngine) -> list:
    return [r for r in engine.requests if r.outputs == ["answer"]]


# -- item 1: dspy.Refine and dspy.BestOfN ----------------------------------------------------
@pytest.mark.parametrize("adapter", [None, dspy.JSONAdapter], ids=["chat", "json"])
def test_refine_retry_carries_the_system_prompt_in_either_nesting(adapter):
    sent = {}
    for order in ("refine_outside", "refine_inside"):
        engine = FakeEngine(gold={QUESTION: "3"}, override=advises)
        lm = fake_lm(f"refine-{order}-{adapter is None}", engine)
        if order == "refine_outside":
            program = dspy.Refine(WithSystemPrompt(dspy.Predict(SIG), SP), N=3, reward_fn=fails_first(), threshold=1)
        else:
            program = WithSystemPrompt(dspy.Refine(dspy.Predict(SIG), N=3, reward_fn=fails_first(), threshold=1), SP)
        with dspy.context(lm=lm, adapter=adapter() if adapter else None):
            program(question=QUESTION)
        first, retry = task_requests(engine)
        assert first.system_prompt == retry.system_prompt == SP
        assert retry.inputs.get("hint_") == HINT, "the retry is Refine's hinted one"
        assert retry.user.startswith(SIG.instructions), "the instructions stay in the user message"
        assert SIG.instructions not in retry.system
        (feedback,) = [r for r in engine.requests if "advice" in r.outputs]
        if order == "refine_outside":  # inside, Refine's feedback call is part of the wrapped run
            assert SP not in str(feedback.messages), "Refine's own feedback call is not the program's"
        sent[order] = retry.messages
    assert sent["refine_outside"] == sent["refine_inside"], "both nestings send the same retry"


class HandsOver(dspy.ChatAdapter):
    """Hands every call to another adapter, as ``dspy.Refine``'s retry adapter hands it to the one
    it captured (Refine itself cannot retry through a ``TwoStepAdapter``: it builds its retry
    adapter without arguments)."""

    def __init__(self, to: dspy.Adapter):
        super().__init__()
        self.to = to

    def __call__(self, lm, lm_kwargs, signature, demos, inputs):
        return self.to(lm, lm_kwargs, signature, demos, inputs)


def test_a_handed_over_call_carries_it_and_its_parsers_own_call_does_not():
    """The adapter handed the call formats the task's messages (system prompt on); the call its
    parser makes (TwoStepAdapter's extraction) is not the task (none)."""
    engine, extraction_engine = FakeEngine(gold={QUESTION: "3"}), FakeEngine()
    lm, extractor = fake_lm("hands-over", engine), fake_lm("hands-over-extract", extraction_engine)
    program = WithSystemPrompt(dspy.Predict(SIG), SP, adapter=HandsOver(dspy.TwoStepAdapter(extractor)))
    with dspy.context(lm=lm):
        prediction = program(question=QUESTION)
    (request,) = engine.requests
    assert request.system.startswith(f"{SP}\n\nYou are a helpful assistant")
    assert request.user.startswith(SIG.instructions), "moved to the user message, as TwoStepAdapter's own"
    (extraction,) = extraction_engine.requests
    assert extraction.system_prompt == ""
    assert prediction.answer


@pytest.mark.parametrize("outside", [True, False], ids=["best_of_n_outside", "best_of_n_inside"])
def test_best_of_n_keeps_the_system_prompt_on_every_attempt(outside):
    engine = FakeEngine(gold={QUESTION: "3"})
    if outside:
        program = dspy.BestOfN(WithSystemPrompt(dspy.Predict(SIG), SP), N=3, reward_fn=lambda a, p: 0.0, threshold=1)
    else:
        program = WithSystemPrompt(dspy.BestOfN(dspy.Predict(SIG), N=3, reward_fn=lambda a, p: 0.0, threshold=1), SP)
    with dspy.context(lm=fake_lm(f"best-of-n-{outside}", engine)):
        program(question=QUESTION)
    attempts = engine.requests
    assert len(attempts) == 3, "the reward never passes: every attempt runs"
    assert {r.system_prompt for r in attempts} == {SP}


# -- item 2: dspy.BootstrapFinetune ----------------------------------------------------------
class StopBeforeTraining(Exception):
    """Raised by :class:`NoTrainingLM` with the data BootstrapFinetune would train on."""

    def __init__(self, train_data):
        super().__init__("stopped before training")
        self.train_data = train_data


class NoTrainingLM(dspy.LM):
    """A fake-served LM whose ``finetune`` hands back its training data instead of training."""

    def finetune(self, train_data, train_data_format, train_kwargs=None):
        raise StopBeforeTraining(train_data)


def _training_and_inference(program, name: str, **finetune_kwargs):
    engine = FakeEngine(gold={f"alpha: item {i}?": str(i % 5 + 1) for i in range(3)})
    lm = NoTrainingLM(register(name, engine), cache=False)
    program.set_lm(lm)
    trainset = [dspy.Example(question=f"alpha: item {i}?").with_inputs("question") for i in range(3)]
    with pytest.raises(StopBeforeTraining) as stopped:
        dspy.BootstrapFinetune(num_threads=1, **finetune_kwargs).compile(program, trainset=trainset)
    training = sorted(json.dumps(d["messages"][:-1]) for d in stopped.value.train_data)
    inference = sorted(json.dumps(r.messages) for r in engine.requests)
    return training, inference


@pytest.mark.parametrize(
    ("instructions_in", "adapter"), [("user", None), ("system", None), ("user", "xml")], ids=["user", "system", "xml"]
)
def test_bootstrap_finetune_trains_on_the_messages_inference_sends(instructions_in, adapter):
    program = WithSystemPrompt(dspy.ChainOfThought(SIG), SP, adapter=adapter)
    program.system_prompt.instructions_in = instructions_in
    training, inference = _training_and_inference(
        program, f"finetune-{instructions_in}-{adapter}", adapter=finetune_adapter(program)
    )
    assert len(training) == 3 and training == inference
    assert all(SP in messages for messages in training)


def test_bootstrap_finetune_without_the_adapter_trains_on_other_messages():
    """Why :func:`finetune_adapter` exists: DSPy 3.4.1 formats the data with its own adapter."""
    training, inference = _training_and_inference(WithSystemPrompt(dspy.Predict(SIG), SP), "finetune-bare")
    assert all(SP in messages for messages in inference)
    assert not any(SP in messages for messages in training)


def test_finetune_adapter_follows_the_program():
    inner = WithSystemPrompt(dspy.Predict(SIG), "Inner.", adapter="xml")
    adapter = finetune_adapter(WithSystemPrompt(inner, "Outer."))
    assert isinstance(adapter, dspy.XMLAdapter) and adapter.system_prompt_text == "Inner."
    with dspy.context(adapter=dspy.JSONAdapter()):
        bare = finetune_adapter(dspy.Predict(SIG))
    assert type(bare) is dspy.JSONAdapter, "no system prompt: the adapter BootstrapFinetune uses anyway"
    assert type(finetune_adapter(dspy.Predict(SIG))) is dspy.ChatAdapter
