"""Rows of the built-in tasks are checked against each task's declared answer type at load time:
one TaskLoadError naming the file, split, row index and expected type, before anything is paid."""

from __future__ import annotations

import json

import pytest

from metaspo_dspy.tasks import TaskLoadError, load_task, make_task

GOOD = {"question": "Q?"}


def _write(root, folder: str, task: str, train: list, test: list | None = None):
    path = root / folder / f"{task}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({"train": train, "test": test or []}), encoding="utf-8")
    return path


BAD = [
    ("amazon", "beauty", {"answer": [5]}, "a rating from 1 to 5"),
    ("amazon", "beauty", {"answer": None}, "a rating from 1 to 5"),
    ("amazon", "beauty", {"answer": 6}, "a rating from 1 to 5"),
    ("amazon", "beauty", {"answer": True}, "a rating from 1 to 5"),
    ("amazon", "beauty", {"answer": "five"}, "a rating from 1 to 5"),
    ("medmcqa", "ob_gyn", {"answer": "E"}, "one of the option letters A, B, C, D"),
    ("medmcqa", "ob_gyn", {"answer": 1}, "one of the option letters A, B, C, D"),
    ("safety", "liar", {"answer": "maybe"}, "'yes' or 'no'"),
    ("bigbench", "object_counting", {"answer": ""}, "a non-empty string (or an integer)"),
    ("bigbench", "object_counting", {"answer": {"n": 3}}, "a non-empty string (or an integer)"),
    ("bigbench", "navigate", {"answer": "true"}, "'yes' or 'no'"),
    ("grounding", "squad", {"answers": []}, "a non-empty list of non-empty strings"),
    ("grounding", "squad", {"answers": ["Paris", 3]}, "a non-empty list of non-empty strings"),
    ("grounding", "squad", {"answer": None}, "'answer': a non-empty string"),
]


@pytest.mark.parametrize(("folder", "task", "answer", "expected"), BAD, ids=[f"{b[1]}-{b[2]}" for b in BAD])
def test_a_row_of_the_wrong_answer_type_is_one_clear_error(tmp_path, folder, task, answer, expected):
    good = {"question": "fine", "answers": ["x"]} if folder == "grounding" else None
    rows = [good or {"question": "fine", "answer": {"amazon": 3, "medmcqa": "A"}.get(folder, "yes")}]
    if task == "object_counting":
        rows = [{"question": "fine", "answer": "3"}]
    path = _write(tmp_path, folder, task, train=rows, test=[rows[0], {**GOOD, **answer}])
    with pytest.raises(TaskLoadError) as info:
        load_task(task, data_dir=tmp_path, source="local", train_size=1, test_size=1)
    message = str(info.value)
    assert f"{path}, test split, row 1" in message and "; expected " in message and expected in message
    assert repr(task) in message


@pytest.mark.parametrize(
    ("folder", "task", "answer"),
    [
        ("amazon", "beauty", {"answer": 5}),
        ("amazon", "beauty", {"answer": " 3"}),
        ("medmcqa", "ob_gyn", {"answer": "b"}),
        ("safety", "liar", {"answer": "Yes"}),
        ("bigbench", "object_counting", {"answer": 12}),
        ("bigbench", "logical_deduction", {"answer": "G"}),
        ("grounding", "squad", {"answers": ["Paris", "the city of Paris"]}),
        ("grounding", "squad", {"answer": "Paris"}),
    ],
)
def test_rows_of_the_declared_type_load(tmp_path, folder, task, answer):
    _write(tmp_path, folder, task, train=[{**GOOD, **answer}])
    loaded = load_task(task, data_dir=tmp_path, source="local", train_size=1, test_size=0)
    assert len(loaded.train) == 1


def test_generated_tasks_and_user_tasks_stay_valid():
    assert load_task("gen_counting", train_size=2, test_size=2).train
    own = make_task("lists", train=[{"question": "q", "answer": ["a", "b"]}, {"question": "r", "answer": None}])
    assert len(own.train) == 2


def test_the_bundled_and_fetched_data_fits_every_declared_type(fetched_cache, monkeypatch):
    from metaspo_dspy.tasks import DOMAIN_TASKS

    monkeypatch.setenv("METASPO_CACHE_DIR", str(fetched_cache))
    for names in DOMAIN_TASKS.values():
        for name in names:
            assert load_task(name, source="local", train_size=None, test_size=None).train


def test_data_files_must_be_utf8_a_bom_is_accepted(tmp_path):
    path = tmp_path / "amazon" / "beauty.json"
    path.parent.mkdir()
    data = json.dumps({"train": [{"question": "très bien", "answer": 5}], "test": []}, ensure_ascii=False)
    path.write_bytes(b"\xef\xbb\xbf" + data.encode())
    assert load_task("beauty", data_dir=tmp_path, source="local").train[0].question == "très bien"
    path.write_bytes(data.encode("latin-1"))
    with pytest.raises(TaskLoadError, match=r"beauty\.json is not UTF-8 text: byte 0xe8 .* save it as UTF-8"):
        load_task("beauty", data_dir=tmp_path, source="local")
