"""`metaspo compare` as real subprocesses on the fake model: the table against the sub-runs' own
artifacts and `metaspo test`, resume (nothing done is asked again), bad input, several domains."""

from __future__ import annotations

import csv
import json
import re
import shutil
import statistics
from pathlib import Path

import pytest
from test_cli import FAKE, SMALL, gold_file, metaspo  # noqa: F401  (gold_file is a fixture)

from metaspo_dspy.tasks import DOMAIN_TASKS, SOURCE_TASKS

TINY = [*SMALL, "--train-size", "4", "--test-size", "4", "--num-user-prompts", "2", "--quiet"]
UNSEEN = [t for t in DOMAIN_TASKS["medical"] if t not in SOURCE_TASKS["medical"]]


def _requests(log: Path) -> list[dict]:
    if not log.exists():
        return []
    return [r for r in map(json.loads, log.read_text().splitlines()) if r["kind"] != "preflight"]


def _cells(path: Path) -> dict[tuple[str, str, str], dict]:
    with open(path, newline="") as handle:
        return {(r["domain"], r["task"], r["method"]): r for r in csv.DictReader(handle)}


@pytest.fixture
def env(gold_file, fetched_cache, tmp_path):  # noqa: F811
    return {"METASPO_FAKE_GOLD": str(gold_file), "METASPO_CACHE_DIR": str(fetched_cache)}


def test_table_equals_the_sub_runs_results_and_metaspo_test(env, tmp_path):
    out = tmp_path / "cmp"
    methods = ["default", "service", "metaspo", "sprig"]
    result = metaspo(
        "compare", "-c", "medical", "--methods", *methods, "--seeds", "2", *FAKE, *TINY, "--log-dir", str(out),
        env=env, cwd=tmp_path,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert result.stdout == (out / "compare.md").read_text()
    assert "estimated calls still to make:" in result.stderr
    cells = _cells(out / "compare.csv")
    for method in ("metaspo", "sprig"):
        pooled: dict[str, list[float]] = {t: [] for t in UNSEEN}
        for k in range(2):
            run_dir = out / "train" / f"{method}-seed{k}"
            artifact = json.loads((run_dir / "metaspo_run.json").read_text())
            config = json.loads((run_dir / "config.json").read_text())
            assert config["seed"] == 42 + k and config["method"] == method
            assert config["data"]["prompt_format"] == "reference"
            saved = json.loads((out / "eval" / f"unseen-{method}-seed{k}.json").read_text())
            assert saved["system_prompt"] == artifact["optimized_system_prompt"]
            for task in UNSEEN:
                pooled[task] += saved["result"]["tasks"][task]["scores"]
        for task in UNSEEN:
            cell = cells[("medical", task, method)]
            assert float(cell["mean"]) == pytest.approx(statistics.fmean(pooled[task]), abs=1e-6)
            assert float(cell["std"]) == pytest.approx(statistics.stdev(pooled[task]), abs=1e-6)
            assert int(cell["n"]) == 4 and cell["test_size"] == "4" and cell["prompt_format"] == "reference"
        average = statistics.fmean(statistics.fmean(pooled[t]) for t in UNSEEN)
        assert float(cells[("medical", "average", method)]["mean"]) == pytest.approx(average, abs=1e-6)
    # a cell is what `metaspo test` gives for the same system prompt
    test_dir = tmp_path / "test"
    tested = metaspo(
        "test", "-c", "medical", "--prompt-format", "reference", *FAKE, "--test-size", "4", "--train-size", "4",
        "--num-user-prompts", "2", "--quiet", "--system-prompt", "service", str(out / "train" / "metaspo-seed0"),
        "--log-dir", str(test_dir), env=env, cwd=tmp_path,
    )  # fmt: skip
    assert tested.returncode == 0, tested.stderr
    results = json.loads((test_dir / "unseen_results.json").read_text())["results"]
    seed0 = json.loads((out / "eval" / "unseen-metaspo-seed0.json").read_text())["result"]
    for task in UNSEEN:
        assert results["metaspo-seed0"]["tasks"][task]["scores"] == seed0["tasks"][task]["scores"]
        assert float(cells[("medical", task, "service")]["mean"]) == pytest.approx(
            results["service"]["tasks"][task]["mean"], abs=1e-6
        )
    table = (out / "compare.md").read_text()
    assert "service (our text)" in table and "written by us" in table
    assert "validation split" in table  # MedMCQA's caveat
    assert "`reference` (training and testing)" in table


def test_resume_asks_nothing_already_done(env, tmp_path):
    out = tmp_path / "cmp"
    args = ["compare", "-c", "medical", "--methods", "cot", "metaspo", "--seeds", "2", *FAKE, *TINY]
    first_log = tmp_path / "first.jsonl"
    first = metaspo(*args, "--log-dir", str(out), env={**env, "METASPO_FAKE_LOG": str(first_log)}, cwd=tmp_path)
    assert first.returncode == 0, first.stderr
    estimated = re.search(r"estimated calls still to make: (\d+) task-model, (\d+) optimizer", first.stderr)
    done = _requests(first_log)
    assert sum(r["kind"] == "task" for r in done) <= int(estimated[1])  # upper bounds
    assert sum(r["kind"] == "optimizer" for r in done) <= int(estimated[2])
    # as if killed after the first sub-run: the second sub-run and its evaluation are gone
    artifact = json.loads((out / "train" / "metaspo-seed1" / "metaspo_run.json").read_text())
    shutil.rmtree(out / "train" / "metaspo-seed1")
    (out / "eval" / "unseen-metaspo-seed1.json").unlink()
    log = tmp_path / "second.jsonl"
    env = {**env, "METASPO_FAKE_LOG": str(log), "DSPY_CACHEDIR": str(tmp_path / "empty-cache")}  # no cache hits
    again = metaspo("compare", "--resume", str(out), "--quiet", env=env, cwd=tmp_path)
    assert again.returncode == 0, again.stderr
    assert again.stdout == first.stdout
    asked = _requests(log)
    # the deleted evaluation's answers are journaled in eval/, so only the retraining asks
    assert sum(r["kind"] == "task" for r in asked) == artifact["calls"]["task_lm"]
    assert sum(r["kind"] == "optimizer" for r in asked) == artifact["calls"]["optimizer_lm"]
    # run again: everything is done, so nothing is asked
    log.unlink()
    env["DSPY_CACHEDIR"] = str(tmp_path / "another-empty-cache")
    third = metaspo(*args, "--log-dir", str(out), env=env, cwd=tmp_path)
    assert third.returncode == 0, third.stderr
    assert third.stdout == first.stdout and _requests(log) == []
    assert "estimated calls still to make: 0 task-model, 0 optimizer" in third.stderr


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--methods", "metaspo", "gepa", "--seeds", "1"], "unknown method 'gepa'"),
        (["--methods", "metaspo", "--seeds", "0"], "--seeds must be at least 1"),
        (["--seeds", "1"], "--methods is required"),
        (["--methods", "cot", "cot"], "lists a method twice"),
        (["--methods", "cot", "--method", "sprig"], "not --method"),
        (["--methods", "metaspo", "--max-lm-calls", "10"], "over --max-lm-calls 10"),
        (["--methods", "cot", "--no-log-dir"], "needs --log-dir"),
        (["--methods", "cot", "--resume-empty"], "nothing to resume"),
        (["--methods", "cot", "--other-settings"], "holds a compare with other settings"),
    ],
)
def test_bad_input_is_one_line_before_any_call(extra, message, env, tmp_path):
    log = tmp_path / "fake.jsonl"
    env = {**env, "METASPO_FAKE_LOG": str(log)}
    out = tmp_path / "cmp"
    base = ["compare", "-c", "medical", *FAKE, *TINY]
    if "--no-log-dir" in extra:
        args = [*base, *extra[:-1]]
    elif "--resume-empty" in extra:
        out.mkdir()
        args = ["compare", "--resume", str(out)]
    elif "--other-settings" in extra:
        out.mkdir()
        (out / "compare.json").write_text(json.dumps({"settings": {"seeds": 7}}))
        args = [*base, *extra[:-1], "--log-dir", str(out)]
    else:
        args = [*base, *extra, "--log-dir", str(out)]
    result = metaspo(*args, env=env, cwd=tmp_path)
    assert result.returncode == 2, result.stderr
    lines = result.stderr.strip().splitlines()
    assert lines[-1].startswith("error:") and message in lines[-1], result.stderr
    assert "Traceback" not in result.stderr and not any(line.startswith("error:") for line in lines[:-1])
    assert not log.exists(), "no call before the error"
    assert not (out / "compare.md").exists()


def test_resume_refuses_new_settings(env, tmp_path):
    out = tmp_path / "cmp"
    out.mkdir()
    (out / "compare.json").write_text(json.dumps({"settings": {}}))
    result = metaspo("compare", "--resume", str(out), "--seeds", "2", env=env, cwd=tmp_path)
    assert result.returncode == 2 and "drop --seeds" in result.stderr


def test_two_domains(env, tmp_path):
    out = tmp_path / "cmp"
    result = metaspo(
        "compare", "--domains", "medical", "generated", "--methods", "default", "metaspo", "--seeds", "1", *FAKE,
        *TINY, "--log-dir", str(out), env=env, cwd=tmp_path,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert "### medical: unseen generalization" in result.stdout
    assert "### generated: unseen generalization" in result.stdout
    for domain in ("medical", "generated"):
        assert (out / domain / "train" / "metaspo-seed0" / "metaspo_run.json").is_file()
        assert (out / domain / "eval" / "unseen-default.json").is_file()
    domains = {key[0] for key in _cells(out / "compare.csv")}
    assert domains == {"medical", "generated"}
    assert (out / "compare.png").is_file()  # matplotlib is a dev extra
    assert "gen_parity" in result.stdout and "dental" in result.stdout


def test_test_time_adaptation_table(env, tmp_path):
    out = tmp_path / "cmp"
    result = metaspo(
        "compare", "-c", "medical", "--methods", "cot", "metaspo", "--seeds", "1", "--analysis", "tta",
        "--tta-iterations", "1", *FAKE, *TINY, "--log-dir", str(out), env=env, cwd=tmp_path,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert "test-time adaptation (last round)" in result.stdout
    cells = _cells(out / "compare.csv")
    for label, method in (("cot", "cot"), ("metaspo-seed0", "metaspo")):
        saved = json.loads((out / "eval" / f"tta-{label}.json").read_text())["result"]
        for task in UNSEEN:
            assert len(saved[task]["rounds"]) == 2
            expected = saved[task]["rounds"][-1]["test_of_best"]
            assert float(cells[("medical", task, method)]["mean"]) == pytest.approx(expected, abs=1e-6)
