"""The utilisation monitor (geep.measure.monitor) on both of its branches: the CPU's, and the
CUDA one driven through the fake NVML and patched ``torch.cuda`` calls (tests/fakes.py), so a
wrong field or call name in the GPU code fails here."""

from __future__ import annotations

import time
from dataclasses import fields

import pytest
import torch

from geep.measure.monitor import Utilisation, UtilisationMonitor
from tests.fakes import FakeNvml


def test_on_a_cuda_device_it_reads_nvml_and_torch_peak_memory(fake_nvml: FakeNvml) -> None:
    device = torch.device("cuda", 1)
    with UtilisationMonitor(device, interval=0.001) as monitor:
        deadline = time.monotonic() + 5
        while fake_nvml.readings < 3 and time.monotonic() < deadline:
            time.sleep(0.001)
    result = monitor.result
    assert fake_nvml.calls == ["init", "handle 1", "shutdown"] and fake_nvml.reset == [device]
    n = result.utilisation_samples
    assert n == fake_nvml.readings >= 3
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
