"""Issue 19 ("One clear house"): the seams of the restructure, one section per part."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap

import dspy
import pytest
from conftest import REPO
from test_cli import metaspo

# ---------------------------------------------------------------------------------------------------
# lm: in-process providers are registered through the `metaspo_dspy.providers` entry points (never
# imported by name), in the parent and in every worker process; LiteLLM's cost-map variable is set
# in one place, before any litellm import, so no entry point fetches LiteLLM's remote price list.
# ---------------------------------------------------------------------------------------------------

#: Refuses every connection, imports the given modules, then LiteLLM, and reports what LiteLLM did.
_NO_NETWORK = textwrap.dedent(
    """
    import importlib, json, os, socket, sys

    attempts = []

    def refuse(*args, **kwargs):
        attempts.append(repr(args[:2]))
        raise OSError("this test allows no network")

    socket.getaddrinfo = refuse
    socket.socket.connect = refuse
    for module in sys.argv[1:]:
        importlib.import_module(module)
    import litellm
    from litellm.litellm_core_utils.get_model_cost_map import _cost_map_source_info as info

    print(json.dumps({"attempts": attempts, "url": info.url, "forced": info.is_env_forced,
                      "variable": os.environ.get("LITELLM_LOCAL_MODEL_COST_MAP")}))
    """
)


def _import_then_litellm(*modules: str) -> dict:
    env = {k: v for k, v in os.environ.items() if k != "LITELLM_LOCAL_MODEL_COST_MAP"}
    result = subprocess.run(
        [sys.executable, "-c", _NO_NETWORK, *modules],
        capture_output=True,
        text=True,
        env=env,
        cwd=REPO,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout.strip().splitlines()[-1])


def test_the_guard_sees_litellm_fetch_its_price_list():
    """Without the variable, importing LiteLLM tries the network (what the next test rules out)."""
    seen = _import_then_litellm()
    assert seen["attempts"] and seen["url"] and not seen["forced"] and seen["variable"] is None


@pytest.mark.parametrize(
    "module",
    [
        "metaspo_dspy.cli",  # the `metaspo` command
        "metaspo_dspy",  # the public API
        "metaspo_dspy.evaluation.processes",  # the forkserver preload and every worker process
        "metaspo_dspy.lm.providers",  # the lowest module of lm
    ],
)
def test_no_entry_point_fetches_litellms_remote_price_list(module):
    seen = _import_then_litellm(module)
    assert seen["attempts"] == [] and seen["url"] is None and seen["forced"]
    assert seen["variable"] == "True"  # set in os.environ: worker processes inherit it


def test_the_package_declares_its_in_process_providers():
    from importlib.metadata import entry_points

    from metaspo_dspy.errors import ModelConfigError
    from metaspo_dspy.lm import providers

    declared = {point.name: point.value for point in entry_points(group=providers.GROUP)}
    assert declared["embedded"] == "metaspo_dspy.lm.embedded.provider:register"
    assert declared["metaspo-fake"] == "metaspo_dspy.testing.fake_lm:install_provider"
    assert providers.is_local("metaspo-fake") and providers.is_local("embedded")
    assert not providers.is_local("openai")
    with pytest.raises(ModelConfigError, match="no in-process provider 'nope'"):
        providers.install("nope")


_USER_PROVIDER = '''
"""A user's in-process provider: answers every request with the model name (LiteLLM passes it
without the provider prefix)."""


def install():
    import litellm
    from litellm import CustomLLM
    from litellm.utils import custom_llm_setup

    class Echo(CustomLLM):
        def completion(self, model, messages, *args, **kwargs):
            return litellm.ModelResponse(
                model=model,
                choices=[{"index": 0, "finish_reason": "stop", "message": {"role": "assistant", "content": model}}],
            )

    if not any(entry["provider"] == "house-echo" for entry in litellm.custom_provider_map):
        litellm.custom_provider_map.append({"provider": "house-echo", "custom_handler": Echo()})
    custom_llm_setup()
'''


def test_a_users_package_adds_a_provider_through_the_entry_point(tmp_path):
    site = tmp_path / "site"
    (site / "house_echo-0.1.dist-info").mkdir(parents=True)
    (site / "house_echo-0.1.dist-info" / "METADATA").write_text(
        "Metadata-Version: 2.1\nName: house-echo\nVersion: 0.1\n"
    )
    (site / "house_echo-0.1.dist-info" / "entry_points.txt").write_text(
        "[metaspo_dspy.providers]\nhouse-echo = house_echo:install\n"
    )
    (site / "house_echo.py").write_text(_USER_PROVIDER)
    code = (
        "from metaspo_dspy.lm import LMSettings, build_lm\n"
        "lm = build_lm(LMSettings('house-echo/hello', extra={'cache': False}))\n"
        "print(lm('hi')[0])\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        env={**os.environ, "PYTHONPATH": str(site)},
        cwd=tmp_path,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip().splitlines()[-1] == "hello"


SIG = dspy.Signature("question -> answer", "Answer with the number.")


def _exact(example, prediction, trace=None) -> bool:
    return str(getattr(prediction, "answer", "")).strip() == example.answer


def test_the_fake_provider_answers_in_two_worker_processes():
    """Workers find `metaspo-fake` through the entry point: a K=2 run equals the K=1 run."""
    from metaspo_dspy import MetaSPO
    from metaspo_dspy.evaluation.processes import worker_cpu_seconds
    from metaspo_dspy.lm import LMSettings, build_lm

    train = {
        name: [
            dspy.Example(question=f"What is {i + offset} + 1?", answer=str(i + offset + 1)).with_inputs("question")
            for i in range(6)
        ]
        for name, offset in (("a", 0), ("b", 100))
    }
    runs, before = {}, worker_cpu_seconds()
    for k in (1, 2):
        best = MetaSPO(
            _exact,
            build_lm(LMSettings.for_optimizer("metaspo-fake/house-optimizer", extra={"cache": False})),
            build_lm(LMSettings.for_task("metaspo-fake/house-workers", extra={"cache": False})),
            num_threads=4,
            num_processes=k,
            num_iterations=1,
            num_system_candidates=2,
            num_user_candidates=2,
            user_top_k=2,
            progress=False,
        ).compile(dspy.Predict(SIG), trainsets=train)
        results = best.detailed_results
        runs[k] = (results["nodes"], results["calls"], results["faults"], str(best.system_prompt))
    assert worker_cpu_seconds() > before, "the K=2 run used worker processes"
    assert not any(sum(node["failures"].values()) for node in runs[1][0])
    assert runs[2] == runs[1]


def test_the_fake_provider_works_on_the_command_line_with_two_processes(tmp_path):
    """`metaspo train --processes 2` on `metaspo-fake/...`: every task call reaches the fake (in the
    workers, which log to the same file) and none fails."""
    run_dir, log = tmp_path / "run", tmp_path / "fake.jsonl"
    result = metaspo(
        "train", "-c", "generated", "--train-size", "3", "--test-size", "2", "--iterations", "1", "--quiet",
        "--task-model", "metaspo-fake/task", "--optimizer-model", "metaspo-fake/opt",
        "--processes", "2", "--log-dir", str(run_dir),
        env={"METASPO_FAKE_LOG": str(log)}, cwd=tmp_path,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    artifact = json.loads((run_dir / "metaspo_run.json").read_text())
    requests = [json.loads(line) for line in log.read_text().splitlines()]
    assert sum(r["kind"] == "task" for r in requests) == artifact["calls"]["task_lm"] > 0
    faults = run_dir / "faults.jsonl"
    assert not faults.exists() or not faults.read_text().strip()
