"""Paths and files given by the user (issue 25, items 3 and 4), table-driven with real `metaspo` processes on
the fake provider: a log dir holding anything of the user's is refused and left as it was (`--log-dir ''`,
`.`, a folder with the user's own `config.json`); prompt, config and data files must be regular files of
bounded size (a FIFO, `/dev/zero`, a folder, a huge file: one line, no hang); a prompt needs visible text;
overlong paths are one `error:` line; `--set` mixups and a damaged `config.json` on `--resume` are clear
errors, not "(a bug)" lines. Each refused case: exit 2, one `error:` line matching its pattern, no traceback,
no request at the fake model (its METASPO_FAKE_LOG stays absent), and every file of the user unchanged.
Characters outside the BMP in a prompt file (name and text), a data dir and the log dir work end to end.
"""

from __future__ import annotations

import json
import os
import re
import stat
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from metaspo_dspy.errors import RunDirError
from metaspo_dspy.store.run_dir import RunDir, check_new_log_dir
from metaspo_dspy.tasks.sources.local import BUNDLED_DIR

FAKE = ["--task-model", "metaspo-fake/t", "--optimizer-model", "metaspo-fake/o"]
TINY = ["--iterations", "1", "--system-candidates", "1", "--user-candidates", "1", "--train-size", "4",
        "--test-size", "2"]  # fmt: skip
TRAIN = ["train", "-c", "medical", *FAKE, *TINY]
TEST = ["test", "-c", "medical", *FAKE, "--test-size", "2", "--num-user-prompts", "1"]
LONG_NAME = "n" * 300  # one name over the usual 255-byte limit
LONG_PATH = "/" + "d/" * 2100 + "x"  # 4,202 bytes: over the usual 4,096
UNICODE_PROMPT = "Answer briefly 😀 and use 𝒜 for the option."
USER_CONFIG = '{"mine": "a config of the user\'s own"}\n'


@dataclass
class Case:
    """One row: the arguments (``{in}``: the shared inputs folder; ``{cwd}``: the case's own folder, which
    holds the user's files), the exit code and the message pattern; ``log_dir`` False when the args name
    the log dir themselves (else ``--log-dir {cwd}/run`` is added and must not appear)."""

    id: str
    args: list[str]
    pattern: str
    code: int = 2
    log_dir: bool = True
    setup: dict[str, str] = field(default_factory=dict)  # extra files in the case's folder: name -> text


CASES = [
    # -- log dirs: never over the user's files
    Case("log dir ''", [*TRAIN, "--log-dir", ""], r"the log dir \(the current folder\) is not empty \(it holds "
         r"config\.json, notes\.txt\).*choose a new or empty folder", log_dir=False),
    Case("log dir .", [*TRAIN, "--log-dir", "."], r"the log dir \(the current folder\) is not empty", log_dir=False),
    Case("log dir with the user's config.json", [*TRAIN, "--log-dir", "{cwd}/mine"],
         r"log dir .*/mine is not empty \(it holds config\.json\)", log_dir=False,
         setup={"mine/config.json": USER_CONFIG}),
    Case("log dir with other files", [*TRAIN, "--log-dir", "{cwd}/other"],
         r"log dir .*/other is not empty \(it holds a, b, c, d, e and 2 more\)", log_dir=False,
         setup={f"other/{n}": "x" for n in "abcdefg"}),
    Case("log dir is a file", [*TRAIN, "--log-dir", "{cwd}/notes.txt"], r"notes\.txt is a file, not a folder",
         log_dir=False),
    Case("log dir name of 300 characters", [*TRAIN, "--log-dir", "{cwd}/" + LONG_NAME],
         r"cannot use log dir .*\(\d+ characters\): the path is too long: a name in it has 300 bytes", log_dir=False),
    Case("log dir path over 4096", [*TRAIN, "--log-dir", LONG_PATH],
         r"cannot use log dir .*: the path is too long: 4,202 bytes", log_dir=False),
    Case("compare log dir with other files", ["compare", "-c", "medical", *FAKE, *TINY, "--methods", "cot",
         "--seeds", "1", "--log-dir", "."], r"the log dir \(the current folder\) is not empty.*metaspo compare "
         r"--resume", log_dir=False),
    # -- prompt files: regular, bounded, visible text
    Case("prompt FIFO", [*TRAIN, "--initial-system-prompt", "{in}/fifo"], r"it is a named pipe \(FIFO\)"),
    Case("prompt /dev/zero", [*TRAIN, "--initial-system-prompt", "/dev/zero"], r"/dev/zero: it is a character "
         r"device, not a regular file"),
    Case("prompt one NUL byte", [*TRAIN, "--initial-system-prompt", "{in}/nul.txt"],
         r"nul\.txt has no visible text"),
    Case("prompt control characters only", [*TRAIN, "--initial-system-prompt", "{in}/control.txt"],
         r"control\.txt has no visible text"),
    Case("prompt whitespace only", [*TRAIN, "--initial-system-prompt", "{in}/blank.txt"], r"blank\.txt is empty"),
    Case("prompt over max_prompt_chars", [*TRAIN, "--initial-system-prompt", "{in}/long.txt"],
         r"long\.txt has 9,000 characters, more than max_prompt_chars=8,000"),
    Case("prompt huge file", [*TRAIN, "--initial-system-prompt", "{in}/huge.txt"], r"huge\.txt: it is larger than "
         r"64 MB"),
    Case("prompt name of 300 characters", [*TRAIN, "--initial-system-prompt", "{in}/" + LONG_NAME],
         r"the path is too long: a name in it has 300 bytes"),
    Case("prompt path over 4096", [*TRAIN, "--initial-system-prompt", LONG_PATH], r"the path is too long: 4,202"),
    # -- config files
    Case("config FIFO", ["train", "-c", "{in}/fifo", *FAKE], r"fifo: cannot read config file \(it is a named pipe"),
    Case("config /dev/zero", ["train", "-c", "/dev/zero", *FAKE], r"/dev/zero: cannot read config file \(it is a "
         r"character device"),
    Case("config folder", ["train", "-c", "{in}/folder.yaml", *FAKE], r"folder\.yaml: cannot read config file \(it "
         r"is a folder"),
    Case("config over 1 MB", ["train", "-c", "{in}/big.yaml", *FAKE], r"big\.yaml: cannot read config file \(it is "
         r"larger than 1 MB"),
    Case("config name of 300 characters", ["train", "-c", "{in}/" + LONG_NAME + ".yaml", *FAKE],
         r"cannot read config file \(the path is too long: a name in it has 305 bytes"),
    Case("config path over 4096", ["train", "-c", LONG_PATH + ".yaml", *FAKE], r"the path is too long: 4,207 bytes"),
    # -- data
    Case("data dir name of 300 characters", [*TRAIN, "--data-dir", "{in}/" + LONG_NAME],
         r"data dir .*: the path is too long: a name in it has 300 bytes"),
    Case("data dir path over 4096", [*TRAIN, "--data-dir", LONG_PATH], r"data dir .*: the path is too long"),
    Case("data file is a FIFO", [*TRAIN, "--data-dir", "{in}/fifo_data"], r"ob_gyn"),
    # -- --set mixups (a TypeError before) and --resume with a damaged config.json (a JSONDecodeError before)
    Case("--set task_lm=3", [*TRAIN, "--set", "task_lm=3"], r"key 'task_lm' must be a mapping of settings"),
    Case("--set task_lm=3 task_lm.model=x", [*TRAIN, "--set", "task_lm=3", "task_lm.model=x"],
         r"key 'task_lm' is given the value 3 and also 'task_lm\.model'"),
    Case("--set search=1", [*TRAIN, "--set", "search=1"], r"key 'search' must be a mapping of settings"),
    Case("--set data.train_size=[1]", [*TRAIN, "--set", "data.train_size=[1]"], r"'data\.train_size' must be an "
         r"integer, got \[1\]"),
    Case("resume truncated config.json", ["train", "--resume", "{in}/truncated"],
         r"truncated/config\.json is not valid JSON.*restore it", log_dir=False),
    Case("resume config.json not a mapping", ["train", "--resume", "{in}/listed"],
         r"listed/config\.json must hold a mapping of settings, got list", log_dir=False),
    Case("resume config.json a wrong value", ["train", "--resume", "{in}/wrong"],
         r"wrong/config\.json: key 'task_lm' must be a mapping", log_dir=False),
    Case("resume config.json a FIFO", ["train", "--resume", "{in}/piped"], r"piped/config\.json: it is a named pipe",
         log_dir=False),
    # -- metaspo test and metaspo compare
    Case("test log dir with other files", [*TEST, "--log-dir", "{cwd}/other"],
         r"log dir .*/other is not empty \(it holds notes\.md\)", log_dir=False,
         setup={"other/notes.md": "mine\n"}),
    Case("test log dir holds a training run", [*TEST, "--log-dir", "{in}/trained"], r"trained already holds a run",
         log_dir=False),
    Case("test system prompt name of 300 characters", [*TEST, "--system-prompt", "{in}/" + LONG_NAME],
         r"cannot read system prompt .*: the path is too long", log_dir=False),
    Case("compare resume truncated compare.json", ["compare", "--resume", "{in}/compared"],
         r"compared/compare\.json is not valid JSON.*restore it", log_dir=False),
    Case("compare resume compare.json without settings", ["compare", "--resume", "{in}/unset"],
         r"unset/compare\.json holds no valid settings", log_dir=False),
]  # fmt: skip


def _inputs(root: Path) -> Path:
    """The shared inputs: FIFOs, odd prompt files, broken run folders (outside every case's folder)."""
    inputs = root / "inputs"
    inputs.mkdir()
    os.mkfifo(inputs / "fifo")
    (inputs / "nul.txt").write_bytes(b"\x00")
    (inputs / "control.txt").write_text("\x00\x01\u200b\x7f\n", encoding="utf-8")
    (inputs / "blank.txt").write_text(" \t\n\n", encoding="utf-8")
    (inputs / "long.txt").write_text("x" * 9000, encoding="utf-8")
    with open(inputs / "huge.txt", "wb") as handle:  # sparse: no disk used, 65 MB to a reader
        handle.truncate(65 * 1024 * 1024)
    (inputs / "folder.yaml").mkdir()
    (inputs / "big.yaml").write_text("seed: 1\n" + "#" * (1024 * 1024) + "\n", encoding="utf-8")
    medmcqa = inputs / "fifo_data" / "medmcqa"
    medmcqa.mkdir(parents=True)
    os.mkfifo(medmcqa / "ob_gyn.json")
    for name, text in (("truncated", '{"method": "metaspo", "seed'), ("listed", "[1, 2]"),
                       ("wrong", '{"seed": 1, "task_lm": 3}')):  # fmt: skip
        (inputs / name).mkdir()
        (inputs / name / "config.json").write_text(text, encoding="utf-8")
    (inputs / "piped").mkdir()
    os.mkfifo(inputs / "piped" / "config.json")
    (inputs / "trained").mkdir()
    (inputs / "trained" / "run.json").write_text("{}", encoding="utf-8")
    for name, text in (("compared", '{"settings": {"meth'), ("unset", '{"settings": 3}')):
        (inputs / name).mkdir()
        (inputs / name / "compare.json").write_text(text, encoding="utf-8")
    return inputs


def _snapshot(folder: Path) -> dict[str, object]:
    """Every entry under ``folder``: a regular file's bytes, else its kind (a FIFO is never opened)."""
    out: dict[str, object] = {}
    for path in sorted(folder.rglob("*")):
        mode = path.lstat().st_mode
        out[str(path.relative_to(folder))] = path.read_bytes() if stat.S_ISREG(mode) and path.stat().st_size < 2**20 \
            else (stat.S_IFMT(mode), path.lstat().st_size)  # fmt: skip
    return out


def _run(args: list[str], cwd: Path, log: Path, root: Path) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if not k.endswith("_API_KEY")}
    env.update(METASPO_FAKE_LOG=str(log), DSPY_CACHEDIR=str(root / "cache" / log.stem), PYTHONIOENCODING="utf-8")
    return subprocess.run(
        [sys.executable, "-m", "metaspo_dspy.cli", *args], cwd=cwd, env=env, capture_output=True, text=True,
        encoding="utf-8", timeout=180, stdin=subprocess.DEVNULL,
    )  # fmt: skip


def _unicode_run(root: Path) -> dict[str, object]:
    """A tiny run whose prompt file (its name and text), data dir and log dir (the current folder, `--log-dir .`,
    empty before) all hold characters outside the BMP."""
    data = root / "data 😀 𝒜" / "medmcqa"
    data.mkdir(parents=True)
    for task in ("ob_gyn", "medicine", "pharmacology", "pathology"):
        (data / f"{task}.json").write_bytes((BUNDLED_DIR / "medmcqa" / f"{task}.json").read_bytes())
    prompt = root / "prompt 😀.txt"
    prompt.write_text(UNICODE_PROMPT + "\n", encoding="utf-8")
    cwd = root / "run 𝒜😀"
    cwd.mkdir()
    log = root / "unicode.jsonl"
    args = [*TRAIN, "--initial-system-prompt", str(prompt), "--data-dir", str(data.parent), "--log-dir", ".", "-q"]
    return {"result": _run(args, cwd, log, root), "cwd": cwd, "log": log, "data": data.parent}


@pytest.fixture(scope="module")
def outcomes(tmp_path_factory):
    root = tmp_path_factory.mktemp("paths")
    inputs = _inputs(root)
    before_inputs = _snapshot(inputs)

    def one(case: Case):
        cwd = root / f"case{CASES.index(case):02d}"
        cwd.mkdir()
        (cwd / "config.json").write_text(USER_CONFIG, encoding="utf-8")
        (cwd / "notes.txt").write_text("the user's notes\n", encoding="utf-8")
        for name, text in case.setup.items():
            (cwd / name).parent.mkdir(parents=True, exist_ok=True)
            (cwd / name).write_text(text, encoding="utf-8")
        before = _snapshot(cwd)
        args = [a.replace("{in}", str(inputs)).replace("{cwd}", str(cwd)) for a in case.args]
        if case.log_dir:
            args += ["--log-dir", str(cwd / "run")]
        log = root / f"{cwd.name}.jsonl"
        return case.id, (_run(args, cwd, log, root), before, _snapshot(cwd), log)

    with ThreadPoolExecutor(max_workers=4) as pool:
        unicode = pool.submit(_unicode_run, root)
        results = dict(pool.map(one, CASES))
    results["unicode"] = unicode.result()
    results["inputs"] = (before_inputs, _snapshot(inputs))
    return results


def test_the_table_has_its_cases():
    assert len(CASES) >= 30 and len({c.id for c in CASES}) == len(CASES)


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_refused_before_any_request_and_nothing_of_the_user_changes(outcomes, case):
    result, before, after, log = outcomes[case.id]
    assert result.returncode == case.code, (result.stdout, result.stderr)
    assert "Traceback" not in result.stderr and "a bug in metaspo-dspy" not in result.stderr, result.stderr
    errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1, result.stderr
    assert re.search(case.pattern, errors[0]), errors[0]
    assert len(errors[0]) < 600, errors[0]  # a 4,000-character path is shortened
    assert not log.exists(), "a request reached the model before the error"
    assert after == before, "a file of the user's changed"


def test_the_shared_inputs_are_untouched(outcomes):
    before, after = outcomes["inputs"]
    assert after == before


def test_characters_outside_the_bmp_in_prompt_data_and_log_dir_work_end_to_end(outcomes):
    run = outcomes["unicode"]
    result, cwd = run["result"], run["cwd"]
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip(), "the optimized prompt is printed"
    artifact = json.loads((cwd / "metaspo_run.json").read_text(encoding="utf-8"))
    assert artifact["complete"] is True
    config = json.loads((cwd / "config.json").read_text(encoding="utf-8"))
    assert config["initial_system_prompt"] == UNICODE_PROMPT and config["data"]["data_dir"] == str(run["data"])
    sent = [json.loads(line) for line in run["log"].read_text(encoding="utf-8").splitlines()]
    assert any(r.get("system_prompt") == UNICODE_PROMPT for r in sent if r["kind"] == "task")


# -- the rule itself, in the library (no process)


def test_rundir_refuses_a_users_folder_and_accepts_what_a_failed_start_of_ours_leaves(tmp_path):
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "config.json").write_text(USER_CONFIG, encoding="utf-8")
    with pytest.raises(RunDirError, match=r"is not empty \(it holds config\.json\)"):
        RunDir(mine, {"a": 1})
    assert (mine / "config.json").read_text(encoding="utf-8") == USER_CONFIG and sorted(os.listdir(mine)) == [
        "config.json"
    ]
    ours = tmp_path / "ours"
    ours.mkdir()
    keys = ("method", "seed", "tasks", "data", "search", "task_lm", "optimizer_lm", "sources")
    (ours / "config.json").write_text(json.dumps(dict.fromkeys(keys)), encoding="utf-8")  # `metaspo train`'s
    (ours / ".lock").write_text("")
    (ours / ".run.json.abc123.tmp").write_text("{")  # a write killed halfway
    (ours / "error.log").write_text("--- 2025-01-01T00:00:00+00:00 metaspo-dspy 0: metaspo train\n")
    RunDir(ours, {"a": 1}).close()
    with pytest.raises(RunDirError, match="already holds a run"):
        RunDir(ours, {"a": 1})
    stale = tmp_path / "stale"
    stale.mkdir()
    (stale / "evaluations.jsonl").write_text("{}\n")  # journals without run.json: never reused as memory
    with pytest.raises(RunDirError, match=r"it holds evaluations\.jsonl"):
        RunDir(stale, {"a": 1})


def test_a_compare_folder_is_recognised_by_its_marker(tmp_path):
    (tmp_path / "compare.json").write_text("{}")
    (tmp_path / "train").mkdir()
    assert check_new_log_dir(tmp_path, marker="compare.json") is True
    assert check_new_log_dir(tmp_path / "new", marker="compare.json") is False
