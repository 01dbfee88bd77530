"""Reusing an optimized program (issue 21, items 3 and 6): the adapter in effect during ``compile``
is recorded in the artifact and the saved program and used on reload, while the run settings and
journal keys stay as before (a run directory written before the change resumes without a request);
``WithSystemPrompt`` copies the ``SystemPrompt`` it is given unless told to share it;
``MetaSPOProgram.from_file`` takes a partial ``programs=`` mapping. Real DSPy adapters and modules,
the deterministic fake provider."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import dspy
import pytest

from metaspo_dspy import APE, SPRIG, MetaSPO, MetaSPOProgram, ProTeGi, SystemPrompt, WithSystemPrompt
from metaspo_dspy.program.adapters import adapter_name
from metaspo_dspy.testing import FakeEngine, fake_lm

SIG = dspy.Signature("question -> answer", "Rate the review from 1 to 5.")
REVIEWS = {
    "beauty": [("Smells lovely, works well.", "5"), ("Gave me a rash.", "1"), ("It is fine.", "3")],
    "games": [("Hours of fun.", "5"), ("Crashes at launch.", "1"), ("Short but okay.", "3")],
}
GOLD = {question: answer for rows in REVIEWS.values() for question, answer in rows}
SMALL = dict(num_iterations=1, num_system_candidates=2, num_user_candidates=1, user_top_k=1)
COMMON = dict(num_threads=2, progress=False)
#: A run directory written by the code before this change (commit 6cf57d4) with
#: :func:`make_run_before_issue_21` and its final files removed, so it resumes from its journals:
#: ``PYTHONPATH=<checkout of 6cf57d4>:tests python -c "from test_program_reuse import
#: make_run_before_issue_21 as make; make('DIR')"``, then only run.json, evaluations.jsonl,
#: proposals.jsonl and ledger.jsonl kept.
OLD_RUN = Path(__file__).parent / "data" / "run_made_before_issue_21"
OLD_RUN_FILES = ("run.json", "evaluations.jsonl", "proposals.jsonl", "ledger.jsonl")


class OwnXML(dspy.XMLAdapter):
    """An adapter class of the user's own: a file can only name it by its class path."""


def exact_answer(example: dspy.Example, prediction: dspy.Prediction, trace: Any = None) -> bool:
    return str(prediction.answer).strip() == example.answer


def trainsets() -> dict[str, list[dspy.Example]]:
    return {
        task: [dspy.Example(question=q, answer=a).with_inputs("question") for q, a in rows]
        for task, rows in REVIEWS.items()
    }


def lms(engine: FakeEngine) -> tuple[dspy.LM, dspy.LM]:
    """(task LM, optimizer LM) served by ``engine`` (the model names are part of run settings)."""
    return fake_lm("reuse-task", engine, temperature=0.0), fake_lm("reuse-opt", engine, temperature=1.0)


def metaspo(engine: FakeEngine, cls: type[MetaSPO] = MetaSPO, **kwargs: Any) -> MetaSPO:
    task_lm, optimizer_lm = lms(engine)
    sizes = SMALL if cls is MetaSPO else dict(beam_size=1, num_candidates=2, max_iterations=1)
    return cls(exact_answer, optimizer_lm, task_lm, **sizes, **COMMON, **kwargs)


def make_run_before_issue_21(path: str) -> None:
    """The run that :data:`OLD_RUN` holds: MetaSPO under ``dspy.configure(adapter=XMLAdapter())``,
    no ``adapter=`` argument. Only names that existed before the change are used here."""
    dspy.configure(adapter=dspy.XMLAdapter())
    metaspo(FakeEngine(gold=GOLD), log_dir=path).compile(dspy.Predict(SIG), trainsets=trainsets())


def task_formats(engine: FakeEngine) -> set[str]:
    return {request.format for request in engine.requests if request.kind == "task"}


# -- item 3: the adapter in effect during compile --------------------------------------------
@pytest.mark.parametrize(
    ("how", "in_effect", "setting", "sent"),
    [
        ("configured", "xml", "default", "xml"),
        ("argument", "xml", "xml", "xml"),
        ("nothing", "default", "default", "chat"),
    ],
)
def test_the_adapter_in_effect_during_compile_is_recorded(tmp_path, how, in_effect, setting, sent):
    engine = FakeEngine(gold=GOLD)
    if how == "configured":
        dspy.configure(adapter=dspy.XMLAdapter())
    given = {"adapter": dspy.XMLAdapter()} if how == "argument" else {}
    best = metaspo(engine, log_dir=tmp_path / "run", **given).compile(dspy.Predict(SIG), trainsets=trainsets())
    assert task_formats(engine) == {sent}
    assert adapter_name(best.adapter) == in_effect
    assert best.detailed_results["adapter_in_effect"] == in_effect
    # The settings (and with them journal keys and the fingerprint) keep recording the argument only.
    assert best.detailed_results["settings"]["adapter"] == setting
    assert json.loads((tmp_path / "run" / "run.json").read_text())["settings"]["adapter"] == setting
    saved = json.loads((tmp_path / "run" / "program.json").read_text())["metaspo"]
    assert saved["adapter"] == in_effect
    assert adapter_name(MetaSPOProgram.from_file(tmp_path / "run" / "program.json").adapter) == in_effect


def test_sprig_records_the_configured_adapter():
    engine = FakeEngine(gold=GOLD)
    dspy.configure(adapter=dspy.XMLAdapter())
    best = metaspo(engine, SPRIG).compile(dspy.Predict(SIG), trainsets=trainsets())
    assert task_formats(engine) == {"xml"}
    assert isinstance(best.adapter, dspy.XMLAdapter) and best.detailed_results["adapter_in_effect"] == "xml"
    assert best.detailed_results["settings"]["adapter"] == "default"


@pytest.mark.parametrize("cls", [ProTeGi, APE])
def test_protegi_and_ape_record_the_configured_adapter(cls):
    engine = FakeEngine(gold=GOLD)
    task_lm, optimizer_lm = lms(engine)
    sizes = dict(num_iterations=0, beam_width=1) if cls is ProTeGi else dict(top_k=1, num_pairs=2)
    optimizer = cls(exact_answer, optimizer_lm, task_lm, num_candidates=1, **sizes, **COMMON)
    dspy.configure(adapter=dspy.XMLAdapter())
    tuned = optimizer.compile(dspy.Predict(SIG), trainset=trainsets()["beauty"])
    assert task_formats(engine) == {"xml"}
    assert isinstance(tuned.adapter, dspy.XMLAdapter) and tuned.detailed_results["adapter_in_effect"] == "xml"


def test_a_saved_program_runs_in_its_recorded_adapter_in_a_fresh_process(tmp_path):
    dspy.configure(adapter=dspy.XMLAdapter())
    best = metaspo(FakeEngine(gold=GOLD)).compile(dspy.Predict(SIG), trainsets=trainsets())
    best.save(tmp_path / "best.json")
    log = tmp_path / "requests.jsonl"
    script = (
        "import sys, dspy\n"
        "from metaspo_dspy import MetaSPOProgram\n"
        "from metaspo_dspy.testing import fake_lm\n"
        "program = MetaSPOProgram.from_file(sys.argv[1])\n"
        "assert dspy.settings.adapter is None\n"
        "with dspy.context(lm=fake_lm('fresh-process')):\n"
        "    program(task='games', question='Hours of fun.')\n"
    )
    subprocess.run(
        [sys.executable, "-c", script, str(tmp_path / "best.json")],
        env={**os.environ, "METASPO_FAKE_LOG": str(log)},
        check=True,
        timeout=300,
    )
    (request,) = [json.loads(line) for line in log.read_text().splitlines()]
    assert request["kind"] == "task" and request["format"] == "xml"
    assert request["system_prompt"] == best.system_prompt.text


def test_a_run_directory_made_before_the_change_resumes_without_a_request(tmp_path):
    run_dir = tmp_path / "run"
    shutil.copytree(OLD_RUN, run_dir)
    assert sorted(p.name for p in run_dir.iterdir()) == sorted(OLD_RUN_FILES)
    before = {name: (run_dir / name).read_bytes() for name in ("run.json", "evaluations.jsonl", "proposals.jsonl")}
    engine = FakeEngine(gold=GOLD)
    dspy.configure(adapter=dspy.XMLAdapter())
    best = metaspo(engine, log_dir=run_dir, resume=True).compile(dspy.Predict(SIG), trainsets=trainsets())
    assert engine.counts["task"] == 0 and engine.counts["optimizer"] == 0, "every journal key was found"
    assert {name: (run_dir / name).read_bytes() for name in before} == before
    artifact = best.detailed_results
    assert artifact["complete"] is True and artifact["calls"]["task_lm_reused"] > 0
    assert json.loads(json.dumps(artifact["settings"])) == json.loads(before["run.json"])["settings"]
    assert artifact["settings"]["adapter"] == "default" and artifact["adapter_in_effect"] == "xml"
    assert isinstance(best.adapter, dspy.XMLAdapter)


def test_a_finished_run_reopens_with_an_adapter_of_your_own(tmp_path):
    engine = FakeEngine(gold=GOLD)
    dspy.configure(adapter=OwnXML())
    first = metaspo(engine, log_dir=tmp_path / "run").compile(dspy.Predict(SIG), trainsets=trainsets())
    assert type(first.adapter) is OwnXML and first.detailed_results["adapter_in_effect"].endswith(".OwnXML")
    engine.reset()
    again = metaspo(engine, log_dir=tmp_path / "run", resume=True).compile(dspy.Predict(SIG), trainsets=trainsets())
    assert engine.counts["task"] == 0 and type(again.adapter) is OwnXML


def test_from_file_needs_an_adapter_of_your_own_given_back(tmp_path):
    MetaSPOProgram("Be careful.", {"rate": dspy.Predict(SIG)}, adapter=OwnXML()).save(tmp_path / "own.json")
    with pytest.raises(ValueError, match=r"OwnXML.*adapter="):
        MetaSPOProgram.from_file(tmp_path / "own.json")
    assert type(MetaSPOProgram.from_file(tmp_path / "own.json", adapter=OwnXML()).adapter) is OwnXML
    with pytest.raises(ValueError, match="records adapter"):
        MetaSPOProgram.from_file(tmp_path / "own.json", adapter=dspy.XMLAdapter())


# -- item 6: what WithSystemPrompt shares ------------------------------------------------------
def _optimized() -> MetaSPOProgram:
    return MetaSPOProgram(SystemPrompt("Optimized prompt.", "user"), {"beauty": dspy.Predict(SIG)})


def test_with_system_prompt_copies_the_system_prompt_it_is_given(tmp_path):
    engine = FakeEngine(gold=GOLD)
    best = _optimized()
    rag = WithSystemPrompt(dspy.Predict("question -> answer"), best.system_prompt)
    assert rag.system_prompt == best.system_prompt and rag.system_prompt is not best.system_prompt
    WithSystemPrompt(dspy.Predict("question -> answer"), "Another prompt.").save(tmp_path / "other.json")
    rag.load(tmp_path / "other.json")
    assert rag.system_prompt.text == "Another prompt."
    assert best.system_prompt.text == "Optimized prompt.", "loading into the copy leaves the original alone"
    with dspy.context(lm=lms(engine)[0]):
        rag(question="Hours of fun.")
        best.for_task("beauty")(question="Hours of fun.")
    assert [r.system_prompt for r in engine.requests] == ["Another prompt.", "Optimized prompt."]


def test_share_true_shares_it_and_for_task_shares_it(tmp_path):
    best = _optimized()
    shared = WithSystemPrompt(dspy.Predict("question -> answer"), best.system_prompt, share=True)
    assert shared.system_prompt is best.system_prompt
    assert best.for_task("beauty").system_prompt is best.system_prompt
    WithSystemPrompt(dspy.Predict("question -> answer"), "Another prompt.").save(tmp_path / "other.json")
    shared.load(tmp_path / "other.json")
    assert best.system_prompt.text == "Another prompt."
    assert best.for_task("beauty").system_prompt.text == "Another prompt."


# -- item 6: from_file with a partial programs= mapping -----------------------------------------
class Custom(dspy.Module):
    """A program whose structure a file cannot record (from_file needs it given back)."""

    def __init__(self, instructions: str = "Answer.") -> None:
        super().__init__()
        self.step = dspy.Predict(SIG.with_instructions(instructions))

    def forward(self, question: str) -> dspy.Prediction:
        return self.step(question=question)


def test_from_file_rebuilds_the_tasks_a_partial_programs_mapping_leaves_out(tmp_path):
    rate = dspy.Predict(SIG.with_instructions("Rate carefully."))
    rate.demos = [dspy.Example(question="Loved it", answer="5")]
    original = MetaSPOProgram("Be careful.", {"rate": rate, "custom": Custom("Tuned.")}, adapter="xml")
    original.save(tmp_path / "both.json")
    template = Custom()
    loaded = MetaSPOProgram.from_file(tmp_path / "both.json", programs={"custom": template})
    assert loaded.dump_state() == original.dump_state()
    assert type(loaded.tasks["custom"]) is Custom and loaded.tasks["custom"] is not template
    assert template.step.signature.instructions == "Answer.", "the template is copied, never modified"
    assert loaded.tasks["rate"].signature.instructions == "Rate carefully." and len(loaded.tasks["rate"].demos) == 1
    assert isinstance(loaded.adapter, dspy.XMLAdapter)
    with pytest.raises(ValueError, match=r"'custom'.*programs="):
        MetaSPOProgram.from_file(tmp_path / "both.json", programs={"rate": dspy.Predict(SIG)})
    with pytest.raises(ValueError, match="'rates'"):
        MetaSPOProgram.from_file(tmp_path / "both.json", programs={"custom": Custom(), "rates": Custom()})
