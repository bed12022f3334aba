"""The CUDA exit table (geep/methods/exit_table.py) on the fake GPU and the fake CuPy
(tests/fakes.py): the same table as the CPU backend's, compiled for its device, launched on
torch's stream, its overflow reported, refused without a CUDA device."""

from __future__ import annotations

import math
import random

import pytest
import torch

from geep.common.errors import GeepError
from geep.methods.exit_table import ExitTable
from tests.fakes import GPU, STREAM, FakeCuda, FakeCupy, on_gpu

L = 4


def test_cuda_table_equals_the_cpu_table(fake_cupy: FakeCupy, fake_cuda: FakeCuda) -> None:
    """_check_cuda, the current device's index, _cuda_insert (growth and rehash too), _launch
    and the lookup kernel: the same table as the CPU backend's."""
    rng = random.Random(1)
    gpu, cpu = ExitTable(L, capacity=16, device="cuda"), ExitTable(L, capacity=16)
    assert (gpu.backend, gpu.device) == ("cuda", GPU)
    assert on_gpu(gpu._keys) and on_gpu(gpu._counts)
    pool = [*range(30), 2**62 + 5, 2**63 - 1, *(rng.randrange(2**63) for _ in range(40))]
    for size in (6, 25, 90):
        batch = [rng.choice(pool) for _ in range(size)]
        args = [
            torch.tensor(batch),
            torch.tensor([rng.randint(1, L) for _ in batch]),
            torch.tensor([rng.randint(0, 3) for _ in batch]),
        ]
        gpu.add(*(a.cuda() for a in args))
        cpu.add(*args)
        assert (len(gpu), gpu.capacity) == (len(cpu), cpu.capacity)
    assert gpu.capacity > 16  # grew: the rehash ran through the insert kernel
    for mine, theirs in zip(gpu.items(), cpu.items(), strict=True):
        assert torch.equal(mine, theirs) and not on_gpu(mine)
    queries = torch.tensor([*pool, -1, -(2**63), 12345])
    rows = gpu.lookup(queries.cuda())
    assert on_gpu(rows) and rows.dtype == torch.int32
    assert torch.equal(rows.cpu(), cpu.lookup(queries))
    kernels = {launch["kernel"] for launch in fake_cupy.launches}
    assert kernels == {"exit_table_insert", "exit_table_lookup"}
    for launch in fake_cupy.launches:  # on torch's stream of the table's GPU, enough threads
        assert (launch["device"], launch["stream"]) == (1, STREAM + 1)
        assert launch["block"] == (256,) and launch["grid"] == (math.ceil(launch["n"] / 256),)
    assert fake_cupy.modules == [1]  # compiled once for the device
    assert fake_cuda.called("current_stream")[0] == {"device": GPU}


def test_from_samples_on_a_named_gpu_compiles_for_it(fake_cupy: FakeCupy) -> None:
    keys = torch.tensor([[5, 6, -1], [5, 7, 9], [6, -1, -1]])
    exits = torch.tensor([2, 4, 2])
    table = ExitTable.from_samples(keys.cuda(), exits.cuda(), L, device="cuda:0")
    assert table.device == torch.device("cuda", 0) and fake_cupy.modules == [0]
    cpu = ExitTable.from_samples(keys, exits, L)
    for mine, theirs in zip(table.items(), cpu.items(), strict=True):
        assert torch.equal(mine, theirs)
    assert {(x["device"], x["stream"]) for x in fake_cupy.launches} == {(0, STREAM)}


def test_a_full_cuda_table_reports_the_kernels_overflow(
    fake_cupy: FakeCupy, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(ExitTable, "_reserve", lambda self, num_keys: False)  # never grows
    table = ExitTable(L, capacity=16, device="cuda")
    with pytest.raises(GeepError, match="insert probed all 16 slots"):
        table.add(torch.arange(17).cuda(), torch.ones(17, dtype=torch.int64).cuda())


def test_cuda_table_without_a_cuda_device_is_refused(
    fake_cupy: FakeCupy, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(GeepError, match="torch sees no CUDA device"):
        ExitTable(L, device="cuda")
