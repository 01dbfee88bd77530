"""SPRIG on the deterministic fake model: every candidate is its parent plus the recorded edit, UCB
steers the edits, the budget of task calls is never exceeded (by default a MetaSPO run's train
calls), a crashed run resumes to the same result, and the result reads like a MetaSPO run."""

from __future__ import annotations

import json
from collections import Counter

import pytest

from metaspo_dspy import MetaSPO, MetaSPOProgram, SystemPrompt, compile_kwargs, load_task
from metaspo_dspy.errors import ConfigError
from metaspo_dspy.optimize.estimate import estimate_calls, sprig_budget
from metaspo_dspy.optimize.sprig.teleprompter import SPRIG
from metaspo_dspy.testing.fake_lm import unit

TASKS = ("gen_counting", "gen_boolean")
INITIAL = "You are a helpful assistant."
SMALL = dict(num_iterations=1, num_system_candidates=3, num_user_candidates=2, user_top_k=2)


def _tasks(train: int = 8, test: int = 4):
    tasks = [load_task(t, train_size=train, test_size=test) for t in TASKS]
    return tasks, {e.question: e.answer for t in tasks for e in t.train + t.test}


def _sprig(task_lm, opt_lm, tasks, **kwargs):
    kwargs.setdefault("progress", False)
    return SPRIG(optimizer_lm=opt_lm, task_lm=task_lm, **kwargs).compile(**compile_kwargs(tasks))


def _rule_library():
    return [(f"Rule {i}: check the answer.", "behavioral") for i in range(10)]


def _prompt_skill(system_prompt: str, user_prompt: str) -> float:
    """A fixed pseudo-random quality per system prompt; any 'Rule' component makes it useless."""
    return 0.0 if "Rule" in system_prompt else 0.2 + 0.6 * unit("system", system_prompt)


def test_every_candidate_is_its_parent_with_the_recorded_edit(engine_factory):
    tasks, gold = _tasks()
    _engine, task_lm, opt_lm = engine_factory("edits", gold=gold)
    best = _sprig(task_lm, opt_lm, tasks, num_candidates=8, task_call_budget=16 * 30, beam_size=3)
    artifact = best.detailed_results
    candidates = {c["id"]: c for c in artifact["candidates"]}
    proposals = {p["id"]: p for p in artifact["proposals"]}
    nodes = {n["id"]: n for n in artifact["nodes"]}
    initial_user = {t.name: {"self": t.initial_prompt} for t in tasks}
    library = SPRIG(optimizer_lm=opt_lm, task_lm=task_lm).library
    made = Counter(c["edit"]["type"] for c in candidates.values() if c["edit"])
    assert set(made) == {"add", "rephrase", "swap", "delete"}, made
    assert candidates[0]["components"] == [INITIAL] and candidates[0]["parent"] is None
    for c in candidates.values():
        assert c["text"] == " ".join(c["components"]) and len(c["components"]) == len(c["sources"])
        scores = [nodes[i]["train_score"] for i in c["node_ids"].values()]
        assert c["score"] == pytest.approx(sum(scores) / len(scores))
        for task, node_id in c["node_ids"].items():
            assert nodes[node_id]["system_prompt"] == c["text"] and nodes[node_id]["user_prompt"] == initial_user[task]
        if c["edit"] is None:
            continue
        parent, edit = candidates[c["parent"]], c["edit"]
        before, after = parent["components"], c["components"]
        if edit["type"] == "add":
            pos, index = edit["position"], edit["component"]
            assert after == [*before[:pos], library[index].text, *before[pos:]] and index not in parent["sources"]
        elif edit["type"] == "delete":
            pos = edit["position"]
            assert after == before[:pos] + before[pos + 1 :] and len(before) >= 2
        elif edit["type"] == "swap":
            i, j = edit["positions"]
            swapped = list(before)
            swapped[i], swapped[j] = swapped[j], swapped[i]
            assert after == swapped
        else:
            proposal, pos = proposals[c["proposal"]], edit["position"]
            assert proposal["kind"] == "sprig_rephrase" and proposal["status"] == "ok"
            assert after[pos] == proposal["text"] == edit["rephrased"] and edit["original"] == before[pos]
            assert after[:pos] + after[pos + 1 :] == before[:pos] + before[pos + 1 :]
    texts = [c["text"] for c in candidates.values()]
    assert len(texts) == len(set(texts)), "no prompt is scored twice"
    # The beam after each iteration: the best beam_size prompts so far, best first, ties to the older.
    for step in artifact["steps"]:
        made = [c for c in candidates.values() if c["iteration"] is None or c["iteration"] <= (step["iteration"] or 0)]
        if step["iteration"] is None:
            made = [candidates[0]]
        ranked = sorted(made, key=lambda c: (-c["score"], c["id"]))
        assert [c["score"] for c in ranked[:3]] == [candidates[i]["score"] for i in step["population"]]
        assert step["system_prompt"] == candidates[step["population"][0]]["text"]
    assert (
        best.system_prompt.text
        == artifact["optimized_system_prompt"]
        == candidates[artifact["steps"][-1]["population"][0]]["text"]
    )
    assert all(
        p.signature.instructions == t.initial_prompt for t in tasks for _, p in best.tasks[t.name].named_predictors()
    )


def test_ucb_gives_an_edit_type_that_never_succeeds_fewer_candidates(engine_factory):
    tasks, gold = _tasks(test=0)
    _engine, task_lm, opt_lm = engine_factory("ucb", gold=gold, skill=_prompt_skill)
    artifact = _sprig(
        task_lm, opt_lm, tasks, components=_rule_library(), num_candidates=6, task_call_budget=16 * 40
    ).detailed_results
    stats = artifact["edit_stats"]
    assert stats["add"]["successes"] == 0 < stats["rephrase"]["successes"]
    assert stats["add"]["pulls"] < stats["rephrase"]["pulls"]
    made = Counter(d["edit"]["type"] for d in artifact["outer_decisions"])
    first = Counter(d["edit"]["type"] for d in artifact["outer_decisions"] if d["iteration"] == 0)
    assert first["add"] == first["rephrase"], "untried types share the first iteration"
    assert made["add"] < made["rephrase"]
    # Every add scored 0 and its component's UCB record says so.
    assert all(d["meta_score"] == 0.0 for d in artifact["outer_decisions"] if d["edit"]["type"] == "add")
    assert all(row["mean"] < 0 for row in artifact["component_stats"])
    # Same seed, same run: every choice is deterministic.
    _engine2, task_lm2, opt_lm2 = engine_factory("ucb2", gold=gold, skill=_prompt_skill)
    again = _sprig(task_lm2, opt_lm2, tasks, components=_rule_library(), num_candidates=6, task_call_budget=16 * 40)
    assert again.detailed_results["candidates"] == artifact["candidates"]


def test_default_budget_is_a_metaspo_runs_train_calls_and_is_never_exceeded(engine_factory):
    tasks, gold = _tasks(train=7, test=0)
    metaspo_engine, task_lm, opt_lm = engine_factory("budget-metaspo", gold=gold)
    MetaSPO(optimizer_lm=opt_lm, task_lm=task_lm, progress=False, **SMALL).compile(**compile_kwargs(tasks))
    metaspo_train_calls = metaspo_engine.counts["task"]
    sizes = {t.name: (len(t.train), 0) for t in tasks}
    assert metaspo_train_calls == estimate_calls("metaspo", *SMALL.values(), sizes)["task_lm_train"] == 126
    engine, task_lm, opt_lm = engine_factory("budget-sprig", gold=gold)
    artifact = _sprig(task_lm, opt_lm, tasks, **SMALL).detailed_results
    budget = artifact["search_budget"]
    assert budget["task_calls"] == metaspo_train_calls and artifact["settings"]["sprig"]["task_call_budget"] == 126
    assert engine.counts["task"] == artifact["calls"]["task_lm"] == budget["task_calls_used"] == 126
    assert budget["finished"].startswith("search budget spent")
    assert artifact["calls"]["optimizer_lm"] == engine.counts["optimizer"] == len(artifact["proposals"])
    # A budget that is not a multiple of the per-candidate cost: stop before exceeding it.
    engine2, task_lm2, opt_lm2 = engine_factory("budget-odd", gold=gold)
    odd = _sprig(task_lm2, opt_lm2, tasks, task_call_budget=100, **SMALL).detailed_results
    assert engine2.counts["task"] == odd["search_budget"]["task_calls_used"] == 98 <= 100
    assert len(odd["candidates"]) == 7
    # The paper's defaults on 4 tasks x 50 examples.
    assert sprig_budget(3, 9, 3, 3, {f"t{i}": 50 for i in range(4)}) == 18200
    assert SPRIG(optimizer_lm=opt_lm, task_lm=task_lm).search_budget({f"t{i}": 50 for i in range(4)}) == 18200


def test_max_iterations_and_max_lm_calls_stop_the_search_early(engine_factory):
    tasks, gold = _tasks(test=4)
    engine, task_lm, opt_lm = engine_factory("early", gold=gold)
    short = _sprig(task_lm, opt_lm, tasks, max_iterations=2, num_candidates=3, task_call_budget=10_000)
    assert [s["phase"] for s in short.detailed_results["steps"]] == ["initial", "search", "search"]
    assert short.detailed_results["search_budget"]["finished"] == "max_iterations=2 reached"
    engine.reset()
    capped = _sprig(task_lm, opt_lm, tasks, num_candidates=3, task_call_budget=10_000, max_lm_calls=100)
    artifact = capped.detailed_results
    assert "stopped before the search phase" in artifact["stopped"] and "max_lm_calls=100" in artifact["stopped"]
    assert engine.counts["task"] + engine.counts["optimizer"] <= 100
    assert artifact["tasks"]["gen_counting"]["test_score"] is None, "stopped before the test phase too"


class Crash(RuntimeError):
    pass


def _strip(artifact: dict) -> dict:
    return json.loads(
        json.dumps({k: v for k, v in artifact.items() if k not in ("phases", "calls", "usage", "cumulative")})
    )


def test_resume_after_a_crash_equals_an_uninterrupted_run(engine_factory, tmp_path):
    tasks, gold = _tasks()
    settings = dict(num_candidates=5, task_call_budget=16 * 14, components=[*_rule_library()[:4], "Be exact."])
    engine, task_lm, opt_lm = engine_factory("sprig-resume", gold=gold, skill=_prompt_skill)
    reference = _sprig(task_lm, opt_lm, tasks, log_dir=tmp_path / "reference", **settings)
    total = dict(engine.counts)
    engine.reset()

    def crash(log):
        if log.phase == "search" and log.iteration == 1:
            raise Crash("simulated crash")

    run_dir = tmp_path / "run"
    with pytest.raises(Crash):
        _sprig(task_lm, opt_lm, tasks, log_dir=run_dir, phase_callback=crash, **settings)
    before = dict(engine.counts)
    checkpoint = json.loads((run_dir / "checkpoint.json").read_text())
    assert checkpoint["complete"] is False and checkpoint["steps"][-1]["iteration"] == 1
    resumed = _sprig(task_lm, opt_lm, tasks, log_dir=run_dir, resume=True, **settings)
    after = dict(engine.counts)
    assert after["task"] == total["task"] and after["optimizer"] == total["optimizer"], "nothing asked twice"
    assert resumed.detailed_results["calls"]["task_lm_reused"] == before["task"]
    assert _strip(resumed.detailed_results) == _strip(reference.detailed_results)
    assert resumed.system_prompt == reference.system_prompt
    # The run directory reads like a MetaSPO run's.
    assert MetaSPOProgram.from_file(run_dir / "program.json").system_prompt == reference.system_prompt
    for name in ("program.json", "metaspo_run.json"):
        assert SystemPrompt.load(run_dir / name).text == reference.system_prompt.text
    with pytest.raises(Exception, match="differ"):
        _sprig(task_lm, opt_lm, tasks, log_dir=run_dir, resume=True, **{**settings, "num_candidates": 4})


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"screening": 0.2}, "SPRIG does not take screening"),
        ({"method": "metaspo"}, "SPRIG does not take method"),
        ({"beam_size": 0}, "beam_size must be a positive integer"),
        ({"task_call_budget": 0}, "task_call_budget must be a positive integer"),
        ({"exploration": -1}, "exploration must be a number"),
        ({"components": 3}, "components must be"),
    ],
)
def test_bad_arguments_are_clear_errors(engine_factory, kwargs, message):
    _engine, task_lm, opt_lm = engine_factory("bad-args")
    with pytest.raises(ConfigError, match=message):
        SPRIG(optimizer_lm=opt_lm, task_lm=task_lm, **kwargs)


def test_a_budget_below_the_initial_evaluation_is_refused_before_any_call(engine_factory, tmp_path):
    tasks, gold = _tasks()
    engine, task_lm, opt_lm = engine_factory("tiny", gold=gold)
    with pytest.raises(ConfigError, match="does not cover even the initial evaluation"):
        _sprig(task_lm, opt_lm, tasks, task_call_budget=15, log_dir=tmp_path / "run")
    assert engine.counts["task"] == 0 and not (tmp_path / "run" / "run.json").exists()
