"""The Method interface's CUDA branches (geep/core/interface.py) on the fake GPU
(tests/fakes.py): timed batches synchronise the GPU, and an out-of-memory batch empties its
cache before it is halved."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch

from geep.common.errors import GeepError
from geep.core import interface as runner
from geep.core.runtime import Runtime
from tests.fakes import GPU, FakeCuda, FakeCupy, OnFakeGpu
from tests.helpers import new_method, toy_test_split


def test_timed_batches_synchronize_the_gpu(bert_on_gpu: runner.Method, fake_cuda: FakeCuda) -> None:
    data = toy_test_split(bert_on_gpu)
    with OnFakeGpu():
        out = bert_on_gpu.run(data, 0.0, 16)
    assert len(out.labels) == len(data) and len(out.batch_seconds) == 3
    # after every batch, and after the end of the batches is found
    assert fake_cuda.called("synchronize") == [{"device": GPU}] * 4


def test_out_of_memory_on_a_gpu_empties_its_cache(
    bert: runner.Method, monkeypatch: pytest.MonkeyPatch, fake_cuda: FakeCuda, capsys
) -> None:
    data = toy_test_split(bert)
    run = bert.run

    def limited(data, speed, batch_size, **kwargs):
        if min(batch_size, len(data)) > 4:
            raise torch.OutOfMemoryError("CUDA out of memory (simulated)")
        return run(data, speed, batch_size, **kwargs)

    monkeypatch.setattr(bert, "run", limited)
    assert bert.warm_up(data, 0.0, 16) == 4
    assert fake_cuda.called("empty_cache") == [{}, {}]  # after 16 and after 8
    assert "at batch size 8; trying 4" in capsys.readouterr().err
    monkeypatch.setattr(bert, "run", out_of_memory)
    with pytest.raises(GeepError, match="even at batch size 1"):
        bert.warm_up(data, 0.0, 2)
    assert len(fake_cuda.called("empty_cache")) == 4  # and after 2 and after 1


def out_of_memory(*args: Any, **kwargs: Any) -> None:
    raise torch.OutOfMemoryError("CUDA out of memory (simulated)")


GRAPHED = [("bert", ()), ("geep", ()), ("fastbert", ()), ("fastbert", ("batching=regroup",))]
GRAPHED += [("pabee", ()), ("deebert", ("batching=keep",)), ("geep", ("mode=dynamic",))]


@pytest.mark.parametrize(("name", "settings"), GRAPHED)
def test_cuda_graphs_capture_every_call_once_without_a_host_sync(
    name: str,
    settings: tuple[str, ...],
    tiny_model: Path,
    monkeypatch: pytest.MonkeyPatch,
    fake_cuda: FakeCuda,
    fake_cupy: FakeCupy,  # GEEP's exit table on the GPU
) -> None:
    """Under ``Runtime(graphs=True)`` on the fake GPU each call is warmed up on a side stream,
    captured by torch.cuda.graph (which refuses a host synchronisation inside it, as CUDA does)
    once per bucketed shape, and replayed once per call that moves a batch."""
    method = new_method(name, tiny_model, *settings)
    data = toy_test_split(method)
    if method.inference_of(method.options) == "predicted":
        method.keep_statistics(data, exit_layers=1 + torch.arange(len(data)) % method.num_layers)
    monkeypatch.setattr(type(method), "device", property(lambda self: GPU))
    speed = {"full-depth": 0.0, "predicted": 0.5}.get(method.inference_of(method.options), 0.0)
    speed = 1.0 if method.speed_reads == "patience" else speed
    method.use_runtime(Runtime(graphs=True))
    out = method.run(data, speed, 4)
    assert len(out.labels) == len(data)
    graphs = fake_cuda.graphs
    assert graphs and all(g.captured for g in graphs) and len(graphs) == method.graphs.captures
    assert len(fake_cuda.called("Stream")) == len(graphs)  # a warm-up stream per capture
    dynamic = method.inference_of(method.options) == "dynamic"
    replayed = ("embed", "layer") if dynamic else ("embed",)
    assert sum(g.replays for g in graphs) == sum(
        n for c, n in out.calls.items() if c.kind in replayed
    )
    assert "BertLayer" in {m for g in graphs for m in g.modules}
