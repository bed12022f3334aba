"""The benchmark harness on a GPU, through the fakes (tests/fakes.py): the device's name
(geep/reproduce/units.py), a GPU for each xdist worker, the latency calibration and the fit
geep/report/results.py makes of it, and GEEP's exit-table benchmark on the CUDA table."""

from __future__ import annotations

import inspect
import json
import types
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
import torch

import benchmarks.conftest as bench_conftest
import benchmarks.test_geep_efficiency as efficiency
import benchmarks.test_latency_calibration as calibration
from geep.common.config import TrainConfig
from geep.core import interface as runner
from geep.report import results as report
from geep.reproduce.units import device_name
from tests.fakes import GPU, NAME, FakeCuda, FakeCupy, OnFakeGpu, record_moves
from tests.helpers import new_method, toy_test_split, trained_on_toy


def test_device_name_of_a_gpu_is_cudas_name(fake_cuda: FakeCuda) -> None:
    assert device_name(GPU) == NAME
    assert fake_cuda.called("get_device_name") == [{"device": GPU}]


def test_each_xdist_worker_takes_a_gpu_of_its_own(
    monkeypatch: pytest.MonkeyPatch, fake_cuda: FakeCuda
) -> None:
    monkeypatch.setenv("PYTEST_XDIST_WORKER", "gw3")
    monkeypatch.setenv("PYTEST_XDIST_WORKER_COUNT", "4")
    bench_conftest.pytest_configure(None)
    assert fake_cuda.called("set_device") == [{"device": 1}]  # worker 3 of 4 on 2 GPUs


def test_calibration_on_a_gpu_is_fitted_with_overlap(
    tiny_model: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, fake_cuda: FakeCuda
) -> None:
    """The latency calibration moves its model to the GPU and names the GPU and the cuda
    backend; the report then fits the model of a GPU (overlap=True) on its points."""
    profile = types.SimpleNamespace(
        name="fake",
        datasets=("toy",),
        seeds=(42,),
        max_eval=None,
        model_for=lambda dataset: str(tiny_model),
        train_config=lambda method, dataset, seed: TrainConfig(seq_len=16),
    )
    labels = types.SimpleNamespace(names=["negative", "positive"])
    dev = {"dev": types.SimpleNamespace(features={"label": labels})}
    monkeypatch.setattr(calibration, "load_dataset", lambda dataset: dev)
    monkeypatch.setattr(
        calibration,
        "load_split",
        lambda method, *args: types.SimpleNamespace(data=toy_test_split(method)),
    )
    monkeypatch.setattr(calibration, "SIZES", (1, 4))  # six points: enough to fit, quick
    moves = record_moves(monkeypatch)
    monkeypatch.setattr(runner.Method, "device", property(lambda self: GPU))
    with OnFakeGpu():
        measured = calibration.Calibration(profile)
        measured.time_round()
    assert moves == [torch.device("cuda")]
    assert (measured.header["device"], measured.header["backend"]) == (NAME, "cuda")
    path = tmp_path / report.CALIBRATION_FILE
    measured.write(path)

    fits = []
    real_fit = report.fit_device

    def fit(*args: Any, **kwargs: Any) -> Any:
        fits.append(inspect.signature(real_fit).bind(*args, **kwargs).arguments)
        return real_fit(*args, **kwargs)

    monkeypatch.setattr(report, "fit_device", fit)
    point = json.loads(path.read_text())["points"][0]
    frame = pd.DataFrame(
        {
            "method": ["bert"],
            "reference": [True],
            "dataset": ["toy"],
            "seed": [42],
            "calls": [point["calls"]],
            "operators": [point["operators"]],
            "round_seconds_median": [point["seconds"]],
            "git_commit": ["c1"],
        }
    )
    out, device = report.with_latency_model(frame, tmp_path)
    assert [(f["name"], f["overlap"]) for f in fits] == [(NAME, True)]
    assert device is not None and np.isfinite(out["modelled_seconds"]).all()


class FakeBenchmark:
    """pytest-benchmark's fixture, as far as the harness uses it: runs ``fn`` once."""

    def __init__(self) -> None:
        self.extra_info: dict[str, Any] = {}
        self.stats = types.SimpleNamespace(stats=types.SimpleNamespace(median=1e-3))

    def pedantic(self, fn: Callable[[], object], **kwargs: Any) -> None:
        fn()


@pytest.fixture(scope="module")
def geep_method(tiny_model: Path) -> runner.Method:
    return trained_on_toy(new_method("geep", tiny_model, epochs=1))


def test_exit_table_rates_on_a_gpu_use_the_cuda_table_and_synchronize(
    geep_method: runner.Method,
    fake_cupy: FakeCupy,
    fake_cuda: FakeCuda,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """GEEP's exit-table benchmark on a GPU: both tables on the device, the CUDA one built and
    probed by the kernels, every timed lookup synchronized."""
    geep = geep_method
    monkeypatch.setattr(type(geep), "device", property(lambda self: GPU))
    benchmark = FakeBenchmark()
    efficiency.test_exit_table_rates(benchmark, geep, toy_test_split(geep), {"method": "geep"})
    info = benchmark.extra_info
    assert info["table_keys"] == len(geep.exit_table(0.4)) > 0 and info["lookup_keys"] > 0
    assert geep.exit_table(0.4).backend == "cuda"
    assert {x["kernel"] for x in fake_cupy.launches} == {"exit_table_insert", "exit_table_lookup"}
    assert fake_cuda.called("synchronize") == [{"device": GPU}] * 21  # the lookup, 20 dense
