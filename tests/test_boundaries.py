"""The house rules the code layout must keep, checked on the source: solvers are pure array
math, only backend.py knows CuPy, modules stay small, tests mirror the package."""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

PKG = Path(__file__).resolve().parents[1] / "onnx_obc"
TESTS = Path(__file__).resolve().parent
MODULES = sorted(PKG.rglob("*.py"))


def _imports(path: Path) -> set[str]:
    """Top-level names of every module `path` imports (relative imports as '.')."""
    names = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names |= {a.name.split(".")[0] for a in node.names}
        elif isinstance(node, ast.ImportFrom):
            names.add("." if node.level else (node.module or "").split(".")[0])
    return names


@pytest.mark.parametrize("path", sorted((PKG / "solvers").rglob("*.py")), ids=lambda p: p.name)
def test_solvers_are_pure_array_math(path):
    impure = _imports(path) & {"onnx", "onnxruntime", "onnx_graphsurgeon", "tqdm", "logging",
                               "cupy", "click"}
    assert not impure, f"{path.name} imports {sorted(impure)}"
    assert not re.search(r"\bprint\(", path.read_text()), f"{path.name} prints"


def test_only_backend_names_cupy():
    naming = [p.relative_to(PKG).as_posix() for p in MODULES if "cupy" in _imports(p)]
    assert naming == ["backend.py"]
    # the duck-typed device -> host copy (`a.get()`) belongs to the backend too
    ducked = [p.relative_to(PKG).as_posix() for p in MODULES
              if p.name != "backend.py" and re.search(r"\.get\(\)", p.read_text())]
    assert not ducked, f"duck-typed .get() outside backend.py: {ducked}"


def test_library_code_never_configures_logging():
    bad = [p.name for p in MODULES if p.name != "cli.py"
           and re.search(r"logging\.basicConfig|\.setLevel\(|addHandler\(", p.read_text())]
    assert not bad


@pytest.mark.parametrize("path", MODULES, ids=lambda p: p.relative_to(PKG).as_posix())
def test_modules_stay_under_300_lines(path):
    n = len(path.read_text().splitlines())
    assert n <= 300, f"{path.relative_to(PKG)} has {n} lines; split it by responsibility"


def test_subpackages_have_mirrored_test_folders():
    subpackages = [p.name for p in PKG.iterdir() if (p / "__init__.py").exists()]
    assert subpackages, "expected subpackages (solvers, export, allocation)"
    missing = [s for s in subpackages if not (TESTS / s).is_dir()]
    assert not missing, f"tests/ has no folder for {missing}"
