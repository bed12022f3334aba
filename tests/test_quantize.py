"""Dynamic int8 (geep.quantize): every linear layer quantized, the original untouched, answers
close to float32's, every method runnable."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from torch import nn
from torch.ao.nn.quantized.dynamic import Linear as DynamicLinear

from geep.errors import GeepError
from geep.quantize import int8, is_int8
from geep.runner import Method, method_names
from tests.helpers import layer_logits, new_method, toy_test_split, trained_on_toy


@pytest.fixture(scope="module")
def fastbert(tiny_model: Path) -> Method:
    return trained_on_toy(new_method("fastbert", tiny_model))


def test_every_linear_layer_is_quantized_and_the_original_is_untouched(fastbert) -> None:
    before = {k: v.clone() for k, v in fastbert.model.state_dict().items()}
    linears = sum(isinstance(m, nn.Linear) for m in fastbert.model.modules())
    quantized = int8(fastbert)
    assert is_int8(quantized) and not is_int8(fastbert)
    assert sum(isinstance(m, DynamicLinear) for m in quantized.model.modules()) == linears
    assert not any(type(m) is nn.Linear for m in quantized.model.modules())
    after = fastbert.model.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before), "int8 changed the original"
    assert quantized.info.options == fastbert.info.options


def test_int8_answers_stay_close_to_float32(fastbert) -> None:
    """Dynamic int8 rounds each weight to 1/127 of its tensor's largest: every head's logits
    move, but far less than their range."""
    data = toy_test_split(fastbert)
    want = layer_logits(fastbert, data)  # [N, L, C]
    got = layer_logits(int8(fastbert), data)
    assert (got - want).abs().max() < 0.05 * (want.max() - want.min())
    assert not torch.equal(got, want), "nothing was quantized"


@pytest.mark.parametrize("name", method_names())
def test_every_method_runs_in_int8(name, tiny_model: Path) -> None:
    method = new_method(name, tiny_model)
    if name in ("geep", "hashee"):
        method = trained_on_toy(method)  # their exits need statistics of the training data
    data = toy_test_split(method)
    speed = method.default_speeds()[len(method.default_speeds()) // 2]
    out = int8(method).run(data, speed, 8)
    assert (out.labels >= 0).all() and len(out.labels) == len(data)


def test_int8_on_a_gpu_is_refused(fastbert, monkeypatch) -> None:
    monkeypatch.setattr(type(fastbert), "device", property(lambda self: torch.device("cuda")))
    with pytest.raises(GeepError, match="CPU only"):
        int8(fastbert)
