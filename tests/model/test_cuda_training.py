"""Training's CUDA branches (geep/model/train_state.py, geep/model/training.py) on the fake GPU
(tests/fakes.py): accelerate is asked for the GPU, and a saved training state keeps every GPU's
random generator."""

from __future__ import annotations

import inspect
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import torch

from geep.model import train_state, training
from tests.fakes import FakeCuda
from tests.helpers import new_method, trained_on_toy


def spy_on(cls: type, calls: list[dict[str, Any]]) -> Callable[..., Any]:
    """``cls`` as a callable that checks its arguments against ``cls``'s own signature and
    records them, then builds the real thing for the CPU (there is no GPU to ask for)."""

    def build(*args: Any, **kwargs: Any) -> Any:
        calls.append(dict(inspect.signature(cls).bind(*args, **kwargs).arguments))
        return cls(*args, **{**kwargs, "cpu": True})

    return build


def test_this_process_asks_accelerate_for_the_gpu(
    monkeypatch: pytest.MonkeyPatch, fake_cuda: FakeCuda
) -> None:
    calls: list[dict[str, Any]] = []
    monkeypatch.setattr(train_state, "PartialState", spy_on(train_state.PartialState, calls))
    train_state.this_process()
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    train_state.this_process()
    assert [c.get("cpu") for c in calls] == [False, True]


def test_train_loop_asks_accelerate_for_the_gpu(
    tiny_model: Path, monkeypatch: pytest.MonkeyPatch, fake_cuda: FakeCuda
) -> None:
    calls: list[dict[str, Any]] = []
    monkeypatch.setattr(training, "Accelerator", spy_on(training.Accelerator, calls))
    method = new_method("bert", tiny_model, epochs=1)
    trained_on_toy(method)
    assert [c.get("cpu") for c in calls] == [False]
    # AdamW's step asks torch.accelerator whether a graph is being captured: the fake answers
    assert fake_cuda.called("accelerator.current_stream")


def test_training_state_keeps_every_gpus_generator(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    state = train_state.TrainState(tmp_path / "state", {"run": 1}, every_s=0.0)
    fake_cuda = FakeCuda(monkeypatch)  # after the state found its (CPU) process
    saved = [s.clone() for s in fake_cuda.rng]
    model = torch.nn.Linear(2, 2)
    progress = {"desc": "train", "steps": 1, "total": 2, "done": False}
    state.save(0, progress, [0.5], model)
    fake_cuda.rng = [torch.zeros(16, dtype=torch.uint8)] * 2  # the generators moved on
    state.restore(model)
    assert fake_cuda.called("get_rng_state_all") == [{}]
    assert [torch.equal(a, b) for a, b in zip(fake_cuda.rng, saved, strict=True)] == [True] * 2
