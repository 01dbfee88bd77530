"""`metaspo compare` end to end on the embedded offline model (tiny sizes; the scores mean nothing,
the pipeline is real): train, unseen evaluation, table, figure, in the format the model can follow."""

from __future__ import annotations

import csv
import json

import pytest
from conftest import needs_embedded
from test_cli import metaspo

pytestmark = [pytest.mark.slow, needs_embedded]


def test_compare_on_the_embedded_model(tmp_path):
    out = tmp_path / "cmp"
    result = metaspo(
        "compare", "-c", "generated", "--set", "tasks.source=[gen_counting,gen_boolean]", "tasks.unseen=[gen_parity]",
        "--methods", "default", "metaspo", "--seeds", "1", "--task-model", "embedded", "--optimizer-model", "embedded",
        "--iterations", "1", "--system-candidates", "2", "--user-candidates", "2", "--user-top-k", "2",
        "--train-size", "4", "--test-size", "4", "--num-user-prompts", "2", "--quiet", "--log-dir", str(out),
        cwd=tmp_path, timeout=1200,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert result.stdout == (out / "compare.md").read_text()
    artifact = json.loads((out / "train" / "metaspo-seed0" / "metaspo_run.json").read_text())
    saved = json.loads((out / "eval" / "unseen-metaspo-seed0.json").read_text())
    assert saved["system_prompt"] == artifact["optimized_system_prompt"]
    with open(out / "compare.csv", newline="") as handle:
        rows = list(csv.DictReader(handle))
    assert {(r["task"], r["method"]) for r in rows} == {
        (t, m) for t in ("gen_parity", "average") for m in ("default", "metaspo")
    }
    # The embedded model cannot write the reference's <answer> tags: compare runs it in DSPy's format
    # (its JSON grammar), says so, and the table reports how many answers parsed.
    assert all(r["task_model"].startswith("embedded") and r["prompt_format"] == "dspy" for r in rows)
    assert "format dspy (the embedded model follows DSPy's format" in result.stderr
    assert all(r["parsed"] and float(r["parsed"]) > 0 for r in rows)
