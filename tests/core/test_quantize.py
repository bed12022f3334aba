"""Dynamic int8 (geep.core.quantize): every linear layer quantized, the original untouched, each
layer's answers within its int8 rounding of float32's, every method runnable."""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable
from pathlib import Path

import pytest
import torch
from torch import nn
from torch.ao.nn.quantized.dynamic import Linear as DynamicLinear

from geep.common.errors import GeepError
from geep.core.interface import Method
from geep.core.quantize import int8, is_int8
from geep.core.registry import method_names
from geep.data.encoding import Encoded
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


def linear_inputs(method: Method, data: Encoded) -> dict[str, list[torch.Tensor]]:
    """The input of every call of every ``nn.Linear`` of ``method``'s model while
    :func:`layer_logits` runs it on ``data``, by module name."""
    inputs: dict[str, list[torch.Tensor]] = defaultdict(list)

    def keep(name: str) -> Callable[[nn.Module, tuple[torch.Tensor, ...]], None]:
        return lambda module, args: inputs[name].append(args[0].detach().clone())

    modules = method.model.named_modules()
    hooks = [m.register_forward_pre_hook(keep(n)) for n, m in modules if isinstance(m, nn.Linear)]
    try:
        layer_logits(method, data)
    finally:
        for hook in hooks:
            hook.remove()
    return inputs


def int8_error_bound(x: torch.Tensor, linear: nn.Linear) -> torch.Tensor:
    """The largest |int8 - float32| that dynamic int8 allows on each output of ``linear(x)``.

    Weights: symmetric per tensor in 8 bits, a step s_w <= max|w| / 127. Activations: quantized
    per call (per batch) over the range [min(x, 0), max(x, 0)] in 8 bits, or in 7 bits where
    the kernel reduces the range (fbgemm does, to keep int16 pair sums from saturating on
    CPUs without VNNI): a step s_x <= range / 127 either way. Rounding moves each x by at most
    s_x / 2 and each w by at most s_w / 2, so output j of row x is off by at most
    s_x/2 |w_j|_1 + s_w/2 |x|_1 + K s_x s_w / 4 (K inputs). The int32 sum is exact; float32
    arithmetic (the reference's sum, int8's rescale and bias) rounds far below 1e-5 of
    |x| |w_j| + |b_j|.
    """
    x64, w = x.double(), linear.weight.detach().double()
    bias = linear.bias.detach().double().abs() if linear.bias is not None else 0.0
    half_step_w = w.abs().max() / 127 / 2
    half_step_x = (x64.max().clamp(min=0) - x64.min().clamp(max=0)) / 127 / 2
    rounding = half_step_x * w.abs().sum(1) + half_step_w * x64.abs().sum(-1, keepdim=True)
    rounding = rounding + x.shape[-1] * half_step_x * half_step_w
    return rounding + 1e-5 * (x64.abs() @ w.abs().T + bias)


@pytest.mark.kernels  # compares float outputs of torch's (CPU-dependent) quantized kernels
def test_every_int8_linear_stays_within_its_quantisation_steps(fastbert) -> None:
    """Each quantized linear layer, fed the input its float32 layer got in the trained model,
    answers within the error its int8 rounding allows (:func:`int8_error_bound`).

    The bound holds whichever kernel runs (8- or 7-bit activations, any CPU, any thread count),
    so the test never depends on the kernel; comparing the model's final logits instead would,
    since rounding errors compound through the layers by a kernel-dependent amount. A layer
    left in float32 would give exactly its float answers, hence the last check.
    """
    inputs = linear_inputs(fastbert, toy_test_split(fastbert))
    floats = dict(fastbert.model.named_modules())
    quantized = dict(int8(fastbert).model.named_modules())
    linears = [name for name, m in floats.items() if isinstance(m, nn.Linear)]
    assert sorted(inputs) == sorted(linears), "layer_logits skipped a linear layer"
    with torch.no_grad():
        for name in linears:
            for x in inputs[name]:
                want, got = floats[name](x), quantized[name](x)
                excess = ((got - want).double().abs() - int8_error_bound(x, floats[name])).max()
                assert excess <= 0, f"{name}: int8 is {float(excess):.3g} past its bound"
                assert not torch.equal(got, want), f"{name} was not quantized"


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
