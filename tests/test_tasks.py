"""Acceptance tests of the 35 benchmark tasks as a user gets them: the 25 bundled ones from the package,
the 10 others (and the unseen tasks' user prompts) from a cache written by the real ``metaspo data
fetch`` code from test-made originals (conftest.fetched_cache). Loading through the default places,
oracle and constant answers in both prompt formats, the reference's sampling, unseen prompts, and
DSPy end to end."""

from __future__ import annotations

import json
import os
import random
import re
import string
from pathlib import Path

import dspy
import pytest

from metaspo_dspy.program.adapters import ReferenceAdapter
from metaspo_dspy.program.metrics import TaskMetric, score_example, task_score
from metaspo_dspy.tasks import (
    BENCHMARK_TASKS,
    DOMAIN_TASKS,
    SOURCE_TASKS,
    UNSEEN_TASKS,
    SampleSizeWarning,
    Task,
    compile_kwargs,
    get_spec,
    load_task,
    load_unseen_user_prompts,
)
from metaspo_dspy.tasks.provenance import DATA_INFO, caveats
from metaspo_dspy.tasks.sources.local import BUNDLED_DIR
from metaspo_dspy.testing import FakeEngine, fake_lm

FOLDERS = {
    "medical": "medmcqa",
    "review": "amazon",
    "reasoning": "bigbench",
    "safety": "safety",
    "grounding": "grounding",
}
OPTION_TASKS = {"logical_deduction", "temporal_sequences", "tracking_shuffled_objects", *DOMAIN_TASKS["medical"]}

pytestmark = pytest.mark.filterwarnings("ignore::metaspo_dspy.tasks.SampleSizeWarning")


@pytest.fixture(autouse=True)
def fetched(fetched_cache, monkeypatch) -> Path:
    """The default places (user cache, then bundled data), the cache holding what was fetched."""
    monkeypatch.setenv("METASPO_CACHE_DIR", str(fetched_cache))
    return fetched_cache


def path_of(task: str) -> Path:
    """Where the task's file must be: the package for a bundled task, else the user cache."""
    spec = get_spec(task)
    root = BUNDLED_DIR if DATA_INFO[task].delivery == "bundled" else Path(os.environ["METASPO_CACHE_DIR"])
    return root / FOLDERS[spec.domain] / f"{task}.json"


def raw(task: str) -> dict:
    return json.loads(path_of(task).read_text(encoding="utf-8"))


def full(task: str, prompt_format: str = "dspy") -> Task:
    return load_task(task, prompt_format=prompt_format, train_size=None, test_size=None)


def score(task: Task, predictions: list) -> float:
    """The task score through the metric contract's own helpers."""
    examples = task.test
    per = [score_example(task.metric, e, p, task.name).value for e, p in zip(examples, predictions, strict=True)]
    return task_score(task.metric, examples, predictions, per, task.name)


def gold(example: dspy.Example) -> str:
    return example.answers[0] if "answers" in example else example.answer


def squad(text: str) -> str:  # an independent SQuAD normalisation for expected values
    text = "".join(c for c in text.lower() if c not in string.punctuation)
    return " ".join(re.sub(r"\b(a|an|the)\b", " ", text).split())


def f1_constant(golds: list[str], constant: str) -> float:
    """Macro-F1 of always predicting ``constant``, by hand."""
    labels = set(golds) | {constant}
    total = 0.0
    for label in labels:
        tp = sum(g == label for g in golds) if label == constant else 0
        fp = sum(g != label for g in golds) if label == constant else 0
        fn = sum(g == label for g in golds) - tp
        total += 2 * tp / (2 * tp + fp + fn) if tp + fp + fn else 0.0
    return total / len(labels)


# ---- registry and loading ------------------------------------------------------------------
def test_registry_has_the_35_tasks_with_paper_splits():
    assert len(BENCHMARK_TASKS) == 35
    assert "navigate" in BENCHMARK_TASKS and "antropic_harmless" in BENCHMARK_TASKS
    in_configs = {t for d in FOLDERS for t in (*SOURCE_TASKS[d], *UNSEEN_TASKS[d])}
    assert len(in_configs) == 34 and set(BENCHMARK_TASKS) - in_configs == {"navigate"}
    assert SOURCE_TASKS["review"] == ("beauty", "game", "baby", "office")
    assert UNSEEN_TASKS["safety"] == ("ethos", "antropic_harmless")


@pytest.mark.parametrize("prompt_format", ["dspy", "reference"])
def test_every_task_loads_with_the_reference_sizes(prompt_format):
    for name in BENCHMARK_TASKS:
        task = load_task(name, prompt_format=prompt_format)
        data = raw(name)
        assert task.name == name and task.domain == get_spec(name).domain
        assert len(task.train) == min(50, len(data["train"])) and len(task.test) == min(500, len(data["test"]))
        assert all(set(e.inputs().keys()) == {"question"} for e in task.train + task.test)
        assert task.metadata["source"] == "local" and task.metadata["path"] == str(path_of(name))
        assert task.metadata["origin"] == {"bundled": "bundled", "fetch": "fetched"}[DATA_INFO[name].delivery]
        assert task.metadata["caveats"] == [str(c) for c in caveats(name)]
        spec = get_spec(name)
        if prompt_format == "dspy":
            assert task.initial_prompt == spec.base_prompt and task.prompt_suffix == ""
            assert list(task.signature.output_fields) == ["answer"]
            assert "<Question>" not in task.initial_prompt and "<answer>" not in task.initial_prompt
        else:
            assert task.initial_prompt == spec.base_prompt + task.prompt_suffix
            assert task.prompt_suffix.startswith("<Question>{question}</Question>\n")
            assert list(task.signature.output_fields) == ["response"]


def test_initial_prompts_are_the_references():
    assert load_task("beauty").initial_prompt == "Predict the customer's rating from 1 to 5."
    ref = load_task("dental", prompt_format="reference")
    assert ref.initial_prompt == (
        "Given the following question and candidate answers, choose the best answer."
        "<Question>{question}</Question>\nAt the end present your answer in <answer> and </answer>."
    )
    assert load_task("ethos", prompt_format="reference").prompt_suffix.endswith(
        "<answer>yes</answer> or <answer>no</answer>."
    )
    assert load_task("web_qa", prompt_format="reference").prompt_suffix.endswith("Respond with the answer only")


def test_anthropic_alias_loads_antropic_harmless():
    task = load_task("anthropic_harmless")
    assert task.name == "antropic_harmless" and task.metadata["role"] == "unseen"


def test_compile_kwargs_accepts_loaded_tasks():
    tasks = [load_task(n, prompt_format="reference") for n in ("beauty", "liar")]
    kwargs = compile_kwargs(tasks)
    assert set(kwargs["program"]) == {"beauty", "liar"}
    assert isinstance(kwargs["metrics"]["liar"], TaskMetric)
    assert kwargs["user_prompt_suffixes"]["beauty"].startswith("<Question>")


# ---- oracle and constant answers -----------------------------------------------------------
@pytest.mark.parametrize("name", BENCHMARK_TASKS)
def test_oracle_scores_one_in_both_formats(name):
    dspy_task, ref_task = full(name), full(name, "reference")
    oracle = [dspy.Prediction(answer=gold(e)) for e in dspy_task.test]
    assert score(dspy_task, oracle) == 1.0
    if get_spec(name).domain == "grounding":
        responses = [dspy.Prediction(response=gold(e)) for e in ref_task.test]
    else:
        responses = [dspy.Prediction(response=f"Reasoning... <answer>{gold(e)}</answer>") for e in ref_task.test]
    assert score(ref_task, responses) == 1.0


def _constant(name: str) -> tuple[str, str, str]:
    """(DSPy answer, reference response, the gold both should read as)."""
    spec = get_spec(name)
    if name in OPTION_TASKS:
        return "Answer: (B)", "<answer>Answer: B</answer>", "B|A"  # the reference reads "A"
    if spec.domain == "review":
        return "4 stars", "<answer>I give it 4 out of 5</answer>", "4|4"
    if name in ("navigate",) or spec.domain == "safety":
        return "Yes.", "<answer>yes</answer>", "yes|yes"
    return "Three", "<answer>three</answer>", "3|3"


@pytest.mark.parametrize("name", [n for n in BENCHMARK_TASKS if get_spec(n).domain != "grounding"])
def test_constant_answer_scores_as_expected(name):
    dspy_answer, ref_response, reads = _constant(name)
    dspy_gold, ref_gold = reads.split("|")
    for task, pred, read in (
        (full(name), dspy.Prediction(answer=dspy_answer), dspy_gold),
        (full(name, "reference"), dspy.Prediction(response=ref_response), ref_gold),
    ):
        golds = [e.answer for e in task.test]
        if get_spec(name).metric == "macro_f1":
            expected = f1_constant(golds, read)
        else:
            expected = sum(g == read for g in golds) / len(golds)
        assert score(task, [pred] * len(golds)) == pytest.approx(expected)


def test_reference_safety_keeps_each_unparsable_string_as_a_class():
    task = full("liar", "reference")
    golds = [e.answer for e in task.test]
    preds = [dspy.Prediction(response="<answer>Yes.</answer>")] * len(golds)  # "yes." is no label
    assert score(task, preds) == pytest.approx(f1_constant(golds, "yes."))
    assert score(task, preds) == 0.0
    assert score(full("liar"), [dspy.Prediction(answer="Yes.")] * len(golds)) == pytest.approx(
        f1_constant(golds, "yes")
    )


@pytest.mark.parametrize("name", DOMAIN_TASKS["grounding"])
def test_grounding_constant_and_whole_response(name):
    dspy_task, ref_task = full(name), full(name, "reference")
    constant = gold(dspy_task.test[0])
    expected = sum(any(squad(g) == squad(constant) for g in e.answers) for e in dspy_task.test) / len(dspy_task.test)
    assert score(dspy_task, [dspy.Prediction(answer=f"Answer: {constant}")] * len(dspy_task.test)) == pytest.approx(
        expected
    )
    # the reference scores the whole response: a labelled answer is wrong there
    labelled = [dspy.Prediction(response=f"Answer: {gold(e)}") for e in ref_task.test]
    expected_ref = sum(any(squad(g) == squad(f"Answer: {gold(e)}") for g in e.answers) for e in ref_task.test) / len(
        ref_task.test
    )
    assert score(ref_task, labelled) == pytest.approx(expected_ref)


def test_failed_predictions_are_wrong_and_an_unparsable_class():
    task = load_task("hatecheck", train_size=4, test_size=4)
    preds = [None] * 4
    golds = [e.answer for e in task.test]
    assert task.metric.aggregate(task.test, preds) == pytest.approx(f1_constant(golds, "<unparsable>"))


# ---- sampling ------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("name", "seed", "train_size"), [("beauty", 42, 50), ("dental", 7, 30), ("liar", 0, 50), ("squad", 123, 10)]
)
def test_sampling_matches_the_references_global_shuffle(name, seed, train_size):
    data = raw(name)
    state = random.getstate()
    try:
        train, test = list(data["train"]), list(data["test"])
        random.seed(42)
        random.shuffle(test)
        random.seed(seed)
        random.shuffle(train)
    finally:
        random.setstate(state)
    task = load_task(name, seed=seed, train_size=train_size, test_size=100)
    assert [e.question for e in task.train] == [r["question"] for r in train[:train_size]]
    assert [e.question for e in task.test] == [r["question"] for r in test[:100]]


def test_sampling_is_deterministic_and_seed_none_keeps_file_order():
    first = load_task("game", seed=3)
    assert [e.question for e in first.train] == [e.question for e in load_task("game", seed=3).train]
    assert [e.question for e in load_task("game", seed=4).train] != [e.question for e in first.train]
    unshuffled = load_task("game", seed=None, train_size=5)
    assert [e.question for e in unshuffled.train] == [r["question"] for r in raw("game")["train"][:5]]


def test_train_size_above_the_file_is_capped_with_a_warning():
    with pytest.warns(SampleSizeWarning, match="ob_gyn"):
        task = load_task("ob_gyn", train_size=1000)
    assert len(task.train) == len(raw("ob_gyn")["train"])


# ---- unseen user prompts -------------------------------------------------------------------
@pytest.mark.parametrize("name", [t for d in FOLDERS for t in UNSEEN_TASKS[d]])
def test_unseen_user_prompts_both_formats(name, fetched):
    spec = get_spec(name)
    stored = json.loads((fetched / "unseen_user_prompts" / f"{spec.unseen_file}.json").read_text(encoding="utf-8"))
    assert load_unseen_user_prompts(name, prompt_format="reference") == stored[:10]
    prompts = load_unseen_user_prompts(name, num=3)
    assert len(prompts) == 3
    for original, prompt in zip(stored, prompts, strict=False):
        assert "{question}" not in prompt and "<Question>" not in prompt
        assert spec.format_line not in prompt and prompt
        assert original.startswith(prompt)


def test_unseen_prompts_alias_and_cap():
    assert load_unseen_user_prompts("anthropic_harmless") == load_unseen_user_prompts("harmless")
    with pytest.warns(SampleSizeWarning):
        assert len(load_unseen_user_prompts("pet", num=50)) == 30


# ---- end to end through dspy.Predict and the fake LM ---------------------------------------
def test_dspy_format_task_runs_end_to_end():
    task = load_task("pet", train_size=8, test_size=8)
    engine = FakeEngine(gold={e.question: e.answer for e in task.test}, skill=lambda s, u: 1.0)
    with dspy.context(lm=fake_lm("tasks-e2e-dspy", engine)):
        predictions = [task.program()(**e.inputs()) for e in task.test]
    assert score(task, predictions) == 1.0
    assert engine.counts["task:chat"] == 8


def test_reference_format_task_runs_end_to_end():
    task = load_task("dental", prompt_format="reference", train_size=8, test_size=8)
    golds = {e.question: e.answer for e in task.test}
    right, wrong = FakeEngine(gold=golds, skill=lambda s, u: 1.0), FakeEngine(gold=golds, skill=lambda s, u: 0.0)
    for engine, expected in ((right, 1.0), (wrong, 0.0)):
        with dspy.context(lm=fake_lm(f"tasks-e2e-ref-{expected}", engine), adapter=ReferenceAdapter()):
            predictions = [task.program()(**e.inputs()) for e in task.test]
        assert all("<answer>" in p.response for p in predictions)
        assert score(task, predictions) == expected
    sent = right.requests[0].messages[-1]["content"]
    assert sent.startswith("Given the following question") and "<Question>" in sent
