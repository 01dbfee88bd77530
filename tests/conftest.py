"""Shared fixtures: clean DSPy settings per test, the bundled data, a cache fetched from test-made
originals, fake LMs.

Tests never read ``../shared``: task data comes from the package (``metaspo_dspy/data``) or from
:func:`fetched_cache`, which runs the real ``metaspo data fetch`` code against a loopback server.
Every test runs with ``$METASPO_DATA_DIR`` unset, ``$METASPO_CACHE_DIR`` an empty folder (so a
developer's own cache or data folder cannot change a result) and ``$METASPO_DATA_URL`` a closed
loopback port (so nothing reaches the internet)."""

from __future__ import annotations

import copy
import importlib
import json
import os
from pathlib import Path

os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")

import dspy
import pytest

from metaspo_dspy.tasks.sources.local import BUNDLED_DIR
from metaspo_dspy.testing import FakeEngine, fake_lm

dspy_settings = importlib.import_module("dspy.dsp.utils.settings")
REPO = Path(__file__).resolve().parents[1]
#: the task data bundled in the package (reference layout)
DATA_DIR = BUNDLED_DIR
#: a reference-format result file of the MetaSPO reference code (bilevel_nodes_0.json), from a run
#: against a deterministic mock model: its shape only matters
REFERENCE_SAMPLE = REPO / "tests" / "data" / "bilevel_nodes_sample.json"
#: the four MedMCQA source tasks (bundled; 90-135 train examples each)
MEDICAL_SOURCE = ("ob_gyn", "medicine", "pharmacology", "pathology")
#: skip a test that runs the embedded model when its extra is not installed
needs_embedded = pytest.mark.skipif(
    not importlib.import_module("metaspo_dspy.lm.embedded.provider").is_available(),
    reason="the [embedded] extra is not installed (scripts/bootstrap does it)",
)


def pytest_configure(config):
    dspy.configure_cache(enable_disk_cache=False, enable_memory_cache=False)


@pytest.fixture(autouse=True)
def clean_dspy_settings():
    """Every test starts and ends with DSPy's default global settings."""
    saved = copy.deepcopy(dict(dspy_settings.main_thread_config))
    yield
    dspy_settings.main_thread_config.clear()
    dspy_settings.main_thread_config.update(saved)


@pytest.fixture(scope="session", autouse=True)
def hermetic_data_env(tmp_path_factory):
    """No data folder from the environment, an empty user cache, no reachable download host."""
    with pytest.MonkeyPatch.context() as patch:
        patch.delenv("METASPO_DATA_DIR", raising=False)
        patch.setenv("METASPO_CACHE_DIR", str(tmp_path_factory.mktemp("empty-user-cache")))
        patch.setenv("METASPO_DATA_URL", "http://127.0.0.1:9")
        yield


@pytest.fixture
def data_dir() -> Path:
    """The bundled data folder (reference layout)."""
    return DATA_DIR


@pytest.fixture(scope="session")
def fetched_cache(tmp_path_factory) -> Path:
    """A user cache holding every non-bundled task and the unseen tasks' user prompts, written by the
    real fetch code from test-made originals served on a loopback server (tests/originals.py)."""
    from originals import build_cache

    return build_cache(tmp_path_factory.mktemp("fetch"))


def load_examples(data_dir: Path, domain: str, task: str, n: int = 50, split: str = "train") -> list[dspy.Example]:
    """The first ``n`` rows of a reference-format file as examples (question -> answer as text)."""
    rows = json.loads((data_dir / domain / f"{task}.json").read_text(encoding="utf-8"))[split][:n]
    return [dspy.Example(question=r["question"], answer=str(r["answer"])).with_inputs("question") for r in rows]


def exact_metric(example, prediction, trace=None) -> bool:
    return str(prediction.answer).strip().lower() == str(example.answer).strip().lower()


@pytest.fixture
def medical(data_dir):
    """The four MedMCQA source tasks (bundled), 50 train examples each, plus a gold table for the fake LM."""
    train = {t: load_examples(data_dir, "medmcqa", t, 50) for t in MEDICAL_SOURCE}
    gold = {e.question: e.answer for t in MEDICAL_SOURCE for e in train[t]}
    return train, gold


@pytest.fixture
def engine_factory():
    """Make a fake engine and the (task LM, optimizer LM) pair served by it."""

    def make(name: str, **kwargs):
        engine = FakeEngine(**kwargs)
        task = fake_lm(f"{name}-task", engine, temperature=0.0)
        optimizer = fake_lm(f"{name}-opt", engine, temperature=1.0)
        return engine, task, optimizer

    return make


def mock_server(*args: str, log: Path | None = None):
    """Start the loopback mock model server; yields its base URL (``http://127.0.0.1:PORT/v1``)."""
    from metaspo_dspy.testing.mock_server import running

    return running(*args, log=log)
