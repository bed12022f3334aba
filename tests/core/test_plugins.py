"""A method from another package is one module: declared as a ``geep.methods`` entry point, it
is found by the registry and runs through `geep train`, `geep evaluate` and the benchmarks with
no file of the suite edited."""

from __future__ import annotations

import ast
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]

TOY_METHOD = '''"""bert's classifier under another name: a method that lives outside the suite."""

from geep.baselines.bert import Bert
from geep.core.registry import register


@register
class Toy(Bert):
    name = "toy"
    speed_help = "no exit: full depth always; the only speed is 0"
'''

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def plugin(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    """An installed-looking package holding one method module: the environment that finds it."""
    site = tmp_path_factory.mktemp("site")
    (site / "toy_geep_method.py").write_text(TOY_METHOD)
    info = site / "toy_geep_method-0.1.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: toy-geep-method\nVersion: 0.1\n")
    (info / "entry_points.txt").write_text("[geep.methods]\ntoy = toy_geep_method\n")
    return {**os.environ, "PYTHONPATH": f"{site}{os.pathsep}{ROOT}"}


def run(env: dict[str, str], *argv: str) -> str:
    done = subprocess.run(
        [sys.executable, "-m", *argv], cwd=ROOT, env=env, capture_output=True, text=True
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    return done.stdout


def test_a_method_from_another_package_trains_evaluates_and_benchmarks(
    plugin, tiny_model: Path, toy_dir: Path, tmp_path: Path
) -> None:
    assert "toy\n  speed: no exit" in run(plugin, "geep.cli", "methods")
    out = tmp_path / "toy-ckpt"
    argv = ["--method", "toy", "--dataset", str(toy_dir), "--model", str(tiny_model)]
    run(plugin, "geep.cli", "train", *argv, "--out", str(out), "--epochs", "1", "--seq-len", "16")
    doc = json.loads(run(plugin, "geep.cli", "evaluate", "--checkpoint", str(out), "--json"))
    assert doc["method"] == "toy" and doc["results"][0]["n"] == 20
    results = tmp_path / "results"
    env = {**plugin, "GEEP_PROFILE": "smoke", "GEEP_RESULTS": str(results)}
    run(env, "pytest", "benchmarks/test_methods.py", "-k", "toy", "-q", "-p", "no:cacheprovider")
    rows = json.loads((results / "runs" / "rotten-tomatoes" / "toy-seed42.json").read_text())
    assert [row["setting"] for row in rows["rows"]] == ["0"]


def test_the_method_order_does_not_depend_on_what_was_imported_first(plugin) -> None:
    """Profiles, config hashes and tables take the registry's order, so it must be one order
    in every process: the suite's modules by name, then the entry points."""
    code = "import {}; from geep.core.registry import method_names; print(method_names())"
    found = set()
    for first in (
        "geep.core.registry",
        "geep.methods.geep",
        "geep.baselines.pabee",
        "toy_geep_method",
    ):
        done = subprocess.run(
            [sys.executable, "-c", code.format(first)],
            cwd=ROOT,
            env=plugin,
            capture_output=True,
            text=True,
        )
        assert done.returncode == 0, done.stderr[-3000:]
        found.add(done.stdout.strip())
    assert len(found) == 1, found
    names = ast.literal_eval(found.pop())
    assert names[:2] == ["bert", "geep"] and names[-1] == "toy"
    assert names[2:-1] == sorted(names[2:-1])  # baselines/ by module name
