"""Fail loudly, never silently (issue 11, items 5-7 and 9): table-driven CLI cases as real subprocesses.

Each case is an argv (and the files it needs, written here) -> the exit code and a fragment of the
one ``error:`` line (``interrupted`` for exit 130); stderr never holds a traceback. Faults the
machine would have to produce (a full disk, a bug, Ctrl-C at a precise moment) are injected into
the subprocess by a small wrapper that patches one standard-library function for one file name
(``INJECT`` below), never by replacing our own classes.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from metaspo_dspy.config import load_config

FAKE = ["--task-model", "metaspo-fake/t", "--optimizer-model", "metaspo-fake/o"]
TINY = ["--iterations", "1", "--system-candidates", "1", "--user-candidates", "1", "--train-size", "4"]
SECRET = "tok-4f9c2a7d1e8b6350"  # in $METASPO_TEST_SECRET_TOKEN: redacted wherever it would appear

# Runs `python -m metaspo_dspy.cli ARGS` after patching one stdlib function for one file name:
# INJECT=<kind>:<file name>. The patched call raises what a full disk, a bug or Ctrl-C would.
INJECT = r"""
import builtins, difflib, errno, os, runpy, sys
kind, target = os.environ["INJECT"].split(":", 1)
full = lambda: OSError(errno.ENOSPC, "No space left on device")
if kind == "enospc-append":
    real_open = builtins.open
    class Full:
        def __init__(self, f): self._f = f
        def write(self, data): raise full()
        def __getattr__(self, name): return getattr(self._f, name)
        def __enter__(self): return self
        def __exit__(self, *a): self._f.close()
    def patched_open(file, mode="r", *args, **kwargs):
        handle = real_open(file, mode, *args, **kwargs)
        return Full(handle) if str(file).endswith(target) and "a" in mode else handle
    builtins.open = patched_open
elif kind == "enospc-fsync":
    real_fsync = os.fsync
    def patched_fsync(fd):
        if os.path.basename(os.readlink(f"/proc/self/fd/{fd}")).startswith("." + target):
            raise full()
        return real_fsync(fd)
    os.fsync = patched_fsync
elif kind in ("bug-replace", "interrupt-replace"):
    real_replace = os.replace
    def patched_replace(src, dst, *args, **kwargs):
        if str(dst).endswith(target):
            if kind == "interrupt-replace":
                raise KeyboardInterrupt
            raise RuntimeError("boom with " + os.environ["METASPO_TEST_SECRET_TOKEN"])
        return real_replace(src, dst, *args, **kwargs)
    os.replace = patched_replace
elif kind == "bug-difflib":
    def broken(*args, **kwargs):
        raise RuntimeError("boom with " + os.environ["METASPO_TEST_SECRET_TOKEN"])
    difflib.get_close_matches = broken
sys.argv = ["metaspo", *sys.argv[1:]]
runpy.run_module("metaspo_dspy.cli", run_name="__main__", alter_sys=True)
"""


def _files(root: Path) -> dict[str, Path]:
    """The inputs of the table, written once."""
    files = {}

    def write(name: str, content: str | bytes) -> None:
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(content if isinstance(content, bytes) else content.encode("utf-8"))
        files[name] = path

    write("unknown_key.yaml", "search:\n  num_iteratons: 2\n")
    write("dup.yaml", "search:\n  num_iterations: 1\nseed: 3\nsearch:\n  user_top_k: 2\n")
    write("utf16.yaml", "search:\n  num_iterations: 1\n".encode("utf-16"))
    write("latin1.txt", "Vous êtes un assistant utile.".encode("latin-1"))
    row = {"question": "Review: très bien", "answer": 5}
    write("data/amazon/beauty.json", json.dumps({"train": [row], "test": []}, ensure_ascii=False).encode("latin-1"))
    good = {"question": "Review: fine", "answer": 4}
    write("data/amazon/game.json", json.dumps({"train": [{"question": "q", "answer": [5]}], "test": []}))
    write("data/amazon/baby.json", json.dumps({"train": [good, {"question": "q", "answer": None}], "test": []}))
    models = ["task_lm.model=metaspo-fake/t", "optimizer_lm.model=metaspo-fake/o", "data.train_size=4"]
    config = load_config("base", "medical", overrides=[*models, "data.test_size=2"])
    write("newer/config.json", json.dumps(config.to_dict()))
    write("newer/run.json", json.dumps({"format": "metaspo-dspy/run-dir/v2", "settings": {}}))
    return files


def _train(*args: str) -> list[str]:
    return ["train", "-c", "medical", *FAKE, *TINY, *args]


DATA = ["--data-dir", "{data}"]
#: name -> (argv, injection, exit code, fragment of the error line, must the log dir stay absent?)
CASES: dict[str, tuple[list[str], str | None, int, str, bool]] = {
    # item 5: options accumulate, duplicate YAML keys are errors
    "repeated --set keeps the first": (_train("--set", "search.screening=1.5", "--set", "seed=1"), None, 2,
                                       "'search.screening' must be in (0, 1)", True),
    "repeated --set keeps the second": (_train("--set", "seed=1", "--set", "search.screening_keep=0"), None, 2,
                                        "'search.screening_keep' must be in (0, 1]", True),
    "repeated -c keeps the first": (["train", "-c", "{unknown_key.yaml}", "-c", "review", *FAKE], None, 2,
                                    "num_iteratons", True),
    "duplicate YAML key": (["train", "-c", "review", "-c", "{dup.yaml}", *FAKE], None, 2,
                           "duplicate key 'search' at line 4 (first given at line 1)", True),
    # item 6: specific messages instead of tracebacks
    "UTF-16 config": (["train", "-c", "review", "-c", "{utf16.yaml}", *FAKE], None, 2, "UTF-16", True),
    "Latin-1 data file": (_train(*DATA, "--set", "tasks.source=[beauty]"), None, 2,
                          "beauty.json is not UTF-8 text: byte 0xe8", True),
    "Latin-1 system prompt": (_train("--initial-system-prompt", "{latin1.txt}"), None, 2,
                              "latin1.txt is not UTF-8 text", True),
    "disk full in a journal": (_train(), "enospc-append:evaluations.jsonl", 2,
                               "the disk is full (or over quota): cannot write {run}/evaluations.jsonl", False),
    "disk full in a checkpoint": (_train(), "enospc-fsync:checkpoint.json", 2,
                                  "cannot write {run}/checkpoint.json; free some space; the run is resumable: "
                                  "metaspo train --resume {run}", False),
    "a bug": (_train(), "bug-replace:checkpoint.json", 1, "unexpected RuntimeError: boom with [REDACTED]", False),
    "a bug before the run dir": (_train("--set", "serch.x=1"), "bug-difflib:-", 1, "the traceback is in", True),
    # item 7: ranges are checked before the run directory is created; rows against their answer type
    "screening 1.5": (_train("--screening", "1.5"), None, 2, "'search.screening' must be in (0, 1)", True),
    "threads 0": (_train("--threads", "0"), None, 2, "'num_threads' must be >= 1", True),
    "train size -1": (_train("--train-size", "-1"), None, 2, "'data.train_size' must be >= 1", True),
    "iterations 0": (_train("--iterations", "0"), None, 2, "'search.num_iterations' must be >= 1", True),
    "screening_keep 1.5": (_train("--set", "search.screening_keep=1.5"), None, 2, "screening_keep", True),
    "max_failure_share 2": (_train("--set", "budget.max_failure_share=2"), None, 2,
                            "'budget.max_failure_share' must be in [0, 1]", True),
    "negative max cost": (_train("--max-cost", "-1"), None, 2, "'budget.max_cost' must be > 0", True),
    "zero max cost": (_train("--max-cost", "0"), None, 2, "'budget.max_cost' must be > 0", True),
    "Amazon answer is a list": (_train(*DATA, "--set", "tasks.source=[game]"), None, 2,
                                "game.json, train split, row 0: answer {'answer': [5]} does not fit the task; "
                                "expected a rating from 1 to 5", True),
    "Amazon answer is null": (_train(*DATA, "--set", "tasks.source=[baby]"), None, 2,
                              "baby.json, train split, row 1: answer {'answer': None}", True),
    # item 9: run-directory format, Ctrl-C before run.json exists
    "resume a newer run dir": (["train", "--resume", "{newer}"], None, 2,
                               "records format 'metaspo-dspy/run-dir/v2', but metaspo-dspy", False),
    "Ctrl-C before run.json": (_train(), "interrupt-replace:config.json", 130,
                               "nothing to resume: run the same command again", False),
}  # fmt: skip


def _env(root: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.endswith("_API_KEY")}
    env.update(
        DSPY_CACHEDIR=str(root / "cache"),
        METASPO_TEST_SECRET_TOKEN=SECRET,
        TMPDIR=str(root / "tmp"),
    )
    (root / "tmp").mkdir(exist_ok=True)
    return env


def _fill(text: str, places: dict[str, Path]) -> str:
    """``text`` with each ``{name}`` of ``places`` replaced by its path (other braces kept)."""
    return re.sub(r"\{([^}]+)\}", lambda m: str(places.get(m.group(1), m.group(0))), text)


def run_cli(args: list[str], cwd: Path, env: dict[str, str], inject: str | None = None):
    """``metaspo ARGS`` as a subprocess, with ``inject`` (``kind:file``) applied by :data:`INJECT`."""
    command = [sys.executable, "-c", INJECT, *args] if inject else [sys.executable, "-m", "metaspo_dspy.cli", *args]
    return subprocess.run(
        command, cwd=cwd, env={**env, **({"INJECT": inject} if inject else {})},
        capture_output=True, text=True, timeout=300, stdin=subprocess.DEVNULL,
    )  # fmt: skip


@pytest.fixture(scope="module")
def table(tmp_path_factory):
    """Runs every case once (three at a time); name -> (result, case folder, run dir, files)."""
    root = tmp_path_factory.mktemp("loud")
    files = _files(root)
    env = _env(root)

    def run(name: str):
        argv, inject, _, _, _ = CASES[name]
        cwd = root / re.sub(r"\W+", "_", name)
        cwd.mkdir()
        run_dir = cwd / "run"
        places = {"data": root / "data", "newer": files["newer/run.json"].parent, "run": run_dir, **files}
        args = [_fill(a, places) for a in argv]
        if args[0] == "train" and "--resume" not in args:
            args += ["--log-dir", str(run_dir), "--quiet"]
        return name, (run_cli(args, cwd, env, inject), cwd, run_dir, places)

    with ThreadPoolExecutor(max_workers=3) as pool:
        return dict(pool.map(run, CASES))


@pytest.mark.parametrize("name", list(CASES))
def test_loud_input(table, name):
    _, _, code, fragment, no_run_dir = CASES[name]
    result, _, run_dir, places = table[name]
    fragment = _fill(fragment, places)
    assert result.returncode == code, result.stderr
    assert "Traceback" not in result.stderr and SECRET not in result.stderr + result.stdout
    prefix = "interrupted" if code == 130 else "error:"
    lines = [line for line in result.stderr.splitlines() if line.startswith(prefix)]
    assert len(lines) == 1, result.stderr
    assert fragment in lines[0], result.stderr
    if no_run_dir:
        assert not run_dir.exists()


def test_the_table_covers_every_item():
    assert len(CASES) >= 20


@pytest.mark.parametrize("name", ["disk full in a journal", "disk full in a checkpoint"])
def test_a_full_disk_leaves_a_resumable_run(table, name):
    result, cwd, run_dir, _ = table[name]
    assert result.returncode == 2 and (run_dir / "run.json").is_file()
    resumed = run_cli(["train", "--resume", str(run_dir), "--quiet"], cwd, _env(cwd))
    assert resumed.returncode == 0, resumed.stderr
    assert json.loads((run_dir / "metaspo_run.json").read_text())["optimized_system_prompt"] == resumed.stdout.strip()


def test_a_bug_leaves_its_traceback_in_error_log_redacted(table):
    result, _, run_dir, _ = table["a bug"]
    assert f"the traceback is in {run_dir / 'error.log'}" in result.stderr
    log = (run_dir / "error.log").read_text()
    assert "Traceback" in log and "RuntimeError: boom with [REDACTED]" in log and SECRET not in log


def test_a_bug_before_the_run_dir_leaves_its_traceback_in_a_temporary_file(table):
    result, cwd, _, _ = table["a bug before the run dir"]
    named = re.search(r"the traceback is in (\S+);", result.stderr)
    assert named, result.stderr
    log = Path(named.group(1)).read_text()
    assert Path(named.group(1)).parent == cwd.parent / "tmp"
    assert "get_close_matches" in log and SECRET not in log


def test_debug_shows_the_traceback(tmp_path):
    result = run_cli([*_train("--set", "serch.x=1"), "--debug"], tmp_path, _env(tmp_path), "bug-difflib:-")
    assert result.returncode == 1
    assert "Traceback" in result.stderr and "RuntimeError: boom with [REDACTED]" in result.stderr
    assert SECRET not in result.stderr
    assert sum(line.startswith("error:") for line in result.stderr.splitlines()) == 1


def test_ctrl_c_before_run_json_says_how_to_start_again_and_that_works(table):
    result, cwd, run_dir, _ = table["Ctrl-C before run.json"]
    assert "--resume" not in result.stderr and not (run_dir / "run.json").exists()
    again = run_cli([*_train(), "--log-dir", str(run_dir), "--quiet"], cwd, _env(cwd))
    assert again.returncode == 0, again.stderr


def test_verbose_logs_go_to_stderr_and_stdout_is_exactly_the_prompt(tmp_path):
    run_dir = tmp_path / "run"
    result = run_cli([*_train("--test-size", "2"), "--log-dir", str(run_dir), "--quiet", "--verbose"], tmp_path,
                     _env(tmp_path))  # fmt: skip
    assert result.returncode == 0, result.stderr
    artifact = json.loads((run_dir / "metaspo_run.json").read_text())
    assert result.stdout == artifact["optimized_system_prompt"] + "\n"
    assert "LiteLLM" in result.stderr  # the verbose logs were written, to stderr


# -- in-process: journals, run-directory format, prompt files ----------------------------------


def test_journal_records_of_the_wrong_shape_are_skipped_with_a_warning(tmp_path, caplog):
    from metaspo_dspy.store.journal import Journal

    path = tmp_path / "j.jsonl"
    lines = [
        json.dumps({"key": "good", "value": {"n": 1}}),
        json.dumps([1, 2]),
        json.dumps({"key": 3, "value": {}}),
        json.dumps({"key": "no value"}),
        json.dumps({"key": "extra", "value": 1, "more": 2}),
        json.dumps({"key": ["unhashable"], "value": 1}),
        json.dumps({"key": "refused", "value": {"n": "one"}}),
    ]
    path.write_bytes(("\n".join(lines) + "\n").encode() + b'{"key": "\xff", "value": 1}\n{"key": "torn", "val')
    check = lambda value: None if isinstance(value.get("n"), int) else "n must be an integer"  # noqa: E731
    journal = Journal(path, check=check)
    assert len(journal) == 1 and journal.get("good") == {"n": 1}
    warned = [r.getMessage() for r in caplog.records if r.levelname == "WARNING"]
    assert len(warned) == 8
    assert any("line 7" in w and "n must be an integer" in w for w in warned)
    assert any("line 3" in w and "the key must be a string" in w for w in warned)


def test_wrong_shape_entries_of_a_real_run_are_asked_again_on_resume(data_dir, engine_factory, tmp_path):
    import dspy
    from conftest import exact_metric, load_examples

    from metaspo_dspy import MetaSPO

    train = {t: load_examples(data_dir, "medmcqa", t, 6) for t in ("ob_gyn", "medicine")}
    gold = {e.question: e.answer for exs in train.values() for e in exs}
    small = dict(num_iterations=1, num_system_candidates=2, num_user_candidates=1, user_top_k=1, progress=False)
    sig = dspy.Signature("question -> answer", "Choose the best answer.")
    engine, task_lm, opt_lm = engine_factory("first", gold=gold)
    run_dir = tmp_path / "run"
    first = MetaSPO(exact_metric, opt_lm, task_lm, log_dir=run_dir, **small).compile(dspy.Predict(sig), trainsets=train)
    for name, broken in (("evaluations.jsonl", {"prediction": "3", "error": None}), ("proposals.jsonl", {"status": 1})):
        records = [json.loads(line) for line in (run_dir / name).read_text().splitlines()]
        records[:2] = [{"key": r["key"], "value": broken} for r in records[:2]]  # valid JSON, wrong shape
        (run_dir / name).write_text("".join(json.dumps(r) + "\n" for r in records))
    (run_dir / "metaspo_run.json").unlink()  # as if interrupted: a finished run is not run again
    engine2, task_lm2, opt_lm2 = engine_factory("first", gold=gold)
    again = MetaSPO(exact_metric, opt_lm2, task_lm2, log_dir=run_dir, resume=True, **small).compile(
        dspy.Predict(sig), trainsets=train
    )
    assert again.system_prompt.text == first.system_prompt.text
    assert 0 < sum(engine2.counts.values()) < sum(engine.counts.values())  # only the skipped ones asked again


def test_run_json_records_its_format_and_other_formats_are_refused(tmp_path):
    from metaspo_dspy.errors import RunDirError
    from metaspo_dspy.store.run_dir import RUN_FORMAT, RunDir

    run = RunDir(tmp_path / "run", {"a": 1})
    run.close()
    record = json.loads((tmp_path / "run" / "run.json").read_text())
    assert record["format"] == RUN_FORMAT and record["written_by"].startswith("metaspo-dspy ")
    RunDir(tmp_path / "run", {"a": 1}, resume=True).close()  # the current version's own directories resume
    for recorded, why in (
        ("metaspo-dspy/run-dir/v9", "a newer metaspo-dspy wrote it"),
        ("metaspo-dspy/run-dir/v0", "an older metaspo-dspy wrote it"),
        (None, "not written by metaspo-dspy"),
    ):
        (tmp_path / "run" / "run.json").write_text(json.dumps({**record, "format": recorded}))
        with pytest.raises(RunDirError, match=f"records format {recorded!r}.*{why}"):
            RunDir(tmp_path / "run", {"a": 1}, resume=True)


def test_system_prompt_files_must_be_utf8_a_bom_is_accepted(tmp_path):
    from metaspo_dspy import SystemPrompt

    path = tmp_path / "prompt.txt"
    path.write_bytes(b"\xef\xbb\xbfVous \xc3\xaates utile.")
    assert SystemPrompt.load(path).text == "Vous êtes utile."
    path.write_bytes("Vous êtes utile.".encode("utf-16"))
    with pytest.raises(ValueError, match=r"prompt\.txt is not UTF-8 text: it is UTF-16 encoded"):
        SystemPrompt.load(path)


def test_an_oserror_from_a_write_names_its_file(tmp_path, monkeypatch):
    import errno

    from metaspo_dspy.store.io import atomic_write_text
    from metaspo_dspy.store.journal import Journal

    def full(fd):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(os, "fsync", full)
    with pytest.raises(OSError) as info:
        atomic_write_text(tmp_path / "checkpoint.json", "{}")
    assert info.value.errno == errno.ENOSPC and info.value.filename == str(tmp_path / "checkpoint.json")
    assert list(tmp_path.iterdir()) == []  # no temporary file left
    journal = Journal(tmp_path / "e.jsonl")
    journal.put("k", 1)
    with pytest.raises(OSError) as info:
        journal.sync()
    assert info.value.filename == str(tmp_path / "e.jsonl")


def test_the_run_journal_shapes_accept_what_the_run_writes_and_name_what_is_wrong():
    from metaspo_dspy.store.run_dir import evaluation_problem, proposal_problem

    call = {"predictor": "self", "user": "Q", "completion": "[[ ## answer ## ]]\n3"}
    assert evaluation_problem({"prediction": {"answer": "3"}, "error": None, "usage": {}, "calls": [call]}) is None
    assert evaluation_problem({"prediction": None, "error": "timeout", "calls": []}) is None
    assert "needs 'prediction'" in evaluation_problem({"error": None, "calls": []})
    assert "'calls' must be list" in evaluation_problem({"prediction": None, "error": None, "calls": "x"})
    assert "a call needs" in evaluation_problem({"prediction": None, "error": None, "calls": [{"user": "Q"}]})
    finished = {"analysis": "a", "text": "t", "status": "ok", "reason": None, "optimizer_calls": 2, "failed": False}
    assert proposal_problem(finished) is None and proposal_problem({"analysis": "only the analysis"}) is None
    assert "needs analysis, text" in proposal_problem({"status": "ok", "text": "t"})
    assert "'optimizer_calls' must be int" in proposal_problem({**finished, "optimizer_calls": "2"})
    assert "must be a mapping" in proposal_problem(["ok"])


@pytest.mark.parametrize("verbose", [True, False])
def test_the_cli_logging_is_redacted_and_on_stderr(tmp_path, verbose):
    probe = (
        "import logging, os\n"
        "from metaspo_dspy.cli import setup_logging\n"
        f"setup_logging({verbose})\n"
        "import litellm\n"
        "secret = os.environ['METASPO_TEST_SECRET_TOKEN']\n"
        "for name in ('dspy.clients.lm', 'LiteLLM', 'metaspo_dspy.evaluation'):\n"
        "    logging.getLogger(name).error('%s says Authorization: Bearer abcdefghij ' + secret, name)\n"
        "logging.getLogger('LiteLLM').info('an info line')\n"
    )
    result = subprocess.run([sys.executable, "-c", probe], env=_env(tmp_path), capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    assert result.stdout == "" and SECRET not in result.stderr and "abcdefghij" not in result.stderr
    for name in ("dspy.clients.lm", "LiteLLM", "metaspo_dspy.evaluation"):
        assert f"{name} says Authorization: Bearer [REDACTED] [REDACTED]" in result.stderr
    assert ("an info line" in result.stderr) is verbose
