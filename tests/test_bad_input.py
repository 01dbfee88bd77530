"""Bad input, table-driven: each case is one clear `error:` message naming the problem (and the
fix), exit code 2, no traceback, and no run directory left half-written. Real subprocesses."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

FAKE = ["--task-model", "metaspo-fake/t", "--optimizer-model", "metaspo-fake/o"]
TINY = ["--iterations", "1", "--system-candidates", "1", "--user-candidates", "1", "--train-size", "4"]


def _files(root: Path) -> dict[str, Path]:
    """Broken inputs written once for the whole table."""
    files = {}
    (root / "bad.yaml").write_text("tasks:\n  source: [beauty\n")
    files["malformed_yaml"] = root / "bad.yaml"
    (root / "unknown_key.yaml").write_text("search:\n  num_iteratons: 2\n")
    files["unknown_key"] = root / "unknown_key.yaml"
    (root / "wrong_type.yaml").write_text("search:\n  num_iterations: three\n")
    files["wrong_type"] = root / "wrong_type.yaml"
    (root / "empty_tasks.yaml").write_text("tasks:\n  source: []\n")
    files["empty_tasks"] = root / "empty_tasks.yaml"
    (root / "source_only.yaml").write_text("tasks:\n  source: [beauty]\n")
    files["source_only"] = root / "source_only.yaml"
    (root / "api_key.yaml").write_text("task_lm:\n  model: openai/gpt-4o-mini\n  api_key: sk-in-a-file\n")
    files["api_key"] = root / "api_key.yaml"
    data = root / "data" / "amazon"
    data.mkdir(parents=True)
    (data / "beauty.json").write_text("{not json")
    (data / "game.json").write_text(json.dumps({"train": [], "test": []}))
    (data / "baby.json").write_text(json.dumps({"rows": []}))
    files["data"] = root / "data"
    (root / "empty_prompt.txt").write_text("  \n")
    files["empty_prompt"] = root / "empty_prompt.txt"
    (root / "prompt_dir").mkdir()
    files["prompt_dir"] = root / "prompt_dir"
    (root / "a_file").write_text("not a folder")
    files["a_file"] = root / "a_file"
    (root / "existing").mkdir()
    (root / "existing" / "run.json").write_text("{}")
    files["existing"] = root / "existing"
    return files


def _cases(f: dict[str, Path]) -> list[tuple[str, list[str], str]]:
    medical = ["-c", "medical", *FAKE, *TINY]
    return [
        ("malformed YAML", ["train", "-c", str(f["malformed_yaml"]), *FAKE], "bad.yaml"),
        ("unknown config key", ["train", "-c", "medical", str(f["unknown_key"]), *FAKE], "num_iteratons"),
        ("unknown --set key", ["train", *medical, "--set", "serch.num_iterations=2"], "serch"),
        ("--set without =", ["train", *medical, "--set", "search.num_iterations"], "KEY=VALUE"),
        ("unknown task", ["train", *medical, "--set", "tasks.source=[beauty,no_such_task]"], "no_such_task"),
        ("wrong type", ["train", "-c", "medical", str(f["wrong_type"]), *FAKE], "num_iterations"),
        ("empty task list", ["train", "-c", str(f["empty_tasks"]), *FAKE], "tasks.source"),
        ("API key in a config", ["train", "-c", "medical", str(f["api_key"])], "api_key"),
        ("unknown config file", ["train", "-c", "no_such_config", *FAKE], "no_such_config"),
        ("missing data file", ["train", *medical, "--data-dir", str(f["data"]), "--set", "tasks.source=[office]"],
         "office"),
        ("malformed data file", ["train", *medical, "--data-dir", str(f["data"]), "--set", "tasks.source=[beauty]"],
         "beauty.json"),
        ("empty train set", ["train", *medical, "--data-dir", str(f["data"]), "--set", "tasks.source=[game]"],
         "no examples"),
        ("data file without splits", ["train", *medical, "--data-dir", str(f["data"]), "--set", "tasks.source=[baby]"],
         "baby"),
        ("train size 0", ["train", *medical, "--train-size", "0"], "train_size"),
        ("negative iterations", ["train", *medical, "--iterations", "-1"], "num_iterations"),
        ("no task model", ["train", "-c", "medical"], "--task-model"),
        ("unknown model string", ["train", "-c", "medical", "--task-model", "nonsense-model", *FAKE[2:]],
         "nonsense-model"),
        ("missing API key", ["train", "-c", "medical", "--task-model", "openai/gpt-4o-mini", *FAKE[2:]],
         "OPENAI_API_KEY"),
        ("missing system prompt file", ["train", *medical, "--initial-system-prompt", "no/such/prompt.txt"],
         "no/such/prompt.txt"),
        ("empty system prompt file", ["train", *medical, "--initial-system-prompt", str(f["empty_prompt"])],
         "empty"),
        ("unreadable system prompt", ["train", *medical, "--initial-system-prompt", str(f["prompt_dir"])],
         "prompt_dir"),
        ("log dir not writable", ["train", *medical, "--log-dir", str(f["a_file"] / "run")], "a_file"),
        ("log dir holds a run", ["train", *medical, "--log-dir", str(f["existing"])], "already holds a run"),
        ("resume nothing", ["train", "--resume", str(f["a_file"].parent / "nothing")], "nothing to resume"),
        ("resume with other flags", ["train", "--resume", str(f["existing"]), "--iterations", "2"], "--iterations"),
        ("unknown preset", ["test", "-c", "medical", *FAKE, "--system-prompt", "no-such-preset"], "no-such-preset"),
        ("test without unseen tasks", ["test", "-c", str(f["source_only"]), *FAKE], "no unseen tasks"),
        ("show a non-run", ["show", str(f["prompt_dir"])], "holds no MetaSPO run"),
        ("task neither bundled nor fetched", ["train", "-c", "review", *FAKE, *TINY],
         "run `metaspo data fetch review`"),
        ("authors' prompts not fetched", ["test", "-c", "medical", *FAKE, "--user-prompts", "authors"],
         "run `metaspo data fetch dental`"),
        ("unknown fetch target", ["data", "fetch", "reviews"], "unknown data target 'reviews'"),
        ("fetch from nowhere", ["data", "fetch", "ethos", "--cache-dir", str(f["a_file"].parent / "fetched")],
         "cannot download http://127.0.0.1:9/intelligence-csd-auth-gr/"),
    ]  # fmt: skip


@pytest.fixture(scope="module")
def outcomes(tmp_path_factory):
    root = tmp_path_factory.mktemp("bad")
    files = _files(root)
    env = {k: v for k, v in os.environ.items() if not k.endswith("_API_KEY")}
    env.update(DSPY_CACHEDIR=str(root / "cache"))

    def run(case):
        name, args, _ = case
        cwd = root / name.replace(" ", "_").replace("/", "_")
        cwd.mkdir()
        if args[0] == "train" and "--log-dir" not in args and "--resume" not in args:
            args = [*args, "--log-dir", str(cwd / "run")]
        result = subprocess.run(
            [sys.executable, "-m", "metaspo_dspy.cli", *args],
            cwd=cwd,
            env=env,
            capture_output=True,
            text=True,
            timeout=120,
            stdin=subprocess.DEVNULL,
        )
        return name, (result, cwd)

    cases = _cases(files)
    with ThreadPoolExecutor(max_workers=4) as pool:
        results = dict(pool.map(run, cases))
    return {name: (*results[name], needle) for name, _, needle in cases}


_NAMES = "malformed_yaml unknown_key wrong_type empty_tasks source_only api_key data empty_prompt prompt_dir a_file"
CASE_NAMES = [name for name, _, _ in _cases({k: Path(k) for k in [*_NAMES.split(), "existing"]})]


def test_the_table_covers_at_least_20_bad_inputs():
    assert len(CASE_NAMES) >= 20


@pytest.mark.parametrize("name", CASE_NAMES)
def test_bad_input(outcomes, name):
    result, cwd, needle = outcomes[name]
    assert result.returncode == 2, (result.stdout, result.stderr)
    assert "Traceback" not in result.stderr
    errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1, result.stderr
    assert needle in result.stderr.split("error:", 1)[1], result.stderr
    leftovers = [p for p in (cwd / "run").glob("*")] if (cwd / "run").exists() else []
    assert not any(p.name in ("run.json", "metaspo_run.json") for p in leftovers)
