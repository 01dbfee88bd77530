"""Issue 25, items 6-8: every check that needs no model comes before the preflight's requests;
`metaspo test` journals and resumes and says which prompt a run directory gives; the token estimate
reads the data's real lengths.

The local-check table runs each case as a real `metaspo` process against the fake model with its
request log (METASPO_FAKE_LOG): one `error:` line, exit 2, and not one request (the preflight's
included) reached the model.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
from filelock import FileLock
from killing import fake_env, requests_in, start, wait_for

FAKE = ["--task-model", "metaspo-fake/t", "--optimizer-model", "metaspo-fake/o"]
TINY = ["--iterations", "1", "--system-candidates", "1", "--user-candidates", "1", "--train-size", "4"]
TRAIN = ["train", "-c", "medical", *FAKE, *TINY, "-q"]
TEST = ["test", "-c", "medical", *FAKE, "--test-size", "4", "--num-user-prompts", "2", "-q"]
COMPARE = ["compare", "-c", "medical", *FAKE, *TINY, "--test-size", "2", "--num-user-prompts", "1", "-q"]
COMPARE += ["--methods", "metaspo", "--seeds", "1"]


def _cli(args: list[str], env: dict[str, str], cwd: Path, timeout: float = 180) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "metaspo_dspy.cli", *args], env=env, cwd=cwd, capture_output=True, text=True,
        timeout=timeout, stdin=subprocess.DEVNULL,
    )  # fmt: skip


def _env(root: Path, name: str, **extra: str) -> dict[str, str]:
    gold = root / "gold.json"
    if not gold.exists():
        gold.write_text("{}")
    return fake_env(root / f"{name}.log", gold, **extra)


@pytest.fixture(scope="module")
def root(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("checks")


@pytest.fixture(scope="module")
def prepared(root) -> tuple[Path, Path]:
    """Made at the same time: ``interrupted``, a `metaspo train` run killed in its first inner phase
    (its optimizer calls hang: a checkpoint after the initial evaluation, journals, no result); and
    ``compared``, a finished tiny `metaspo compare` whose one training is then made unfinished again
    (its result removed; a finished copy kept as ``root/finished``), so that `compare --resume` has
    a sub-run to check."""
    run, folder = root / "interrupted", root / "compared"
    env = _env(root, "interrupted", METASPO_FAKE_OPTIMIZER_LATENCY="60")
    process = start([*TRAIN, "--log-dir", str(run)], env, root)
    comparing = start([*COMPARE, "--log-dir", str(folder)], _env(root, "compared"), root)
    try:
        wait_for(process, root / "interrupted.log", lambda _: (run / "checkpoint.json").exists())
    finally:
        process.kill()
        process.wait()
    assert not (run / "metaspo_run.json").exists()
    _, err = comparing.communicate(timeout=300)
    assert comparing.returncode == 0, err
    sub = folder / "train" / "metaspo-seed0"
    shutil.copytree(sub, root / "finished")
    for name in ("metaspo_run.json", "program.json", "bilevel_nodes.json"):
        (sub / name).unlink()
    return run, folder


@pytest.fixture(scope="module")
def interrupted(prepared) -> Path:
    return prepared[0]


@pytest.fixture(scope="module")
def compared(prepared) -> Path:
    return prepared[1]


def _copy(run: Path, where: Path) -> Path:
    shutil.copytree(run, where)
    return where


def _edit_json(path: Path, change) -> None:
    data = json.loads(path.read_text())
    change(data)
    path.write_text(json.dumps(data))


# Each case: (id, setup(case folder, interrupted run) -> (args, held lock file or None), message regex).
def _settings_changed(d: Path, run: Path):
    target = _copy(run, d / "run")
    _edit_json(target / "config.json", lambda c: c.update(seed=43))
    return ["train", "--resume", str(target)], None


def _run_json_invalid(d: Path, run: Path):
    target = _copy(run, d / "run")
    (target / "run.json").write_text("{not json")
    return ["train", "--resume", str(target)], None


def _run_json_newer(d: Path, run: Path):
    target = _copy(run, d / "run")
    _edit_json(target / "run.json", lambda r: r.update(format="metaspo-dspy/run-dir/v99"))
    return ["train", "--resume", str(target)], None


def _new_budget(d: Path, run: Path):
    return [*TRAIN, "--max-lm-calls", "3", "--log-dir", str(d / "run")], None


def _resume_in_use(d: Path, run: Path):
    target = _copy(run, d / "run")
    return ["train", "--resume", str(target)], target / ".lock"


def _unlockable(d: Path, run: Path):
    target = _copy(run, d / "run")
    (target / ".lock").unlink(missing_ok=True)
    (target / ".lock").mkdir()  # the lock cannot be opened (a read-only folder, as root too)
    return ["train", "--resume", str(target)], None


def _new_unwritable(d: Path, run: Path):
    (d / "a_file").write_text("not a folder")
    return [*TRAIN, "--log-dir", str(d / "a_file" / "run")], None


def _test_in_use(d: Path, run: Path):
    (d / "out").mkdir()
    return [*TEST, "--log-dir", str(d / "out")], d / "out" / ".lock"


def _compare_sub_run_in_use(d: Path, run: Path, compared: Path):
    target = _copy(compared, d / "cmp")
    return ["compare", "--resume", str(target)], target / "train" / "metaspo-seed0" / ".lock"


CASES = [
    ("resume: settings changed", _settings_changed, r"settings differ from the recorded run: seed: 42 -> 43"),
    ("resume: run.json invalid", _run_json_invalid, r"run\.json is unreadable"),
    ("resume: run.json of a newer format", _run_json_newer, r"a newer metaspo-dspy wrote it"),
    ("new run: --max-lm-calls below the initial evaluation", _new_budget,
     r"max_lm_calls=3 does not cover even the initial evaluation \(16 calls\)"),
    ("resume: in use by another process", _resume_in_use, r"in use by another running process"),
    ("resume: log dir cannot be locked", _unlockable, r"cannot lock log dir"),
    ("new run: log dir not writable", _new_unwritable, r"a_file"),
    ("test: log dir in use by another process", _test_in_use, r"in use by another running process"),
    ("compare: a sub-run in use by another process", _compare_sub_run_in_use,
     r"metaspo-seed0 is in use by another running process"),
]  # fmt: skip


@pytest.fixture(scope="module")
def outcomes(root, interrupted, compared):
    def run(case):
        name, setup, _ = case
        folder = root / "case" / name.replace(" ", "_").replace(":", "").replace("/", "_")
        folder.mkdir(parents=True)
        extra = (compared,) if setup is _compare_sub_run_in_use else ()
        args, held = setup(folder, interrupted, *extra)
        lock = FileLock(held, timeout=0, thread_local=False, is_singleton=False) if held else None
        if lock is not None:
            lock.acquire()
        try:
            log = folder / "requests.log"
            env = {**_env(root, "unused"), "METASPO_FAKE_LOG": str(log)}
            return name, (_cli(args, env, folder), requests_in(log))
        finally:
            if lock is not None:
                lock.release()

    with ThreadPoolExecutor(max_workers=4) as pool:
        return dict(pool.map(run, CASES))


@pytest.mark.parametrize("name,pattern", [(name, pattern) for name, _, pattern in CASES])
def test_local_checks_come_before_any_request(outcomes, name, pattern):
    result, requests = outcomes[name]
    assert result.returncode == 2, result.stderr
    assert "Traceback" not in result.stderr
    errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and re.search(pattern, errors[0]), result.stderr
    assert requests == [], f"{len(requests)} requests reached the model before the error (preflight included)"
    assert "preflight:" not in result.stderr


def test_a_failed_preflight_leaves_a_new_run_folder_as_it_was(root, tmp_path):
    """The run directory is opened (locked, checked) before the preflight; a preflight that fails
    puts a new run's folder back as it was found, so the same command can run again."""
    env = {**_env(root, "dead"), "OPENAI_API_KEY": "sk-test"}
    dead = ["--task-model", "openai/x", "--set", "task_lm.api_base=http://127.0.0.1:9/v1", "task_lm.num_retries=0"]
    args = ["train", "-c", "medical", *dead, "--optimizer-model", "metaspo-fake/o", *TINY]
    result = _cli([*args, "--log-dir", str(tmp_path / "new" / "run")], env, tmp_path)
    assert result.returncode == 2 and "is not usable" in result.stderr, result.stderr
    assert not (tmp_path / "new" / "run").exists()


def _asked(log: Path) -> list[str]:
    """The digests of the run's requests (the preflight's apart: it is never journaled)."""
    return [r["digest"] for r in requests_in(log) if r["kind"] != "preflight"]


def test_metaspo_test_resumes_and_says_which_prompt_an_unfinished_run_gives(root, interrupted, tmp_path):
    out = tmp_path / "out"
    command = [*TEST, "--threads", "2", "--system-prompt", "default", str(interrupted), "--log-dir", str(out)]
    first = tmp_path / "first.log"
    process = start(command, {**_env(root, "x"), "METASPO_FAKE_LOG": str(first), "METASPO_FAKE_LATENCY": "0.05"},
                    tmp_path)  # fmt: skip
    try:
        wait_for(process, first, lambda requests: sum(r["kind"] == "task" for r in requests) >= 12)
    finally:
        process.kill()
        process.wait()
    killed = _asked(first)
    second = tmp_path / "second.log"
    rerun = _cli(command, {**_env(root, "x"), "METASPO_FAKE_LOG": str(second)}, tmp_path)
    assert rerun.returncode == 0, rerun.stderr
    assert "journaled in" in rerun.stderr and "are reused, not asked again" in rerun.stderr
    again = Counter(_asked(second)) & Counter(killed)
    # Only what was in flight when the process died (at most one request per thread) is asked again.
    assert sum(again.values()) <= 2, f"{sum(again.values())} answered requests were asked again"
    third = tmp_path / "third.log"
    done = _cli(command, {**_env(root, "x"), "METASPO_FAKE_LOG": str(third)}, tmp_path)
    assert done.returncode == 0, done.stderr
    assert _asked(third) == [], "a rerun of a finished `metaspo test` asked the model again"
    assert done.stdout == rerun.stdout
    # The run directory given as a system prompt: unfinished, and which prompt it gives.
    notice = [line for line in rerun.stderr.splitlines() if line.startswith("warning:") and "unfinished" in line]
    assert len(notice) == 1, rerun.stderr
    assert "checkpoint.json" in notice[0] and "after the initial phase" in notice[0] and "meta-score" in notice[0]
    assert f"metaspo train --resume {interrupted}" in notice[0]


def test_a_finished_run_given_as_a_system_prompt_says_which_prompt(root, compared, capsys):
    """A finished run names program.json and where the search ended; no warning."""
    from metaspo_dspy.cli.common import resolve_system_prompt
    from metaspo_dspy.program.system_prompt import SystemPrompt

    label, prompt = resolve_system_prompt(str(root / "finished"))
    said = capsys.readouterr().err
    assert label == "finished" and prompt == SystemPrompt.load(root / "finished" / "program.json")
    assert "the optimized one of this finished run, program.json" in said and "meta-score" in said
    assert "warning" not in said


def test_the_token_estimate_reads_the_real_lengths():
    """A 1 MB question among the train examples raises the estimate to about what is sent
    (measured: the requests' characters / 4 at the fake model), not the first example's size."""
    import dspy

    from metaspo_dspy import MetaSPO
    from metaspo_dspy.optimize.estimate import estimate_calls, estimate_tokens_and_cost
    from metaspo_dspy.tasks import compile_kwargs, make_task
    from metaspo_dspy.testing import FakeEngine, fake_lm

    def example(i: int, long: bool = False) -> dict:
        question = f"Question {i}: which option is right? (A) yes (B) no" + (" filler" * 50_000 if long else "")
        return {"question": question, "answer": "A"}

    def tasks(long: bool):
        return [
            make_task(f"t{k}", [example(10 * k + i, long and k == 0 and i == 2) for i in range(4)],
                      [example(100 + 10 * k + i) for i in range(3)])
            for k in range(2)
        ]  # fmt: skip

    sizes = {f"t{k}": (4, 3) for k in range(2)}
    calls = estimate_calls("metaspo", 1, 2, 2, 2, sizes)
    short = estimate_tokens_and_cost(calls, tasks(False), "metaspo-fake/t", "metaspo-fake/o")
    long = estimate_tokens_and_cost(calls, tasks(True), "metaspo-fake/t", "metaspo-fake/o")
    engine = FakeEngine()
    task_lm, optimizer_lm = fake_lm("t", engine, temperature=0.0), fake_lm("o", engine, temperature=1.0)
    small = dict(num_iterations=1, num_system_candidates=2, num_user_candidates=2, user_top_k=2, progress=False)
    with dspy.context(lm=None):
        MetaSPO(None, optimizer_lm, task_lm, **small).compile(**compile_kwargs(tasks(True)))
    sent = sum(len(str(m["content"])) for r in engine.requests for m in r.messages) / 4
    assert engine.counts["task"] == calls["task_lm"] and engine.counts["optimizer"] == calls["optimizer_lm"]
    assert long["tokens"] > 20 * short["tokens"]
    assert 0.5 * sent <= long["tokens"] <= 2 * sent, (long["tokens"], sent)
