"""The package's layers (issue 19): the import-linter contracts in ``pyproject.toml`` hold, they
fail when a lower layer imports a higher one or the test helpers, and no product module reaches the
test helpers through a string (``importlib.import_module("metaspo_dspy.testing...")``), which
import-linter cannot see."""

from __future__ import annotations

import ast
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "metaspo_dspy"
LINT_IMPORTS = Path(sys.executable).with_name("lint-imports")

pytestmark = pytest.mark.skipif(not LINT_IMPORTS.exists(), reason="import-linter is a dev dependency")


def lint_imports(root: Path) -> subprocess.CompletedProcess[str]:
    """``lint-imports`` on the package under ``root`` (its own copy of the contracts)."""
    return subprocess.run(
        [str(LINT_IMPORTS), "--no-cache"],
        cwd=root,
        env={"PYTHONPATH": str(root), "PATH": "/usr/bin:/bin"},
        capture_output=True,
        text=True,
        timeout=600,
    )


def product_modules() -> list[Path]:
    return [path for path in PACKAGE.rglob("*.py") if "testing" not in path.relative_to(PACKAGE).parts]


def test_the_contracts_hold():
    result = lint_imports(ROOT)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "0 broken" in result.stdout


@pytest.mark.parametrize(
    ("module", "added", "broken", "named"),
    [
        (
            "lm/settings.py",
            "import metaspo_dspy.testing.fake_lm",
            "Product code never imports the test helpers BROKEN",
            "metaspo_dspy.lm.settings -> metaspo_dspy.testing.fake_lm",
        ),
        (
            "store/journal.py",
            "from metaspo_dspy.optimize.engine import search",
            "Layers point down BROKEN",
            "metaspo_dspy.store.journal -> metaspo_dspy.optimize.engine.search",
        ),
        (
            "tasks/specs.py",
            "def late():\n    from metaspo_dspy.tasks import loader",
            "No two sibling modules or packages import each other BROKEN",
            "No cycles are allowed in metaspo_dspy.tasks.",
        ),
    ],
)
def test_a_deliberate_upward_import_breaks_a_contract(tmp_path, module, added, broken, named):
    """Each contract catches its kind of import, a function-level one included (an import that closes a
    circle also breaks the acyclic contract)."""
    copy = tmp_path / "copy"
    shutil.copytree(PACKAGE, copy / "metaspo_dspy", symlinks=True, ignore=shutil.ignore_patterns("__pycache__", "data"))
    shutil.copy(ROOT / "pyproject.toml", copy / "pyproject.toml")
    target = copy / "metaspo_dspy" / module
    target.write_text(target.read_text(encoding="utf-8") + f"\n\n{added}\n", encoding="utf-8")
    result = lint_imports(copy)
    assert result.returncode != 0, result.stdout
    assert broken in result.stdout
    assert named in result.stdout


def _strings(tree: ast.AST) -> list[tuple[int, str]]:
    """String constants that are not docstrings, with their line numbers."""
    docstrings = set()
    for node in ast.walk(tree):
        if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)) and node.body:
            first = node.body[0]
            if isinstance(first, ast.Expr) and isinstance(first.value, ast.Constant):
                docstrings.add(id(first.value))
    return [
        (node.lineno, node.value)
        for node in ast.walk(tree)
        if isinstance(node, ast.Constant) and isinstance(node.value, str) and id(node) not in docstrings
    ]


def test_no_product_module_names_the_test_helpers_in_a_string():
    found = [
        f"{path.relative_to(ROOT)}:{line}: {text!r}"
        for path in product_modules()
        for line, text in _strings(ast.parse(path.read_text(encoding="utf-8")))
        if "metaspo_dspy.testing" in text or "metaspo_dspy/testing" in text
    ]
    assert found == []


def test_the_string_check_sees_an_importlib_string():
    source = 'import importlib\nimportlib.import_module("metaspo_dspy.testing.fake_lm").install_provider()\n'
    assert any("metaspo_dspy.testing" in text for _, text in _strings(ast.parse(source)))
