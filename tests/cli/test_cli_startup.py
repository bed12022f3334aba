"""`geep --help` and `geep methods` answer at once: they leave unimported the libraries that only
training, evaluation and reports need. These tests check what the commands import, not how long
they take (timings are the benchmarks' business)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]

PROBE = """
import contextlib, io, json, runpy, sys

sys.argv = ["geep", *sys.argv[1:]]
code = None
with contextlib.redirect_stdout(io.StringIO()):
    try:
        runpy.run_module("geep.cli", run_name="__main__", alter_sys=True)
    except SystemExit as end:
        code = end.code
print(json.dumps({"code": code, "modules": sorted(sys.modules)}))
"""
"""Run `geep ARGS` as ``python -m geep.cli`` would, then print its exit status and every module
it imported."""

FOR_THE_METHODS = ("torch", "numpy", "safetensors", "huggingface_hub", "accelerate")
"""What the method modules import (their models, checkpoints and training loop): `geep methods`
needs them, a command's help none."""
FOR_MODELS = ("transformers", "tokenizers")
"""What loading an encoder, a tokenizer or a checkpoint needs: the modules import them where they
are used, so neither command does (transformers alone takes about a second to import)."""
FOR_DATA_AND_REPORTS = ("datasets", "pyarrow", "pandas", "matplotlib", "scipy", "sklearn")
"""What loading data and writing reports need: neither command does."""


def imported_by(*args: str) -> set[str]:
    """The modules `geep ARGS` imports (it must succeed)."""
    result = subprocess.run(
        [sys.executable, "-c", PROBE, *args],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=ROOT,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    report = json.loads(result.stdout.splitlines()[-1])
    assert report["code"] == 0, result.stderr[-3000:]
    return set(report["modules"])


def among(modules: set[str], packages: tuple[str, ...]) -> list[str]:
    """The ``packages`` that some of ``modules`` belong to."""
    return sorted({m.split(".")[0] for m in modules} & set(packages))


COMMANDS = ["datasets", "methods", "train", "evaluate", "flops", "plan", "report"]


@pytest.mark.parametrize("args", [["--help"], *([c, "--help"] for c in COMMANDS)], ids=" ".join)
def test_help_imports_no_library(args: list[str]) -> None:
    assert among(imported_by(*args), FOR_THE_METHODS + FOR_MODELS + FOR_DATA_AND_REPORTS) == []


def test_methods_imports_no_data_report_or_model_code() -> None:
    modules = imported_by("methods")
    assert "geep.methods.geep" in modules  # the probe ran the command: it listed the methods
    assert among(modules, FOR_MODELS + FOR_DATA_AND_REPORTS) == []
