"""num_processes (issue 14): evaluation grids over worker processes give a one-process run's results.

Real worker processes (forkserver/spawn) against the loopback mock server: a K=2 run equals a K=1
run outside timings (nodes, calls, faults, usage, journals), a resumed K=2 run asks nothing again,
and what cannot run in a worker is refused before any call."""

from __future__ import annotations

import json
import threading
import urllib.request
from collections import Counter
from pathlib import Path

import dspy
import pytest
from conftest import mock_server, needs_embedded
from test_cli import metaspo

from metaspo_dspy import APE, MetaSPO, ProTeGi, meta_test
from metaspo_dspy.errors import ConfigError
from metaspo_dspy.evaluation.processes import worker_cpu_seconds
from metaspo_dspy.lm import LMSettings, build_lm

SIG = dspy.Signature("question -> answer", "Answer with the number.")
SIZES = dict(num_iterations=1, num_system_candidates=2, num_user_candidates=2, user_top_k=2, progress=False)


def _train() -> dict[str, list[dspy.Example]]:
    def examples(n: int, offset: int) -> list[dspy.Example]:
        return [
            dspy.Example(question=f"What is {i + offset} + 1?", answer=str(i + offset + 1)).with_inputs("question")
            for i in range(n)
        ]

    return {"a": examples(10, 0), "b": examples(10, 100)}


def _exact(example, prediction, trace=None) -> bool:
    return str(getattr(prediction, "answer", "")).strip() == example.answer


def _lm(url: str, temperature: float, engine: str = "auto"):
    settings = LMSettings(model="openai/mock", api_base=url, temperature=temperature, num_retries=2, engine=engine)
    return build_lm(settings, extra={"cache": False})


def _served(url: str) -> int:
    with urllib.request.urlopen(url.removesuffix("/v1") + "/stats", timeout=5) as response:
        return json.loads(response.read()).get("requests", 0)


def _run(url: str, processes: int, run_dir: Path, engine: str = "auto", **extra):
    with dspy.track_usage() as usage:
        best = MetaSPO(
            _exact,
            _lm(url, 1.0, engine),
            _lm(url, 0.0, engine),
            num_threads=4,
            num_processes=processes,
            log_dir=run_dir,
            **SIZES,
            **extra,
        ).compile(dspy.Predict(SIG), trainsets=_train())
    return best, usage.get_total_tokens()


def _without_timings(details: dict) -> dict:
    phases = [{k: v for k, v in p.items() if k not in ("seconds", "started", "finished")} for p in details["phases"]]
    return {**details, "phases": phases}


def _comparable(best) -> dict:
    results = _without_timings(best.detailed_results)
    return {
        "nodes": results["nodes"],
        "phases": results["phases"],
        "calls": results["calls"],
        "faults": results["faults"],
        "usage": results["usage"],
        "system_prompt": str(best.system_prompt),
    }


def _journal_keys(run_dir: Path) -> set[str]:
    lines = (run_dir / "evaluations.jsonl").read_text().splitlines()
    return {json.loads(line)["key"] for line in lines if line.strip()}


@pytest.mark.parametrize("engine", ["auto", "litellm"])
def test_two_processes_give_the_one_process_result(tmp_path, engine):
    """Same server behaviour (a fresh server per run: faults are drawn per request and attempt), same
    run: every node score, call count, fault, token count and journal entry."""
    flags = ("--latency", "0", "--error-rate", "0.1", "--garbage-rate", "0.05", "--seed", "5")
    runs = {}
    for k in (1, 2):
        with mock_server(*flags) as url:
            best, usage = _run(url, k, tmp_path / f"k{k}", engine)
        faults = Counter(
            json.loads(line)["kind"] for line in (tmp_path / f"k{k}" / "faults.jsonl").read_text().splitlines()
        )
        runs[k] = (_comparable(best), usage, faults, _journal_keys(tmp_path / f"k{k}"))
    (one, one_usage, one_faults, one_keys), (two, two_usage, two_faults, two_keys) = runs[1], runs[2]
    assert one_faults["http_500"] > 0 and one_faults["parse_error"] > 0, one_faults
    assert two == one
    assert two_usage == one_usage  # worker calls reach the caller's dspy.track_usage()
    assert two_faults == one_faults  # every worker's faults are in the parent's faults.jsonl
    assert two_keys == one_keys


def test_a_resumed_run_with_two_processes_asks_nothing_again(tmp_path):
    with mock_server("--latency", "0") as url:
        first, _ = _run(url, 2, tmp_path / "run")
        served = _served(url)
        again, _ = _run(url, 2, tmp_path / "run", resume=True)
        assert _served(url) == served
    assert _comparable(again)["nodes"] == _comparable(first)["nodes"]


FAULTS = ("--latency", "0", "--error-rate", "0.1", "--garbage-rate", "0.05", "--seed", "5")
SINGLE = {
    ProTeGi: dict(num_iterations=1, num_candidates=2, beam_width=2),
    APE: dict(num_candidates=3, top_k=2, num_pairs=3),
}


@pytest.mark.parametrize("method", [ProTeGi, APE], ids=["protegi", "ape"])
def test_single_task_baselines_with_two_processes_give_the_one_process_result(method):
    """ProTeGi and APE (and so test-time adaptation) with K=2: the same nodes, rounds, proposals,
    phases and token usage as K=1, on a server that fails and garbles some answers."""
    runs, worker_cpu = {}, []
    for k in (1, 2):
        worker_cpu.append(worker_cpu_seconds())
        with mock_server(*FAULTS) as url, dspy.track_usage() as usage:
            optimizer = method(
                _exact, _lm(url, 1.0), _lm(url, 0.0), num_threads=4, num_processes=k, progress=False, **SINGLE[method]
            )
            train = _train()
            program = optimizer.compile(dspy.Predict(SIG), trainset=train["a"], testset=train["b"][:4], task_name="a")
        runs[k] = (_without_timings(program.detailed_results), usage.get_total_tokens(), program.dump_state())
    assert runs[1][0]["nodes"] and any(n["failures"] for n in runs[1][0]["nodes"]), "faults reached the run"
    assert runs[2] == runs[1]
    assert worker_cpu_seconds() > worker_cpu[1] == worker_cpu[0], "K=2 ran in worker processes, K=1 did not"


def test_tta_with_a_dspy_teleprompter_scores_in_two_processes():
    """The scoring grid of test-time adaptation with any DSPy teleprompter runs in the workers."""
    train = _train()
    task = type("T", (), {"name": "a", "train": train["a"], "test": train["b"][:4], "metric": staticmethod(_exact)})()
    task.program = lambda: dspy.Predict(SIG)
    results, worker_cpu = {}, worker_cpu_seconds()
    for k in (1, 2):
        with mock_server(*FAULTS) as url:
            result = meta_test.test_time_adaptation(
                "You are exact.", task, optimizer=dspy.LabeledFewShot(k=2), task_lm=_lm(url, 0.0),
                num_processes=k, progress=False,
            )  # fmt: skip
            results[k] = (result["rounds"], result["details"], _served(url))
    assert results[2] == results[1]
    assert results[1][2] >= 2 * (10 + 4)  # initial and final program on train and test
    assert worker_cpu_seconds() > worker_cpu


class _Local(dspy.BaseLM):
    """An LM that exists only in this process (as the embedded model does)."""

    def __init__(self):
        super().__init__(model="local/x")

    def forward(self, prompt=None, messages=None, **kwargs):  # pragma: no cover - never called
        raise AssertionError("no call may be made")


class _Unpicklable(dspy.utils.callback.BaseCallback):
    def __init__(self):
        self.lock = threading.Lock()


def test_what_cannot_run_in_a_worker_is_refused_before_any_call(tmp_path):
    with mock_server("--latency", "0") as url:
        lm = _lm(url, 0.0)
        with pytest.raises(ConfigError, match=r"_Local is not a dspy\.LM.*num_processes=1"):
            MetaSPO(_exact, lm, _Local(), num_processes=2, **SIZES).compile(dspy.Predict(SIG), trainsets=_train())
        with dspy.context(callbacks=[_Unpicklable()]), pytest.raises(ConfigError, match=r"callback.*num_processes=1"):
            MetaSPO(_exact, lm, lm, num_processes=2, **SIZES).compile(dspy.Predict(SIG), trainsets=_train())
        with pytest.raises(ConfigError, match=r"_Local is not a dspy\.LM"):
            ProTeGi(_exact, lm, _Local(), num_processes=2)
        with dspy.context(callbacks=[_Unpicklable()]), pytest.raises(ConfigError, match=r"callback.*num_processes=1"):
            APE(_exact, lm, lm, num_processes=2, progress=False).compile(dspy.Predict(SIG), trainset=_train()["a"])
        assert _served(url) == 0


@needs_embedded
@pytest.mark.parametrize(
    "command",
    [["train"], ["test", "--system-prompt", "default"], ["test", "--system-prompt", "default", "--analysis", "tta"]],
    ids=["train", "test-unseen", "test-tta"],
)
def test_cli_refuses_processes_for_the_embedded_model_in_one_line(tmp_path, command):
    result = metaspo(
        *command, "-c", "generated", "--task-model", "embedded", "--optimizer-model", "embedded",
        "--processes", "2", "--log-dir", str(tmp_path / "run"), cwd=tmp_path,
    )  # fmt: skip
    assert result.returncode == 2, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error:") and "--processes 1" in lines[0], result.stderr
    assert not (tmp_path / "run").exists()
