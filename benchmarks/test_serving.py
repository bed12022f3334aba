"""Serving under load (geep.serving.server): each method behind a dynamic batcher, driven by MLPerf
LoadGen in its SingleStream, Offline and Server scenarios, against full-depth ``bert`` in
float32 and in dynamic int8 (geep.core.quantize), in torch and in ONNX Runtime
(geep.core.onnx_runtime).

One unit per (dataset, method, batching policy, runtime, precision, setting) of the profile's
``serving`` plan: ``bert`` at full depth in float32 and int8, and in ONNX Runtime as one graph in
each of the plan's ``onnx_precisions``; every early-exit method at the plan's settings
chosen on the dev split, never on test (``matched``: FLOPs speedup closest to the plan's,
``within``: the fastest within the plan's accuracy drop of ``bert``;
geep.serving.server.choose_settings), the dynamic-exit methods under the plan's batching policies
(``shrink``, ``regroup``, ``keep``); at the plan's last setting, its ``int8_methods`` in torch
int8 and its ``onnx_pieces`` in ONNX Runtime as layer pieces (each of ``onnx_precisions``);
last, the early-exit variant that served the highest rate at the plan's last setting in
float32, again in int8 (do the savings stack?). A unit in int8 or in ONNX Runtime records
``fp32_agreement``, the share of its served labels equal to the same method's in torch float32,
which must reach :data:`AGREEMENT`; ONNX Runtime units are skipped without the onnx extra. Then,
with the
plan's ``overload`` multiples, its ``overload_methods`` (``bert`` at full depth, an early-exit
method at the plan's first setting) in the Server scenario at those multiples of the highest
rate they held, behind a queue limit (geep.serving.server.measure_overload).

Rows go to ``<results>/serving/<dataset>.json``, the overload rows to
``<results>/serving/overload/<dataset>.json``; LoadGen's summaries to
``<results>/serving/logs/<dataset>/<unit>/<run>/mlperf_log_summary.txt``. Skipped when the
profile has no serving plan. Run it in one process (no xdist): the runs time themselves.
"""

from __future__ import annotations

import json
import shutil
import time
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
import pytest

from benchmarks.conftest import profile_of
from geep.common.storage import atomic_write_text, exclusive
from geep.core.interface import Method
from geep.core.onnx_runtime import EXTRA, onnx_available, onnx_pieces, onnx_whole
from geep.core.quantize import int8
from geep.core.registry import get_method, reference_name
from geep.data.encoding import Encoded
from geep.measure.metrics import accuracy
from geep.pipeline.evaluate import library_versions, load_split
from geep.reproduce.profiles import Profile
from geep.reproduce.units import device_name, git_commit, load_unit, speeds_for
from geep.serving.server import choose_settings, describe, measure_overload, measure_serving

AGREEMENT = {"fp32": 0.98, "int8": 0.80}
"""The least share of a unit's served labels that must equal the same method's in torch float32,
by the unit's precision: float32 in ONNX Runtime differs by rounding only (a near-tie, or an
exit statistic on its threshold, may flip); int8 moves every logit and exit statistic by its
rounding steps, and the smoke profile's lightly trained checkpoints hold many near-ties (PABEE in
int8 kept 54 of its 64 smoke labels, 84%; torch int8 keeps 95-97% in ``compare``)."""


class ServingUnit(NamedTuple):
    dataset: str
    method: str  # "best": the early-exit variant that served most in float32 (module doc)
    batching: str | None
    precision: str  # "fp32" or "int8"
    setting: str  # "full" (bert), "matched" or "within"
    overload: bool = False  # Server runs past the highest rate this unit's row held
    runtime: str = "torch"  # or "onnx" (one graph) or "onnx-pieces" (geep.core.onnx_runtime)

    @property
    def id(self) -> str:
        parts = [self.dataset, self.method, self.batching, self.runtime, self.precision]
        overload = "overload" if self.overload else None
        return "-".join(
            p for p in [*parts, self.setting, overload] if p not in (None, "fp32", "torch")
        )


def serving_units(profile: Profile) -> list[ServingUnit]:
    """The profile's serving units, in the order they run ("best" last per dataset; a method's
    int8 and ONNX Runtime units just after its float32 ones, while its dev choice is kept)."""
    plan = profile.serving
    if plan is None:
        return []
    found = []
    last = plan.settings[-1]
    for dataset in plan.datasets:
        reference = reference_name()
        found += [ServingUnit(dataset, reference, None, p, "full") for p in ("fp32", "int8")]
        found += [
            ServingUnit(dataset, reference, None, p, "full", runtime="onnx")
            for p in plan.onnx_precisions
        ]
        for name in profile.method_names():
            if name == reference:
                continue
            cls = get_method(name)
            policies = plan.batchings if cls.batching_of(cls.options_class()) else (None,)
            for batching in policies:
                found += [ServingUnit(dataset, name, batching, "fp32", s) for s in plan.settings]
            if name in plan.int8_methods:
                found.append(ServingUnit(dataset, name, None, "int8", last))
            if name in plan.onnx_pieces:
                found += [
                    ServingUnit(dataset, name, None, p, last, runtime="onnx-pieces")
                    for p in plan.onnx_precisions
                ]
        found.append(ServingUnit(dataset, "best", None, "int8", last))
        if plan.overload:
            found += [
                ServingUnit(
                    dataset,
                    name,
                    None,
                    "fp32",
                    "full" if name == reference_name() else plan.settings[0],
                    True,
                )
                for name in profile.method_names()
                if name in plan.overload_methods
            ]
    return found


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    if "serving_unit" in metafunc.fixturenames:
        found = serving_units(profile_of(metafunc.config))
        metafunc.parametrize("serving_unit", found, ids=[u.id for u in found])


class Chosen(NamedTuple):
    """A trained method with its test split and the speeds it serves, chosen on dev."""

    method: Method
    test: Encoded
    speeds: dict[str, float]  # setting -> speed
    dev: dict[str, Any]  # what the choice saw: candidates, their dev accuracy and speedup


_chosen: dict[tuple[str, str], Chosen] = {}


def chosen(profile: Profile, dataset: str, name: str) -> Chosen:
    """The method's serving settings on ``dataset``: its dev-chosen speeds (threshold methods)
    or its fixed grid, each run once on the plan's dev samples; kept while the method is
    served. The test split: the plan's first samples."""
    key = (dataset, name)
    if key not in _chosen:
        plan = profile.serving
        loaded = load_unit(profile, name, dataset, profile.seeds[0])
        method = loaded.method
        test = load_split(method, dataset, "test", plan.max_samples).data
        if name == reference_name():
            _chosen.clear()
            _chosen[key] = Chosen(method, test, {"full": 0.0}, {})
            return _chosen[key]
        bert_dev = bert_dev_accuracy(profile, dataset)
        dev = load_split(method, dataset, "dev", plan.max_samples).data
        speeds = loaded.sweep.get("speeds") or speeds_for(profile, name, dataset)
        full = method.full_depth_flops(dev.lengths.numpy(), "full").sum()
        accuracies, speedups = [], []
        for speed in speeds:
            out = method.run(dev, speed, profile.batch_size)
            accuracies.append(accuracy(dev.labels.numpy(), out.labels))
            speedups.append(float(full / out.flops_full.sum()))
        picks = choose_settings(speedups, accuracies, bert_dev, plan)
        record = {"samples": len(dev), "speeds": list(speeds), "dev_accuracy": accuracies}
        record |= {"dev_speedup": speedups, "bert_dev_accuracy": bert_dev, "chosen": picks}
        if "choice" in loaded.sweep:  # options chosen on dev first (GEEP: its exit rule)
            record["options"] = loaded.sweep["choice"]
        _chosen.clear()
        _chosen[key] = Chosen(method, test, {s: float(speeds[i]) for s, i in picks.items()}, record)
    return _chosen[key]


_bert_dev: dict[str, float] = {}


def bert_dev_accuracy(profile: Profile, dataset: str) -> float:
    """Full-depth ``bert``'s accuracy on the plan's dev samples (the reference of ``within``)."""
    if dataset not in _bert_dev:
        method = load_unit(profile, reference_name(), dataset, profile.seeds[0]).method
        dev = load_split(method, dataset, "dev", profile.serving.max_samples).data
        _bert_dev[dataset] = accuracy(dev.labels.numpy(), method.run(dev, 0.0, 32).labels)
    return _bert_dev[dataset]


def best_variant(results: Path, dataset: str, setting: str) -> dict[str, Any]:
    """The float32 early-exit row at ``setting`` with the highest Server rate (then Offline
    throughput) in the dataset's serving file."""
    rows = [
        r
        for r in read_serving(results, dataset)["rows"]
        if r["method"] != reference_name()
        and (r["precision"], r["runtime"], r["setting"]) == ("fp32", "torch", setting)
    ]
    if not rows:
        pytest.skip(f"no early-exit variant was served at `{setting}` before this unit")
    return max(rows, key=lambda r: (r["server_rate"] or 0.0, r["offline_samples_per_s"]))


def serving_file(results: Path, dataset: str, overload: bool = False) -> Path:
    return results / "serving" / ("overload" if overload else "") / f"{dataset}.json"


def read_serving(results: Path, dataset: str, overload: bool = False) -> dict[str, Any]:
    path = serving_file(results, dataset, overload)
    return json.loads(path.read_text()) if path.is_file() else {"rows": []}


def record_serving(
    results: Path, profile: Profile, dataset: str, row: dict[str, Any], overload: bool = False
) -> None:
    """Add (or replace) the unit's row in the dataset's serving file (or its overload file),
    atomically and locked."""
    path = serving_file(results, dataset, overload)
    path.parent.mkdir(parents=True, exist_ok=True)
    plan = profile.serving
    with exclusive(path.parent):
        old = read_serving(results, dataset, overload)
        if old.get("provenance", {}).get("config_hash") != profile.config_hash():
            old = {"rows": []}  # another configuration's file is replaced, never mixed with
        rows = [r for r in old["rows"] if r["unit"] != row["unit"]] + [row]
        document = {
            "dataset": dataset,
            "rows": rows,
            "settings": describe(plan.overload_batcher if overload else plan.batcher, plan.load),
            "provenance": {
                "profile": profile.name,
                "config_hash": profile.config_hash(),
                "git_commit": git_commit(),
                "seed": profile.seeds[0],
                "versions": library_versions(),
                "written": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
            },
        }
        atomic_write_text(path, json.dumps(document, indent=2) + "\n")


def keep_summaries(folder: Path) -> None:
    """Of LoadGen's logs under ``folder``, keep each run's summary (the detail, trace and
    accuracy logs are large and their figures are in the row)."""
    for path in folder.rglob("mlperf_log_*"):
        if path.name != "mlperf_log_summary.txt":
            path.unlink()


def test_serving(benchmark, profile: Profile, results_dir: Path, serving_unit: ServingUnit):
    unit = serving_unit
    if unit.overload:
        serve_overload(benchmark, profile, results_dir, unit)
        return
    plan = profile.serving
    name, batching, setting = unit.method, unit.batching, unit.setting
    if name == "best":
        best = best_variant(results_dir, unit.dataset, setting)
        name, batching = best["method"], best["batching"]
    if unit.runtime != "torch" and not onnx_available():
        pytest.skip(f"ONNX Runtime units need the onnx extra: {EXTRA}")
    picked = chosen(profile, unit.dataset, name)
    method = picked.method
    if batching is not None:
        method.configure([f"batching={batching}"])
    speed = picked.speeds[setting]
    reference = None
    if (unit.runtime, unit.precision) != ("torch", "fp32"):
        reference = method.run(picked.test, speed, plan.batcher.max_batch).labels
        method = runtime_of(method, unit, picked.test)
    logs = results_dir / "serving" / "logs" / unit.dataset / unit.id
    shutil.rmtree(logs, ignore_errors=True)
    row: dict[str, Any] = {}

    def serve() -> None:
        row.update(measure_serving(method, picked.test, speed, plan, logs, reference))

    benchmark.pedantic(serve, rounds=1, iterations=1)
    keep_summaries(logs)
    row = {
        "unit": unit.id,
        "dataset": unit.dataset,
        "method": name,
        "batching": batching,
        "runtime": unit.runtime,
        "precision": unit.precision,
        "setting": setting,
        "speed": speed,
        "best_of": f"{setting}, float32" if unit.method == "best" else None,
        "device": device_name(method.device),
        **row,
        "dev_choice": picked.dev,
    }
    record_serving(results_dir, profile, unit.dataset, row)
    benchmark.extra_info.update({"profile": profile.name, **row})
    assert np.isfinite(row["offline_samples_per_s"]) and row["offline_samples_per_s"] > 0
    if reference is not None:
        assert row["fp32_agreement"] >= AGREEMENT[unit.precision], (
            f"{unit.id}: {row['fp32_agreement']:.3f} of its labels are float32 torch's"
        )


def runtime_of(method: Method, unit: ServingUnit, example: Encoded) -> Method:
    """The unit's copy of ``method``: torch int8 (geep.core.quantize), or ONNX Runtime in the
    unit's precision, as one graph or as layer pieces (geep.core.onnx_runtime), traced on the
    served samples' shapes (``example``: no label is read)."""
    if unit.runtime == "onnx":
        return onnx_whole(method, example, unit.precision)
    if unit.runtime == "onnx-pieces":
        return onnx_pieces(method, example, unit.precision)
    return int8(method)


def serve_overload(benchmark, profile: Profile, results_dir: Path, unit: ServingUnit) -> None:
    """The unit's Server runs at the plan's multiples of the highest rate its float32 row in
    the serving file held (geep.serving.server.measure_overload), to the overload file."""
    plan = profile.serving
    reference = unit._replace(overload=False).id
    rows = read_serving(results_dir, unit.dataset)["rows"]
    base = next((r for r in rows if r["unit"] == reference), None)
    if base is None or base["server_rate"] is None:
        pytest.skip(f"{reference} held no rate before this unit: nothing to overload")
    picked = chosen(profile, unit.dataset, unit.method)
    speed = picked.speeds[unit.setting]
    logs = results_dir / "serving" / "logs" / unit.dataset / unit.id
    shutil.rmtree(logs, ignore_errors=True)
    runs: list[dict[str, Any]] = []

    def serve() -> None:
        rate = base["server_rate"]
        runs.extend(measure_overload(picked.method, picked.test, speed, plan, rate, logs))

    benchmark.pedantic(serve, rounds=1, iterations=1)
    keep_summaries(logs)
    row = {
        "unit": unit.id,
        "dataset": unit.dataset,
        "method": unit.method,
        "batching": None,
        "runtime": "torch",
        "precision": "fp32",
        "setting": unit.setting,
        "speed": speed,
        "device": device_name(picked.method.device),
        "n": len(picked.test),
        "reference_unit": reference,
        "reference_rate": base["server_rate"],
        "reference_runs": [
            {k: r[k] for k in ("rate", "met", "p99_ms")} for r in base["server_runs"]
        ],
        "runs": runs,
    }
    record_serving(results_dir, profile, unit.dataset, row, overload=True)
    benchmark.extra_info.update({"profile": profile.name, **row})
    for run in runs:
        assert run["answered"] + run["dropped"] == run["issued"], "a query was lost"
        assert run["peak_waiting"] <= plan.overload_queue, "more waited than the queue limit"
