"""Reports, plots and MLflow tracking of real run directories made with the fake LM."""

from __future__ import annotations

import argparse
import json
import shutil
import struct
import sys

import pytest

from metaspo_dspy import MetaSPO, compile_kwargs, load_tasks, unseen_generalization
from metaspo_dspy.report import (
    MatplotlibMissing,
    ReportError,
    add_parser,
    load_results,
    load_run,
    merge_unseen_results,
    plot_meta_score,
    plot_phases,
    plot_task_progress,
    plot_task_scores,
    plot_tta,
    plot_unseen,
    report,
    task_scores,
    tta_table,
    unseen_table,
)
from metaspo_dspy.tasks import SOURCE_TASKS, UNSEEN_TASKS
from metaspo_dspy.testing import FakeEngine, fake_lm

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
RUN_FIGURES = ("meta_score.png", "task_scores.png", "task_progress.png", "phases.png")
SEARCH = {"num_iterations": 2, "num_system_candidates": 3, "num_user_candidates": 2, "user_top_k": 2}


class Interrupt(Exception):
    """Raised from the phase callback to stop a run the way Ctrl-C would."""


def _models(name: str, tasks):
    engine = FakeEngine(gold={e.question: e.answer for t in tasks for e in t.train + t.test})
    return fake_lm(f"{name}-task", engine, temperature=0.0), fake_lm(f"{name}-opt", engine, temperature=1.0)


def _optimizer(task_lm, optimizer_lm, log_dir, **kwargs) -> MetaSPO:
    return MetaSPO(
        optimizer_lm=optimizer_lm,
        task_lm=task_lm,
        num_threads=2,
        progress=False,
        seed=42,
        log_dir=log_dir,
        **{**SEARCH, **kwargs},
    )


@pytest.fixture(scope="module")
def tasks():
    source = load_tasks(SOURCE_TASKS["generated"][:2], train_size=6, test_size=4, seed=42)
    unseen = load_tasks(UNSEEN_TASKS["generated"][:2], train_size=6, test_size=5, seed=42)
    return source, unseen


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory, tasks):
    """A finished MetaSPO run directory on two generated tasks, plus unseen-generalization results
    in the shape ``metaspo test`` writes (RUN/unseen/unseen_results.json)."""
    source, unseen = tasks
    task_lm, optimizer_lm = _models("report", source + unseen)
    run_dir = tmp_path_factory.mktemp("runs") / "finished"
    best = _optimizer(task_lm, optimizer_lm, run_dir).compile(**compile_kwargs(source))
    prompts = {t.name: [f"Answer the {t.name} question.", "Think, then answer briefly."] for t in unseen}
    results = {
        label: unseen_generalization(
            prompt, unseen, user_prompts=prompts, num_user_prompts=2, task_lm=task_lm, num_threads=2, progress=False
        )
        for label, prompt in (("default", "You are a helpful assistant."), ("optimized", best.system_prompt.text))
    }
    (run_dir / "unseen").mkdir()
    cli_shape = {
        "analysis": "unseen_generalization",
        "system_prompts": {k: v["system_prompt"] for k, v in results.items()},
        "results": results,
    }
    (run_dir / "unseen" / "unseen_results.json").write_text(json.dumps(cli_shape), encoding="utf-8")
    return run_dir, best


@pytest.fixture(scope="module")
def interrupted_run(tmp_path_factory, tasks):
    """A run stopped after its first inner loop: checkpoint.json, no metaspo_run.json."""
    source, _ = tasks
    task_lm, optimizer_lm = _models("interrupted", source)
    run_dir = tmp_path_factory.mktemp("runs") / "interrupted"

    def stop_in_outer_loop(phase):  # called when a phase ends, after its checkpoint
        if phase.phase == "inner":
            raise Interrupt

    with pytest.raises(Interrupt):
        _optimizer(task_lm, optimizer_lm, run_dir, phase_callback=stop_in_outer_loop).compile(**compile_kwargs(source))
    return run_dir


def _png_size(path) -> tuple[int, int]:
    data = path.read_bytes()
    assert data[:8] == PNG_SIGNATURE, f"{path.name} is not a PNG"
    assert data[12:16] == b"IHDR"
    return struct.unpack(">II", data[16:24])


def _check_figure(path) -> None:
    assert path.is_file(), f"missing figure {path.name}"
    width, height = _png_size(path)
    assert width >= 400 and height >= 250
    assert path.stat().st_size > 10_000, f"{path.name} is suspiciously small"


# -- report ----------------------------------------------------------------------------------
def test_report_of_a_finished_run(finished_run, tmp_path):
    run_dir, best = finished_run
    path = report(run_dir, tmp_path / "out")
    assert path == tmp_path / "out" / "report.md"
    text = path.read_text(encoding="utf-8")
    for name in (*RUN_FIGURES, "unseen.png"):
        _check_figure(tmp_path / "out" / name)
        assert f"]({name})" in text, f"report.md does not show {name}"
    artifact = best.detailed_results
    assert "**Status**: finished" in text
    assert best.system_prompt.text in text
    assert artifact["initial_system_prompt"] in text
    for task, entry in artifact["tasks"].items():
        row = next(line for line in text.splitlines() if line.startswith(f"| {task} |"))
        assert f"{entry['train_score']:.3f}" in row and f"{entry['test_score']:.3f}" in row
    for step in artifact["steps"]:
        assert f"{step['meta_score']:.3f}" in text
    assert sum(1 for d in artifact["outer_decisions"] if d["accepted"]) == text.count("| accepted |")
    assert "## Unseen generalization" in text and "unseen_results.json" in text
    assert "| **average** |" in text
    assert f"| total | {artifact['calls']['task_lm']} |" in text  # calls per phase add up to the run's calls


def test_report_defaults_to_run_dir_and_can_skip_results(finished_run):
    run_dir, _ = finished_run
    path = report(run_dir, discover=False)
    assert path == run_dir / "report" / "report.md"
    text = path.read_text(encoding="utf-8")
    assert "Unseen generalization" not in text
    assert not (run_dir / "report" / "unseen.png").exists()


def test_report_of_an_interrupted_run(interrupted_run, tmp_path):
    assert not (interrupted_run / "metaspo_run.json").exists()
    assert (interrupted_run / "checkpoint.json").exists()
    artifact = load_run(interrupted_run)
    assert artifact["complete"] is False
    assert [s["phase"] for s in artifact["steps"]] == ["initial", "inner"]
    path = report(interrupted_run, tmp_path / "partial")
    text = path.read_text(encoding="utf-8")
    assert "not finished" in text and f"metaspo train --resume {interrupted_run}" in text
    assert "System prompt so far" in text and artifact["optimized_system_prompt"] in text
    for name in RUN_FIGURES:
        _check_figure(tmp_path / "partial" / name)
        assert f"]({name})" in text
    for task, scores in task_scores(artifact).items():
        assert scores["final_test"] is None  # the test phase never ran
        assert f"| {task} |" in text


def test_report_with_results_given_explicitly_including_tta(finished_run, tasks, tmp_path):
    run_dir, best = finished_run
    _, unseen = tasks
    unseen_file = run_dir / "unseen" / "unseen_results.json"
    tta = {
        "analysis": "test_time_adaptation",
        "system_prompts": {"optimized": best.system_prompt.text},
        "results": {
            "optimized": {
                unseen[0].name: {
                    "initial": {"test_score": 0.2},
                    "rounds": [{"test_of_best": 0.4}, {"test_of_best": 0.6}],
                }
            }
        },
    }
    path = report(run_dir, tmp_path / "r", unseen_results=[unseen_file], tta_results=tta)
    text = path.read_text(encoding="utf-8")
    _check_figure(tmp_path / "r" / "unseen.png")
    _check_figure(tmp_path / "r" / "tta.png")
    assert "## Test-time adaptation" in text and "| optimized | 0.200 | 0.400 | 0.600 |" in text


def test_unseen_results_merge_over_seeds(finished_run):
    run_dir, _ = finished_run
    one = load_results(run_dir / "unseen" / "unseen_results.json")
    merged = merge_unseen_results(one, one)
    for label, run in merged["results"].items():
        assert run["average"] == pytest.approx(one["results"][label]["average"])
        for task, entry in run["tasks"].items():
            assert len(entry["scores"]) == 2 * len(one["results"][label]["tasks"][task]["scores"])
    table = unseen_table(merged)
    assert table.splitlines()[0] == "| task | default | optimized |" and "(n=4)" in table
    # one unseen_generalization result, or {label: result}, is accepted too
    single = one["results"]["default"]
    assert list(load_results(single)["results"]) == ["You are a helpful assistant."]
    assert load_results({"d": single})["analysis"] == "unseen_generalization"


def test_plot_functions_draw_on_given_axes(finished_run):
    from matplotlib.figure import Figure

    run_dir, _ = finished_run
    artifact = load_run(run_dir)
    unseen = load_results(run_dir / "unseen" / "unseen_results.json")
    tta = {"optimized": {"task": "t", "initial": {"test_score": 0.5}, "rounds": [{"test_of_best": 0.75}]}}
    figure = Figure()
    axes = figure.subplots(2, 3)
    plot_meta_score(artifact, ax=axes[0, 0])
    plot_task_scores(artifact, ax=axes[0, 1])
    plot_task_progress(run_dir, ax=axes[0, 2])  # a run directory works too
    plot_phases(artifact, ax=axes[1, 0])
    plot_unseen(unseen, ax=axes[1, 1])
    plot_tta(tta, ax=axes[1, 2])
    assert len(axes[0, 0].lines) == 1 and len(axes[0, 0].collections) == len(artifact["outer_decisions"])
    assert len(axes[0, 1].patches) >= 2 * len(artifact["tasks"])
    assert len(axes[0, 2].lines) == len(artifact["tasks"])
    assert len(axes[1, 0].patches) == 2 * len(artifact["phases"])
    assert len(axes[1, 1].patches) == 2 * (len(unseen["results"]["default"]["tasks"]) + 1)
    assert list(axes[1, 2].lines[0].get_ydata()) == [0.5, 0.75]
    assert "| optimized | 0.500 | 0.750 |" in tta_table(tta)


def test_errors_are_clear(tmp_path, monkeypatch, finished_run):
    with pytest.raises(ReportError, match="does not exist"):
        report(tmp_path / "nowhere")
    (tmp_path / "empty").mkdir()
    with pytest.raises(ReportError, match="no MetaSPO run"):
        report(tmp_path / "empty")
    (tmp_path / "starting").mkdir()
    (tmp_path / "starting" / "run.json").write_text("{}", encoding="utf-8")
    with pytest.raises(ReportError, match="not finished its first phase"):
        report(tmp_path / "starting")
    (tmp_path / "broken").mkdir()
    (tmp_path / "broken" / "checkpoint.json").write_text("{", encoding="utf-8")
    with pytest.raises(ReportError, match="not valid JSON"):
        load_run(tmp_path / "broken")
    with pytest.raises(ReportError, match="not a metaspo test results"):
        load_results({"something": 1})
    run_dir, _ = finished_run
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # as if matplotlib were not installed
    with pytest.raises(MatplotlibMissing, match=r"metaspo-dspy\[notebook\]"):
        report(run_dir, tmp_path / "no-mpl")
    with pytest.raises(ImportError, match="matplotlib"):
        plot_meta_score(run_dir)


def test_cli_entry_point(finished_run, tmp_path, capsys):
    run_dir, _ = finished_run
    parser = argparse.ArgumentParser(prog="metaspo")
    add_parser(parser.add_subparsers(dest="command"))
    args = parser.parse_args(["report", str(run_dir), "--out", str(tmp_path / "cli")])
    assert args.handler(args) == 0
    assert capsys.readouterr().out.strip() == str(tmp_path / "cli" / "report.md")
    assert (tmp_path / "cli" / "unseen.png").is_file()  # discovered in the run directory


# -- MLflow tracking -------------------------------------------------------------------------
def test_tracking_without_mlflow(monkeypatch, finished_run):
    from metaspo_dspy import tracking

    monkeypatch.setitem(sys.modules, "mlflow", None)  # as if MLflow were not installed
    assert tracking.mlflow_available() is False
    with pytest.raises(tracking.TrackingUnavailable, match="pip install mlflow"):
        tracking.log_run(finished_run[0])
    with pytest.raises(ImportError, match="pip install mlflow"):
        tracking.MLflowLogger(log_dir=finished_run[0])


@pytest.fixture
def mlflow_store(tmp_path, monkeypatch):
    mlflow = pytest.importorskip("mlflow")
    monkeypatch.setenv("MLFLOW_ALLOW_FILE_STORE", "true")  # MLflow 3 keeps the file store in maintenance mode
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"file:{tmp_path / 'mlruns'}")
    yield mlflow
    while mlflow.active_run() is not None:
        mlflow.end_run()


def test_log_run_to_mlflow(mlflow_store, finished_run):
    from mlflow.tracking import MlflowClient

    from metaspo_dspy.tracking import log_run

    run_dir, best = finished_run
    artifact = best.detailed_results
    run_id = log_run(run_dir, experiment="metaspo-tests", with_report=True)
    client = MlflowClient()
    run = client.get_run(run_id)
    assert run.info.status == "FINISHED" and run.info.run_name == run_dir.name
    assert run.data.params["method"] == "metaspo" and run.data.params["num_system_candidates"] == "3"
    assert run.data.params["task_lm.model"] == artifact["settings"]["task_lm"]["model"]
    assert run.data.tags["optimizer"] == "MetaSPO" and run.data.tags["metaspo.complete"] == "True"
    history = client.get_metric_history(run_id, "meta_score")
    assert [m.value for m in sorted(history, key=lambda m: m.step)] == [s["meta_score"] for s in artifact["steps"]]
    candidates = client.get_metric_history(run_id, "candidate_accepted")
    assert sorted(int(m.value) for m in candidates) == sorted(int(d["accepted"]) for d in artifact["outer_decisions"])
    assert len(client.get_metric_history(run_id, "phase.task_lm_calls")) == len(artifact["phases"])
    assert run.data.metrics["task_lm_calls"] == artifact["calls"]["task_lm"]
    for task, entry in artifact["tasks"].items():
        assert run.data.metrics[f"test_score.{task}"] == entry["test_score"]
    files = {a.path for a in client.list_artifacts(run_id)}
    assert {"metaspo_run.json", "best_model.json", "optimized_system_prompt.txt", "report"} <= files
    assert "report/meta_score.png" in {a.path for a in client.list_artifacts(run_id, "report")}


def test_live_mlflow_logging_as_phase_callback(mlflow_store, tasks, tmp_path):
    from mlflow.tracking import MlflowClient

    from metaspo_dspy.tracking import MLflowLogger

    source, _ = tasks
    task_lm, optimizer_lm = _models("live", source)
    run_dir = tmp_path / "live"
    client = MlflowClient()
    live_steps = []
    with MLflowLogger(log_dir=run_dir, experiment="metaspo-live") as logger:

        def callback(phase):
            logger(phase)
            live_steps.append(len(client.get_metric_history(logger.run_id, "meta_score")))

        best = _optimizer(task_lm, optimizer_lm, run_dir, num_iterations=1, phase_callback=callback).compile(
            **compile_kwargs(source)
        )
        assert client.get_run(logger.run_id).info.status == "RUNNING"
    assert live_steps == [1, 2, 3, 3]  # live: each step is logged as its phase ends; the test phase adds none
    run = client.get_run(logger.run_id)
    assert run.info.status == "FINISHED"
    assert len(client.get_metric_history(logger.run_id, "meta_score")) == len(best.detailed_results["steps"])
    assert len(client.get_metric_history(logger.run_id, "phase.seconds")) == len(best.detailed_results["phases"])
    assert run.data.params["num_iterations"] == "1"
    assert "best_model.json" in {a.path for a in client.list_artifacts(logger.run_id)}
    assert logger.finish() == logger.run_id  # a second finish does nothing


def test_reports_are_independent_of_the_run_dir_location(finished_run, tmp_path):
    run_dir, _ = finished_run
    copy = tmp_path / "copied-run"
    shutil.copytree(run_dir, copy, ignore=shutil.ignore_patterns("report"))
    text = report(copy).read_text(encoding="utf-8")
    assert f"`{copy}`" in text and (copy / "report" / "meta_score.png").is_file()
