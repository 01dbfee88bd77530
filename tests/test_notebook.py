"""The quickstart notebook: committed without outputs, and runs top to bottom in its fast setting
(``METASPO_NOTEBOOK_FAST=1``: the deterministic fake LM, the smallest sizes)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

nbformat = pytest.importorskip("nbformat")
nbclient = pytest.importorskip("nbclient")
pytest.importorskip("ipykernel")
pytest.importorskip("matplotlib")

NOTEBOOK = Path(__file__).resolve().parents[1] / "notebooks" / "metaspo_quickstart.ipynb"
PNG_CELLS = ("plots", "unseen", "tta")  # cells that must show a figure
REPORT_FILES = ("report.md", "meta_score.png", "task_scores.png", "task_progress.png", "phases.png", "unseen.png")


def _cells_by_tag(nb) -> dict[str, object]:
    return {tag: cell for cell in nb.cells for tag in cell.get("metadata", {}).get("tags", [])}


def _text(cell) -> str:
    parts = []
    for output in cell.get("outputs", []):
        if output.get("output_type") == "stream":
            parts.append(output["text"])
        elif "data" in output:
            parts.append(output["data"].get("text/markdown", "") or output["data"].get("text/plain", ""))
    return "".join(parts)


def test_committed_notebook_has_no_outputs():
    nb = nbformat.read(NOTEBOOK, as_version=4)
    nbformat.validate(nb)
    for cell in nb.cells:
        if cell.cell_type == "code":
            assert cell.outputs == [], f"cell {cell.get('id')} has outputs: strip them before committing"
            assert cell.execution_count is None, f"cell {cell.get('id')} has an execution count"
    assert nb.metadata["kernelspec"]["name"] == "python3"
    model = _cells_by_tag(nb)["model"].source
    assert 'TASK_MODEL = OPTIMIZER_MODEL = "embedded"' in model
    for example in ("openai/", "hosted_vllm/", "ollama_chat/"):
        assert f'# TASK_MODEL = OPTIMIZER_MODEL = "{example}' in model, f"no commented {example} example"


def test_notebook_runs_in_fast_mode(tmp_path, monkeypatch):
    run_dir = tmp_path / "run"
    monkeypatch.setenv("METASPO_NOTEBOOK_FAST", "1")  # the kernel inherits the environment
    monkeypatch.setenv("METASPO_NOTEBOOK_RUN_DIR", str(run_dir))
    nb = nbformat.read(NOTEBOOK, as_version=4)
    client = nbclient.NotebookClient(
        nb, timeout=120, kernel_name="python3", resources={"metadata": {"path": str(tmp_path)}}
    )
    client.execute()  # raises CellExecutionError on the first failing cell

    cells = _cells_by_tag(nb)
    for cell in nb.cells:
        assert not any(o.get("output_type") == "error" for o in cell.get("outputs", [])), cell.get("id")
    assert "fast mode: True" in _text(cells["settings"])
    assert "metaspo-fake/notebook-task" in _text(cells["lms"])
    for tag in PNG_CELLS:
        images = [o for o in cells[tag].outputs if "image/png" in o.get("data", {})]
        assert images, f"cell {tag!r} shows no figure"
    artifact = json.loads((run_dir / "metaspo_run.json").read_text(encoding="utf-8"))
    prompt_text = _text(cells["prompt"])
    assert f"optimized system prompt: {artifact['optimized_system_prompt']}" in prompt_text
    assert "| iteration | candidate | meta-score |" in prompt_text
    unseen = json.loads((run_dir / "unseen" / "unseen_results.json").read_text(encoding="utf-8"))
    assert list(unseen["results"]) == ["default", "cot", "optimized"]
    for run in unseen["results"].values():  # 2 user prompts x 2 seeds per task
        assert all(len(entry["scores"]) == 4 for entry in run["tasks"].values())
    assert "| **average** |" in _text(cells["unseen"])
    assert "round 1" in _text(cells["tta"])
    assert "the saved program carries the optimized system prompt" in _text(cells["reuse"])
    for name in REPORT_FILES:
        assert (run_dir / "report" / name).is_file(), name
    report = (run_dir / "report" / "report.md").read_text(encoding="utf-8")
    assert "## Unseen generalization" in report and "## Test-time adaptation" in report
