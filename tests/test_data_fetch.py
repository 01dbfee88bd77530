"""Task data on a fresh install: what is bundled (and only that), ``metaspo data fetch`` against a
loopback server serving test-made originals (conversion, checksums, failures, atomic writes), the
order of the places a task is read from, the one-line errors naming the fetch command, the caveats,
and ``metaspo tasks``."""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import REPO
from originals import AMAZON_TEST, AMAZON_TRAIN, amazon, serving, write_mirror

from metaspo_dspy.cli import main
from metaspo_dspy.tasks import BENCHMARK_TASKS, DOMAIN_TASKS, SOURCE_TASKS, TaskLoadError, get_spec, load_task
from metaspo_dspy.tasks import load_unseen_user_prompts as unseen_prompts
from metaspo_dspy.tasks.provenance import DATA_INFO, availability, caveats
from metaspo_dspy.tasks.sources.fetch import DataFetchError, fetch_data, resolve_targets
from metaspo_dspy.tasks.sources.local import BUNDLED_DIR
from metaspo_dspy.tasks.sources.remote import REMOTE_ITEMS, SHA256, base_url

BUNDLED = [t for t in BENCHMARK_TASKS if DATA_INFO[t].delivery == "bundled"]
FETCHED = [t for t in BENCHMARK_TASKS if DATA_INFO[t].delivery == "fetch"]


@pytest.fixture
def mirror(tmp_path):
    """Test-made originals served on a loopback port: (base URL, their checksums, mirror folder)."""
    sums = write_mirror(tmp_path / "mirror")
    with serving(tmp_path / "mirror") as url:
        yield url, sums, tmp_path / "mirror"


def _files(root: Path) -> dict[str, bytes]:
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in root.rglob("*") if p.is_file()}


def _split(path: Path) -> dict:
    return json.loads(path.read_text(encoding="utf-8"))


# ---- what ships -----------------------------------------------------------------------------
def test_only_redistributable_tasks_are_bundled_and_each_has_its_notice():
    assert sorted(FETCHED) == sorted([*DOMAIN_TASKS["review"], "liar", "tweet_eval", "ethos"])
    assert len(BUNDLED) == 25
    shipped = {p.relative_to(BUNDLED_DIR).as_posix() for p in BUNDLED_DIR.rglob("*") if p.is_file()}
    expected = {f"{get_spec(t).folder}/{t}.json" for t in BUNDLED}
    assert shipped == expected | {"NOTICE.md"}, "no unlicensed file (Amazon, LIAR, ETHOS, prompts) in the package"
    notice = (BUNDLED_DIR / "NOTICE.md").read_text(encoding="utf-8")
    for task in BUNDLED:
        assert f"`{task}`" in notice, f"{task} is not named in NOTICE.md"
        data = _split(BUNDLED_DIR / get_spec(task).folder / f"{task}.json")
        assert (len(data["train"]), len(data["test"])) == (DATA_INFO[task].train, DATA_INFO[task].test)
    for licence in {DATA_INFO[t].licence for t in BUNDLED}:
        assert licence in notice
    assert not any(DATA_INFO[t].licence.startswith(("GPL", "none")) for t in BUNDLED)
    # What is not bundled is fetchable: every fetched task's data, every unseen task's prompts.
    assert {t for t, items in REMOTE_ITEMS.items() if any(i.kind == "data" for i in items)} == set(FETCHED)
    unseen = {t for t in BENCHMARK_TASKS if get_spec(t).role == "unseen"}
    assert {t for t, items in REMOTE_ITEMS.items() if any(i.kind == "prompts" for i in items)} == unseen
    assert len(unseen) == 14


def test_targets_resolve_to_tasks():
    assert resolve_targets(["review"]) == list(DOMAIN_TASKS["review"])
    assert resolve_targets(["ethos", "anthropic_harmless", "ethos"]) == ["ethos", "antropic_harmless"]
    assert len(resolve_targets(["all"])) == 35 and resolve_targets(["global"]) == resolve_targets(["all"])
    with pytest.raises(TaskLoadError, match=r"unknown data target 'reviews'; did you mean .*'review'"):
        resolve_targets(["reviews"])


# ---- fetching -------------------------------------------------------------------------------
def test_fetch_converts_each_original_to_the_reference_layout(mirror, tmp_path):
    url, sums, _ = mirror
    cache = tmp_path / "cache"
    records = fetch_data(["review", "safety"], cache=cache, base=url, checksums=sums)
    by = {(r.task, r.kind): r for r in records}
    assert by[("beauty", "data")].status == "fetched" and by[("hatecheck", "data")].status == "bundled"
    assert by[("pet", "prompts")].path == cache / "unseen_user_prompts" / "pet.json"
    assert by[("ethos", "prompts")].status == "fetched" and ("beauty", "prompts") not in by

    # Amazon: the reference's own rows, unchanged, the repeated one included.
    beauty = _split(cache / "amazon" / "beauty.json")
    original = json.loads(amazon("beauty"))
    assert beauty == original and (len(beauty["train"]), len(beauty["test"])) == (AMAZON_TRAIN, AMAZON_TEST)
    assert by[("beauty", "data")].detail == f"{AMAZON_TRAIN} train / {AMAZON_TEST} test"
    assert "\n{" in (cache / "amazon" / "beauty.json").read_text(), "one example per line"
    # LIAR: label 1 -> yes; a repeated statement kept once; a test statement also in train dropped.
    liar = _split(cache / "safety" / "liar.json")
    assert (len(liar["train"]), len(liar["test"])) == (80, 40)
    assert liar["train"][1] == {
        "question": "Statement: train claim 1 about taxes.\nJob title: Senator\nState: Ohio\nParty: none\nContext: TV",
        "answer": "yes",
    }
    assert not {r["question"] for r in liar["train"]} & {r["question"] for r in liar["test"]}
    # TweetEval: texts stripped, parallel labels.
    tweets = _split(cache / "safety" / "tweet_eval.json")
    assert tweets["train"][0] == {"question": "@user train tweet 0 says hi 😀", "answer": "yes"}
    assert tweets["train"][1]["answer"] == "no" and len(tweets["test"]) == 40
    # ETHOS: isHate >= 0.5 -> yes, 40 / 60 split, fixed seed, disjoint.
    ethos = _split(cache / "safety" / "ethos.json")
    assert (len(ethos["train"]), len(ethos["test"])) == (40, 60)
    rows = ethos["train"] + ethos["test"]
    assert {int(r["question"].split()[2]) % 5 >= 2 for r in rows if r["answer"] == "yes"} == {True}
    assert {int(r["question"].split()[2]) % 5 < 2 for r in rows if r["answer"] == "no"} == {True}
    again = fetch_data(["ethos"], cache=tmp_path / "other", base=url, checksums=sums)
    assert _split(again[0].path) == ethos, "the same split on every machine"
    # The authors' prompts: the list as published.
    stored = json.loads((cache / "unseen_user_prompts" / "harmless.json").read_text())
    assert len(stored) == 30 and stored[0].endswith("<answer>yes</answer> or <answer>no</answer>.")
    assert not list(cache.rglob("*.tmp"))


def test_what_is_in_the_cache_is_not_downloaded_again_unless_forced(mirror, tmp_path):
    url, sums, served = mirror
    cache = tmp_path / "cache"
    fetch_data(["pet"], cache=cache, base=url, checksums=sums)
    shutil.rmtree(served / "Dozi01")  # the server would now answer 404
    records = fetch_data(["pet"], cache=cache, base=url, checksums=sums)
    assert [(r.kind, r.status) for r in records] == [("data", "present"), ("prompts", "present")]
    with pytest.raises(DataFetchError, match=r"cannot download http://127\.0\.0\.1:\d+/Dozi01/.*: HTTP 404"):
        fetch_data(["pet"], cache=cache, base=url, checksums=sums, force=True)
    assert _split(cache / "amazon" / "pet.json") == json.loads(amazon("pet")), "a failed refetch keeps the old file"


def test_a_checksum_mismatch_writes_nothing(mirror, tmp_path):
    url, _, _ = mirror
    cache = tmp_path / "cache"
    served = hashlib.sha256(amazon("game")).hexdigest()
    with pytest.raises(DataFetchError) as info:
        fetch_data(["game"], cache=cache, base=url)  # the checksums recorded for the real files
    message = str(info.value)
    assert f"checksum mismatch for {url}/Dozi01/MetaSPO/" in message and "datasets/amazon/game.json" in message
    assert served in message and SHA256["Dozi01/MetaSPO/datasets/amazon/game.json"] in message
    assert not cache.exists() or _files(cache) == {}


@pytest.mark.parametrize(
    ("target", "path", "content", "needle"),
    [
        ("tweet_eval", "datasets/offensive/test_labels.txt", b"0\n1\n", "test: 40 texts but 2 labels"),
        ("ethos", "ethos/ethos_data/Ethos_Dataset_Binary.csv", b"text,label\nhi,1\n", "columns comment;isHate"),
        ("liar", "prompt_optimization/data/liar/train.jsonl", b'{"label": 3, "text": "x"}\n', "line 1: expected"),
        ("office", "datasets/amazon/office.json", b'{"train": [{"question": "q", "answer": "five"}], "test": []}',
         "answer {'answer': 'five'} does not fit the task"),
    ],
)  # fmt: skip
def test_an_original_of_the_wrong_shape_is_one_clear_error(mirror, tmp_path, target, path, content, needle):
    url, sums, served = mirror
    (remote,) = [f for i in REMOTE_ITEMS[target] if i.kind == "data" for _, f in i.files if f.path == path]
    (served / remote.repo / remote.commit / remote.path).write_bytes(content)
    sums = {**sums, remote.key: hashlib.sha256(content).hexdigest()}
    with pytest.raises(DataFetchError, match=re.escape(needle)) as info:
        fetch_data([target], cache=tmp_path / "cache", base=url, checksums=sums)
    assert f"task {target!r}" in str(info.value)
    assert not (tmp_path / "cache").exists() or not _files(tmp_path / "cache")


def test_an_unreachable_host_is_one_clear_error(tmp_path, monkeypatch):
    assert base_url() == "http://127.0.0.1:9", "tests never reach the internet (conftest)"
    with pytest.raises(DataFetchError, match=r"cannot download http://127\.0\.0\.1:9/cardiffnlp/tweeteval/"):
        fetch_data(["tweet_eval"], cache=tmp_path)
    monkeypatch.delenv("METASPO_DATA_URL")
    assert base_url() == "https://raw.githubusercontent.com" and base_url("http://mirror") == "http://mirror"


# ---- where tasks are read from --------------------------------------------------------------
def test_the_cache_wins_over_the_bundled_data_and_data_dir_replaces_both(fetched_cache, tmp_path, monkeypatch):
    monkeypatch.setenv("METASPO_CACHE_DIR", str(tmp_path / "cache"))
    with pytest.raises(TaskLoadError) as info:
        load_task("beauty")
    message = str(info.value)
    assert "\n" not in message and message.startswith("task 'beauty' is not on this machine")
    assert "licence: none stated" in message and "run `metaspo data fetch review` (or give --data-dir DIR)" in message
    assert availability("beauty") == "missing" and availability("dental") == "bundled"
    assert load_task("dental").metadata["origin"] == "bundled"

    mine = {"train": [{"question": "Q?\nOptions:\n(A) x\n(B) y", "answer": "A"}], "test": []}
    (tmp_path / "cache" / "medmcqa").mkdir(parents=True)
    (tmp_path / "cache" / "medmcqa" / "dental.json").write_text(json.dumps(mine))
    task = load_task("dental", train_size=1, test_size=0)
    assert task.metadata["origin"] == "fetched" and len(task.train) == 1, "a file in the cache replaces the bundled one"
    assert availability("dental") == "fetched"

    monkeypatch.setenv("METASPO_CACHE_DIR", str(fetched_cache))
    assert load_task("beauty").metadata["origin"] == "fetched"
    assert availability("ob_gyn", tmp_path) == "missing", "an explicit data_dir is the only place looked"
    with pytest.raises(TaskLoadError, match="could not be loaded") as info:
        load_task("ob_gyn", tmp_path)
    assert str(tmp_path / "medmcqa" / "ob_gyn.json") in str(info.value)
    monkeypatch.setenv("METASPO_DATA_DIR", str(tmp_path / "cache"))
    assert load_task("dental", train_size=1, test_size=0).metadata["origin"] == "$METASPO_DATA_DIR"
    with pytest.raises(TaskLoadError, match="could not be loaded"):
        load_task("beauty")


def test_the_authors_prompts_come_from_the_cache_or_name_the_fetch_command(fetched_cache, monkeypatch):
    with pytest.raises(TaskLoadError) as info:
        unseen_prompts("pet")
    assert "not on this machine" in str(info.value) and "run `metaspo data fetch pet`" in str(info.value)
    with pytest.raises(TaskLoadError, match="unseen tasks only"):
        unseen_prompts("beauty")
    monkeypatch.setenv("METASPO_CACHE_DIR", str(fetched_cache))
    assert unseen_prompts("pet", num=2) == [
        "Instruction 0 for pet: think, then answer.",
        "Instruction 1 for pet: think, then answer.",
    ]


# ---- caveats --------------------------------------------------------------------------------
def test_caveats_say_how_our_data_differs_from_the_papers():
    kinds = {t: {c.kind for c in caveats(t)} for t in BENCHMARK_TASKS}
    assert kinds["trivia_qa"] == kinds["web_qa"] == {"size", "substitute"}
    assert all("split" in kinds[t] and "size" in kinds[t] for t in DOMAIN_TASKS["medical"])
    assert "validation split" in str(caveats("dental")[1])
    assert [str(c) for c in caveats("ob_gyn") if c.kind == "size"] == ["134 test examples (the paper samples 500)"]
    assert [str(c) for c in caveats("liar")] == ["461 test examples (the paper samples 500)"]
    assert all(kinds[t] == set() for t in DOMAIN_TASKS["review"]), "the fetched Amazon files are the paper's"
    assert kinds["ethos"] == {"split"} and kinds["tweet_eval"] == set()
    assert caveats("gen_counting") == () and caveats("dental", origin="data_dir") == ()
    task = load_task("web_qa", train_size=2, test_size=2)
    assert any(c.startswith("SUBSTITUTE") for c in task.metadata["caveats"])


# ---- the command line -----------------------------------------------------------------------
def _cli(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    full = {k: v for k, v in os.environ.items() if not k.endswith("_API_KEY")}
    full.update(env or {})
    return subprocess.run(
        [sys.executable, "-m", "metaspo_dspy.cli", *args],
        capture_output=True, text=True, env=full, cwd=REPO, timeout=300, stdin=subprocess.DEVNULL,
    )  # fmt: skip


def test_metaspo_data_fetch_reports_what_it_did(mirror, tmp_path, monkeypatch, capsys):
    url, sums, _ = mirror
    for key, value in sums.items():  # the files served here are test-made: their checksums stand in
        monkeypatch.setitem(SHA256, key, value)
    cache = tmp_path / "cache"
    assert main(["data", "fetch", "ethos", "dental", "--base-url", url, "--cache-dir", str(cache)]) == 0
    out, err = capsys.readouterr()
    assert out == f"{cache}\n"
    assert f"fetched  ethos data: 40 train / 60 test ({cache / 'safety' / 'ethos.json'}; licence: GPL-3.0)" in err
    assert "fetched  ethos authors' user prompts: 30 user prompts" in err
    assert "bundled  dental: ships with the package, nothing to fetch" in err
    assert "fetched  dental authors' user prompts" in err
    assert err.strip().endswith(f"3 fetched, 0 already in the cache, 1 bundled (nothing to fetch); cache: {cache}")
    assert main(["data", "fetch", "ethos", "--base-url", url, "--cache-dir", str(cache)]) == 0
    assert "0 fetched, 2 already in the cache" in capsys.readouterr().err


def test_metaspo_data_fetch_refuses_a_file_with_another_checksum(mirror, tmp_path):
    url, _, _ = mirror
    result = _cli("data", "fetch", "ethos", "--base-url", url, env={"METASPO_CACHE_DIR": str(tmp_path / "c")})
    assert result.returncode == 2 and "Traceback" not in result.stderr
    errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "checksum mismatch" in errors[0] and result.stdout == ""
    assert not (tmp_path / "c" / "safety").exists()


def test_metaspo_tasks_shows_source_licence_sizes_availability_and_caveats(fetched_cache, tmp_path):
    empty = _cli("tasks", env={"METASPO_CACHE_DIR": str(tmp_path / "empty")})
    assert empty.returncode == 0, empty.stderr
    rows = {line.split()[1]: line.split() for line in empty.stdout.splitlines() if line.split()[:1] in (
        [d] for d in DOMAIN_TASKS
    )}  # fmt: skip
    assert set(rows) == set(BENCHMARK_TASKS) | set(DOMAIN_TASKS["generated"])
    assert rows["beauty"][3:7] == ["missing", "-", "2000", "2000"] and "Dozi01/MetaSPO@1773f5a" in " ".join(
        rows["beauty"]
    )
    assert rows["dental"][3:7] == ["bundled", "missing", "200", "300"] and rows["dental"][7] == "MIT"
    assert rows["ethos"][3] == "missing" and "GPL-3.0" in rows["ethos"]
    assert "web_qa: 300 test examples (the paper samples 500); SUBSTITUTE: SQuADShifts Reddit" in empty.stdout
    assert "run `metaspo data fetch grounding medical reasoning review safety`" in empty.stdout
    full = _cli("tasks", env={"METASPO_CACHE_DIR": str(fetched_cache)})
    rows = {line.split()[1]: line.split() for line in full.stdout.splitlines() if line.startswith(("review", "safety"))}
    assert rows["pet"][3:5] == ["fetched", "fetched"] and rows["sarcasm"][3] == "bundled"
    assert "metaspo data fetch" not in full.stdout


def test_train_on_the_fetched_review_domain(fetched_cache, tmp_path):
    args = [
        "train", "-c", "review", "--task-model", "metaspo-fake/t", "--optimizer-model", "metaspo-fake/o",
        "--iterations", "1", "--system-candidates", "1", "--user-candidates", "1", "--train-size", "4",
        "--test-size", "2", "--log-dir", str(tmp_path / "run"), "--quiet",
    ]  # fmt: skip
    result = _cli(*args, env={"METASPO_CACHE_DIR": str(fetched_cache), "DSPY_CACHEDIR": str(tmp_path / "dspy")})
    assert result.returncode == 0, result.stderr
    artifact = json.loads((tmp_path / "run" / "metaspo_run.json").read_text())
    assert set(artifact["tasks"]) == set(SOURCE_TASKS["review"])
