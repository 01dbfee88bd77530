"""The wheel carries what an installed package needs: the shipped configs, found by name."""

from __future__ import annotations

import os
import subprocess
import sys
import zipfile
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]


def test_the_wheel_ships_the_configs_and_finds_them_by_name(tmp_path):
    build = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w", str(tmp_path), ROOT],
        capture_output=True, text=True, timeout=300, cwd=tmp_path,
    )  # fmt: skip
    assert build.returncode == 0, build.stderr
    (wheel,) = tmp_path.glob("metaspo_dspy-*.whl")
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
