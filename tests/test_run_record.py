"""The run record is the truth across resumes (issue 23, part 4).

Real `metaspo train` processes against the loopback mock model server, whose own request log is
the count of what was paid for: a finished run is not run again (nothing sent, no file touched),
and the artifact's ``cumulative`` totals (the run's ledger, over every process) equal the server's
count after Ctrl-C and resume, and differ from it by at most the calls in flight at each kill -9.
In-process: the Python API returns a finished run's saved program (MetaSPO and SPRIG), a run
directory without a ledger (an older version's) still resumes and says what it cannot count, and a
torn ledger line is skipped."""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import dspy
import pytest
from conftest import exact_metric, load_examples, mock_server
from killing import requests_in, start, wait_for

from metaspo_dspy import MetaSPO, compile_kwargs, load_task
from metaspo_dspy.optimize.sprig.teleprompter import SPRIG
from metaspo_dspy.store.ledger import LEDGER_FILE, Ledger, describe
from metaspo_dspy.store.run_dir import finished_run

THREADS = 2
SIZES = [
    "--iterations", "1", "--system-candidates", "2", "--user-candidates", "2",
    "--train-size", "6", "--test-size", "2", "--threads", str(THREADS), "--quiet",
]  # fmt: skip
PAID = ("task", "optimizer")  # the server's request kinds a run pays for ("preflight" is apart)


@pytest.fixture
def gold(data_dir, tmp_path) -> Path:
    rows = json.loads((data_dir / "medmcqa" / "ob_gyn.json").read_text())
    path = tmp_path / "gold.json"
    path.write_text(json.dumps({r["question"]: str(r["answer"]) for r in rows["train"] + rows["test"]}))
    return path


@pytest.fixture
def server(gold, tmp_path):
    """The mock server (a little latency, so a signal lands mid-run) and its request log."""
    log = tmp_path / "server.jsonl"
    with mock_server("--latency", "0.05", "--gold", str(gold), log=log) as url:
        yield url, log


def _args(url: str, run_dir: Path) -> list[str]:
    return [
        "train", "-c", "medical", "--set", "tasks.source=[ob_gyn]", f"task_lm.api_base={url}",
        f"optimizer_lm.api_base={url}", "task_lm.api_key_env=MOCK_KEY", "optimizer_lm.api_key_env=MOCK_KEY",
        "--task-model", "openai/mock", "--optimizer-model", "openai/mock", *SIZES, "--log-dir", str(run_dir),
    ]  # fmt: skip


def _env(tmp_path: Path) -> dict[str, str]:
    """No API keys but the mock's, and each process its own empty DSPy cache: only the run's
    journals can spare a request."""
    env = {k: v for k, v in os.environ.items() if not k.endswith("_API_KEY")}
    env.update(MOCK_KEY="mock-key", DSPY_CACHEDIR=str(tmp_path / f"dspy-cache-{time.monotonic_ns()}"))
    return env


def _metaspo(args: list[str], tmp_path: Path) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "metaspo_dspy.cli", *args], env=_env(tmp_path), cwd=tmp_path,
        capture_output=True, text=True, timeout=300, stdin=subprocess.DEVNULL,
    )  # fmt: skip


def _resume(run_dir: Path, tmp_path: Path) -> subprocess.CompletedProcess:
    return _metaspo(["train", "--resume", str(run_dir), "--quiet"], tmp_path)


def _paid(log: Path) -> Counter[str]:
    return Counter(r["kind"] for r in requests_in(log) if r["kind"] in PAID)


def _after(n: int):
    """A kill point: once the server has answered ``n`` paid requests in all."""
    return lambda requests: sum(r["kind"] in PAID for r in requests) >= n


def _files(run_dir: Path) -> dict[str, bytes]:
    return {str(p.relative_to(run_dir)): p.read_bytes() for p in sorted(run_dir.rglob("*")) if p.is_file()}


def _cumulative(run_dir: Path) -> dict:
    return json.loads((run_dir / "metaspo_run.json").read_text())["cumulative"]


def test_a_finished_run_is_not_run_again_and_its_record_matches_the_server(server, tmp_path):
    url, log = server
    run_dir = tmp_path / "run"
    first = _metaspo(_args(url, run_dir), tmp_path)
    assert first.returncode == 0, first.stderr
    artifact = json.loads((run_dir / "metaspo_run.json").read_text())
    paid, cumulative = _paid(log), artifact["cumulative"]
    # One process: the ledger, the process's own counts and the server agree (preflight apart).
    assert sum(r["kind"] == "preflight" for r in requests_in(log)) >= 1
    assert cumulative["processes"] == 1 and cumulative["all_processes"] is True
    assert cumulative["task_lm_calls"] == artifact["calls"]["task_lm"] == paid["task"] > 0
    assert cumulative["optimizer_calls"] == artifact["calls"]["optimizer_lm"] == paid["optimizer"] > 0
    assert cumulative["tokens"] > 0 and cumulative["seconds"] > 0
    assert f"over 1 process of this run: {paid['task']} task-model" in first.stderr

    before, sent = _files(run_dir), len(requests_in(log))
    again = _resume(run_dir, tmp_path)
    assert again.returncode == 0, again.stderr
    lines = again.stderr.strip().splitlines()
    assert lines == [f"{run_dir} is a finished run; nothing to resume (metaspo show {run_dir})"]
    assert again.stdout.strip() == artifact["optimized_system_prompt"]
    assert len(requests_in(log)) == sent, "a finished run sent requests (preflight included)"
    assert _files(run_dir) == before, "a finished run's files changed"

    shown = _metaspo(["show", str(run_dir)], tmp_path)
    assert shown.returncode == 0, shown.stderr
    assert describe(cumulative) in shown.stderr


# Seeds whose points fall in the inner grid (12), the outer proposals (24) and the outer grid (43)
# of the run's 68 paid requests (6 + 12 + 36 + 6 task calls, 4 + 4 optimizer calls).
@pytest.mark.parametrize("seed", [1, 7, 5])
def test_after_ctrl_c_and_resume_the_cumulative_calls_are_the_servers_count(server, tmp_path, seed):
    url, log = server
    run_dir = tmp_path / "run"
    process = start(_args(url, run_dir), _env(tmp_path), tmp_path)
    wait_for(process, log, _after(random.Random(seed).randint(4, 60)))
    process.send_signal(signal.SIGINT)
    _, stderr = process.communicate(timeout=120)
    assert process.returncode == 130, stderr
    assert not (run_dir / "metaspo_run.json").exists()
    interrupted = _paid(log)

    resumed = _resume(run_dir, tmp_path)
    assert resumed.returncode == 0, resumed.stderr
    artifact = json.loads((run_dir / "metaspo_run.json").read_text())
    cumulative, paid = artifact["cumulative"], _paid(log)
    print(f"seed {seed}: server {dict(paid)} ({dict(interrupted)} before Ctrl-C); cumulative {cumulative}")
    assert cumulative["processes"] == 2
    assert cumulative["task_lm_calls"] == paid["task"]
    assert cumulative["optimizer_calls"] == paid["optimizer"]
    # `calls` keeps its meaning: what the resumed process paid for.
    assert artifact["calls"]["task_lm"] == paid["task"] - interrupted["task"]
    assert artifact["calls"]["optimizer_lm"] == paid["optimizer"] - interrupted["optimizer"]
    assert "over 2 processes of this run" in resumed.stderr


def test_after_kill_9_the_cumulative_calls_miss_at_most_the_calls_in_flight(server, tmp_path):
    url, log = server
    run_dir = tmp_path / "run"
    rng = random.Random(9)
    kills = 0
    for extra in (rng.randint(4, 25), rng.randint(3, 15)):
        process = start(
            _args(url, run_dir) if kills == 0 else ["train", "--resume", str(run_dir), "--quiet"],
            _env(tmp_path),
            tmp_path,
        )
        wait_for(process, log, _after(sum(_paid(log).values()) + extra))
        process.send_signal(signal.SIGKILL)
        process.wait(timeout=30)
        kills += 1
    assert not (run_dir / "metaspo_run.json").exists()
    resumed = _resume(run_dir, tmp_path)
    assert resumed.returncode == 0, resumed.stderr
    cumulative, paid = _cumulative(run_dir), _paid(log)
    recorded = cumulative["task_lm_calls"] + cumulative["optimizer_calls"]
    print(f"kill -9 x{kills}: server {dict(paid)}; cumulative {cumulative}")
    assert cumulative["processes"] == 3 and cumulative["seconds"] > 0
    # A killed process loses only what was answered but not yet recorded: the calls in flight
    # (at most one per thread: grid and proposals never run at once).
    assert 0 <= sum(paid.values()) - recorded <= kills * THREADS


# -- in process: the Python API, legacy run directories, the ledger file ------------------------
SIG = dspy.Signature("question -> answer", "Choose the best answer.")
SMALL = dict(num_iterations=1, num_system_candidates=2, num_user_candidates=1, user_top_k=1, progress=False)


def _medical(data_dir) -> tuple[dict, dict]:
    train = {t: load_examples(data_dir, "medmcqa", t, 6) for t in ("ob_gyn", "medicine")}
    return train, {e.question: e.answer for exs in train.values() for e in exs}


def _instructions(program) -> dict[str, str]:
    return {
        f"{task}.{name}": p.signature.instructions
        for task, module in program.tasks.items()
        for name, p in module.named_predictors()
    }


def _sprig_tasks():
    tasks = [load_task(t, train_size=6, test_size=2) for t in ("ob_gyn", "medicine")]
    return tasks, {e.question: e.answer for t in tasks for e in t.train + t.test}


@pytest.mark.parametrize("method", ["metaspo", "sprig"])
def test_the_python_api_returns_a_finished_runs_saved_program(data_dir, engine_factory, tmp_path, method):
    if method == "metaspo":
        train, gold = _medical(data_dir)
        kwargs = {"program": dspy.Predict(SIG), "trainsets": train}

        def make(task_lm, opt_lm, **extra):
            return MetaSPO(exact_metric, opt_lm, task_lm, log_dir=tmp_path / "run", **SMALL, **extra)
    else:
        tasks, gold = _sprig_tasks()
        kwargs = compile_kwargs(tasks)

        def make(task_lm, opt_lm, **extra):
            return SPRIG(
                optimizer_lm=opt_lm, task_lm=task_lm, num_candidates=2, task_call_budget=12 * 3,
                log_dir=tmp_path / "run", progress=False, **extra,
            )  # fmt: skip

    engine, task_lm, opt_lm = engine_factory(f"finished-{method}", gold=gold)
    first = make(task_lm, opt_lm).compile(**kwargs)
    before = _files(tmp_path / "run")
    engine.reset()
    again = make(task_lm, opt_lm, resume=True, preflight=True).compile(**kwargs)
    assert sum(engine.counts.values()) == 0, "nothing is asked, not even the preflight"
    assert _files(tmp_path / "run") == before
    assert again.system_prompt == first.system_prompt
    assert _instructions(again) == _instructions(first)
    assert again.detailed_results == json.loads((tmp_path / "run" / "metaspo_run.json").read_text())
    assert again.detailed_results["calls"] == json.loads(json.dumps(first.detailed_results["calls"]))


def test_a_run_stopped_by_its_budget_is_not_finished(tmp_path):
    artifact = {"complete": True, "stopped": "stopped before the outer phase: ...", "steps": []}
    (tmp_path / "metaspo_run.json").write_text(json.dumps(artifact))
    assert finished_run(tmp_path) is None
    (tmp_path / "metaspo_run.json").write_text(json.dumps({**artifact, "stopped": None}))
    assert finished_run(tmp_path) == {**artifact, "stopped": None}
    (tmp_path / "metaspo_run.json").write_text('{"complete": tr')  # torn: resumes as usual
    assert finished_run(tmp_path) is None


class Crash(RuntimeError):
    pass


def test_a_run_directory_without_a_ledger_resumes_and_says_what_it_cannot_count(data_dir, engine_factory, tmp_path):
    train, gold = _medical(data_dir)
    engine, task_lm, opt_lm = engine_factory("legacy", gold=gold)

    def crash(log):
        if log.phase == "inner":
            raise Crash("simulated crash")

    run_dir = tmp_path / "run"
    with pytest.raises(Crash):
        MetaSPO(exact_metric, opt_lm, task_lm, log_dir=run_dir, phase_callback=crash, **SMALL).compile(
            dspy.Predict(SIG), trainsets=train
        )
    crashed = Counter(engine.counts)
    (run_dir / LEDGER_FILE).unlink()  # as an older version left it
    best = MetaSPO(exact_metric, opt_lm, task_lm, log_dir=run_dir, resume=True, **SMALL).compile(
        dspy.Predict(SIG), trainsets=train
    )
    cumulative = best.detailed_results["cumulative"]
    assert cumulative["all_processes"] is False and cumulative["processes"] == 1
    assert cumulative["task_lm_calls"] == engine.counts["task"] - crashed["task"]
    assert "not counted" in describe(cumulative)
    # The mark is kept in the ledger: a later process still knows the record is partial.
    assert Ledger(run_dir / LEDGER_FILE).totals(faults=0)["all_processes"] is False


def test_a_torn_ledger_line_is_skipped_and_the_next_process_writes_on_a_fresh_line(tmp_path):
    path = tmp_path / LEDGER_FILE
    first = Ledger(path)
    first.paid("task", 2, {"m": {"prompt_tokens": 10, "completion_tokens": 5, "calls": 2}})
    first.paid("optimizer", 1, {})
    first.close()
    with open(path, "a") as handle:
        handle.write('{"p": "killed", "s": 3.0, "kind": "ta')  # killed mid-write
    second = Ledger(path)
    assert second.totals(faults=1)["task_lm_calls"] == 2
    second.paid("task", 1, {"m": {"prompt_tokens": 1, "completion_tokens": 1, "calls": 1}})
    second.close()
    totals = Ledger(path).totals(faults=1)
    assert totals["processes"] == 3  # the two writers and this reader
    assert (totals["task_lm_calls"], totals["optimizer_calls"], totals["tokens"]) == (3, 1, 17)
    assert totals["usage"]["task_lm"] == {"m": {"prompt_tokens": 11, "completion_tokens": 6, "calls": 3}}
