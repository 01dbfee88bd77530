"""DSPy's calling conventions on our optimizers: LM arguments checked before any call by every
optimizer and meta-test protocol, ``compile(student=...)``, DSPy's ``trainset=``/``valset=`` refused
with the name to use, and the task sets logged by MLflow's DSPy autolog (issue 21, items 4 and 5).

"Before any call" is proven where the requests arrive: the fake engine counts every request."""

from __future__ import annotations

from dataclasses import dataclass

import dspy
import pytest
from conftest import exact_metric, load_examples

from metaspo_dspy import (
    APE,
    SPRIG,
    ConfigError,
    MetaSPO,
    ProTeGi,
    generate_user_prompts,
    test_time_adaptation,
    unseen_generalization,
)

SIG = dspy.Signature("question -> answer", "Choose the best answer.")
MODEL = "openai/gpt-4o-mini"
#: what MetaSPO has always said about a model string; every optimizer now says the same
STRING_LM = r"optimizer_lm must be a dspy.LM \(a dspy.BaseLM\), got str 'openai/gpt-4o-mini'; build it with"
TINY = {"num_iterations": 1, "num_system_candidates": 1, "num_user_candidates": 1, "user_top_k": 1, "progress": False}


@dataclass
class Task:
    """The duck-typed task the meta-test protocols accept."""

    name: str
    train: list
    test: list
    metric: object = exact_metric
    prompt_suffix: str = ""

    def program(self) -> dspy.Module:
        return dspy.Predict(SIG)


def _sets(data_dir, n: int = 3, tasks: tuple[str, ...] = ("ob_gyn", "medicine")) -> dict[str, list[dspy.Example]]:
    return {t: load_examples(data_dir, "medmcqa", t, n) for t in tasks}


def _task(data_dir) -> Task:
    return Task(
        "dental", load_examples(data_dir, "medmcqa", "dental", 3), load_examples(data_dir, "medmcqa", "dental", 3)
    )


# -- item 4: LMs checked before any call -------------------------------------------------------
@pytest.mark.parametrize("optimizer", [MetaSPO, ProTeGi, APE])
def test_every_optimizer_refuses_a_model_string_with_the_same_message_before_any_call(optimizer, engine_factory):
    engine, task_lm, opt_lm = engine_factory(f"string-{optimizer.__name__}")
    with pytest.raises(ConfigError, match=STRING_LM):
        optimizer(metric=exact_metric, optimizer_lm=MODEL, task_lm=task_lm)
    with pytest.raises(ConfigError, match=r"task_lm must be a dspy\.LM .*got int 42"):
        optimizer(metric=exact_metric, optimizer_lm=opt_lm, task_lm=42)
    assert sum(engine.counts.values()) == 0


def test_meta_test_protocols_refuse_model_strings_before_any_call(data_dir, engine_factory):
    engine, task_lm, opt_lm = engine_factory("string-meta-test")
    task = _task(data_dir)
    with pytest.raises(ConfigError, match=STRING_LM):
        test_time_adaptation("Be exact.", task, 1, optimizer_lm=MODEL, task_lm=task_lm)
    with pytest.raises(ConfigError, match=r"task_lm must be a dspy\.LM"):
        test_time_adaptation("Be exact.", task, task_lm=MODEL, optimizer=dspy.BootstrapFewShot(metric=exact_metric))
    with pytest.raises(ConfigError, match=STRING_LM):
        unseen_generalization("Be exact.", [task], num_user_prompts=2, task_lm=task_lm, optimizer_lm=MODEL)
    # A string task LM is refused before the optimizer LM writes (paid) user prompts.
    with pytest.raises(ConfigError, match=r"task_lm must be a dspy\.LM"):
        unseen_generalization("Be exact.", [task], num_user_prompts=2, task_lm=MODEL, optimizer_lm=opt_lm)
    with pytest.raises(ConfigError, match=STRING_LM):
        generate_user_prompts(task, MODEL, num=2)
    assert sum(engine.counts.values()) == 0


# -- item 5: DSPy's argument names on compile --------------------------------------------------
def _outcome(best) -> tuple[str, dict[str, str]]:
    return best.system_prompt.text, {name: p.signature.instructions for name, p in best.named_predictors()}


def test_compile_takes_the_program_as_dspy_student_or_positionally_with_the_same_result(data_dir, engine_factory):
    train = _sets(data_dir)
    gold = {e.question: e.answer for examples in train.values() for e in examples}
    engine, task_lm, opt_lm = engine_factory("student", gold=gold)
    optimizer = MetaSPO(metric=exact_metric, optimizer_lm=opt_lm, task_lm=task_lm, **TINY)
    positional = optimizer.compile(dspy.Predict(SIG), trainsets=train)
    calls = dict(engine.counts)
    engine.reset()
    by_name = optimizer.compile(student=dspy.Predict(SIG), trainsets=train)
    assert _outcome(by_name) == _outcome(positional)
    assert dict(engine.counts) == calls  # the same run, request for request


def test_sprig_inherits_the_student_name(data_dir, engine_factory):
    train = _sets(data_dir)
    _, task_lm, opt_lm = engine_factory("sprig-student")
    sprig = SPRIG(exact_metric, opt_lm, task_lm, num_candidates=1, max_iterations=1, progress=False)
    best = sprig.compile(student=dspy.Predict(SIG), trainsets=train)
    assert set(best.tasks) == set(train) and best.detailed_results["method"] == "sprig"


@pytest.mark.parametrize(
    ("arguments", "message"),
    [
        (("student", "trainset"), r"takes one set per task, not DSPy's trainset=: pass trainsets=\{task_name: \["),
        (("student", "trainset", "valset"), r"not DSPy's trainset= and valset=: .*has no validation set"),
        (("student", "trainsets", "valset"), r"not DSPy's valset=: pass trainsets=.*testsets=\{task_name"),
        (("student", "trainsets", "teacher"), r"unexpected compile\(\) arguments \['teacher'\]"),
        (("program", "student", "trainsets"), r"got the program twice"),
        (("trainsets",), r"needs the program: .*compile\(student=program, trainsets="),
    ],
)
def test_dspy_names_that_do_not_fit_are_clear_errors_before_any_call(data_dir, engine_factory, arguments, message):
    engine, task_lm, opt_lm = engine_factory("names")
    sets = _sets(data_dir)
    values = {
        "program": dspy.Predict(SIG),
        "student": dspy.Predict(SIG),
        "trainsets": sets,
        "trainset": sets["ob_gyn"],
        "valset": sets["medicine"],
        "teacher": None,
    }
    given = {name: values[name] for name in arguments}
    for optimizer in (MetaSPO, SPRIG):
        with pytest.raises(ConfigError, match=message):
            optimizer(metric=exact_metric, optimizer_lm=opt_lm, task_lm=task_lm, progress=False).compile(**given)
    assert sum(engine.counts.values()) == 0


# -- item 5: MLflow's DSPy autolog sees the task sets -------------------------------------------
@pytest.fixture
def mlflow_store(tmp_path, monkeypatch):
    """MLflow logging into a file store in ``tmp_path``, experiment ``compile-api``."""
    mlflow = pytest.importorskip("mlflow")
    monkeypatch.setenv("MLFLOW_ALLOW_FILE_STORE", "true")  # MLflow 3 keeps the file store in maintenance mode
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"file:{tmp_path / 'mlruns'}")
    mlflow.set_experiment("compile-api")  # not an earlier test's experiment id from another store
    yield mlflow
    while mlflow.active_run() is not None:
        mlflow.end_run()


@pytest.fixture
def autolog(mlflow_store):
    """``mlflow.dspy.autolog(log_compiles=True)`` on the test's store; off again after."""
    mlflow_dspy = pytest.importorskip("mlflow.dspy")
    mlflow_dspy.autolog(log_compiles=True, log_traces=False, silent=True)
    yield mlflow_store
    mlflow_dspy.autolog(disable=True, silent=True)


def test_mlflow_dspy_autolog_logs_the_task_sets_of_a_metaspo_compile(autolog, data_dir, engine_factory):
    from mlflow.tracking import MlflowClient

    train, test = _sets(data_dir), {"ob_gyn": _sets(data_dir, 2)["ob_gyn"]}
    _, task_lm, opt_lm = engine_factory("autolog")
    dspy.configure(lm=task_lm)
    best = MetaSPO(metric=exact_metric, optimizer_lm=opt_lm, **TINY).compile(
        student=dspy.Predict(SIG), trainsets=train, testsets=test
    )
    client = MlflowClient()
    runs = client.search_runs([autolog.get_experiment_by_name("compile-api").experiment_id])
    assert len(runs) == 1, "autolog opened one run around compile"
    run_id = runs[0].info.run_id
    files = {a.path for a in client.list_artifacts(run_id)}
    assert {"best_model.json", "trainsets", "testsets"} <= files, "MLflow's own artifacts and ours"
    assert {a.path for a in client.list_artifacts(run_id, "trainsets")} == {
        "trainsets/ob_gyn.json",
        "trainsets/medicine.json",
    }
    assert {a.path for a in client.list_artifacts(run_id, "testsets")} == {"testsets/ob_gyn.json"}
    table = autolog.load_table("trainsets/medicine.json", run_ids=[run_id])
    assert list(table["question"]) == [e.question for e in train["medicine"]]
    assert list(table["answer"]) == [e.answer for e in train["medicine"]]
    assert "trainset.json" not in files  # MLflow's own dataset logging finds no trainset= on MetaSPO.compile
    assert best.system_prompt.text


def test_task_sets_are_not_logged_without_autolog_compiles(mlflow_store, data_dir):
    from metaspo_dspy.tracking import autolog_compiles, log_task_sets

    with mlflow_store.start_run():  # an active run alone is not autolog
        assert autolog_compiles() is False
        assert log_task_sets(_sets(data_dir)) == []


def test_mlflow_dspy_autolog_logs_protegi_and_ape_like_dspy_optimizers(autolog, data_dir, engine_factory):
    """MLflow patches the ``compile`` of Teleprompter's direct subclasses only: ProTeGi and APE
    share their base class's, so autolog sees them and logs their ``trainset`` itself."""
    from mlflow.tracking import MlflowClient

    task = _task(data_dir)
    _, task_lm, opt_lm = engine_factory("autolog-single")
    ProTeGi(exact_metric, opt_lm, task_lm, num_iterations=0, num_candidates=1, beam_width=1, progress=False).compile(
        task.program(), trainset=task.train, task_name=task.name
    )
    APE(exact_metric, opt_lm, task_lm, num_candidates=1, top_k=1, num_pairs=2, progress=False).compile(
        student=task.program(), trainset=task.train, prompt_suffix=" <Question>{question}</Question>"
    )
    client = MlflowClient()
    runs = client.search_runs([autolog.get_experiment_by_name("compile-api").experiment_id])
    assert len(runs) == 2
    for run in runs:
        assert {"best_model.json", "trainset.json"} <= {a.path for a in client.list_artifacts(run.info.run_id)}
        table = autolog.load_table("trainset.json", run_ids=[run.info.run_id])
        assert list(table["question"]) == [e.question for e in task.train]


def test_single_task_compile_options_belong_to_their_optimizer(data_dir, engine_factory):
    engine, task_lm, opt_lm = engine_factory("options")
    task = _task(data_dir)
    with pytest.raises(ConfigError, match=r"unexpected compile\(\) arguments \['prompt_suffix'\]"):
        ProTeGi(exact_metric, opt_lm, task_lm).compile(task.program(), trainset=task.train, prompt_suffix=" x")
    with pytest.raises(ConfigError, match=r"unexpected compile\(\) arguments \['teacher'\]"):
        APE(exact_metric, opt_lm, task_lm).compile(task.program(), trainset=task.train, teacher=None)
    assert sum(engine.counts.values()) == 0
