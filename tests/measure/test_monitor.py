"""The utilisation monitor (geep.measure.monitor) on both of its branches: the CPU's, and the CUDA one
driven through a fake NVML and patched ``torch.cuda`` calls, so a wrong field or call name in
the GPU code fails here."""

from __future__ import annotations

import sys
import time
import types
from dataclasses import fields

import pytest
import torch

from geep.measure.monitor import Utilisation, UtilisationMonitor

MIB = 1024 * 1024


class FakeNvml(types.ModuleType):
    """The part of ``pynvml`` (nvidia-ml-py) the monitor uses: a GPU whose utilisation reads
    40 then 80 percent (then 80 on), with 100 then 300 MiB in use."""

    def __init__(self) -> None:
        super().__init__("pynvml")
        self.calls: list[str] = []
        self.readings = 0
        self.reset: list[torch.device] = []  # torch.cuda.reset_peak_memory_stats's calls

    def nvmlInit(self) -> None:
        self.calls.append("init")

    def nvmlShutdown(self) -> None:
        self.calls.append("shutdown")

    def nvmlDeviceGetHandleByIndex(self, index: int) -> str:
        self.calls.append(f"handle {index}")
        return f"gpu{index}"

    def nvmlDeviceGetUtilizationRates(self, handle: str) -> types.SimpleNamespace:
        assert handle == "gpu1"
        self.readings += 1
        return types.SimpleNamespace(gpu=40 if self.readings == 1 else 80, memory=0)

    def nvmlDeviceGetMemoryInfo(self, handle: str) -> types.SimpleNamespace:
        assert handle == "gpu1"
        return types.SimpleNamespace(used=(100 if self.readings == 1 else 300) * MIB)


@pytest.fixture
def fake_gpu(monkeypatch: pytest.MonkeyPatch) -> FakeNvml:
    nvml = FakeNvml()
    monkeypatch.setitem(sys.modules, "pynvml", nvml)
    monkeypatch.setattr(torch.cuda, "reset_peak_memory_stats", nvml.reset.append)
    monkeypatch.setattr(torch.cuda, "max_memory_allocated", lambda device: 64 * MIB)
    return nvml


def test_on_a_cuda_device_it_reads_nvml_and_torch_peak_memory(fake_gpu: FakeNvml) -> None:
    device = torch.device("cuda", 1)
    with UtilisationMonitor(device, interval=0.001) as monitor:
        deadline = time.monotonic() + 5
        while fake_gpu.readings < 3 and time.monotonic() < deadline:
            time.sleep(0.001)
    result = monitor.result
    assert fake_gpu.calls == ["init", "handle 1", "shutdown"] and fake_gpu.reset == [device]
    n = result.utilisation_samples
    assert n == fake_gpu.readings >= 3
    assert result.gpu_util_percent == pytest.approx((40 + 80 * (n - 1)) / n)
    assert result.gpu_memory_mib == 300 and result.torch_peak_memory_mib == 64
    assert result.cpu_util_percent is None


def test_on_a_cpu_it_gives_cpu_utilisation_and_no_gpu_fields(monkeypatch) -> None:
    monkeypatch.setattr(torch, "get_num_threads", lambda: 4)  # one busy thread of four
    with UtilisationMonitor(torch.device("cpu")) as monitor:
        end = time.process_time() + 0.05
        while time.process_time() < end:  # busy: the process's CPU time grows
            pass
    result = monitor.result
    assert [getattr(result, f.name) for f in fields(Utilisation)][:3] == [None, None, None]
    # about 25%: one busy thread of four (a little more where a second thread of the process runs)
    assert result.utilisation_samples == 0 and 0 < result.cpu_util_percent <= 30
