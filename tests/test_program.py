"""SystemPrompt is a real DSPy parameter; programs and prompts round-trip through files."""

from __future__ import annotations

import json
from typing import Literal

import dspy
import pytest
from conftest import REFERENCE_SAMPLE

from metaspo_dspy import MetaSPOProgram, SystemPrompt, WithSystemPrompt
from metaspo_dspy.program.system_prompt import PROGRAM_FORMAT


def _program() -> MetaSPOProgram:
    rate = dspy.Predict(dspy.Signature("question -> answer: int", "Rate 1-5."))
    rate.demos = [dspy.Example(question="Loved it", answer=5)]
    pick = dspy.ChainOfThought(dspy.Signature("question -> answer: Literal['A', 'B']", "Pick A or B."))
    return MetaSPOProgram(
        SystemPrompt("Be careful.", "user"),
        {"rate": rate, "pick": pick},
        adapter="json",
        detailed_results={"optimized_system_prompt": "Be careful.", "steps": []},
    )


def test_system_prompt_is_a_parameter_saved_by_module_save(tmp_path):
    wrapped = WithSystemPrompt(dspy.Predict("question -> answer"), SystemPrompt("Original", "system"))
    assert any(isinstance(p, SystemPrompt) for p in wrapped.parameters())
    wrapped.save(tmp_path / "w.json")
    other = WithSystemPrompt(dspy.Predict("question -> answer"), "something else")
    other.load(tmp_path / "w.json")
    assert other.system_prompt == SystemPrompt("Original", "system")


def test_system_prompt_survives_deepcopy_and_reset_copy():
    wrapped = WithSystemPrompt(dspy.Predict("question -> answer"), SystemPrompt("Keep me", "user"))
    for copy in (wrapped.deepcopy(), wrapped.reset_copy()):
        assert copy.system_prompt == wrapped.system_prompt
        assert copy.system_prompt is not wrapped.system_prompt


def test_metaspo_program_round_trip_without_the_original_code(tmp_path, engine_factory):
    original = _program()
    original.save(tmp_path / "out.json")
    data = json.loads((tmp_path / "out.json").read_text())
    assert data["metaspo"]["format"] == PROGRAM_FORMAT and "metadata" in data
    loaded = MetaSPOProgram.from_file(tmp_path / "out.json")
    assert loaded.system_prompt == original.system_prompt
    assert loaded.detailed_results == original.detailed_results
    assert type(loaded.adapter) is dspy.JSONAdapter
    assert loaded.tasks["rate"].signature.instructions == "Rate 1-5."
    assert loaded.tasks["rate"].signature.output_fields["answer"].annotation is int
    assert loaded.tasks["rate"].demos[0]["answer"] == 5
    assert loaded.tasks["pick"].predict.signature.output_fields["answer"].annotation == Literal["A", "B"]
    assert loaded.dump_state() == original.dump_state()
    engine, task_lm, _ = engine_factory("roundtrip")
    with dspy.context(lm=task_lm):
        loaded(task="rate", question="Meh")
    assert engine.requests[0].system_prompt == "Be careful."


def test_module_load_reads_a_saved_metaspo_program(tmp_path):
    original = _program()
    original.save(tmp_path / "out.json")
    fresh = _program()
    fresh.system_prompt.text = "changed"
    fresh.load(tmp_path / "out.json")
    assert fresh.system_prompt.text == "Be careful."


def test_custom_program_needs_its_structure_back(tmp_path):
    class Custom(dspy.Module):
        def __init__(self):
            super().__init__()
            self.step = dspy.Predict("question -> answer")

        def forward(self, question):
            return self.step(question=question)

    program = MetaSPOProgram("S", {"t": Custom()})
    program.tasks["t"].step.signature = program.tasks["t"].step.signature.with_instructions("Tuned.")
    program.save(tmp_path / "c.json")
    with pytest.raises(ValueError, match=r"programs=\{task: module\}"):
        MetaSPOProgram.from_file(tmp_path / "c.json")
    template = Custom()
    loaded = MetaSPOProgram.from_file(tmp_path / "c.json", programs={"t": template})
    assert loaded.tasks["t"].step.signature.instructions == "Tuned."
    assert template.step.signature.instructions != "Tuned."


@pytest.mark.parametrize(
    ("content", "expected"),
    [
        ("  A plain text prompt.\n", "A plain text prompt."),
        (json.dumps({"prompt": "From prompts/default.json"}), "From prompts/default.json"),
        (json.dumps({"optimized_system_prompt": "From bilevel nodes", "nodes": []}), "From bilevel nodes"),
        (json.dumps({"system_prompt": {"text": "Saved", "instructions_in": "system"}}), "Saved"),
    ],
)
def test_system_prompt_load_formats(tmp_path, content, expected):
    path = tmp_path / "prompt.txt"
    path.write_text(content)
    assert SystemPrompt.load(path).text == expected


def test_system_prompt_load_from_saved_program_and_reference_file(tmp_path):
    _program().save(tmp_path / "p.json")
    assert SystemPrompt.load(tmp_path / "p.json") == SystemPrompt("Be careful.", "user")
    reference = SystemPrompt.load(REFERENCE_SAMPLE)
    assert reference.text == "Variant 480999: read carefully and answer precisely."
    SystemPrompt("Round trip", "system").save(tmp_path / "sp.json")
    assert SystemPrompt.load(tmp_path / "sp.json") == SystemPrompt("Round trip", "system")
    SystemPrompt("As text").save(tmp_path / "sp.txt")
    assert SystemPrompt.load(tmp_path / "sp.txt").text == "As text"


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ("", "is empty"),
        ("   \n", "is empty"),
        (json.dumps({"unrelated": 1}), "no system prompt found"),
        (json.dumps({"prompt": " "}), "is empty"),
    ],
)
def test_system_prompt_load_errors(tmp_path, content, message):
    path = tmp_path / "bad.json"
    path.write_text(content)
    with pytest.raises(ValueError, match=message):
        SystemPrompt.load(path)
    with pytest.raises(ValueError, match="does not exist"):
        SystemPrompt.load(tmp_path / "missing.txt")


def test_unknown_task_is_a_clear_error():
    with pytest.raises(ValueError, match=r"unknown task 'nope'; this program has \['pick', 'rate'\]"):
        _program()(task="nope", question="x")
