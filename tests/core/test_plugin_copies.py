"""Renamed copies of GEEP, FastBERT, HashEE and PABEE, registered the way a plug-in registers a
method (an entry point of the ``geep.methods`` group): the report, the regime model, the GPU
check and the plan treat each exactly like its original, since no module outside a method's own
file asks a method its name."""

from __future__ import annotations

import json
import shutil
import sys
from dataclasses import asdict, replace
from importlib.metadata import EntryPoint
from pathlib import Path

import pandas as pd
import pytest
import torch

from geep.core import registry
from geep.measure.regime import paper_regime
from geep.report.results import load_runs, write_report
from geep.reproduce import gpu_check
from geep.reproduce.gpu_check import DRY_SIZE, LABELS, make_model, synthetic_split
from geep.reproduce.plan import plan
from geep.reproduce.profiles import get_profile

ROOT = Path(__file__).resolve().parents[2]
QUICK = ROOT / "results" / "quick"
COPIES = {"geep": "copy-geep", "fastbert": "copy-fastbert", "hashee": "copy-hashee"}
COPIES["pabee"] = "copy-pabee"
PLUGIN = '''"""Four of the suite's methods under other names, as another package would add them."""

from geep.baselines.fastbert import FastBERT
from geep.baselines.hashee import HashEE
from geep.baselines.pabee import PABEE
from geep.core.registry import register
from geep.methods.geep import Geep


@register
class CopyGeep(Geep):
    name = "copy-geep"


@register
class CopyFastBERT(FastBERT):
    name = "copy-fastbert"


@register
class CopyHashEE(HashEE):
    name = "copy-hashee"


@register
class CopyPABEE(PABEE):
    name = "copy-pabee"
'''


@pytest.fixture
def copies(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> dict[str, str]:
    """The copies installed as a plug-in: a module on the path, named by an entry point; the
    registry is restored afterwards."""
    site = tmp_path / "site"
    site.mkdir()
    (site / "geep_copies.py").write_text(PLUGIN)
    monkeypatch.syspath_prepend(str(site))
    registry.method_names()  # the suite's own methods registered for good, before the copy
    monkeypatch.setattr(registry, "METHODS", dict(registry.METHODS))
    point = EntryPoint("copies", "geep_copies", registry.ENTRY_POINT_GROUP)
    monkeypatch.setattr(registry, "entry_points", lambda group: [point] if group else [])
    registry._import_methods.cache_clear()
    yield COPIES
    registry._import_methods.cache_clear()
    sys.modules.pop("geep_copies", None)


def test_the_registry_lists_the_copies_after_the_suites_methods(copies) -> None:
    names = registry.method_names()
    assert names[-4:] == list(copies.values())
    for original, copy in copies.items():
        assert registry.method_of(copy).name == copy
        assert registry.method_of(f"{copy}-ablation").name == copy  # a profile's variant of it
        assert registry.method_of(original).name == original
    assert registry.reference_name() == "bert"


def _copied_results(tmp_path: Path, copies: dict[str, str]) -> Path:
    """The committed quick results, plus each original's run files again under its copy's
    name: the same rows, as if the copy had been measured."""
    results = tmp_path / "quick"
    shutil.copytree(QUICK / "runs", results / "runs")
    shutil.copy(QUICK / "latency-calibration.json", results)
    for path in sorted((results / "runs").glob("*/*.json")):
        run = json.loads(path.read_text())
        if run["method"] in copies:
            run["method"] = copies[run["method"]]
            name = path.name.replace(path.name.split("-seed")[0], run["method"], 1)
            (path.parent / name).write_text(json.dumps(run))
    return results


def test_the_report_and_the_regime_model_treat_each_copy_like_its_original(
    copies, tmp_path: Path
) -> None:
    results = _copied_results(tmp_path, copies)
    frame = load_runs(results)
    keys = ["dataset", "seed", "setting", "batching"]
    traits = ["inference", "head_kind", "reference", "accuracy", "speedup_full"]
    regime = paper_regime(frame)
    index = ["variant", "dataset", "seed", "model", "batch_size", "device"]
    by_variant = regime.set_index(index).sort_index()
    for original, copy in copies.items():
        mine = frame[frame["method"] == copy].set_index(keys)[traits]
        theirs = frame[frame["method"] == original].set_index(keys)[traits]
        assert len(mine) > 0
        pd.testing.assert_frame_equal(mine, theirs)
        for policy in (None, "shrink"):
            base = original if policy is None else f"{original} ({policy})"
            if base not in set(regime["variant"]):
                continue
            name = copy if policy is None else f"{copy} ({policy})"
            modelled = by_variant.loc[name, "modelled_speedup"]
            expected = by_variant.loc[base, "modelled_speedup"]
            pd.testing.assert_series_equal(modelled, expected)
    predicted = regime[regime["inference"] == "predicted"]["variant"].unique()
    assert set(predicted) == {"geep", "copy-geep"}  # predicted exits, asked of the method
    write_report(results)
    tables = (results / "tables.md").read_text().splitlines()
    for original, copy in copies.items():
        copied = [line for line in tables if line.startswith(f"| `{copy}")]  # its table rows
        assert copied
        for line in copied:
            assert line.replace(f"`{copy}`", f"`{original}`") in tables


def test_the_gpu_check_sets_and_runs_each_copy_like_its_original(
    copies, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    model = make_model(tmp_path, DRY_SIZE)
    data, _ = synthetic_split(DRY_SIZE, DRY_SIZE.samples, seed=0)
    kept = ["setting", "batching", "options", "accuracy", "avg_exit_layer", "exit_histogram"]
    kept += ["flops_full", "calls", "n"]
    config = gpu_check.TrainConfig(seq_len=DRY_SIZE.seq_len)
    for original, copy in copies.items():
        settings = gpu_check.settings_of(copy)
        assert [replace(s, method=original) for s in settings] == gpu_check.settings_of(original)
        speeds = []
        for name in (original, copy):
            torch.manual_seed(0)
            method = registry.get_method(name).create(str(model), LABELS, "check", config)
            speeds.append(gpu_check.hand_set(method, DRY_SIZE, data))
            if name == original:
                extras = {k: v.clone() for k, v in method.extras.items()}
            else:
                assert method.extras.keys() == extras.keys()
                assert all(torch.equal(method.extras[k], extras[k]) for k in extras)
        assert speeds[0] == speeds[1]
        monkeypatch.setattr(gpu_check, "method_names", lambda o=original, c=copy: [o, c])
        size = replace(DRY_SIZE, batch_sizes=(4,))
        result = gpu_check.check_methods(torch.device("cpu"), size, model, data)
        assert result.passed, result.summary
        rows = {name: [] for name in (original, copy)}
        for row in result.details["rows"]:
            rows[row["method"]].append({k: row[k] for k in kept})
        assert rows[copy] == rows[original] and rows[copy]


def test_the_plan_costs_each_copy_like_its_original(copies) -> None:
    quick = get_profile("quick")
    speeds = {c: quick.speeds[o] for o, c in copies.items() if o in quick.speeds}
    profile = replace(quick, speeds=quick.speeds | speeds)  # every registered method, copies too
    assert set(copies.values()) <= set(profile.method_names())
    rows = {(r.dataset, r.method): asdict(r) for r in plan(profile).rows}
    for original, copy in copies.items():
        for dataset in profile.datasets:
            mine = rows[dataset, copy] | {"method": original}
            assert mine == rows[dataset, original]
