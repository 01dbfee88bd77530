"""The system prompt rides on whatever adapter a call uses; callbacks, streaming and pickle see our
adapters as DSPy's own (issue 12, items 3-5). Real adapters, real dspy.streamify, the fake provider."""

from __future__ import annotations

import asyncio
import pickle

import dspy
import litellm
import pytest
from dspy.utils.callback import BaseCallback
from litellm import CustomLLM
from litellm.types.utils import GenericStreamingChunk

from metaspo_dspy import SystemPrompt, WithSystemPrompt, with_system_prompt
from metaspo_dspy.evaluation.grid import GridEvaluator
from metaspo_dspy.evaluation.records import EvalJob
from metaspo_dspy.testing import FakeEngine
from metaspo_dspy.testing.fake_lm import _model_response

SP = "You are terse."
SIG = dspy.Signature("question -> answer", "Rate the review.")


def _always_right(engine_factory, name, gold=None):
    return engine_factory(name, gold=gold or {"Great": "5", "Bad": "1"}, skill=lambda s, u: 1.0)


class PicksJSON(dspy.Module):
    """A program that chooses its own adapter inside forward."""

    def __init__(self):
        super().__init__()
        self.rate = dspy.Predict(SIG)

    def forward(self, question):
        with dspy.context(adapter=dspy.JSONAdapter()):
            return self.rate(question=question)


# -- item 3: the adapter in effect at call time ------------------------------------------------
def test_an_adapter_picked_inside_forward_carries_the_system_prompt(engine_factory):
    engine, task_lm, _ = _always_right(engine_factory, "inside-forward")
    with dspy.context(lm=task_lm):
        prediction = WithSystemPrompt(PicksJSON(), SP)(question="Great")
    (request,) = engine.requests
    assert request.format == "json" and request.system_prompt == SP
    assert request.messages[-1]["content"].startswith("Rate the review.\n\n")
    assert "your objective is" not in request.messages[0]["content"]
    assert prediction.answer == "5"
    assert dspy.settings.adapter is None


def test_the_evaluator_puts_it_on_an_adapter_picked_inside_forward(engine_factory):
    engine, task_lm, _ = _always_right(engine_factory, "inside-forward-grid")
    examples = [dspy.Example(question=q, answer=a).with_inputs("question") for q, a in (("Great", "5"), ("Bad", "1"))]
    job = EvalJob("t", PicksJSON(), SP, "user", examples, lambda e, p: e.answer == p.answer)
    (result,) = GridEvaluator(task_lm, num_threads=2, progress=False).evaluate([job])
    assert result.score == 1.0
    assert sorted(r.format for r in engine.requests) == ["json", "json"]
    assert all(r.system_prompt == SP for r in engine.requests)


def test_nested_wrappers_the_innermost_system_prompt_wins(engine_factory):
    engine, task_lm, _ = _always_right(engine_factory, "nested")
    inner = WithSystemPrompt(dspy.Predict(SIG), SystemPrompt("Inner prompt.", "system"))
    with dspy.context(lm=task_lm):
        WithSystemPrompt(inner, "Outer prompt.", adapter="json")(question="Great")
        WithSystemPrompt(PicksJSON(), "Outer prompt.")(question="Bad")
    first, second = engine.requests
    assert first.system_prompt == "Inner prompt." and first.format == "json", "outer's base adapter, inner's prompt"
    assert "your objective is: \n        Rate the review." in first.messages[0]["content"], "inner's placement"
    assert second.system_prompt == "Outer prompt."


def test_two_step_adapter_keeps_its_field_description_and_moves_only_the_instructions(engine_factory):
    engine, task_lm, _ = _always_right(engine_factory, "two-step")
    extraction_engine = FakeEngine()
    from metaspo_dspy.testing import fake_lm

    extractor = fake_lm("two-step-extract", extraction_engine)
    program = WithSystemPrompt(dspy.Predict(SIG), SP, adapter=dspy.TwoStepAdapter(extractor))
    with dspy.context(lm=task_lm):
        prediction = program(question="Great")
    (request,) = engine.requests
    assert request.messages == [
        {
            "role": "system",
            "content": f"{SP}\n\nYou are a helpful assistant that can solve tasks based on user input.\n"
            "As input, you will be provided with:\n1. `question` (str):\n"
            "Your outputs must contain:\n1. `answer` (str):\n"
            "You should lay out your outputs in detail so that your answer can be understood by another agent",
        },
        {"role": "user", "content": "Rate the review.\n\nquestion: Great"},
    ]
    (extraction,) = extraction_engine.requests
    assert extraction.system_prompt == "", "the extraction call is parsing, not the task: no system prompt"
    assert prediction.answer


class InstructionsInUserMessage(dspy.ChatAdapter):
    """A custom adapter that writes the instructions into the user message itself."""

    def format_user_message_content(self, signature, inputs, prefix="", suffix="", main_request=False):
        body = super().format_user_message_content(signature, inputs, prefix, suffix, main_request)
        return f"Task: {signature.instructions}\n\n{body}"

    def format_task_description(self, signature):
        return ""


class EmbedsInstructions(InstructionsInUserMessage):
    embeds_instructions = True  # the public opt-out: with_system_prompt leaves them where they are


@pytest.mark.parametrize(("adapter", "times"), [(EmbedsInstructions, 1), (InstructionsInUserMessage, 2)])
def test_embeds_instructions_is_the_public_opt_out(engine_factory, adapter, times):
    engine, task_lm, _ = _always_right(engine_factory, f"embeds-{times}")
    with dspy.context(lm=task_lm):
        WithSystemPrompt(dspy.Predict(SIG), SP, adapter=adapter())(question="Great")
    (request,) = engine.requests
    assert request.system_prompt == SP
    assert request.messages[-1]["content"].count("Rate the review.") == times


# -- item 4: callbacks see the messages that are sent ------------------------------------------
class Recorder(BaseCallback):
    def __init__(self):
        self.formatted = []
        self.parsed = []

    def on_adapter_format_end(self, call_id, outputs, exception=None):
        self.formatted.append(outputs)

    def on_adapter_parse_end(self, call_id, outputs, exception=None):
        self.parsed.append(outputs)


@pytest.mark.parametrize("placement", ["user", "system"])
def test_format_callbacks_see_the_messages_sent(engine_factory, placement):
    engine, task_lm, _ = _always_right(engine_factory, f"callbacks-{placement}")
    settings_level, adapter_level = Recorder(), Recorder()
    program = WithSystemPrompt(
        dspy.Predict(SIG), SystemPrompt(SP, placement), adapter=dspy.ChatAdapter(callbacks=[adapter_level])
    )
    with dspy.context(lm=task_lm, callbacks=[settings_level]):
        program(question="Great")
    (request,) = engine.requests
    for callback in (settings_level, adapter_level):
        assert callback.formatted == [request.messages], "once, with the system prompt and the user prompt"
        assert callback.parsed == [{"answer": "5"}]


# -- item 5: streaming and pickling, on the same class ----------------------------------------
STREAM_ENGINE = FakeEngine(gold={"Great": "5"}, skill=lambda s, u: 1.0)


class _Streaming(CustomLLM):
    """The fake engine's answers, streamed in 7-character chunks (LiteLLM custom provider)."""

    def completion(self, model, messages, *args, **kwargs):
        return _model_response(model, STREAM_ENGINE.respond(messages, kwargs.get("optional_params") or {}))

    async def acompletion(self, model, messages, *args, **kwargs):
        return self.completion(model, messages, *args, **kwargs)

    async def astreaming(self, model, messages, *args, **kwargs):
        text = STREAM_ENGINE.respond(messages, kwargs.get("optional_params") or {})
        pieces = [text[i : i + 7] for i in range(0, len(text), 7)]
        for i, piece in enumerate(pieces):
            last = i == len(pieces) - 1
            yield GenericStreamingChunk(
                text=piece, is_finished=last, finish_reason="stop" if last else "", usage=None, index=0, tool_use=None
            )


def _streaming_lm() -> dspy.LM:
    if not any(entry.get("provider") == "compose-stream" for entry in litellm.custom_provider_map):
        litellm.custom_provider_map.append({"provider": "compose-stream", "custom_handler": _Streaming()})
        from litellm.utils import custom_llm_setup

        custom_llm_setup()
    return dspy.LM("compose-stream/fake", engine="litellm", cache=False)


async def _stream(program, **inputs):
    listener = dspy.streaming.StreamListener(signature_field_name="answer")
    chunks, final = [], None
    async for item in dspy.streamify(program, stream_listeners=[listener])(**inputs):
        if isinstance(item, dspy.streaming.StreamResponse):
            chunks.append(item.chunk)
        elif isinstance(item, dspy.Prediction):
            final = item
    return chunks, final


@pytest.mark.parametrize("base", [dspy.ChatAdapter, dspy.JSONAdapter, dspy.XMLAdapter])
def test_a_global_system_prompt_adapter_streams_and_pickles(base):
    STREAM_ENGINE.reset()
    adapter = SystemPrompt(SP).adapter(base())
    # pickle: the standard module, no cloudpickle; rebuilt through with_system_prompt
    restored = pickle.loads(pickle.dumps(adapter))
    assert type(restored) is type(adapter) and type(restored).__name__ == base.__name__
    assert (restored.system_prompt_text, restored.instructions_in) == (SP, "user")
    # streaming: DSPy's listener recognises the adapter by class name; it streams as the bare adapter
    streamed = {}
    for label, configured in (("bare", base()), ("with system prompt", restored)):
        dspy.configure(lm=_streaming_lm(), adapter=configured)
        streamed[label] = asyncio.run(_stream(dspy.Predict(SIG), question="Great"))
    (bare_chunks, bare), (chunks, final) = streamed["bare"], streamed["with system prompt"]
    assert chunks == bare_chunks and "5" in "".join(chunks)
    assert final.answer == bare.answer == "5"
    assert [r.system_prompt for r in STREAM_ENGINE.requests] == ["", SP]


def test_with_system_prompt_streams_when_the_same_base_adapter_is_configured_outside():
    """The README's alternative for WithSystemPrompt(..., adapter=...): the listener reads the
    adapter outside the program's context, so configure the same base adapter there."""
    STREAM_ENGINE.reset()
    dspy.configure(lm=_streaming_lm(), adapter=dspy.JSONAdapter())
    program = WithSystemPrompt(dspy.Predict(SIG), SP, adapter=dspy.JSONAdapter())
    chunks, final = asyncio.run(_stream(program, question="Great"))
    assert "5" in "".join(chunks) and final.answer == "5"
    assert STREAM_ENGINE.requests[0].system_prompt == SP and STREAM_ENGINE.requests[0].format == "json"


def test_whole_program_save_keeps_the_adapter(tmp_path, engine_factory):
    """Module.save(save_program=True) (cloudpickle) and dspy.load rebuild the adapter too."""
    engine, task_lm, _ = _always_right(engine_factory, "save-program")
    program = WithSystemPrompt(dspy.Predict(SIG), SP, adapter=with_system_prompt(dspy.XMLAdapter(), "old"))
    program.save(tmp_path / "program", save_program=True)
    restored = dspy.load(tmp_path / "program", allow_pickle=True)
    assert restored.system_prompt == program.system_prompt
    assert type(restored.adapter).__name__ == "XMLAdapter" and restored.adapter.system_prompt_text == "old"
    with dspy.context(lm=task_lm):
        restored(question="Great")
    assert engine.requests[0].system_prompt == SP and engine.requests[0].format == "xml"
