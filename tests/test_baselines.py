"""ProTeGi, APE and the meta-test protocols (unseen generalization, test-time adaptation)."""

from __future__ import annotations

import json
from dataclasses import dataclass, field

import dspy
import pytest
from conftest import exact_metric, load_examples

from metaspo_dspy import APE, ConfigError, ProTeGi, WithSystemPrompt, test_time_adaptation, unseen_generalization

SIG = dspy.Signature("question -> answer", "Choose the best answer.")


@dataclass
class SimpleTask:
    """The duck-typed task the meta-test functions accept."""

    name: str
    train: list
    test: list
    metric: object = exact_metric
    prompt_suffix: str = ""
    signature: object = field(default=SIG)

    def program(self):
        return dspy.Predict(self.signature)


def _task(data_dir, name, n_train=10, n_test=10):
    return SimpleTask(
        name,
        load_examples(data_dir, "medmcqa", name, n_train),
        load_examples(data_dir, "medmcqa", name, n_test, split="test"),
    )


def _gold(*tasks):
    return {e.question: e.answer for t in tasks for e in t.train + t.test}


def test_protegi_evaluates_58_prompts_and_tests_every_kept_one(data_dir, engine_factory):
    task = _task(data_dir, "dental")
    engine, task_lm, opt_lm = engine_factory("protegi", gold=_gold(task))
    result = ProTeGi(exact_metric, opt_lm, task_lm, system_prompt="Be exact.", progress=False).compile(
        task.program(), trainset=task.train, testset=task.test, task_name="dental"
    )
    details = result.detailed_results
    train_evaluations = sum(p["evaluations"] for p in details["phases"] if p["phase"] != "test")
    assert train_evaluations == 58 * 10, "1 + 3 + 6 x 9 train evaluations of 10 examples"
    assert engine.counts["optimizer"] == 2 * (3 + 6 * 9)
    assert len(details["rounds"]) == 7 and all(len(r) == 3 for r in details["rounds"])
    kept = {n["id"] for r in details["rounds"] for n in r} | {details["initial"]["id"]}
    tested = {n["id"] for n in details["nodes"] if n["test_score"] is not None}
    assert tested == kept
    for beam in details["rounds"]:
        scores = [n["train_score"] for n in beam]
        assert scores == sorted(scores, reverse=True)
    assert isinstance(result, WithSystemPrompt) and result.system_prompt.text == "Be exact."
    assert all(r.system_prompt == "Be exact." for r in engine.requests if r.kind == "task")
    best = details["rounds"][-1][0]
    assert result.program.signature.instructions == best["user_prompt"]["self"]


def test_ape_generates_keeps_top_k_and_resamples(data_dir, engine_factory):
    task = _task(data_dir, "anatomy")
    engine, task_lm, opt_lm = engine_factory("ape-single", gold=_gold(task))
    result = APE(exact_metric, opt_lm, task_lm, num_candidates=4, top_k=2, progress=False).compile(
        task.program(), trainset=task.train, testset=task.test, prompt_suffix=" <Question>{question}</Question>"
    )
    details = result.detailed_results
    kinds = [p["kind"] for p in details["proposals"]]
    assert kinds == ["ape_user"] * 4 + ["ape_paraphrase"] * 8
    assert engine.counts["optimizer"] == 12
    generated = [p for p in details["proposals"] if p["kind"] == "ape_user" and p["status"] == "ok"]
    assert all(p["text"].endswith(" <Question>{question}</Question>") for p in generated)
    nodes = {n["id"]: n for n in details["nodes"]}
    assert details["best"]["train_score"] == max(n["train_score"] for n in nodes.values())
    assert len(details["top_k"]) == 2


def test_unseen_generalization_with_given_and_generated_prompts(data_dir, engine_factory, tmp_path):
    dental, anatomy = _task(data_dir, "dental"), _task(data_dir, "anatomy")
    engine, task_lm, opt_lm = engine_factory("unseen", gold=_gold(dental, anatomy))
    given = {"dental": ["Pick the right option.", "Answer with a letter.", "Which option is correct?"]}
    result = unseen_generalization(
        "You are careful.",
        [dental, anatomy],
        user_prompts=given,
        num_user_prompts=3,
        task_lm=task_lm,
        optimizer_lm=opt_lm,
        prompts_dir=tmp_path,
        progress=False,
    )
    assert result["tasks"]["dental"]["user_prompts"] == given["dental"]
    stored = json.loads((tmp_path / "anatomy.json").read_text())
    assert len(stored) == 3 and result["tasks"]["anatomy"]["user_prompts"] == stored
    assert engine.counts["optimizer"] == 3, "APE prompts generated once, one call each"
    assert engine.counts["task"] == 2 * 3 * 10
    for entry in result["tasks"].values():
        assert entry["mean"] == pytest.approx(sum(entry["scores"]) / 3)
    assert result["average"] == pytest.approx(
        (result["tasks"]["dental"]["mean"] + result["tasks"]["anatomy"]["mean"]) / 2
    )
    # Stored prompts are reused: no new optimizer call.
    again = unseen_generalization(
        "You are careful.", [anatomy], num_user_prompts=3, task_lm=task_lm, prompts_dir=tmp_path, progress=False
    )
    assert engine.counts["optimizer"] == 3 and again["tasks"]["anatomy"]["user_prompts"] == stored
    with pytest.raises(ConfigError, match="no user prompts for unseen task 'dental'"):
        unseen_generalization("x", [dental], task_lm=task_lm, progress=False)


def test_test_time_adaptation_reports_rounds(data_dir, engine_factory):
    task = _task(data_dir, "surgery", n_train=8, n_test=8)
    _engine, task_lm, opt_lm = engine_factory("tta", gold=_gold(task))
    result = test_time_adaptation(
        "You are careful.", task, iterations=2, optimizer_lm=opt_lm, task_lm=task_lm, progress=False
    )
    assert [r["round"] for r in result["rounds"]] == [0, 1, 2]
    for r in result["rounds"]:
        assert r["best_train"] == max(r["train"])
        assert r["test_of_best"] == r["test"][0]
        assert r["mean_test"] == pytest.approx(sum(r["test"]) / len(r["test"]))
    assert result["rounds"][-1]["best_train"] >= result["rounds"][0]["best_train"]
    assert result["program"].system_prompt.text == "You are careful."
