"""Optional experiment tracking with MLflow: a finished (or interrupted) run, or a run as it goes.

    from metaspo_dspy.tracking import log_run, MLflowLogger
    log_run("runs/review", experiment="metaspo")           # after the fact; returns the MLflow run id

    logger = MLflowLogger(log_dir="runs/review", experiment="metaspo")
    best = MetaSPO(..., log_dir="runs/review", phase_callback=logger).compile(...)
    logger.finish(best)                                    # final metrics, artifacts; ends the run

What is logged, following the conventions of MLflow's DSPy flavor (``mlflow.dspy.autolog``: the
optimizer's settings as parameters, the optimized program as the ``best_model.json`` artifact):

* **parameters**: the run's settings (method, search sizes, seed, adapters, task/optimizer model,
  per-task sizes), flattened with dots (``task_lm.model``, ``tasks.gen_counting.train``), long
  texts cut to 500 characters (the full texts are artifacts);
* **metrics per step** (``step`` = index in the artifact's ``steps``): ``meta_score`` and
  ``train_score.<task>`` (best node of the task's beam);
* **metrics per outer-loop candidate** (``step`` = candidate number over the run):
  ``candidate_meta_score``, ``candidate_accepted`` (1/0); per iteration: ``accepted_candidates``;
* **metrics per phase** (``step`` = phase number): ``phase.task_lm_calls``,
  ``phase.optimizer_calls``, ``phase.seconds``, ``phase.proposals``, ``phase.discarded``,
  ``phase.failures`` and the running totals ``task_lm_calls``, ``optimizer_calls``;
* **final metrics**: ``final_meta_score``, ``final_train_score.<task>``, ``test_score.<task>``;
* **tags**: ``optimizer=MetaSPO``, ``metaspo.method``, ``metaspo.complete``;
* **artifacts**: ``metaspo_run.json`` (the run artifact), ``optimized_system_prompt.txt``,
  ``best_model.json`` (the ``MetaSPOProgram``), and with ``with_report=True`` the Markdown report
  and its figures under ``report/``.

If an MLflow run is active (``with mlflow.start_run():`` or ``mlflow.dspy.autolog(log_compiles=True)``
around ``compile``) and no ``experiment`` is given, everything goes into that run; otherwise a new
run is started (and ended when done).

**MLflow's DSPy autolog** (``mlflow.dspy.autolog(log_compiles=True)``) wraps the ``compile`` of
MetaSPO, SPRIG, ProTeGi and APE as it wraps DSPy's optimizers: it opens a run, logs the LM settings
and the result as ``best_model.json``. It logs a dataset only from an argument named ``trainset``
(or ``valset``): ProTeGi's and APE's ``trainset`` as ``trainset.json``. ``MetaSPO.compile`` takes
one set per task (``trainsets={task: [...]}``), so it calls :func:`log_task_sets` itself (from
:mod:`metaspo_dspy.optimize.autolog`, which the optimizers import): each task's train set as the
table ``trainsets/<task>.json`` and its test set as ``testsets/<task>.json``, in the layout of
MLflow's ``trainset.json`` (one column per example field). Without ``log_compiles=True`` no set is
logged. (MLflow patches the ``compile`` of the direct ``Teleprompter`` subclasses that exist when
``autolog()`` runs: import ``metaspo_dspy`` first.)

MLflow is optional: importing this module never imports it, and nothing else in the package needs
it. Calling :func:`log_run` or using :class:`MLflowLogger` without it raises
:class:`TrackingUnavailable` with the command to install it (``pip install mlflow``; the smaller
``mlflow-skinny`` is enough).
"""

from __future__ import annotations

import json
import tempfile
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from metaspo_dspy.optimize.autolog import autolog_compiles, log_task_sets

__all__ = ["MLflowLogger", "TrackingUnavailable", "autolog_compiles", "log_run", "log_task_sets", "mlflow_available"]

INSTALL_HINT = "pip install mlflow  (or the smaller mlflow-skinny; extra: pip install 'metaspo-dspy[mlflow]')"
MAX_PARAM_CHARS = 500
_PHASE_KEYS = ("task_lm_calls", "optimizer_calls", "seconds", "proposals", "discarded", "failures")


class TrackingUnavailable(ImportError):
    """MLflow is not installed."""


def mlflow_available() -> bool:
    """Whether MLflow can be imported."""
    try:
        import mlflow  # noqa: F401
    except ImportError:
        return False
    return True


def _mlflow():
    try:
        import mlflow
    except ImportError:
        raise TrackingUnavailable(f"experiment tracking needs MLflow: {INSTALL_HINT}") from None
    return mlflow


def _flatten(value: Any, prefix: str = "") -> dict[str, Any]:
    if isinstance(value, Mapping):
        out: dict[str, Any] = {}
        for key, item in value.items():
            out.update(_flatten(item, f"{prefix}{key}."))
        return out
    if value is None:
        return {}
    text = value if isinstance(value, (str, int, float, bool)) else json.dumps(value, default=str)
    if isinstance(text, str) and len(text) > MAX_PARAM_CHARS:
        text = text[: MAX_PARAM_CHARS - 1] + "…"
    return {prefix.rstrip("."): text}


def _metric_key(text: str) -> str:
    """MLflow keys allow letters, digits, ``_ - . / `` and spaces."""
    return "".join(c if c.isalnum() or c in "_-./ " else "_" for c in text)


class _RunLogger:
    """Logs (parts of) a run artifact into one MLflow run, remembering what was logged."""

    def __init__(
        self,
        experiment: str | None = None,
        run_name: str | None = None,
        tracking_uri: str | None = None,
        tags: Mapping[str, str] | None = None,
    ):
        mlflow = _mlflow()
        from mlflow.tracking import MlflowClient

        self.mlflow = mlflow
        if tracking_uri is not None:
            mlflow.set_tracking_uri(tracking_uri)
        active = mlflow.active_run()
        if active is not None and experiment is None:
            self.run_id, self.owned = active.info.run_id, False
        else:
            if experiment is not None:
                mlflow.set_experiment(experiment)
            run = mlflow.start_run(run_name=run_name, nested=active is not None)
            self.run_id, self.owned = run.info.run_id, True
        self.client = MlflowClient()
        self.steps = 0
        self.decisions = 0
        self.phases = 0
        self.totals = {"task_lm_calls": 0, "optimizer_calls": 0}
        self.params: set[str] = set()
        self.batch([], tags={"optimizer": "MetaSPO", **(tags or {})})

    # -- low level ---------------------------------------------------------------------------
    def batch(self, metrics: list[tuple[str, float, int]], params=None, tags=None) -> None:
        from mlflow.entities import Metric, Param, RunTag

        now = int(time.time() * 1000)
        metric_objs = [Metric(_metric_key(k), float(v), now, int(step)) for k, v, step in metrics if v is not None]
        param_objs = [Param(k, str(v)) for k, v in (params or {}).items()]
        tag_objs = [RunTag(k, str(v)) for k, v in (tags or {}).items()]
        for i in range(0, len(metric_objs), 1000):
            self.client.log_batch(self.run_id, metrics=metric_objs[i : i + 1000])
        for i in range(0, len(param_objs), 100):
            self.client.log_batch(self.run_id, params=param_objs[i : i + 100])
        if tag_objs:
            self.client.log_batch(self.run_id, tags=tag_objs)

    # -- parts of an artifact ----------------------------------------------------------------
    def log_settings(self, settings: Mapping[str, Any]) -> None:
        params = {k: v for k, v in _flatten(settings).items() if k not in self.params}
        self.batch([], params=params)
        self.params.update(params)

    def log_steps(self, steps: list[Mapping[str, Any]]) -> None:
        metrics = []
        for index in range(self.steps, len(steps)):
            step = steps[index]
            metrics.append(("meta_score", step["meta_score"], index))
            for task, nodes in step.get("nodes", {}).items():
                if nodes:
                    metrics.append((f"train_score.{task}", nodes[0].get("train_score"), index))
        self.steps = max(self.steps, len(steps))
        self.batch(metrics)

    def log_decisions(self, decisions: list[Mapping[str, Any]]) -> None:
        metrics = []
        for index in range(self.decisions, len(decisions)):
            d = decisions[index]
            metrics += [
                ("candidate_meta_score", d["meta_score"], index),
                ("candidate_accepted", 1.0 if d["accepted"] else 0.0, index),
            ]
        new_iterations = {d["iteration"] for d in decisions[self.decisions :]}
        for iteration in sorted(new_iterations):
            accepted = sum(1 for d in decisions if d["iteration"] == iteration and d["accepted"])
            metrics.append(("accepted_candidates", accepted, iteration))
        self.decisions = max(self.decisions, len(decisions))
        self.batch(metrics)

    def log_phase(self, phase: Mapping[str, Any]) -> None:
        index = self.phases
        metrics = [(f"phase.{k}", phase.get(k, 0), index) for k in _PHASE_KEYS]
        for key in self.totals:
            self.totals[key] += phase.get(key, 0)
            metrics.append((key, self.totals[key], index))
        self.phases += 1
        self.batch(metrics)

    def log_phases(self, phases: list[Mapping[str, Any]]) -> None:
        for phase in phases[self.phases :]:
            self.log_phase(phase)

    def log_artifact_data(self, artifact: Mapping[str, Any], run_dir: Path | None, with_report: bool) -> None:
        self.log_settings(artifact.get("settings", {}))
        self.log_steps(artifact.get("steps", []))
        self.log_decisions(artifact.get("outer_decisions", []))
        self.log_phases(artifact.get("phases", []))
        final = [("final_meta_score", artifact.get("meta_score"), 0)]
        for task, entry in (artifact.get("tasks") or {}).items():
            final += [
                (f"final_train_score.{task}", entry.get("train_score"), 0),
                (f"test_score.{task}", entry.get("test_score"), 0),
            ]
        self.batch(
            final,
            tags={"metaspo.method": artifact.get("method", ""), "metaspo.complete": artifact.get("complete", True)},
        )
        self.client.log_text(self.run_id, artifact["optimized_system_prompt"], "optimized_system_prompt.txt")
        self.client.log_text(
            self.run_id, json.dumps(artifact, indent=2, ensure_ascii=False, default=str), "metaspo_run.json"
        )
        if run_dir is not None and (run_dir / "program.json").is_file():
            with tempfile.TemporaryDirectory() as tmp:
                path = Path(tmp) / "best_model.json"
                path.write_bytes((run_dir / "program.json").read_bytes())
                self.client.log_artifact(self.run_id, str(path))
        if with_report and run_dir is not None:
            from metaspo_dspy.report import report

            with tempfile.TemporaryDirectory() as tmp:
                report(run_dir, Path(tmp) / "report")
                self.client.log_artifacts(self.run_id, str(Path(tmp) / "report"), "report")

    def log_program(self, program: Any) -> None:
        """The optimized program as ``best_model.json`` (MLflow's DSPy convention)."""
        with tempfile.TemporaryDirectory() as tmp:
            path = Path(tmp) / "best_model.json"
            program.save(path)
            self.client.log_artifact(self.run_id, str(path))

    def close(self, status: str = "FINISHED") -> None:
        if not self.owned:
            return
        active = self.mlflow.active_run()
        if active is not None and active.info.run_id == self.run_id:
            self.mlflow.end_run(status=status)
        else:
            self.client.set_terminated(self.run_id, status=status)
        self.owned = False


def _load(run: Any) -> tuple[dict[str, Any], Path | None]:
    if isinstance(run, Mapping):
        return dict(run), None
    if hasattr(run, "detailed_results") and isinstance(run.detailed_results, Mapping):
        return dict(run.detailed_results), None
    from metaspo_dspy.report import load_run

    path = Path(run)
    return load_run(path), (path if path.is_dir() else None)


def log_run(
    run: str | Path | Mapping[str, Any] | Any,
    experiment: str | None = None,
    *,
    run_name: str | None = None,
    tracking_uri: str | None = None,
    with_report: bool = False,
) -> str:
    """Log a MetaSPO run to MLflow; returns the MLflow run id.

    Args:
        run: a run directory (finished, or interrupted: its ``checkpoint.json``), an artifact dict,
            or a ``MetaSPOProgram`` (its ``detailed_results`` and the program itself).
        experiment: MLflow experiment name (created if needed); None: the active run if there is
            one, else the current experiment.
        run_name: name of the new MLflow run (default: the run directory's name).
        tracking_uri: where to log (default: MLflow's configuration, e.g. ``MLFLOW_TRACKING_URI``).
        with_report: also render :func:`metaspo_dspy.report.report` and log it under ``report/``
            (needs a run directory and matplotlib).

    Raises:
        TrackingUnavailable: MLflow is not installed.
    """
    artifact, run_dir = _load(run)
    if run_name is None and run_dir is not None:
        run_name = run_dir.resolve().name
    logger = _RunLogger(experiment, run_name, tracking_uri, tags={"metaspo.run_dir": str(run_dir or "")})
    try:
        logger.log_artifact_data(artifact, run_dir, with_report)
        if run_dir is None and hasattr(run, "save") and hasattr(run, "system_prompt"):
            logger.log_program(run)
    except BaseException:
        logger.close("FAILED")
        raise
    logger.close()
    return logger.run_id


class MLflowLogger:
    """A ``MetaSPO(phase_callback=...)`` that logs a run to MLflow while it runs.

    Each finished phase logs its calls and time at once. Meta-scores and outer-loop decisions are
    read from the run directory's ``checkpoint.json`` when ``log_dir`` is given: MetaSPO calls the
    callback just before it checkpoints a phase, so they appear one phase late while the run goes
    on, and completely at :meth:`finish`. Call :meth:`finish` with the compiled program (or use the
    logger as a context manager around ``compile``) to log the final metrics and artifacts and end
    the MLflow run; an exception inside the ``with`` block ends it as FAILED.

    Args:
        log_dir: the ``log_dir`` given to MetaSPO (optional: without it only phases are logged live).
        experiment, run_name, tracking_uri: as for :func:`log_run`.
        with_report: as for :func:`log_run` (at :meth:`finish`).

    Raises:
        TrackingUnavailable: MLflow is not installed (at construction, before any work is done).
    """

    def __init__(
        self,
        log_dir: str | Path | None = None,
        experiment: str | None = None,
        run_name: str | None = None,
        tracking_uri: str | None = None,
        with_report: bool = False,
    ):
        _mlflow()
        self.log_dir = Path(log_dir) if log_dir is not None else None
        self.experiment = experiment
        self.run_name = run_name or (self.log_dir.resolve().name if self.log_dir is not None else None)
        self.tracking_uri = tracking_uri
        self.with_report = with_report
        self._logger: _RunLogger | None = None
        self.run_id: str | None = None
        self._finished = False

    def _open(self) -> _RunLogger:
        if self._logger is None:
            self._logger = _RunLogger(
                self.experiment,
                self.run_name,
                self.tracking_uri,
                tags={"metaspo.run_dir": str(self.log_dir or "")},
            )
            self.run_id = self._logger.run_id
            if self.log_dir is not None and (self.log_dir / "run.json").is_file():
                settings = json.loads((self.log_dir / "run.json").read_text(encoding="utf-8")).get("settings", {})
                self._logger.log_settings(settings)
        return self._logger

    def __call__(self, phase: Any) -> None:
        logger = self._open()
        logger.log_phase(phase.to_dict() if hasattr(phase, "to_dict") else dict(phase))
        checkpoint = self.log_dir / "checkpoint.json" if self.log_dir is not None else None
        if checkpoint is not None and checkpoint.is_file():
            try:
                data = json.loads(checkpoint.read_text(encoding="utf-8"))
            except (OSError, json.JSONDecodeError):
                return
            logger.log_steps(data.get("steps", []))
            logger.log_decisions(data.get("outer_decisions", []))

    def finish(self, result: Any = None, status: str = "FINISHED") -> str | None:
        """Log the final artifact (from ``result`` -- a ``MetaSPOProgram`` or artifact dict -- else
        from ``log_dir``) and end the MLflow run; returns its id. Safe to call twice."""
        if self._finished or (self._logger is None and result is None and self.log_dir is None):
            return self.run_id
        self._finished = True
        logger = self._open()
        try:
            artifact = None
            if result is not None:
                artifact, _ = _load(result)
            elif self.log_dir is not None:
                artifact, _ = _load(self.log_dir)
            if artifact is not None:
                logger.log_artifact_data(artifact, self.log_dir, self.with_report and status == "FINISHED")
            if (
                result is not None
                and hasattr(result, "save")
                and (self.log_dir is None or not (self.log_dir / "program.json").is_file())
            ):
                logger.log_program(result)
        finally:
            logger.close(status)
        return self.run_id

    def __enter__(self) -> MLflowLogger:
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if self._logger is None or self._finished:
            return
        if exc_type is None:
            self.finish()
        else:
            self._finished = True
            self._logger.close("FAILED")
