"""The house's layers (import-linter contracts in pyproject.toml), its lint (ruff) and its function size hold.

``lint-imports`` reads the import graph of the five packages; a deliberately wrong import in a
copy of the tree must break the contract that forbids it, so the contracts cannot pass vacuously.
"""

from __future__ import annotations

import ast
import pkgutil
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

import harness

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("harness", "curation", "pretrain", "downstream", "results")
BIN = Path(sys.executable).parent
#: The longest a library function may be, from its ``def`` line to its last line (issue 18).
MAX_FUNCTION_LINES = 80


def _contracts() -> dict[str, dict]:
    config = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["importlinter"]
    return {c["id"]: c for c in config["contracts"]}


def _lint_imports(cwd: Path, *contracts: str) -> subprocess.CompletedProcess:
    args = [str(BIN / "lint-imports"), "--no-cache", "--no-logo"]
    for c in contracts:
        args += ["--contract", c]
    return subprocess.run(args, cwd=cwd, capture_output=True, text=True, timeout=120)


def test_layer_contracts_hold():
    run = _lint_imports(ROOT)
    assert run.returncode == 0, run.stdout + run.stderr
    assert f"Contracts: {len(_contracts())} kept, 0 broken." in run.stdout


def test_every_orchestration_module_is_below_no_stage():
    """The stages' contract names every harness module but harness.core, so a new one is covered."""
    modules = {f"harness.{m.name}" for m in pkgutil.iter_modules(harness.__path__) if m.name != "core"}
    assert set(_contracts()["stages-below-harness"]["forbidden_modules"]) == modules


@pytest.fixture(scope="module")
def tree_copy(tmp_path_factory) -> Path:
    """The five packages and pyproject.toml, copied so a test can add a wrong import."""
    out = tmp_path_factory.mktemp("tree")
    for pkg in PACKAGES:
        shutil.copytree(ROOT / pkg, out / pkg, ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
    shutil.copy(ROOT / "pyproject.toml", out / "pyproject.toml")
    return out


@pytest.mark.parametrize(
    ("module", "wrong", "contract"),
    [
        ("curation/filters.py", "import harness.runner", "stages-below-harness"),
        ("downstream/metrics.py", "from harness.registry import Registry", "stages-below-harness"),
        ("harness/core/layout.py", "import results.schema", "core-is-the-floor"),
        ("results/schema.py", "import downstream.metrics", "results-is-a-leaf"),
        ("pretrain/optim.py", "import downstream.metrics", "stage-layers"),
        ("curation/render.py", "import curation.world", "no-module-cycles"),
        ("downstream/metrics.py", "import ray", "ray-edges"),
    ],
)
def test_a_wrong_import_breaks_its_contract(tree_copy, module, wrong, contract):
    path = tree_copy / module
    original = path.read_text()
    path.write_text(original + f"\n{wrong}  # deliberately wrong (tests/test_layers.py)\n")
    try:
        run = _lint_imports(tree_copy, contract)
    finally:
        path.write_text(original)
    assert run.returncode == 1, run.stdout + run.stderr
    assert f"{_contracts()[contract]['name']} BROKEN" in run.stdout


def _ruff(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [str(BIN / "ruff"), *args, "--no-cache", "."], cwd=ROOT, capture_output=True, text=True, timeout=120
    )


def test_ruff_check_passes():
    """``ruff check .`` with the rules of [tool.ruff.lint] in pyproject.toml."""
    run = _ruff("check")
    assert run.returncode == 0, run.stdout + run.stderr


def test_ruff_format_check_passes():
    """``ruff format --check .``: every Python file is as ``ruff format`` writes it ([tool.ruff.format])."""
    run = _ruff("format", "--check")
    assert run.returncode == 0, run.stdout + run.stderr


def test_no_library_function_is_longer_than_80_lines():
    """Long functions are split along the phases they have (docs/CONTRACTS.md); ruff has no rule for length."""
    long = []
    for pkg in PACKAGES:
        for path in sorted((ROOT / pkg).rglob("*.py")):
            for node in ast.walk(ast.parse(path.read_text(), str(path))):
                if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
                    lines = node.end_lineno - node.lineno + 1
                    if lines > MAX_FUNCTION_LINES:
                        long.append(f"{path.relative_to(ROOT)}:{node.lineno} {node.name} ({lines} lines)")
    assert not long, "split these along their phases:\n" + "\n".join(long)
