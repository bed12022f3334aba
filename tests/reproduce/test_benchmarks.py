"""The benchmark harness end to end on the smoke profile: every method's pytest-benchmark entries
carry the measurements, the run files feed `geep report`, and the notebook re-draws them."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import nbformat
import pytest
from nbclient import NotebookClient

from benchmarks.test_serving import AGREEMENT
from geep.cli import main
from geep.core.onnx_runtime import onnx_available
from geep.core.registry import method_names

ROOT = Path(__file__).resolve().parents[2]
EXTRA_INFO = {
    "method",
    "dataset",
    "speed",
    "batch_size",
    "accuracy",
    "macro_f1",
    "flops_fastbert",
    "flops_full",
    "speedup",
    "speedup_full",
    "avg_exit_layer",
    "exit_histogram",
    "latency_ms_p50",
    "latency_ms_p95",
    "throughput",
    "gpu_util_percent",
    "gpu_memory_mib",
    "cpu_util_percent",
    "flops_executed_full",
    "layer_batches",
    "mean_layer_batch_rows",
    "head_calls",
    "head_rows",
}

pytestmark = pytest.mark.slow


def checkout_extras() -> set[str]:
    """What the checkout holds that git does not track, ignored files too (bytecode aside)."""
    status = subprocess.run(
        ["git", "status", "--porcelain", "--ignored"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=True,
    ).stdout.splitlines()
    return {line[3:] for line in status if line[:2] in ("??", "!!") and "__pycache__" not in line}


@pytest.fixture(scope="module")
def smoke(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict]:
    """``GEEP_PROFILE=smoke pytest benchmarks/ --benchmark-json out.json`` as a user runs it,
    with no results folder named: the run files go to the temporary folder (``$TMPDIR``, here
    a test folder). Also returns what the run added to the checkout."""
    out = tmp_path_factory.mktemp("smoke")
    env = {k: v for k, v in os.environ.items() if k != "GEEP_RESULTS"}
    env |= {"GEEP_PROFILE": "smoke", "TMPDIR": str(out)}
    env["GEEP_ENCODING_ROWS"] = "2000"  # the large-split benchmark, small
    command = [sys.executable, "-m", "pytest", "benchmarks/", "-q", "-p", "no:cacheprovider"]
    before = checkout_extras()
    done = subprocess.run(
        [*command, "--benchmark-json", str(out / "out.json")],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    added = checkout_extras() - before
    results = out / "geep-results" / "smoke"
    assert f"geep: run files in {results}" in done.stdout
    return results, json.loads((out / "out.json").read_text()), added


def test_a_benchmark_run_writes_nothing_into_the_checkout(smoke) -> None:
    *_, added = smoke
    assert not added, f"the smoke benchmarks left {sorted(added)} in the checkout"


def test_every_method_has_the_measurements(smoke) -> None:
    _, report, _ = smoke
    units = [b["extra_info"] for b in report["benchmarks"] if b["name"].startswith("test_unit")]
    assert {info["method"] for info in units} == set(method_names())
    for info in units:
        assert set(info) >= EXTRA_INFO, EXTRA_INFO - set(info)
        assert info["gpu_util_percent"] is None and info["cpu_util_percent"] > 0
        assert sum(info["exit_histogram"]) == info["n"]
        assert info["flops_executed_full"] >= info["flops_full"]  # padding is executed too
        assert info["head_rows"] >= info["n"] and 0 < info["mean_layer_batch_rows"] <= 32
    dynamic = {"fastbert", "deebert", "pabee"}
    ran = {(info["method"], info["batching"]) for info in units}
    expected = {(m, b) for m in dynamic for b in ("shrink", "regroup")}
    assert ran == expected | {(m, None) for m in set(method_names()) - dynamic}
    # a setting under both policies: regrouped, no more layer calls (at most one partial call
    # per layer), so fuller ones
    by_unit = {(i["method"], i["setting"], i["batching"]): i for i in units}
    for (method, setting, batching), regrouped in by_unit.items():
        if batching == "regroup":
            shrunk = by_unit[method, setting, "shrink"]
            assert regrouped["layer_batches"] <= shrunk["layer_batches"]
            assert regrouped["mean_layer_batch_rows"] >= shrunk["mean_layer_batch_rows"]


def test_every_method_is_served_in_every_loadgen_scenario(smoke) -> None:
    """The smoke profile's serving plan: every method (the dynamic-exit ones under every
    batching policy), ``bert`` in float32 and int8 and the best variant in int8, each with
    LoadGen's summary of its accuracy, SingleStream, Offline and Server runs."""
    results, *_ = smoke
    document = json.loads((results / "serving" / "rotten-tomatoes.json").read_text())
    rows = {row["unit"]: row for row in document["rows"]}
    served = {(r["method"], r["batching"], r["precision"]) for r in rows.values()}
    dynamic = {"fastbert", "deebert", "pabee"}
    expected = {(m, b, "fp32") for m in dynamic for b in ("shrink", "regroup", "keep")}
    expected |= {(m, None, "fp32") for m in set(method_names()) - dynamic}
    best = rows["rotten-tomatoes-best-int8-matched"]
    assert (best["method"], best["batching"], "fp32") in expected - {("bert", None, "fp32")}
    int8 = {
        ("bert", None, "int8"),
        ("geep", None, "int8"),
        (best["method"], best["batching"], "int8"),
    }
    assert served == expected | int8
    runtimes = {(r["method"], r["runtime"], r["precision"]) for r in rows.values()}
    assert ("bert", "onnx", "int8") in runtimes or not onnx_available()  # one graph, int8
    for row in rows.values():  # int8 and ONNX Runtime units are checked against float32 torch
        if (row["runtime"], row["precision"]) != ("torch", "fp32"):
            assert row["fp32_agreement"] >= AGREEMENT[row["precision"]], row["unit"]
    for unit, row in rows.items():
        logs = results / "serving" / "logs" / "rotten-tomatoes" / unit
        runs = {path.parent.name for path in logs.glob("*/mlperf_log_summary.txt")}
        assert {"accuracy", "SingleStream", "Offline"} <= runs, unit
        assert {f"Server-{run['rate']:.1f}" for run in row["server_runs"]} <= runs, unit
        assert len(row["server_runs"]) == 2 and row["n"] == 64  # the plan's rate steps, samples
        for run in runs - {"accuracy"}:  # an accuracy run's summary holds no figures
            summary = (logs / run / "mlperf_log_summary.txt").read_text()
            assert f"Scenario : {run.split('-')[0]}" in summary, (unit, run)
        if row["precision"] == "fp32":  # dynamic int8 scales each batch by its own range
            assert row["served_agreement"] >= 0.95, unit  # LoadGen's labels are evaluate's
        assert row["offline_samples_per_s"] > 0 and row["single_stream_p90_ms"] > 0


def test_report_and_notebook_draw_the_runs(smoke, capsys, monkeypatch) -> None:
    results, *_ = smoke
    assert main(["report", str(results)]) == 0
    written = capsys.readouterr().out.split()
    names = {Path(p).name for p in written}
    assert {"results.csv", "tables.md", "realised-speedup.png"} <= names
    assert "speed-accuracy-rotten-tomatoes.png" in names
    assert "modelled-speedup-rotten-tomatoes.png" in names  # the smoke run calibrates the model
    assert "paper-regime.png" in names  # modelled from every row's exits (geep.measure.regime)
    assert "serving-rotten-tomatoes.png" in names  # the serving benchmark's p99 plot
    assert "## Latency model" in (results / "tables.md").read_text()
    assert "## The paper's regime, modelled" in (results / "tables.md").read_text()
    assert "| tokenizing | " in (results / "tables.md").read_text()  # the encoding benchmark
    assert "## Serving under load (MLPerf LoadGen)" in (results / "tables.md").read_text()
    tables = (results / "tables.md").read_text()
    assert all(f"`{m}`" in tables for m in method_names())
    notebook = nbformat.read(ROOT / "notebooks" / "figures.ipynb", as_version=4)
    monkeypatch.setenv("GEEP_RESULTS", str(results))  # the kernel inherits it
    NotebookClient(notebook, timeout=300, resources={"metadata": {"path": str(ROOT)}}).execute()
    images = [
        o
        for cell in notebook.cells
        if cell.cell_type == "code"
        for o in cell.outputs
        if "image/png" in o.get("data", {})
    ]
    assert len(images) == 4  # speed-accuracy, modelled speedup (one dataset), realised, regime


# --- the units spread over pytest-xdist workers -------------------------------------------------

TIMING = {  # what a unit measures about the machine, not the model: differs run to run
    "throughput",
    "latency_ms_p50",
    "latency_ms_p95",
    "gpu_util_percent",
    "gpu_memory_mib",
    "torch_peak_memory_mib",
    "cpu_util_percent",
    "utilisation_samples",
    "round_seconds",
    "round_seconds_median",
}


def smoke_units(results: Path, *workers: str) -> subprocess.CompletedProcess:
    """The smoke profile's units of GEEP and FastBERT (predicted exits, and dynamic exits under
    two policies) and its latency calibration, one thread per process."""
    env = {**os.environ, "GEEP_PROFILE": "smoke", "GEEP_RESULTS": str(results)}
    env["OMP_NUM_THREADS"] = "1"  # as each of two workers gets on 2 cores: the same kernels
    command = [sys.executable, "-m", "pytest", "benchmarks/test_methods.py"]
    command += ["benchmarks/test_latency_calibration.py", "-p", "no:cacheprovider"]
    command += ["-k", "geep or fastbert or latency_calibration", *workers]
    done = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    return done


def recorded_rows(results: Path) -> dict[str, list[dict]]:
    """Every run file's rows without their timings, and the calibration's points' shapes."""
    rows = {
        str(path.relative_to(results)): [
            {k: v for k, v in row.items() if k not in TIMING}
            for row in json.loads(path.read_text())["rows"]
        ]
        for path in sorted((results / "runs").rglob("*.json"))
    }
    calibration = json.loads((results / "latency-calibration.json").read_text())
    rows["calibration"] = [
        {k: v for k, v in point.items() if k != "seconds"} for point in calibration["points"]
    ]
    return rows


def test_two_workers_record_the_rows_of_one(tmp_path: Path) -> None:
    smoke_units(tmp_path / "one", "-q")
    done = smoke_units(tmp_path / "two", "-n", "2", "--dist", "loadgroup", "-v")
    assert "[gw0]" in done.stdout and "[gw1]" in done.stdout  # both workers ran units
    one, two = recorded_rows(tmp_path / "one"), recorded_rows(tmp_path / "two")
    assert sorted(one) == [
        "calibration",
        "runs/rotten-tomatoes/fastbert-seed42.json",
        "runs/rotten-tomatoes/geep-seed42.json",
    ]
    assert sum(len(rows) for rows in one.values()) > 10
    assert one == two
    assert not list((tmp_path / "two").rglob(".*.tmp")), "a temporary was left behind"
