"""geep/pipeline/evaluate.py's CUDA branch on the fake GPU (tests/fakes.py): a checkpoint is
prepared on the GPU."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from geep.core import interface as runner
from geep.pipeline import evaluate as evaluation
from tests.fakes import FakeCuda, OnFakeGpu, record_moves


def test_prepare_checkpoint_moves_the_method_to_the_gpu(
    bert: runner.Method, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, fake_cuda: FakeCuda
) -> None:
    bert.save(tmp_path / "bert")
    moves = record_moves(monkeypatch)
    with OnFakeGpu():
        method = evaluation.prepare_checkpoint(tmp_path / "bert")
    assert moves == [torch.device("cuda")]
    assert type(method).name == "bert"
