"""The shared fakes (tests/fakes.py) do what they stand for: the fake-GPU tensor mode marks what
the GPU holds, the graph fakes refuse what CUDA refuses, and the emulated kernels are the ones
CUDA_SOURCE declares."""

from __future__ import annotations

import inspect

import pytest
import torch

from geep.methods.exit_table import CUDA_SOURCE
from tests.fakes import EMULATED, GPU, FakeCuda, OnFakeGpu, kernel_signatures, on_gpu


def test_the_gpu_mode_marks_what_is_made_or_computed_on_the_gpu() -> None:
    with OnFakeGpu():
        made = torch.zeros(3, dtype=torch.int32, device=GPU)
        moved = torch.arange(3).to(GPU, torch.int64)
        plain = torch.arange(3)
        assert on_gpu(made) and on_gpu(moved) and on_gpu(made + 1) and on_gpu(plain.cuda())
        assert not on_gpu(plain) and not on_gpu(moved.cpu()) and on_gpu(moved)
        assert not on_gpu(moved.to("cpu")) and on_gpu(moved.to(torch.int32))
        assert moved.cpu().numpy().tolist() == [0, 1, 2]
        with pytest.raises(TypeError, match=r"Tensor\.cpu\(\)"):
            moved.numpy()


def test_the_fake_graphs_refuse_what_cuda_refuses(fake_cuda: FakeCuda) -> None:
    """The graph fakes bind the real signatures and refuse, as CUDA does, a host
    synchronisation inside a capture, a capture inside one, a second capture of one graph and a
    replay of a graph never captured."""
    with OnFakeGpu():
        x = torch.ones(3, device=GPU)
        pool = torch.cuda.graph_pool_handle()
        with pytest.raises(TypeError, match="mempool"):
            torch.cuda.graph(torch.cuda.CUDAGraph(), mempool=pool)
        with pytest.raises(TypeError):
            torch.cuda.CUDAGraph().replay(True)
        with pytest.raises(AssertionError, match="never captured"):
            torch.cuda.CUDAGraph().replay()
        for sync in (
            lambda: x.sum().item(),
            lambda: bool(x.all()),
            lambda: x[x > 0],
            lambda: x.cpu(),
            lambda: torch.cuda.synchronize(GPU),
        ):
            capture = torch.cuda.graph(torch.cuda.CUDAGraph(), pool=pool)
            with pytest.raises(RuntimeError, match="stream is capturing"), capture:
                sync()
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph, pool=pool):
            assert torch.cuda.is_current_stream_capturing()
            y = torch.nn.functional.relu(x + 1)  # run eagerly (a GPU runs it at each replay)
            inner = torch.cuda.graph(torch.cuda.CUDAGraph())
            with pytest.raises(AssertionError, match="capture inside a capture"), inner:
                pass
        assert on_gpu(y) and torch.equal(y.cpu(), torch.full((3,), 2.0))
        assert (
            graph.captured and graph.pool is pool and not torch.cuda.is_current_stream_capturing()
        )
        with pytest.raises(AssertionError, match="captured twice"), torch.cuda.graph(graph):
            pass
        graph.replay()
        assert graph.replays == 1
        side = torch.cuda.Stream()
        with torch.cuda.stream(side):
            assert torch.cuda.current_stream() is side
        assert torch.cuda.current_stream() is fake_cuda.default[GPU.index]
        assert isinstance(side, torch.cuda.Stream) and isinstance(graph, torch.cuda.CUDAGraph)


def test_the_emulated_kernels_are_the_sources() -> None:
    """The fake knows every kernel of CUDA_SOURCE, with its parameters' types in order."""
    assert kernel_signatures(CUDA_SOURCE) == {
        "exit_table_insert": [
            ("long long*", "keys"),
            ("long long*", "layers"),
            ("int*", "amounts"),
            ("long long", "n"),
            ("unsigned long long*", "table_keys"),
            ("int*", "counts"),
            ("long long", "capacity"),
            ("int", "bits"),
            ("int", "num_layers"),
            ("int*", "overflow"),
        ],
        "exit_table_lookup": [
            ("long long*", "keys"),
            ("long long", "n"),
            ("unsigned long long*", "table_keys"),
            ("long long", "capacity"),
            ("int", "bits"),
            ("long long*", "slots"),
        ],
    }
    for name, params in kernel_signatures(CUDA_SOURCE).items():
        assert list(inspect.signature(EMULATED[name]).parameters)[1:] == [p for _, p in params]
