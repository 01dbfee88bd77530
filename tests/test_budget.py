"""Budgets stop a run cleanly at a phase boundary; tokens and cost are recorded per phase."""

from __future__ import annotations

import dspy
import litellm
import pytest
from conftest import exact_metric, load_examples

from metaspo_dspy import ConfigError, MetaSPO
from metaspo_dspy.budget import priced_cost
from metaspo_dspy.optimize.estimate import estimate_calls
from metaspo_dspy.testing import FakeEngine, fake_lm

SIG = dspy.Signature(
    "question -> answer", "Given the following question and candidate answers, choose the best answer."
)
SMALL = dict(num_iterations=2, num_system_candidates=2, num_user_candidates=2, user_top_k=2, progress=False)


def _train(data_dir):
    train = {t: load_examples(data_dir, "medmcqa", t, 5) for t in ("ob_gyn", "medicine")}
    return train, {e.question: e.answer for exs in train.values() for e in exs}


def test_max_lm_calls_stops_before_the_phase_that_would_exceed_it(data_dir, engine_factory, tmp_path):
    train, gold = _train(data_dir)
    engine, task_lm, opt_lm = engine_factory("budget", gold=gold)
    # initial 10 + inner 20 task / 8 optimizer = 38 calls; the first outer loop plans 2 x (3 x 10) + 4 more.
    best = MetaSPO(exact_metric, opt_lm, task_lm, max_lm_calls=50, log_dir=tmp_path, **SMALL).compile(
        dspy.Predict(SIG), trainsets=train
    )
    artifact = best.detailed_results
    assert [p["phase"] for p in artifact["phases"]] == ["initial", "inner"]
    assert artifact["stopped"].startswith("stopped before the outer phase: max_lm_calls=50: 38 calls made")
    assert engine.counts["task"] + engine.counts["optimizer"] == 38 <= 50
    assert artifact["outer_decisions"] == []
    assert best.tasks["ob_gyn"].signature.instructions == artifact["tasks"]["ob_gyn"]["user_prompt"]["self"]
    assert (tmp_path / "program.json").exists() and (tmp_path / "metaspo_run.json").exists()


def test_tokens_and_cost_are_recorded_per_phase_and_max_cost_applies(data_dir):
    train, gold = _train(data_dir)
    engine = FakeEngine(gold=gold)
    prices = {
        "input_cost_per_token": 1e-4,
        "output_cost_per_token": 2e-4,
        "mode": "chat",
        "litellm_provider": "metaspo-fake",
    }
    litellm.register_model({"metaspo-fake/priced-task": prices, "metaspo-fake/priced-opt": prices})
    task_lm = fake_lm("priced-task", engine, temperature=0.0)
    opt_lm = fake_lm("priced-opt", engine, temperature=1.0)
    full = MetaSPO(exact_metric, opt_lm, task_lm, **SMALL).compile(dspy.Predict(SIG), trainsets=train)
    artifact = full.detailed_results
    initial = artifact["phases"][0]
    assert initial["task_usage"]["metaspo-fake/priced-task"]["calls"] == 10
    assert initial["task_usage"]["metaspo-fake/priced-task"]["prompt_tokens"] == 10 * 10  # the fake reports 10
    assert initial["cost"] == pytest.approx(
        10 * 10 * 1e-4 + initial["task_usage"]["metaspo-fake/priced-task"]["completion_tokens"] * 2e-4
    )
    assert artifact["usage"]["cost"] == pytest.approx(sum(p["cost"] for p in artifact["phases"]))
    inner = artifact["phases"][1]
    assert inner["optimizer_usage"]["metaspo-fake/priced-opt"]["calls"] == inner["optimizer_calls"] == 8

    budget = artifact["phases"][0]["cost"] + artifact["phases"][1]["cost"] * 1.01
    stopped = MetaSPO(exact_metric, opt_lm, task_lm, max_cost=budget, **SMALL).compile(
        dspy.Predict(SIG), trainsets=train
    )
    assert stopped.detailed_results["stopped"].startswith("stopped before the outer phase: max_cost=$")
    assert stopped.detailed_results["usage"]["cost"] <= budget


def test_estimate_matches_the_reference_counts():
    sizes = {t: (50, 500) for t in ("beauty", "game", "baby", "office")}
    assert estimate_calls("metaspo", 3, 9, 3, 3, sizes) == {
        "task_lm_train": 18200, "task_lm_test": 6000, "task_lm": 24200, "optimizer_lm": 126,
    }  # fmt: skip
    assert estimate_calls("outer_loop", 3, 9, 3, 3, sizes)["task_lm_train"] == 200 + 6 * 9 * 200
    assert estimate_calls("metaspo_ape", 3, 9, 3, 3, sizes)["optimizer_lm"] == 3 * (12 + 9)


@pytest.mark.parametrize(("kwargs", "message"), [({"max_lm_calls": 0}, "max_lm_calls"), ({"max_cost": -1}, "max_cost")])
def test_bad_budgets(kwargs, message):
    with pytest.raises(ConfigError, match=message):
        MetaSPO(exact_metric, fake_lm("bad-budget", FakeEngine()), **kwargs)


def test_max_cost_enforces_the_priced_part_and_names_the_unpriced_model(data_dir, caplog):
    """A local (unpriced) task model and a priced optimizer: max_cost still stops the run on the
    optimizer's spending, and the unpriced model is named before the run and in the artifact."""
    train, gold = _train(data_dir)
    engine = FakeEngine(gold=gold)
    litellm.register_model(
        {
            "metaspo-fake/priced-optimizer-only": {
                "input_cost_per_token": 1e-4,
                "output_cost_per_token": 2e-4,
                "mode": "chat",
                "litellm_provider": "metaspo-fake",
            }
        }
    )
    task_lm = fake_lm("local-task", engine, temperature=0.0)
    opt_lm = fake_lm("priced-optimizer-only", engine, temperature=1.0)
    full = MetaSPO(exact_metric, opt_lm, task_lm, **SMALL).compile(dspy.Predict(SIG), trainsets=train)
    inner = next(p for p in full.detailed_results["phases"] if p["phase"] == "inner")
    inner_cost = priced_cost(inner["optimizer_usage"])
    assert inner_cost > 0
    assert full.detailed_results["usage"]["cost"] is None, "the total stays unknown: one model is unpriced"

    tp = MetaSPO(exact_metric, opt_lm, task_lm, max_cost=inner_cost * 0.5, **SMALL)
    (warning,) = tp.budget_warnings()
    assert "'metaspo-fake/local-task'" in warning and "priced-optimizer-only" not in warning
    with caplog.at_level("WARNING"):
        stopped = tp.compile(dspy.Predict(SIG), trainsets=train)
    assert warning not in caplog.text, "said once: budget_warnings() already returned it"
    artifact = stopped.detailed_results
    assert artifact["stopped"].startswith("stopped before the outer phase: max_cost=$"), artifact["stopped"]
    assert artifact["budget"]["unpriced_models"] == ["metaspo-fake/local-task"]
    assert engine.counts["task"] > 0

    with caplog.at_level("WARNING"):
        MetaSPO(exact_metric, opt_lm, task_lm, max_cost=1.0, **SMALL).compile(dspy.Predict(SIG), trainsets=train)
    assert "LiteLLM has no price for 'metaspo-fake/local-task'" in caplog.text


def test_frugal_screening_saves_calls_and_records_screened_out_candidates(data_dir, engine_factory):
    train = {t: load_examples(data_dir, "medmcqa", t, 10) for t in ("ob_gyn", "medicine")}
    gold = {e.question: e.answer for exs in train.values() for e in exs}
    _engine, task_lm, opt_lm = engine_factory("screening", gold=gold)
    kwargs = dict(num_iterations=1, num_system_candidates=4, num_user_candidates=2, user_top_k=2, progress=False)
    artifact = (
        MetaSPO(exact_metric, opt_lm, task_lm, screening=0.4, screening_keep=0.5, **kwargs)
        .compile(dspy.Predict(SIG), trainsets=train)
        .detailed_results
    )
    decisions = artifact["outer_decisions"]
    assert all("screening" in d for d in decisions)
    promoted = [d for d in decisions if d["screening"]["promoted"]]
    dropped = [d for d in decisions if not d["screening"]["promoted"]]
    assert len(promoted) <= 2 and dropped, decisions
    assert all(d["meta_score"] is None and not d["accepted"] for d in dropped)
    assert all(d["screening"]["score"] >= d["screening"]["incumbent"] for d in promoted)
    outer = next(p for p in artifact["phases"] if p["phase"] == "outer")
    # Beams of 2 nodes x 2 tasks: a full candidate costs 40 calls, its screening minibatch 16.
    assert outer["screened_out"] == len(dropped) and outer["evaluations_saved"] == len(dropped) * (40 - 16)
    assert outer["task_lm_calls"] == 4 * 16 + len(promoted) * (40 - 16)
    faithful = MetaSPO(exact_metric, opt_lm, task_lm, **kwargs).compile(dspy.Predict(SIG), trainsets=train)
    full_outer = next(p for p in faithful.detailed_results["phases"] if p["phase"] == "outer")
    assert full_outer["task_lm_calls"] - outer["task_lm_calls"] == outer["evaluations_saved"]
