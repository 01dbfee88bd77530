"""The wheel carries what an installed package needs: the shipped configs, found by name, and the
bundled task data with its NOTICE, loaded by name from the installed package."""

from __future__ import annotations

import os
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Path:
    """The wheel built from this checkout, offline."""
    out = tmp_path_factory.mktemp("wheel")
    build = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w", str(out), ROOT],
        capture_output=True, text=True, timeout=300, cwd=out,
    )  # fmt: skip
    assert build.returncode == 0, build.stderr
    (built,) = out.glob("metaspo_dspy-*.whl")
    return built


def test_the_wheel_ships_the_configs_and_finds_them_by_name(wheel, tmp_path):
    with zipfile.ZipFile(wheel) as archive:
        shipped = {Path(n).name: archive.read(n) for n in archive.namelist() if n.startswith("metaspo_dspy/configs/")}
        archive.extractall(tmp_path / "installed")
    assert shipped == {p.name: p.read_bytes() for p in (ROOT / "configs").glob("*.yaml")}
    # Import the package from the unpacked wheel (not this checkout) and load a config by name.
    probe = (
        "import metaspo_dspy.config as c; "
        "print(c.__file__); print(c.CONFIG_DIR); "
        "print(','.join(c.load_config('base', 'review', overrides=['task_lm.model=x']).tasks.source))"
    )
    env = {**os.environ, "PYTHONPATH": str(tmp_path / "installed")}
    result = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, env=env, cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    module, config_dir, sources = result.stdout.split()
    assert module.startswith(str(tmp_path / "installed")) and config_dir.startswith(str(tmp_path / "installed"))
    expected = yaml.safe_load((ROOT / "configs" / "review.yaml").read_text())["tasks"]["source"]
    assert sources.split(",") == expected


def test_the_wheel_ships_the_bundled_data_and_loads_it_by_name(wheel, tmp_path):
    data = ROOT / "metaspo_dspy" / "data"
    expected = {p.relative_to(ROOT).as_posix(): p.read_bytes() for p in data.rglob("*") if p.is_file()}
    with zipfile.ZipFile(wheel) as archive:
        shipped = {n: archive.read(n) for n in archive.namelist() if n.startswith("metaspo_dspy/data/")}
        archive.extractall(tmp_path / "installed")
    assert shipped == expected and "metaspo_dspy/data/NOTICE.md" in shipped and len(shipped) == 26
    # From the unpacked wheel, with an empty user cache: a bundled task loads, a fetched-only one is
    # the one-line error naming the fetch command.
    probe = (
        "from metaspo_dspy.tasks import load_task, TaskLoadError\n"
        "t = load_task('dental')\n"
        "print(t.metadata['path']); print(len(t.train), len(t.test), t.metadata['origin'])\n"
        "try:\n    load_task('beauty')\nexcept TaskLoadError as e:\n    print(e)\n"
    )
    env = {k: v for k, v in os.environ.items() if k != "METASPO_DATA_DIR"}
    env.update(PYTHONPATH=str(tmp_path / "installed"), METASPO_CACHE_DIR=str(tmp_path / "empty-cache"))
    result = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, env=env, cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    path, sizes, error = result.stdout.splitlines()
    assert path == str(tmp_path / "installed" / "metaspo_dspy" / "data" / "medmcqa" / "dental.json")
    assert sizes == "50 300 bundled"
    assert error.startswith("task 'beauty' is not on this machine") and "metaspo data fetch review" in error
