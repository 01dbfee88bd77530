"""Data sources other than the shared files: Hugging Face mappings (on local hub-shaped rows), the
bigbench package path (on a task.json written here), the generated family, custom tasks, errors."""

from __future__ import annotations

import json
from pathlib import Path

import dspy
import pytest

from metaspo_dspy.program.metrics import score_example
from metaspo_dspy.tasks import (
    GENERATED_SOURCE_TASKS,
    GENERATED_TASKS,
    GENERATED_UNSEEN_TASKS,
    SOURCE_TASKS,
    Task,
    TaskLoadError,
    compile_kwargs,
    load_task,
    load_tasks,
    make_task,
)
from metaspo_dspy.tasks.sources import hub
from metaspo_dspy.tasks.sources.bigbench import BIGBENCH_ROOT_ENV, bigbench_splits, find_bigbench_root
from metaspo_dspy.tasks.specs import SPECS

pytestmark = pytest.mark.filterwarnings("ignore::metaspo_dspy.tasks.SampleSizeWarning")


# ---- Hugging Face mappings on rows shaped like the hub's -----------------------------------
def test_every_benchmark_task_has_a_hub_source():
    benchmark = [n for n, s in SPECS.items() if s.domain != "generated"]
    assert sorted(hub.HUB_SOURCES) == sorted(benchmark)
    assert hub.HUB_SOURCES["dental"].where == {"subject_name": "Dental"}
    assert hub.HUB_SOURCES["tweet_eval"].name == "offensive"


def test_map_medmcqa():
    row = {"question": "Drug of choice for X?", "opa": "A1", "opb": "B1", "opc": "C1", "opd": "D1", "cop": 2,
           "subject_name": "Pharmacology", "choice_type": "single", "exp": "", "id": "x"}  # fmt: skip
    assert hub.map_medmcqa(row) == {
        "question": "Drug of choice for X?\nOptions:\n(A) A1\n(B) B1\n(C) C1\n(D) D1",
        "answer": "C",
        "subject": "Pharmacology",
    }
    assert hub.map_medmcqa({**row, "cop": -1}) is None  # unlabeled test rows


def test_map_amazon_review():
    row = {"rating": 4.0, "title": "Nice", "text": "Works well", "asin": "B0", "user_id": "u", "helpful_vote": 0}
    assert hub.map_amazon_review(row) == {
        "question": "title: Nice\ntext: Works well",
        "answer": 4,
        "sentiment": "positive",
    }
    assert hub.map_amazon_review({**row, "rating": 2.0})["sentiment"] == "negative"
    assert hub.map_amazon_review({**row, "rating": None}) is None


def test_map_bigbench_rows():
    mc = {
        "idx": 0,
        "inputs": "Q: Alice has a ball. Who has it?\n  choice: Alice\n  choice: Bob\nA:",
        "targets": ["Bob"],
        "multiple_choice_targets": ["Alice", "Bob"],
        "multiple_choice_scores": [0, 1],
    }
    assert hub.map_bigbench_option(mc) == {
        "question": "Alice has a ball. Who has it?\nOptions:\n(A) Alice\n(B) Bob",
        "answer": "B",
    }
    shuffled = hub.map_bigbench_temporal(mc)
    assert shuffled == hub.map_bigbench_temporal(mc)  # deterministic
    letter = shuffled["answer"]
    assert f"({letter}) Bob" in shuffled["question"]
    count = {"idx": 1, "inputs": "I have a cat and two dogs. How many animals do I have?",
             "targets": ["three"], "multiple_choice_targets": [], "multiple_choice_scores": []}  # fmt: skip
    assert hub.map_bigbench_target(count)["answer"] == "3"
    nav = {**count, "inputs": "Take 1 step. Turn around. Take 1 step.", "targets": ["True"]}
    assert hub.map_bigbench_navigate(nav) == {
        "question": "Take 1 step. Turn around. Take 1 step.\nOptions:\n- Yes\n- No",
        "answer": "yes",
    }


def test_map_safety_rows():
    liar = {"id": "1.json", "label": 0, "statement": "S", "subject": "x", "speaker": "p", "job_title": "J",
            "state_info": "Ohio", "party_affiliation": "none", "context": "a speech"}  # fmt: skip
    assert hub.map_liar(liar) == {
        "question": "Statement: S\nJob title: J\nState: Ohio\nParty: none\nContext: a speech",
        "answer": "yes",
    }
    assert hub.map_liar({**liar, "label": 3})["answer"] == "no"
    assert hub.map_liar({**liar, "label": 1}) is None  # half-true: not in the binary task
    hate = {"functionality": "derog_neg_emote_h", "case_id": 1, "test_case": "I hate X.", "label_gold": "hateful"}
    assert hub.map_hatecheck(hate)["answer"] == "yes"
    assert hub.map_hatecheck({**hate, "label_gold": "non-hateful"})["answer"] == "no"
    assert hub.map_tweet_eval({"text": "@user you are awful", "label": 1}) == {
        "question": "@user you are awful",
        "answer": "yes",
    }
    assert hub.map_ar_sarcasm({"tweet": "t", "sarcasm": 0, "dialect": 2, "sentiment": 1})["answer"] == "no"
    assert hub.map_ethos({"text": "some text", "label": 1}) == {"question": "some text", "answer": "yes"}
    pair = {"chosen": "\n\nHuman: hi\n\nAssistant: hello", "rejected": "\n\nHuman: hi\n\nAssistant: go away"}
    mapped = hub.map_hh_rlhf(pair)
    assert mapped == hub.map_hh_rlhf(pair)
    assert mapped["question"] == (
        "Human: hi\n\nAssistant: go away" if mapped["answer"] == "yes" else "Human: hi\n\nAssistant: hello"
    )


def test_map_grounding_rows():
    squad = {"id": "q1", "title": "T", "context": "Paris is in France.", "question": "Where is Paris?",
             "answers": {"text": ["France", "France"], "answer_start": [12, 12]}}  # fmt: skip
    assert hub.map_squad(squad) == {
        "question": "Context: Paris is in France.\nQuestion: Where is Paris?",
        "answers": ["France"],
        "id": "q1",
    }
    assert hub.map_squad({**squad, "context": "x" * 3000}) is None  # the 2,500-character rule
    hotpot = {"id": "h1", "question": "Who?", "answer": "Ann", "type": "bridge", "level": "easy",
              "supporting_facts": {"title": ["P2", "P1"], "sent_id": [0, 1]},
              "context": {"title": ["P1", "P2"], "sentences": [["a.", "Ann b."], ["c."]]}}  # fmt: skip
    assert hub.map_hotpot_qa(hotpot)["question"] == "Context: c. Ann b.\nQuestion: Who?"
    mrqa = {"subset": "NaturalQuestionsShort", "context": "<P> Ann wrote it </P>", "question": "who wrote it",
            "answers": ["Ann"], "qid": "n1", "detected_answers": {}}  # fmt: skip
    assert hub.map_mrqa(mrqa)["answers"] == ["Ann"]
    drop = {"section_id": "s", "query_id": "d1", "passage": "3 goals.", "question": "How many goals?",
            "answers_spans": {"spans": ["3"], "types": ["number"]}}  # fmt: skip
    assert hub.map_drop(drop) == {
        "question": "Context: 3 goals.\nQuestion: How many goals?",
        "answers": ["3"],
        "id": "d1",
    }
    webq = {"url": "u", "question": "what is the capital of france?", "answers": ["Paris"]}
    assert hub.map_web_questions(webq) == {"question": "what is the capital of france?", "answers": ["Paris"]}


def test_map_rows_and_carve_are_deterministic():
    rows = [{"text": f"t{i % 30}", "label": i % 2} for i in range(40)]
    mapped = hub.map_rows(rows, hub.map_tweet_eval)
    assert len(mapped) == 30  # repeated questions dropped
    split = hub.carve(mapped, "ethos")
    assert split == hub.carve(mapped, "ethos") and len(split["train"]) == 12 and len(split["test"]) == 18
    assert not {r["question"] for r in split["train"]} & {r["question"] for r in split["test"]}


def test_hub_failure_is_one_clear_error(monkeypatch, tmp_path):
    datasets_config = pytest.importorskip("datasets.config")
    monkeypatch.setattr(datasets_config, "HF_HUB_OFFLINE", True)
    monkeypatch.delenv(BIGBENCH_ROOT_ENV, raising=False)
    with pytest.raises(TaskLoadError) as info:
        load_task("navigate", tmp_path, source="hub")
    message = str(info.value)
    assert "'navigate'" in message and "source='hub'" in message and "tasksource/bigbench" in message


def test_auto_never_asks_the_hub(monkeypatch, tmp_path):
    """``auto`` = local places, then the bigbench package; the hub only when asked (source="hub")."""
    monkeypatch.delenv(BIGBENCH_ROOT_ENV, raising=False)
    with pytest.raises(TaskLoadError) as info:
        load_task("navigate", tmp_path, source="auto", bigbench_root=tmp_path / "nowhere")
    message = str(info.value)
    assert "'navigate'" in message and str(tmp_path / "bigbench" / "navigate.json") in message
    assert "bigbench package" in message and "Hugging Face" not in message


# ---- the bigbench package path -------------------------------------------------------------
def _write(path: Path, data: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data), encoding="utf-8")


@pytest.fixture
def bigbench_root(tmp_path) -> Path:
    root = tmp_path / "bigbench" / "benchmark_tasks"
    navigate = []
    for i in range(1, 9):
        navigate.append(
            {"input": f"Take {i} steps. Turn around. Take {i} steps.", "target_scores": {"True": 1, "False": 0}}
        )
        navigate.append({"input": f"Take {i} steps.", "target_scores": {"True": 0, "False": 1}})
    navigate.append({"input": "Take 1 steps.", "target_scores": {"True": 0, "False": 1}})  # a duplicate
    prefix = "If you follow these instructions, do you return to the starting point?\n"
    _write(root / "navigate" / "task.json", {"name": "navigate", "task_prefix": prefix, "examples": navigate})
    for k, sub in enumerate(("three_objects", "five_objects", "seven_objects")):
        examples = [
            {"input": f"Puzzle {k}-{i}.", "target_scores": {"first": int(i % 2 == 0), "second": int(i % 2 == 1)}}
            for i in range(6)
        ]
        header = f"The following paragraphs each describe a set of {sub[:-8]} objects.\n\n"
        _write(root / "logical_deduction" / sub / "task.json", {"task_prefix": header, "examples": examples})
    _write(
        root / "temporal_sequences" / "task.json",
        {
            "examples": [{"input": f"When {i}?", "target_scores": {"1pm": 1, "2pm": 0, "3pm": 0}} for i in range(10)],
        },
    )
    _write(
        root / "object_counting" / "task.json",
        {
            "examples": [{"input": f"I have {i} cats. How many?", "target": [str(i), "n"]} for i in range(1, 11)],
        },
    )
    return root


def test_bigbench_package_path(bigbench_root):
    task = load_task(
        "navigate", source="bigbench", bigbench_root=bigbench_root, seed=None, train_size=None, test_size=None
    )
    assert task.metadata["source"] == "bigbench"
    assert len(task.train) + len(task.test) == 16  # the duplicate dropped
    example = task.train[0]
    assert example.question.startswith("If you follow these instructions, do you return to the starting point?\nTake")
    assert example.question.endswith("\nOptions:\n- Yes\n- No")
    assert example.answer == ("yes" if "Turn around" in example.question else "no")
    assert task.metric(example, dspy.Prediction(answer="Yes" if example.answer == "yes" else "No")).score == 1.0


def test_bigbench_package_subtasks_options_and_targets(bigbench_root):
    splits = bigbench_splits("logical_deduction", bigbench_root, n_train=6, n_test=6)
    assert [r["subtask"] for r in splits["train"]] == ["three_objects"] * 2 + ["five_objects"] * 2 + [
        "seven_objects"
    ] * 2
    row = splits["train"][0]
    assert row["question"].startswith("The following paragraphs each describe a set of three objects.\n\nPuzzle 0-")
    assert row["question"].endswith("\nOptions:\n(A) first\n(B) second")
    assert row["answer"] == ("A" if int(row["question"].split("-")[1][0]) % 2 == 0 else "B")
    temporal = bigbench_splits("temporal_sequences", bigbench_root, n_train=4, n_test=6)
    assert {r["answer"] for r in temporal["train"] + temporal["test"]} != {"A"}  # the right answer was always first
    for r in temporal["train"]:
        assert f"({r['answer']}) 1pm" in r["question"]
    counting = bigbench_splits("object_counting", bigbench_root, n_train=4, n_test=6)
    assert all(r["question"].startswith(f"I have {r['answer']} cats") for r in counting["train"] + counting["test"])
    assert bigbench_splits("object_counting", bigbench_root, 4, 6) == counting


def test_bigbench_auto_prefers_local_then_package(bigbench_root, tmp_path, monkeypatch):
    monkeypatch.setenv(BIGBENCH_ROOT_ENV, str(bigbench_root))
    assert find_bigbench_root() == bigbench_root
    assert load_task("object_counting", tmp_path / "empty").metadata["source"] == "bigbench"
    local = tmp_path / "data"
    _write(local / "bigbench" / "object_counting.json", {"train": [{"question": "q", "answer": "1"}], "test": []})
    assert load_task("object_counting", local).metadata["source"] == "local"
    with pytest.raises(TaskLoadError, match="BIG-bench task file not found"):
        load_task("epistemic", tmp_path / "empty", source="bigbench")


# ---- errors --------------------------------------------------------------------------------
def test_unknown_task_suggests_names():
    with pytest.raises(TaskLoadError, match=r"unknown task 'beuty'; did you mean 'beauty'"):
        load_task("beuty")
    assert isinstance(TaskLoadError("x"), ValueError)


def test_missing_and_malformed_local_files(tmp_path):
    with pytest.raises(TaskLoadError) as info:
        load_task("beauty", tmp_path, source="local")
    assert "'beauty'" in str(info.value) and str(tmp_path / "amazon" / "beauty.json") in str(info.value)
    _write(tmp_path / "amazon" / "beauty.json", {"train": [{"text": "no question"}], "test": []})
    with pytest.raises(TaskLoadError, match="no string 'question'"):
        load_task("beauty", tmp_path, source="local")
    (tmp_path / "amazon" / "game.json").write_text("{not json", encoding="utf-8")
    with pytest.raises(TaskLoadError, match="cannot read"):
        load_task("game", tmp_path, source="local")
    with pytest.raises(ValueError, match="prompt_format"):
        load_task("beauty", tmp_path, prompt_format="raw")


def test_default_data_dir_comes_from_the_environment(tmp_path, monkeypatch):
    _write(
        tmp_path / "safety" / "ethos.json",
        {"train": [{"question": "q", "answer": "yes"}], "test": [{"question": "p", "answer": "no"}]},
    )
    monkeypatch.setenv("METASPO_DATA_DIR", str(tmp_path))
    task = load_task("ethos", source="local")
    assert task.metadata["path"] == str(tmp_path / "safety" / "ethos.json") and len(task.test) == 1


# ---- generated family ----------------------------------------------------------------------
def test_generated_family_is_registered_and_split():
    assert len(GENERATED_TASKS) >= 6
    assert set(GENERATED_SOURCE_TASKS).isdisjoint(GENERATED_UNSEEN_TASKS)
    assert SOURCE_TASKS["generated"] == GENERATED_SOURCE_TASKS


@pytest.mark.parametrize("name", GENERATED_TASKS)
def test_generated_tasks_are_seeded_and_exact(name):
    task = load_task(name)
    again = load_task(name)
    assert task.domain == "generated" and len(task.train) == 50 and len(task.test) == 500
    assert [(e.question, e.answer) for e in task.test] == [(e.question, e.answer) for e in again.test]
    assert [e.question for e in load_task(name, generator_seed=1).test] != [e.question for e in task.test]
    assert not {e.question for e in task.train} & {e.question for e in task.test}
    assert all(len(e.answer.split()) == 1 for e in task.test)
    for fmt, make in (
        ("dspy", lambda a: dspy.Prediction(answer=a)),
        ("reference", lambda a: dspy.Prediction(response=f"<answer>{a}</answer>")),
    ):
        t = load_task(name, prompt_format=fmt, test_size=50)
        assert all(score_example(t.metric, e, make(e.answer), name).value == 1.0 for e in t.test)


def test_generated_answers_are_right():
    for e in load_task("gen_compare").test[:50]:
        a, b = (int(x) for x in e.question.rstrip("?").split("larger, ")[1].split(" or "))
        assert e.answer == str(max(a, b))
    for e in load_task("gen_parity").test[:50]:
        assert e.answer == ("even" if int(e.question.split()[1]) % 2 == 0 else "odd")
    for e in load_task("gen_boolean").test[:50]:
        assert e.answer == str(eval(e.question.removesuffix(" is"))).lower()


# ---- custom tasks --------------------------------------------------------------------------
def test_make_task_from_dicts_with_default_metric():
    rows = [{"country": "France", "answer": "Paris"}, {"country": "Japan", "answer": "Tokyo"}]
    task = make_task("capitals", rows, rows[:1], instructions="Name the capital city of the country.")
    assert task.initial_prompt == "Name the capital city of the country."
    assert list(task.signature.input_fields) == ["country"] and list(task.signature.output_fields) == ["answer"]
    assert task.metric(task.test[0], dspy.Prediction(answer=" paris. ")) is True
    assert task.metric(task.test[0], dspy.Prediction(answer="Lyon")) is False
    assert set(compile_kwargs([task])["trainsets"]) == {"capitals"}


def test_task_from_examples_with_own_metric():
    train = [dspy.Example(a=1, b=2, total="3").with_inputs("a", "b")]
    task = Task.from_examples("sum", train, metric=lambda ex, pred, trace=None: pred.total == ex.total, output="total")
    assert list(task.signature.input_fields) == ["a", "b"] and task.domain == "custom"
    with pytest.raises(ValueError, match="no 'answer' label"):
        make_task("bad", [{"question": "q"}])
    with pytest.raises(ValueError, match="at least one train example"):
        make_task("empty", [])


def test_load_tasks_many():
    tasks = load_tasks(GENERATED_SOURCE_TASKS, prompt_format="reference", train_size=5, test_size=5)
    assert [t.name for t in tasks] == list(GENERATED_SOURCE_TASKS)
    assert all(t.prompt_suffix.startswith("<Question>") for t in tasks)
    assert [t.name for t in load_tasks("gen_parity")] == ["gen_parity"]
