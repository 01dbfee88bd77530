"""Shared fixtures: clean DSPy settings per test, the shared data folder, fake LMs."""

from __future__ import annotations

import copy
import importlib
import json
import os
from pathlib import Path

os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")

import dspy
import pytest

from metaspo_dspy.testing import FakeEngine, fake_lm

dspy_settings = importlib.import_module("dspy.dsp.utils.settings")
REPO = Path(__file__).resolve().parents[1]
DATA_DIR = Path(os.environ.get("METASPO_DATA_DIR", REPO.parent / "shared" / "data"))


def pytest_configure(config):
    dspy.configure_cache(enable_disk_cache=False, enable_memory_cache=False)


@pytest.fixture(autouse=True)
def clean_dspy_settings():
    """Every test starts and ends with DSPy's default global settings."""
    saved = copy.deepcopy(dict(dspy_settings.main_thread_config))
    yield
    dspy_settings.main_thread_config.clear()
    dspy_settings.main_thread_config.update(saved)


@pytest.fixture
def data_dir() -> Path:
    if not (DATA_DIR / "amazon" / "beauty.json").exists():
        pytest.skip(f"shared data not found at {DATA_DIR} (set METASPO_DATA_DIR)")
    return DATA_DIR


def load_examples(data_dir: Path, domain: str, task: str, n: int = 50, split: str = "train") -> list[dspy.Example]:
    """The first ``n`` rows of a reference-format file as examples (question -> answer as text)."""
    rows = json.loads((data_dir / domain / f"{task}.json").read_text(encoding="utf-8"))[split][:n]
    return [dspy.Example(question=r["question"], answer=str(r["answer"])).with_inputs("question") for r in rows]


def exact_metric(example, prediction, trace=None) -> bool:
    return str(prediction.answer).strip().lower() == str(example.answer).strip().lower()


@pytest.fixture
def amazon(data_dir):
    """Four Amazon source tasks, 50 train examples each, plus a gold table for the fake LM."""
    tasks = ["beauty", "game", "baby", "office"]
    train = {t: load_examples(data_dir, "amazon", t, 50) for t in tasks}
    gold = {e.question: e.answer for t in tasks for e in train[t]}
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
