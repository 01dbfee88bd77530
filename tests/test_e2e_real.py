"""End to end: compile on real tasks of three domains (the bundled data) with the fake LM; check program,
artifact, scores."""

from __future__ import annotations

import json

import dspy
import pytest
from conftest import REFERENCE_SAMPLE, exact_metric, load_examples

from metaspo_dspy import MetaSPO, MetaSPOProgram, SystemPrompt
from metaspo_dspy.evaluation.grid import GridEvaluator
from metaspo_dspy.evaluation.records import EvalJob

HATE = dspy.Signature("question -> answer", "Is the following text hate speech? Answer yes or no.")
ENTAIL = dspy.Signature("question -> answer", "Determine whether one sentence entails the next.")
MED = dspy.Signature("question -> answer", "Answer the medical question with the option letter.")


@pytest.fixture
def suite(data_dir):
    folders = {"hatecheck": "safety", "epistemic": "bigbench", "ob_gyn": "medmcqa"}
    train = {name: load_examples(data_dir, folder, name, 20) for name, folder in folders.items()}
    test = {name: load_examples(data_dir, folder, name, 15, split="test") for name, folder in folders.items()}
    gold = {e.question: e.answer for sets in (train, test) for exs in sets.values() for e in exs}
    programs = {"hatecheck": dspy.Predict(HATE), "epistemic": dspy.Predict(ENTAIL), "ob_gyn": dspy.Predict(MED)}
    return programs, train, test, gold


def test_compile_on_real_tasks(suite, engine_factory, tmp_path):
    programs, train, test, gold = suite
    _engine, task_lm, opt_lm = engine_factory("e2e", gold=gold)
    log_dir = tmp_path / "run"
    best = MetaSPO(
        metric=exact_metric,
        optimizer_lm=opt_lm,
        task_lm=task_lm,
        num_iterations=2,
        num_system_candidates=3,
        log_dir=log_dir,
        progress=False,
    ).compile(programs, trainsets=train, testsets=test)
    artifact = best.detailed_results

    # The artifact on disk is the returned history, and the reference-format export matches the sample's shape.
    assert json.loads((log_dir / "metaspo_run.json").read_text()) == json.loads(json.dumps(artifact))
    reference = json.loads((log_dir / "bilevel_nodes.json").read_text())
    assert reference["optimized_system_prompt"] == best.system_prompt.text
    assert len(reference["nodes"]) == 1 + 2 * 2 and all(len(step) == 3 for step in reference["nodes"])
    assert SystemPrompt.load(log_dir / "bilevel_nodes.json").text == best.system_prompt.text

    # The returned program is the best node of each final beam, under the optimized system prompt.
    assert best.system_prompt.text == artifact["optimized_system_prompt"]
    nodes = {n["id"]: n for n in artifact["nodes"]}
    for task, program in best.tasks.items():
        node = nodes[artifact["tasks"][task]["best_node"]]
        assert program.signature.instructions == node["user_prompt"]["self"]
        assert node["system_prompt"] == best.system_prompt.text
        assert node["test_score"] is not None

    # The scores it reports are what the returned program really scores (recomputed from scratch).
    jobs = [
        EvalJob(t, best.tasks[t], best.system_prompt.text, "user", exs, exact_metric)
        for t, exs in [*train.items(), *test.items()]
    ]
    rescored = GridEvaluator(task_lm=task_lm, progress=False).evaluate(jobs)
    for (task, _), result in zip([*train.items()], rescored[:3], strict=True):
        assert result.score == pytest.approx(artifact["tasks"][task]["train_score"])
    for (task, _), result in zip([*test.items()], rescored[3:], strict=True):
        assert result.score == pytest.approx(artifact["tasks"][task]["test_score"])
    # And calling the program end to end works, through the task's own predictor.
    with dspy.context(lm=task_lm):
        prediction = best(task="ob_gyn", question=test["ob_gyn"][0].question)
    assert prediction.answer in list("ABCD")

    # Save / from_file round trip keeps prompts and history.
    best.save(tmp_path / "best.json")
    loaded = MetaSPOProgram.from_file(tmp_path / "best.json")
    assert loaded.system_prompt == best.system_prompt
    assert loaded.tasks["ob_gyn"].signature.instructions == best.tasks["ob_gyn"].signature.instructions
    assert loaded.detailed_results["optimized_system_prompt"] == artifact["optimized_system_prompt"]


def test_reference_export_matches_the_reference_sample_shape(suite, engine_factory, tmp_path):
    programs, train, _, gold = suite
    _engine, task_lm, opt_lm = engine_factory("shape", gold=gold)
    MetaSPO(
        metric=exact_metric,
        optimizer_lm=opt_lm,
        task_lm=task_lm,
        num_iterations=1,
        num_system_candidates=2,
        num_user_candidates=1,
        log_dir=tmp_path,
        progress=False,
    ).compile(programs, trainsets=train)
    ours = json.loads((tmp_path / "bilevel_nodes.json").read_text())
    sample = json.loads(REFERENCE_SAMPLE.read_text())
    assert set(ours) == set(sample)
    our_node, their_node = ours["nodes"][0][0][0], sample["nodes"][0][0][0]
    assert set(our_node) == set(their_node)
    assert [type(our_node[k]) for k in sorted(their_node) if their_node[k] is not None] == [
        type(their_node[k]) for k in sorted(their_node) if their_node[k] is not None
    ]
