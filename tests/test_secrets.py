"""API keys given through the environment never reach a file the run writes, its output, or the
DSPy cache directory."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

KEY = "sk-test-Zq81-NEVER-WRITE-THIS-9f3c"


def test_api_key_appears_in_no_file_log_or_cache(tmp_path, fetched_cache):
    cache = tmp_path / "dspy-cache"
    env = {k: v for k, v in os.environ.items() if not k.endswith("_API_KEY")}
    env.update(
        METASPO_CACHE_DIR=str(fetched_cache),
        DSPY_CACHEDIR=str(cache),
        METASPO_TEST_KEY=KEY,
        METASPO_FAKE_LOG=str(tmp_path / "fake.jsonl"),
    )
    args = [
        "train", "-c", "medical", "--set", "tasks.source=[ob_gyn,medicine]", "task_lm.api_key_env=METASPO_TEST_KEY",
        "optimizer_lm.api_key_env=METASPO_TEST_KEY", "--task-model", "metaspo-fake/task",
        "--optimizer-model", "metaspo-fake/opt", "--iterations", "1", "--system-candidates", "2",
        "--user-candidates", "1", "--train-size", "5", "--test-size", "3", "--log-dir", str(tmp_path / "run"),
        "--verbose",
    ]  # fmt: skip
    result = subprocess.run(
        [sys.executable, "-m", "metaspo_dspy.cli", *args],
        env=env,
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr
    test = subprocess.run(
        [sys.executable, "-m", "metaspo_dspy.cli", "test", "-c", "medical", "--set",
         "task_lm.api_key_env=METASPO_TEST_KEY", "--task-model", "metaspo-fake/task", "--system-prompt",
         str(tmp_path / "run"), "--tasks", "dental", "--num-user-prompts", "2", "--test-size", "3",
         "--user-prompts", "authors", "--log-dir", str(tmp_path / "test")],
        env=env, cwd=tmp_path, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert test.returncode == 0, test.stderr
    assert KEY not in result.stdout + result.stderr + test.stdout + test.stderr
    written = [p for p in tmp_path.rglob("*") if p.is_file()]
    assert (any(p.name == "metaspo_run.json" for p in written) and any(p.parent == cache for p in written)) or cache
    for path in written:
        assert KEY.encode() not in path.read_bytes(), f"the API key leaked into {path}"
    # The config records where the key comes from, never the key.
    run = json.loads((tmp_path / "run" / "config.json").read_text())
    assert run["task_lm"]["api_key_env"] == "METASPO_TEST_KEY"


# -- credentials in a URL (issue 25): redacted like keys, wherever a line is printed or logged -----
@pytest.mark.parametrize(
    ("text", "shown", "hidden"),
    [
        ("http://user:pw@host/v1", "http://[REDACTED]@host/v1", "user:pw"),
        ("error at http://alice:s3cret@10.0.0.1:8000/v1: refused", "http://[REDACTED]@10.0.0.1:8000/v1", "s3cret"),
        ("'https://tok-123@api.example.com/v1'", "https://[REDACTED]@api.example.com/v1", "tok-123"),
        ("http://u:p@ss@host/v1 (an unescaped @ in the password)", "http://[REDACTED]@host/v1", "ss@"),
        ("http://u:p%40ss@host:1/v1", "http://[REDACTED]@host:1/v1", "p%40ss"),
    ],
)
def test_url_credentials_are_redacted(text, shown, hidden):
    from metaspo_dspy.redact import redact

    assert shown in redact(text) and hidden not in redact(text)
    assert redact(redact(text)) == redact(text)


@pytest.mark.parametrize(
    "text", ["http://host:8000/v1", "see http://host/v1?x=a@b", "mailto:a@b.com", "write to a@b.com", "10:30@noon"]
)
def test_text_without_url_credentials_is_kept(text):
    from metaspo_dspy.redact import redact

    assert redact(text) == text


def test_the_password_of_an_api_base_is_redacted_alone_and_as_basic_auth():
    """A server may echo the HTTP basic authentication LiteLLM's client makes from the URL."""
    import base64

    from metaspo_dspy.lm import LMSettings, build_lm
    from metaspo_dspy.lm.native import native_settings
    from metaspo_dspy.redact import redact

    lm = build_lm(LMSettings("openai/mock", api_base="http://alice:Pa55-word-xyz@127.0.0.1:9/v1"))
    basic = base64.b64encode(b"alice:Pa55-word-xyz").decode()
    assert redact(f"connect to alice:Pa55-word-xyz@127.0.0.1 (Authorization: Basic {basic})") == (
        "connect to alice:[REDACTED]@127.0.0.1 (Authorization: Basic [REDACTED])"
    )
    # DSPy's own client would take the credentials for part of the host name: auto uses LiteLLM's
    assert native_settings(lm) is None and lm.engine == "litellm"
