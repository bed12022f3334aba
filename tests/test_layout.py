"""The house rules the import-linter contract (pyproject.toml) cannot check: no module outside a
method's own file tests a method's name, no function over 80 lines, and no lower layer imports
the methods (grimp reads ``baselines/`` as its own root, so imports of ``geep.baselines`` are
checked here)."""

from __future__ import annotations

import ast
import sys
from pathlib import Path

from geep.core.registry import METHODS, method_names

ROOT = Path(__file__).resolve().parent.parent
SOURCES = sorted([*ROOT.glob("geep/**/*.py"), *ROOT.glob("baselines/*.py")])
LOWER = ("common", "data", "measure", "model", "core")  # below the methods (pyproject.toml)
OTHER_MEANINGS = {  # strings that are a method's name but mean something else there
    "geep/measure/flops.py": "fastbert",  # the FLOPs convention of FastBERT's paper (--convention)
    "geep/model/backbone.py": "bert",  # transformers' model_type of a BERT encoder
}


def method_files() -> set[Path]:
    """The file of every registered method, and of the classes it builds on."""
    method_names()
    files = set()
    for cls in METHODS.values():
        for base in cls.__mro__:
            file = getattr(sys.modules[base.__module__], "__file__", None)
            if file and Path(file).resolve().is_relative_to(ROOT):
                files.add(Path(file).resolve())
    return files - {(ROOT / "geep/core/interface.py"), (ROOT / "geep/core/dynamic_exit.py")}


def name_tests(path: Path, names: set[str]) -> list[str]:
    """``path``'s comparisons of a value with a method's name (``== "geep"``, ``in (...)``)."""
    found = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Compare):
            values = [node.left, *node.comparators]
            for value in values:
                items = value.elts if isinstance(value, ast.Tuple | ast.List | ast.Set) else [value]
                for item in items:
                    if isinstance(item, ast.Constant) and item.value in names:
                        found.append(f"{path.relative_to(ROOT)}:{node.lineno} {item.value!r}")
    return found


def test_no_module_outside_a_methods_own_file_tests_a_methods_name() -> None:
    names = set(method_names())
    own = method_files()
    found = []
    for path in SOURCES:
        if path.resolve() not in own:
            other = OTHER_MEANINGS.get(path.relative_to(ROOT).as_posix())
            found += name_tests(path, names - {other})
    assert found == []


def test_no_function_is_longer_than_80_lines() -> None:
    long = []
    for path in [*SOURCES, *ROOT.glob("benchmarks/*.py")]:
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
                lines = node.end_lineno - node.lineno + 1
                if lines > 80:
                    long.append(f"{path.relative_to(ROOT)}:{node.lineno} {node.name} ({lines})")
    assert long == []


def test_no_layer_below_the_methods_imports_them() -> None:
    found = []
    for layer in LOWER:
        for path in sorted((ROOT / "geep" / layer).glob("*.py")):
            for node in ast.walk(ast.parse(path.read_text())):
                modules = []
                if isinstance(node, ast.ImportFrom) and node.module:
                    modules = [node.module]
                elif isinstance(node, ast.Import):
                    modules = [alias.name for alias in node.names]
                for module in modules:
                    if module.startswith(("geep.baselines", "geep.methods")):
                        found.append(f"{path.relative_to(ROOT)}:{node.lineno} {module}")
    assert found == []
