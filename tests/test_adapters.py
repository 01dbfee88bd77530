"""The system prompt reaches every predictor call, exactly where it should, and nowhere else."""

from __future__ import annotations

import threading

import dspy
import pytest

from metaspo_dspy import ReferenceAdapter, SystemPrompt, WithSystemPrompt, with_system_prompt
from metaspo_dspy.program.adapters import system_prompt_of
from metaspo_dspy.program.scope import no_system_prompt

SP = "You are terse."
SIG = dspy.Signature("question -> answer", "Predict the rating.")
CHAT_STRUCTURE = (
    "Your input fields are:\n1. `question` (str):\nYour output fields are:\n1. `answer` (str):\n"
    "All interactions will be structured in the following way, with the appropriate values filled in.\n\n"
    "[[ ## question ## ]]\n{question}\n\n[[ ## answer ## ]]\n{answer}\n\n[[ ## completed ## ]]"
)
CHAT_REMINDER = (
    "Respond with the corresponding output fields, starting with the field `[[ ## answer ## ]]`, "
    "and then ending with the marker for `[[ ## completed ## ]]`."
)
JSON_STRUCTURE = (
    "Your input fields are:\n1. `question` (str):\nYour output fields are:\n1. `answer` (str):\n"
    "All interactions will be structured in the following way, with the appropriate values filled in.\n\n"
    "Inputs will have the following structure:\n\n[[ ## question ## ]]\n{question}\n\n"
    'Outputs will be a JSON object with the following fields.\n\n{\n  "answer": "{answer}"\n}'
)
JSON_REMINDER = "Respond with a JSON object in the following order of fields: `answer`."
XML_STRUCTURE = (
    "Your input fields are:\n1. `question` (str):\nYour output fields are:\n1. `answer` (str):\n"
    "All interactions will be structured in the following way, with the appropriate values filled in.\n\n"
    "<question>\n{question}\n</question>\n\n<answer>\n{answer}\n</answer>"
)
OBJECTIVE = "\nIn adhering to this structure, your objective is: \n        Predict the rating."

EXPECTED = {
    ("chat", "user"): [
        f"{SP}\n\n{CHAT_STRUCTURE}",
        f"Predict the rating.\n\n[[ ## question ## ]]\nGreat\n\n{CHAT_REMINDER}",
    ],
    ("chat", "system"): [f"{SP}\n\n{CHAT_STRUCTURE}{OBJECTIVE}", f"[[ ## question ## ]]\nGreat\n\n{CHAT_REMINDER}"],
    ("json", "user"): [
        f"{SP}\n\n{JSON_STRUCTURE}",
        f"Predict the rating.\n\n[[ ## question ## ]]\nGreat\n\n{JSON_REMINDER}",
    ],
    ("json", "system"): [f"{SP}\n\n{JSON_STRUCTURE}{OBJECTIVE}", f"[[ ## question ## ]]\nGreat\n\n{JSON_REMINDER}"],
    ("xml", "user"): [
        f"{SP}\n\n{XML_STRUCTURE}",
        "Predict the rating.\n\n<question>\nGreat\n</question>\n\n"
        "Respond with the corresponding output fields wrapped in XML tags `<answer>`.",
    ],
}
BASES = {"chat": dspy.ChatAdapter, "json": dspy.JSONAdapter, "xml": dspy.XMLAdapter}


@pytest.mark.parametrize(("adapter", "placement"), sorted(EXPECTED))
def test_exact_messages_through_a_real_lm_call(engine_factory, adapter, placement):
    engine, task_lm, _ = engine_factory("msgs")
    program = WithSystemPrompt(dspy.Predict(SIG), SystemPrompt(SP, placement), adapter=BASES[adapter]())
    with dspy.context(lm=task_lm):
        program(question="Great")
    (request,) = engine.requests
    assert [m["role"] for m in request.messages] == ["system", "user"]
    assert [m["content"] for m in request.messages] == EXPECTED[(adapter, placement)]


def test_reference_adapter_sends_the_reference_messages(engine_factory):
    engine, task_lm, _ = engine_factory("ref")
    sig = dspy.Signature(
        "question -> response", "Rate it.<Question>{question}</Question>\nAt the end present your answer in <answer>."
    )
    program = WithSystemPrompt(dspy.Predict(sig), SP, adapter=ReferenceAdapter())
    with dspy.context(lm=task_lm):
        prediction = program(question="Nice {not a slot}")
    (request,) = engine.requests
    assert request.messages == [
        {"role": "system", "content": SP},
        {
            "role": "user",
            "content": "Rate it.<Question>Nice {not a slot}</Question>\nAt the end present your answer in <answer>.",
        },
    ]
    assert prediction.response.startswith("Let me think.")


def test_reference_adapter_without_system_prompt_sends_no_system_message(engine_factory):
    engine, task_lm, _ = engine_factory("ref-empty")
    program = WithSystemPrompt(dspy.Predict(dspy.Signature("question -> response", "Answer.")), "", "reference")
    with dspy.context(lm=task_lm):
        program(question="Q1")
    (request,) = engine.requests
    # No slot in the prompt: the question is appended, never lost.
    assert request.messages == [{"role": "user", "content": "Answer.<Question>Q1</Question>"}]


def test_json_fallback_carries_the_system_prompt(engine_factory):
    def malformed_chat(request):
        return "no field markers here" if request.format == "chat" else None

    engine, task_lm, _ = engine_factory("fallback", override=malformed_chat)
    program = WithSystemPrompt(dspy.Predict(SIG), SP, adapter=dspy.ChatAdapter())
    with dspy.context(lm=task_lm):
        prediction = program(question="Great")
    assert [r.format for r in engine.requests] == ["chat", "json"]
    for request in engine.requests:
        assert request.messages[0]["content"].startswith(SP + "\n\n")
        assert request.messages[-1]["content"].startswith("Predict the rating.\n\n")
    assert prediction.answer


def test_chain_of_thought_and_multi_predictor_programs_get_it_on_every_call(engine_factory):
    engine, task_lm, _ = engine_factory("multi")

    class TwoStep(dspy.Module):
        def __init__(self):
            super().__init__()
            self.draft = dspy.ChainOfThought("question -> draft")
            self.final = dspy.Predict("question, draft -> answer")

        def forward(self, question):
            draft = self.draft(question=question).draft
            return self.final(question=question, draft=draft)

    with dspy.context(lm=task_lm):
        WithSystemPrompt(TwoStep(), SP)(question="Q")
    assert len(engine.requests) == 2
    assert all(r.system_prompt == SP for r in engine.requests)


def test_no_leak_to_optimizer_calls_other_programs_or_threads(engine_factory):
    engine, task_lm, opt_lm = engine_factory("leak")
    wrapped = WithSystemPrompt(dspy.Predict(SIG), SP)
    plain = dspy.Predict(SIG)
    seen_in_thread = []

    class Inner(dspy.Module):
        def __init__(self):
            super().__init__()
            self.p = dspy.Predict(SIG)

        def forward(self, question):
            # A plain thread started inside the program does not inherit DSPy's context.
            thread = threading.Thread(target=lambda: seen_in_thread.append(system_prompt_of(dspy.settings.adapter)))
            thread.start()
            thread.join()
            # An "optimizer" call made inside the run opts out (as this package's proposers do); a
            # plain dspy.context(adapter=...) would carry the system prompt (test_compose_adapters).
            with no_system_prompt(dspy.ChatAdapter(), lm=opt_lm):
                dspy.Predict("question -> proposed_instruction")(question=question)
            return self.p(question=question)

    with dspy.context(lm=task_lm):
        wrapped(question="A")
        plain(question="B")
        WithSystemPrompt(Inner(), SP)(question="C")
        plain(question="D")
    by_question = {r.inputs.get("question"): r for r in engine.requests}
    assert by_question["A"].system_prompt == SP
    assert by_question["B"].system_prompt == ""
    assert by_question["D"].system_prompt == ""
    optimizer = [r for r in engine.requests if r.kind == "optimizer"]
    assert len(optimizer) == 1 and optimizer[0].system_prompt == ""
    assert seen_in_thread == [None]
    assert dspy.settings.adapter is None


def test_with_system_prompt_does_not_modify_the_base_adapter():
    base = dspy.JSONAdapter()
    wrapped = with_system_prompt(base, "A", "user")
    rewrapped = with_system_prompt(wrapped, "B", "system")
    assert system_prompt_of(base) is None
    assert system_prompt_of(wrapped) == "A" and system_prompt_of(rewrapped) == "B"
    assert isinstance(rewrapped, dspy.JSONAdapter) and type(rewrapped).__mro__.count(dspy.JSONAdapter) == 1
    with pytest.raises(ValueError, match="instructions_in"):
        with_system_prompt(base, "A", "middle")


async def _acall(program, lm, **inputs):
    with dspy.context(lm=lm):
        return await program.acall(**inputs)


def test_aforward_applies_the_system_prompt(engine_factory):
    import asyncio

    engine, task_lm, _ = engine_factory("async")
    prediction = asyncio.run(_acall(WithSystemPrompt(dspy.Predict(SIG), SP), task_lm, question="Async"))
    assert prediction.answer
    assert engine.requests[0].system_prompt == SP


@pytest.mark.parametrize("mode", ["sync", "async"])
def test_an_empty_answer_is_asked_once_more_then_raises(engine_factory, mode):
    """Sync and async adapter calls alike: an empty answer is a fault, asked once more (no JSON
    fallback request), then EmptyResponse -- never a prediction with empty fields."""
    import asyncio

    from metaspo_dspy.program.responses import EmptyResponse
    from metaspo_dspy.store.faults import FaultLog

    engine, task_lm, _ = engine_factory(f"empty-{mode}", override=lambda r: "  " if r.kind == "task" else None)
    program = WithSystemPrompt(dspy.Predict(SIG), SP)
    with FaultLog() as faults, pytest.raises(EmptyResponse, match=r"metaspo-fake/empty-.* returned an empty answer"):
        if mode == "async":
            asyncio.run(_acall(program, task_lm, question="Hm"))
        else:
            with dspy.context(lm=task_lm):
                program(question="Hm")
    assert engine.counts["task"] == 2 and engine.counts["task:json"] == 0
    assert faults.counts["empty_response"] == 2
