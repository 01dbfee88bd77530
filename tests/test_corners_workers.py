"""Worker processes die with their parent (issue 25, item 2; item 8's worker faults).

Real `metaspo train` processes with ``--processes 1`` and ``2`` against the loopback mock server,
whose own request log counts what was paid for. Each case kills the run mid-grid -- SIGKILL or
SIGTERM of the parent, SIGTERM of its process group, SIGKILL of one worker -- then counts the
processes of the run still alive (every process whose environment carries this case's mark: the
parent, its workers, the fork server and the resource tracker), checks what the run said, resumes it
and counts the completed calls the resumed run sent again. A killed worker is one ``stopped:``
line; SIGTERM ends like Ctrl-C; no process is left behind; a kill re-sends at most about what is
in flight (``--threads``), with one process or two; every fault the server served reaches
``faults.jsonl`` (but those of the calls in flight at the kill). The executor's own test: items come
back one by one, and an interrupt or a dead worker stops every worker."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
import uuid
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import dspy
import pytest
from conftest import mock_server
from killing import requests_in, wait_for

from metaspo_dspy.errors import WorkerDied
from metaspo_dspy.evaluation.processes import ProcessExecutor
from metaspo_dspy.evaluation.records import EvalJob
from metaspo_dspy.evaluation.run_item import GridWork
from metaspo_dspy.lm import LMSettings, build_lm

THREADS = 4
PAID = ("task", "optimizer")  # the server's request kinds a run pays for ("preflight" is apart)
MARK = "METASPO_TEST_RUN_MARK"
# Paid requests of the run: initial 12 task, inner 8 optimizer + 24 task, outer 4 optimizer + 72
# task, test 12 task. The kill comes mid outer grid.
KILL_AFTER = 12 + 8 + 24 + 4 + 30
SERVER = ("--latency", "0.05", "--error-rate", "0.05", "--seed", "3")


def _args(url: str, run_dir: Path, processes: int) -> list[str]:
    return [
        "train", "-c", "medical", "--set", "tasks.source=[ob_gyn,medicine]", f"task_lm.api_base={url}",
        f"optimizer_lm.api_base={url}", "task_lm.api_key_env=MOCK_KEY", "optimizer_lm.api_key_env=MOCK_KEY",
        "--task-model", "openai/mock", "--optimizer-model", "openai/mock", "--iterations", "1",
        "--system-candidates", "2", "--user-candidates", "2", "--train-size", "6", "--test-size", "2",
        "--threads", str(THREADS), "--processes", str(processes), "--quiet", "--log-dir", str(run_dir),
    ]  # fmt: skip


# -- the processes of one run ----------------------------------------------------------------------
def _marked(mark: str) -> dict[int, tuple[int, str]]:
    """Live (not zombie) processes whose environment carries ``mark``: pid -> (parent pid, command line)."""
    found = {}
    needle = f"{MARK}={mark}".encode()
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            if needle not in (entry / "environ").read_bytes().split(b"\0"):
                continue
            stat = (entry / "stat").read_text()
            cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:  # gone meanwhile, or not ours
            continue
        state, ppid = stat[stat.rindex(")") + 2 :].split()[:2]
        if state != "Z":
            found[int(entry.name)] = (int(ppid), cmdline)
    return found


def _workers(mark: str, parent: int) -> list[int]:
    """The worker processes of the run whose main process is ``parent``: its descendants other
    than the multiprocessing fork server and resource tracker."""
    processes = _marked(mark)
    helpers = {p for p, (_, cmd) in processes.items() if "resource_tracker" in cmd}
    helpers |= {p for p, (ppid, cmd) in processes.items() if ppid == parent and "forkserver" in cmd}
    return [p for p in processes if p != parent and p not in helpers]


def _left_after_kill(mark: str, seconds: float = 3.0) -> int:
    """How many processes of the run are still alive ``seconds`` after the kill (fewer seconds when
    all are gone sooner)."""
    deadline = time.monotonic() + seconds
    while _marked(mark) and time.monotonic() < deadline:
        time.sleep(0.1)
    return len(_marked(mark))


# -- the kills -------------------------------------------------------------------------------------
def _sigkill_parent(process: subprocess.Popen, mark: str) -> None:
    process.send_signal(signal.SIGKILL)


def _sigterm_parent(process: subprocess.Popen, mark: str) -> None:
    process.send_signal(signal.SIGTERM)


def _sigterm_group(process: subprocess.Popen, mark: str) -> None:
    os.killpg(process.pid, signal.SIGTERM)  # what systemd and `kill -- -PGID` do


def _sigkill_worker(process: subprocess.Popen, mark: str) -> None:
    workers = _workers(mark, process.pid)
    assert workers, f"no worker process found: {_marked(mark)}"
    os.kill(workers[0], signal.SIGKILL)


TERMINATED = r"terminated \(SIGTERM\); the run is resumable: metaspo train --resume \S+"
WORKER_DIED = (
    r"stopped: a worker process died \(signal 9: SIGKILL\); the completed work is journaled\. "
    r"the run is resumable: metaspo train --resume \S+"
)


@dataclass(frozen=True)
class Kill:
    """One way to kill a run mid-grid and what the run must do."""

    how: Callable[[subprocess.Popen, str], None]
    processes: int
    codes: tuple[int, ...]  # the killed run's exit code (negative: killed by that signal)
    said: str | None  # the killed run's last line of stderr, a regex (None: it said nothing, killed)


CASES = {
    "sigkill-parent-1": Kill(_sigkill_parent, 1, (-9,), None),
    "sigkill-parent-2": Kill(_sigkill_parent, 2, (-9,), None),
    # With one process the group is the parent alone: SIGTERM of the parent is the group case.
    "sigterm-group-1": Kill(_sigterm_group, 1, (143,), TERMINATED),
    "sigterm-parent-2": Kill(_sigterm_parent, 2, (143,), TERMINATED),
    "sigterm-group-2": Kill(_sigterm_group, 2, (143,), TERMINATED),
    "sigkill-worker-2": Kill(_sigkill_worker, 2, (1,), WORKER_DIED),
}


def _resent(before: list[dict], after: list[dict]) -> int:
    """Completed (answered) paid requests of ``before`` that ``after`` sent again."""
    completed = Counter(r["digest"] for r in before if r["kind"] in PAID and r["status"] == 200)
    again = Counter(r["digest"] for r in after if r["kind"] in PAID)
    return sum(min(n, completed[digest]) for digest, n in again.items())


@pytest.mark.parametrize("case", list(CASES), ids=list(CASES))
def test_a_killed_run_leaves_no_process_and_resumes_resending_what_was_in_flight(case, tmp_path):
    kill = CASES[case]
    mark, run_dir, log = uuid.uuid4().hex, tmp_path / "run", tmp_path / "server.jsonl"
    env = {k: v for k, v in os.environ.items() if not k.endswith("_API_KEY")}
    env.update({MARK: mark, "MOCK_KEY": "mock-key", "DSPY_CACHEDIR": str(tmp_path / "dspy-cache")})
    # The resumed run gets an empty DSPy cache of its own: only the run's journals may spare a request.
    resume_env = {**env, "DSPY_CACHEDIR": str(tmp_path / "dspy-cache-resumed")}
    with mock_server(*SERVER, log=log) as url:
        with open(tmp_path / "stderr", "w") as stderr:  # a file: a leftover process cannot hold it open
            process = subprocess.Popen(
                [sys.executable, "-m", "metaspo_dspy.cli", *_args(url, run_dir, kill.processes)],
                env=env, cwd=tmp_path, stdout=subprocess.DEVNULL, stderr=stderr, stdin=subprocess.DEVNULL,
                start_new_session=True,  # its own process group, for the group kill
            )  # fmt: skip
        try:
            wait_for(process, log, lambda requests: sum(r["kind"] in PAID for r in requests) >= KILL_AFTER)
            kill.how(process, mark)
            code = process.wait(timeout=60)
            left = _left_after_kill(mark)
        finally:
            for pid in _marked(mark):  # never leave a process behind, whatever failed
                os.kill(pid, signal.SIGKILL)
        said = (tmp_path / "stderr").read_text()
        time.sleep(0.2)  # requests the killed run had in flight are answered (the server logs them)
        before = requests_in(log)
        resumed = subprocess.run(
            [sys.executable, "-m", "metaspo_dspy.cli", "train", "--resume", str(run_dir), "--quiet"],
            env=resume_env, cwd=tmp_path, capture_output=True, text=True, timeout=300, stdin=subprocess.DEVNULL,
        )  # fmt: skip
        after = requests_in(log)[len(before) :]
    resent = _resent(before, after)
    print(f"{case}: exit {code}, {left} processes left after the kill, {resent} completed calls re-sent")
    assert left == 0, f"{left} processes of the run outlived the kill"
    assert code in kill.codes, said
    assert "Traceback" not in said and "leaked" not in said and "a bug in" not in said, said
    if kill.said is not None:  # one line after the run's header (--quiet keeps the header)
        assert re.fullmatch(kill.said, said.splitlines()[-1]), said
        assert sum(line.startswith(("stopped", "terminated", "error")) for line in said.splitlines()) == 1, said
    assert resumed.returncode == 0, resumed.stderr
    assert not _marked(mark), "a process of the resumed run outlived it"
    # What may be asked again: the calls in flight at the kill (answered by the server after it) and
    # the few answered in the instant before, not yet journaled.
    assert resent <= THREADS + 2, f"{resent} completed calls were sent again"
    paid = sum(r["fault"] == "http_500" for r in before + after if r["kind"] in PAID)
    served = sum(r["fault"] == "http_500" for r in before + after)  # the preflight's included
    recorded = sum(json.loads(line)["kind"] == "http_500" for line in (run_dir / "faults.jsonl").open())
    # Every fault the server served reached faults.jsonl, but those of the calls in flight at the kill.
    assert paid - THREADS <= recorded <= served, (paid, served, recorded)


# -- the executor itself -----------------------------------------------------------------------------
def _interrupt(executor: ProcessExecutor) -> None:
    raise KeyboardInterrupt


def _kill_a_worker(executor: ProcessExecutor) -> None:
    os.kill(executor.worker_pids[0], signal.SIGKILL)


DIED = r"a worker process died \(signal 9: SIGKILL\); the completed work is journaled\."


@pytest.mark.parametrize(
    ("action", "error", "message"),
    [(_interrupt, KeyboardInterrupt, None), (_kill_a_worker, WorkerDied, DIED)],
    ids=["interrupt", "worker-killed"],
)
def test_the_executor_stops_its_workers_and_names_a_dead_one(action, error, message):
    """Items come back one by one (the 3rd is collected while most are still to run); an interrupt
    or a dead worker stops every worker (none is left, each reaped), and a later grid starts new ones."""
    examples = [dspy.Example(question=f"What is {i} + 1?").with_inputs("question") for i in range(40)]
    items = [(f"k{i}", 0, i) for i in range(len(examples))]
    got: list[str] = []
    pids: set[int] = set()
    executor = ProcessExecutor(2, 4)

    def collect(key: str, run) -> None:
        got.append(key)
        pids.update(executor.worker_pids)
        if len(got) == 3:
            action(executor)

    with mock_server("--latency", "0.05") as url:
        lm = build_lm(LMSettings(model="openai/mock", api_base=url, num_retries=0), extra={"cache": False})
        program = dspy.Predict("question -> answer")
        job = EvalJob("t", program, "Be exact.", "user", examples, lambda e, p: True)
        work = GridWork([job], [{id(p): n for n, p in program.named_predictors()}], lm, None)
        try:
            with pytest.raises(error) as raised:
                executor.run(work, items, collect)
            assert 3 <= len(got) < len(items), "collected item by item"
            assert executor.worker_pids == [] and len(pids) == 2
            for pid in pids:  # stopped and reaped
                with pytest.raises(ProcessLookupError):
                    os.kill(pid, 0)
            if message is not None:
                assert re.fullmatch(message, str(raised.value)) and raised.value.exitcode == -9
            again: list[str] = []
            executor.run(work, items[:4], lambda key, run: again.append(key))
            assert sorted(again) == sorted(key for key, _, _ in items[:4])
        finally:
            executor.close()
        assert executor.worker_pids == []
