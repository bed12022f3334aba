"""The GPU check (geep/reproduce/gpu_check.py) without --dry-run, on the fake GPU and the fake
CuPy (tests/fakes.py): every method runs in every mode, CUDA graphs captured and replayed, and
run_checks writes the GPU's name and the datasheet model."""

from __future__ import annotations

import json
from dataclasses import asdict, replace
from pathlib import Path
from typing import Any

import pytest

from geep.core import interface as runner
from geep.reproduce import gpu_check
from geep.reproduce.gpu_check import DRY_SIZE
from tests.fakes import GPU, NAME, STREAM, FakeCuda, FakeCupy, FakeNvml


def test_the_check_on_a_gpu_writes_its_name_and_the_datasheet_model(
    tmp_path: Path,
    fake_cupy: FakeCupy,
    fake_cuda: FakeCuda,
    fake_nvml: FakeNvml,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """run_checks without --dry-run on the fake GPU (at DRY_SIZE): the current device, the CUDA
    exit table against the CPU's, every method in every mode (CUDA graphs captured and
    replayed), the calibration per mode (float32 eager also reaches _datasheet: the fake's name
    holds "H200"); gpu-check.json names the GPU."""
    small = replace(
        DRY_SIZE, table_keys=500, calibration_lengths=(6,), batch_sizes=(4,)
    )  # 3 calibration points
    monkeypatch.setattr(gpu_check, "GPU_SIZE", small)
    monkeypatch.setattr(runner.Method, "device", property(lambda self: GPU))
    table_syncs = []  # the synchronisations of the exit-table check
    check_exit_table = gpu_check.check_exit_table

    def spied(*args: Any, **kwargs: Any) -> gpu_check.CheckResult:
        before = len(fake_cuda.called("synchronize"))
        result = check_exit_table(*args, **kwargs)
        table_syncs.extend(fake_cuda.called("synchronize")[before:])
        return result

    monkeypatch.setattr(gpu_check, "check_exit_table", spied)
    only = ("exit-table", "methods", "calibration")
    _, path = gpu_check.run_checks(dry_run=False, out=tmp_path, commit="x", only=only)
    assert path == tmp_path / gpu_check.CHECK_FILE
    document = json.loads(path.read_text())
    checks = {c["name"]: c for c in document["checks"]}
    assert list(checks) == list(only) and all(c["passed"] for c in checks.values()), checks
    assert document["passed"] and not document["dry_run"] and document["device"] == NAME
    assert document["versions"]["cupy"] == fake_cupy.__version__
    assert checks["exit-table"]["details"]["backend"] == "cuda"
    assert table_syncs == [{"device": GPU}]  # before the CUDA table's time is read
    assert {(x["device"], x["stream"]) for x in fake_cupy.launches} == {(1, STREAM + 1)}
    rows = checks["methods"]["details"]["rows"]
    assert {r["runtime"] for r in rows} == {m.label for m in gpu_check.MODES}
    graphed = [r for r in rows if r["graphs"]]
    assert {r["method"] for r in graphed} == set(gpu_check.method_names()) - {"hashee"}
    assert fake_cuda.graphs and all(g.captured for g in fake_cuda.graphs)
    assert sum(g.replays for g in fake_cuda.graphs) > len(fake_cuda.graphs)
    models = checks["calibration"]["details"]["models"]
    assert set(models) == {m.label for m in gpu_check.MODES} | {"float32 datasheet"}
    fitted = models["bfloat16 + CUDA graphs"]
    assert fitted["name"] == f"{NAME} (bfloat16 + CUDA graphs)" and fitted["overlap"]
    datasheet = models["float32 datasheet"]
    assert datasheet["name"] == f"{NAME}, float32 (modelled)" and datasheet["overlap"]
    assert datasheet["flops_per_second"] == pytest.approx(0.6 * 67e12)
    assert datasheet["bytes_per_second"] == pytest.approx(0.8 * 4.8e12)
    assert document["size"] == json.loads(json.dumps(asdict(small)))
    assert fake_cuda.called("current_device") == [{}]  # run_checks' device: cuda:1
    for name in ("get_device_name", "synchronize"):
        assert fake_cuda.called(name) and {str(a) for a in fake_cuda.called(name)} == {
            str({"device": GPU})
        }
    assert f"on {NAME}" in (tmp_path / "tables.md").read_text()
