"""The Method interface's CUDA branches (geep/core/interface.py) on the fake GPU
(tests/fakes.py): timed batches synchronise the GPU, and an out-of-memory batch empties its
cache before it is halved."""

from __future__ import annotations

from typing import Any

import pytest
import torch

from geep.common.errors import GeepError
from geep.core import interface as runner
from tests.fakes import GPU, FakeCuda, OnFakeGpu
from tests.helpers import toy_test_split


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
