"""The GPU check (geep.reproduce.gpu_check) in its dry run: the same code on the CPU at a tiny
size, so CI knows it starts; its trained check and the exits it hands to the methods check, its
hand-set exits, its comparison of exit tables and its CUDA-only parts (the datasheet model, the
refusal without a GPU) each shown able to fail."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

from geep.core.interface import Method
from geep.core.registry import get_method, method_names
from geep.methods.exit_table import ExitTable
from geep.pipeline import evaluate
from geep.report.results import write_report
from geep.reproduce import gpu_check
from geep.reproduce.gpu_check import DRY_SIZE, main, make_model, synthetic_split


@pytest.fixture(scope="module")
def dry_run(tmp_path_factory: pytest.TempPathFactory) -> dict:
    out = tmp_path_factory.mktemp("gpu-dry")
    assert main(["--dry-run", "--out", str(out), "--commit", "abc"]) == 0
    return json.loads((out / "gpu-check.json").read_text())


def test_the_dry_run_passes_every_check_and_writes_how_it_was_made(dry_run: dict) -> None:
    checks = {c["name"]: c for c in dry_run["checks"]}
    assert list(checks) == ["gpu-tests", "exit-table", "trained", "methods", "calibration"]
    assert dry_run["passed"] and all(c["passed"] for c in checks.values())
    assert dry_run["dry_run"] and dry_run["git_commit"] == "abc"
    assert dry_run["versions"]["torch"] == torch.__version__
    assert "skipped" in checks["gpu-tests"]["summary"]  # no CUDA here: the gpu tests skip


def test_every_method_runs_in_each_mode_and_batch_size_the_cpu_allows(dry_run: dict) -> None:
    """Every unit in float32 and bfloat16 eager at each batch size; CUDA graphs, which the CPU
    cannot run, are listed as not measured with the reason; each row names its mode."""
    checks = {c["name"]: c for c in dry_run["checks"]}
    methods = checks["methods"]["details"]
    rows = methods["rows"]
    units = {(r["method"], r["setting"], r["batching"]) for r in rows}
    assert {m for m, _, _ in units} == set(method_names())
    assert ("fastbert", "trained exits", "regroup") in units  # the trained check's exits
    assert ("geep", "trained exits", None) in units
    cells = {
        (r["method"], r["setting"], r["batching"], r["runtime"], r["batch_size"]) for r in rows
    }
    assert {(r["precision"], r["graphs"], r["runtime"]) for r in rows} == {
        ("float32", False, "float32 eager"),
        ("bfloat16", False, "bfloat16 eager"),
    }
    assert {r["batch_size"] for r in rows} == set(DRY_SIZE.batch_sizes)
    assert len(cells) == len(rows) == 2 * len(DRY_SIZE.batch_sizes) * len(units)
    skipped = methods["skipped"]  # each unit's CUDA graphs, with the reason
    assert len(skipped) == len(units) and all("bfloat16 + CUDA graphs: " in s for s in skipped)
    assert all(
        ("HashEE's layers run on each row's tokens" if s.startswith("hashee") else "need a CUDA")
        in s
        for s in skipped
    )
    full = [r for r in rows if r["setting"] == "full"]
    assert all(r["avg_exit_layer"] == DRY_SIZE.layers for r in full)
    cut = [min(DRY_SIZE.samples, DRY_SIZE.cell_batches * r["batch_size"]) for r in rows]
    assert [r["n"] for r in rows] == cut
    assert all(r["calls"] and r["operators"] and len(r["round_seconds"]) == 1 for r in rows)
    errors = checks["calibration"]["details"]["relative_error"]
    assert list(errors) == ["float32 eager", "bfloat16 eager"]
    others = [r for r in rows if r["method"] != "bert"]
    assert sum(len(e) for e in errors.values()) == len(others)  # the model predicted each cell


def test_the_report_of_a_dry_run_holds_every_cell_and_a_plot(dry_run: dict, tmp_path: Path) -> None:
    (tmp_path / gpu_check.CHECK_FILE).write_text(json.dumps(dry_run))
    assert write_report(tmp_path) == [tmp_path / "tables.md", tmp_path / "speedups.png"]
    tables = (tmp_path / "tables.md").read_text()
    checks = {c["name"]: c for c in dry_run["checks"]}
    rows = checks["methods"]["details"]["rows"] + checks["trained"]["details"]["rows"]
    assert sum(line.startswith("| `") for line in tables.splitlines()) == len(rows)
    assert "| `fastbert` | trained exits | regroup | bfloat16 eager |" in tables
    assert "| `pabee` | bfloat16 eager | " in tables  # the trained check's row
    assert "- hashee trained exits | bfloat16 + CUDA graphs: CUDA graphs cannot run" in tables


def test_the_trained_check_measures_every_method_in_each_mode_against_float32(
    dry_run: dict,
) -> None:
    """Every method trained and measured in float32 and bfloat16 eager; a float32 run changes
    nothing against itself; each bfloat16 row compares with its own method's float32 run; the
    exit shares kept are a distribution over the method's layers."""
    trained = {c["name"]: c for c in dry_run["checks"]}["trained"]["details"]
    rows = trained["rows"]
    assert [(r["method"], r["runtime"]) for r in rows] == [
        (m, mode) for m in method_names() for mode in ("float32 eager", "bfloat16 eager")
    ]
    by = {(r["method"], r["precision"]): r for r in rows}
    for name in method_names():
        float32, low = by[name, "float32"], by[name, "bfloat16"]
        assert float32["exit_changed"] == float32["label_changed"] == 0.0
        assert float32["float32_accuracy"] == float32["accuracy"] == low["float32_accuracy"]
        assert 0 <= low["label_changed"] <= 1 and low["n"] == DRY_SIZE.samples
        assert sum(trained["shares"][name]) == pytest.approx(1.0)
        assert len(trained["shares"][name]) == DRY_SIZE.layers
    assert by["bert", "float32"]["dev_speedup_full"] == 1.0
    assert len(trained["skipped"]) == len(method_names())  # CUDA graphs: no GPU here


def test_what_bfloat16_changes_is_counted_against_the_float32_run(
    tmp_path: Path, monkeypatch
) -> None:
    """A bfloat16 run that flips every label: all labels changed, no exit, and each accuracy
    is its own run's."""
    run = Method.run

    def flipped(self, *args, **kwargs):
        out = run(self, *args, **kwargs)
        if self.runtime.precision == "bfloat16":
            out.labels = 1 - out.labels
        return out

    monkeypatch.setattr(gpu_check, "method_names", lambda: ["bert"])
    monkeypatch.setattr(Method, "run", flipped)
    size = replace(DRY_SIZE, samples=40)
    bundle = gpu_check.synthetic_bundle(make_model(tmp_path, size), size)
    float32, low = gpu_check.check_trained(torch.device("cpu"), size, bundle).details["rows"]
    assert low["label_changed"] == 1.0 and low["exit_changed"] == 0.0
    assert low["accuracy"] == pytest.approx(1 - float32["accuracy"]) != float32["accuracy"]
    assert low["float32_accuracy"] == float32["accuracy"]


def test_the_setting_measured_is_the_one_nearest_2x_flops_on_dev(monkeypatch) -> None:
    results = [SimpleNamespace(speed=s, speedup_full=x) for s, x in [(0, 1), (1, 1.6), (2, 2.3)]]
    monkeypatch.setattr(evaluate, "sweep", lambda *args, **kwargs: (results, [], 4))
    method = SimpleNamespace(reference=False, default_speeds=lambda: [0, 1, 2])
    assert gpu_check.nearest_setting(method, None, 4) == (2, 2.3)
    assert gpu_check.nearest_setting(SimpleNamespace(reference=True), None, 4) == (0.0, 1.0)


def test_a_method_exits_where_its_trained_exits_are_mapped(tmp_path: Path, monkeypatch) -> None:
    """GEEP's predicted exits in the methods check land on the layers mapped for it, and a
    threshold method's mean exit follows a mapped mean too."""
    monkeypatch.setattr(gpu_check, "method_names", lambda: ["geep", "fastbert"])
    size = replace(DRY_SIZE, batch_sizes=(DRY_SIZE.samples,))  # every sample in one batch
    model = make_model(tmp_path, size)
    data, _ = synthetic_split(size, size.samples, seed=0, length=size.seq_len)
    exits = torch.tensor([1, 2] * (size.samples // 2))
    result = gpu_check.check_methods(
        torch.device("cpu"), size, model, data, {"geep": exits, "fastbert": exits}
    )
    rows = [r for r in result.details["rows"] if r["setting"] != "full"]
    assert {r["setting"] for r in rows} == {"trained exits"}
    geep = [r for r in rows if r["method"] == "geep" and r["batching"] is None]
    half = size.samples // 2
    assert [r["exit_histogram"] for r in geep] == [[half, half, 0]] * 2  # layers 1 and 2
    fastbert = [r["avg_exit_layer"] for r in rows if r["method"] == "fastbert"]
    assert len(fastbert) == 4 and all(abs(x - 1.5) < 0.5 for x in fastbert)  # not mid-depth, 2


def test_a_missing_bundle_fails_the_trained_check_in_one_line(tmp_path: Path, capsys) -> None:
    out = tmp_path / "out"
    argv = ["--dry-run", "--only", "trained", "--bundle", str(tmp_path / "none"), "--out", str(out)]
    assert main(argv) == 1
    (trained,) = json.loads((out / "gpu-check.json").read_text())["checks"]
    assert not trained["passed"] and "is not a GPU bundle" in trained["summary"]
    assert "python -m geep.reproduce.bundle --out" in trained["summary"]


def test_geeps_hand_made_table_predicts_each_samples_target_layer(tmp_path: Path) -> None:
    model = make_model(tmp_path, DRY_SIZE)
    data, targets = synthetic_split(DRY_SIZE, 40, seed=3)
    config = gpu_check.TrainConfig(seq_len=DRY_SIZE.seq_len)
    geep = get_method("geep").create(str(model), gpu_check.LABELS, "gpu-check", config)
    speed = gpu_check.hand_set(geep, DRY_SIZE, data)
    assert torch.equal(geep.predict_layers(data, speed), targets)
    assert len(targets.unique()) == DRY_SIZE.layers  # they spread over every layer


def test_a_table_that_loses_an_insert_fails_the_exit_table_check(monkeypatch) -> None:
    insert = ExitTable._insert

    def lossy(self, keys, layers, amounts):
        insert(self, keys[:-1], layers[:-1], amounts[:-1])

    monkeypatch.setattr(ExitTable, "_insert", lossy)
    result = gpu_check.check_exit_table(torch.device("cpu"), DRY_SIZE)
    assert not result.passed


def test_a_method_that_fails_fails_the_check_and_the_status(monkeypatch, tmp_path) -> None:
    def broken(*args, **kwargs):
        raise RuntimeError("boom")

    passed = gpu_check.CheckResult("gpu-tests", True, "-")
    monkeypatch.setattr(gpu_check, "run_gpu_tests", lambda dry_run: passed)
    monkeypatch.setattr(gpu_check, "method_names", lambda: ["pabee"])
    monkeypatch.setattr(get_method("pabee"), "run", broken)
    assert main(["--dry-run", "--out", str(tmp_path)]) == 1
    checks = json.loads((tmp_path / "gpu-check.json").read_text())["checks"]
    methods = next(c for c in checks if c["name"] == "methods")
    assert not methods["passed"]
    assert "pabee full | float32 eager | batch 1: RuntimeError: boom" in methods["summary"]


def test_without_cuda_it_refuses_in_one_line(monkeypatch, tmp_path, capsys) -> None:
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert main(["--out", str(tmp_path)]) == 2
    assert capsys.readouterr().err.strip().count("\n") == 0
    assert not (tmp_path / "gpu-check.json").exists()


def test_the_datasheet_model_is_the_gpus_float32_figures(monkeypatch) -> None:
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda device=None: "NVIDIA H200")
    model = gpu_check._datasheet(torch.device("cuda", 0))
    assert model.flops_per_second == pytest.approx(0.6 * 67e12)
    assert model.bytes_per_second == pytest.approx(0.8 * 4.8e12) and model.overlap
    assert model.bytes_scale == 1.0  # the check runs in float32, as its calls are counted
    assert gpu_check._datasheet(torch.device("cpu")) is None


def test_geep_report_regenerates_the_committed_gpu_tables(tmp_path: Path) -> None:
    committed = Path(__file__).parents[2] / "results" / "gpu-nvidia-h200"
    (tmp_path / gpu_check.CHECK_FILE).write_bytes((committed / gpu_check.CHECK_FILE).read_bytes())
    assert write_report(tmp_path) == [tmp_path / "tables.md"]
    assert (tmp_path / "tables.md").read_text() == (committed / "tables.md").read_text()
    assert "| `geep` | hand-set | - | 6.65 | 1.81x |" in (tmp_path / "tables.md").read_text()
