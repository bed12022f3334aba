"""ONNX Runtime (geep.core.onnx_runtime): ``bert`` as one graph and FastBERT as layer pieces give
torch float32's labels (and exits) where they are clear of a tie, their int8 is quantized and
stays close, the methods whose pieces cannot be exported are refused, and without the extra the
error names it."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from geep.common.errors import GeepError
from geep.core.interface import Method
from geep.core.onnx_runtime import OnnxGraph, onnx_pieces, onnx_whole
from tests.conftest import make_tiny_model
from tests.helpers import (
    FASTBERT_TOY,
    LOGIT_NOISE,
    assert_same_where_clear,
    layer_logits,
    mixed_split,
    new_method,
    spread_speed,
    top_two_gap,
    toy_test_split,
    trained_on_toy,
)

INT8_AGREEMENT = 0.85  # the least share of int8 labels equal to float32's on the toy task


@pytest.fixture(scope="module")
def onnx_extra() -> None:
    pytest.importorskip("onnxruntime")
    pytest.importorskip("onnxscript")


@pytest.fixture(scope="module")
def two_layers(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A 2-layer tiny model: fewer pieces to export."""
    return make_tiny_model(tmp_path_factory.mktemp("two-layers"), layers=2)


@pytest.fixture(scope="module")
def bert(two_layers: Path) -> Method:
    return trained_on_toy(new_method("bert", two_layers))


@pytest.fixture(scope="module")
def fastbert(two_layers: Path) -> Method:
    return trained_on_toy(new_method("fastbert", two_layers, **FASTBERT_TOY))


@pytest.fixture(scope="module")
def pieces(onnx_extra, fastbert: Method) -> Method:
    """FastBERT's float32 layer pieces, exported once (a batching option is set on a copy)."""
    return onnx_pieces(fastbert, mixed_split(fastbert))


def bert_logits(method: Method, data) -> torch.Tensor:
    with torch.no_grad():
        return method.model.logits(data.padded())


def test_bert_as_one_graph_gives_torch_labels_at_any_batch_size(onnx_extra, bert) -> None:
    data = toy_test_split(bert)
    runtime = onnx_whole(bert, data)
    assert isinstance(runtime.model.graph, OnnxGraph) and runtime.name == "bert"
    margin = top_two_gap(bert_logits(bert, data))
    for batch_size in (1, 7, 40):  # the traced batch had 2 rows: the axes are dynamic
        labels = runtime.run(data, 0.0, batch_size).labels
        expected = bert.run(data, 0.0, batch_size).labels
        assert_same_where_clear(labels, expected, margin, LOGIT_NOISE, f"batch {batch_size}")
    got, want = bert_logits(runtime, data), bert_logits(bert, data)
    assert torch.allclose(got, want, atol=1e-4), "float32 graph drifts from torch's logits"


def test_bert_in_int8_is_quantized_and_keeps_most_labels(onnx_extra, bert) -> None:
    data = toy_test_split(bert)
    runtime = onnx_whole(bert, data, "int8")
    got, want = bert_logits(runtime, data), bert_logits(bert, data)
    assert not torch.allclose(got, want, atol=1e-6), "int8 gives float32's logits: not quantized"
    assert (got - want).abs().max() < 0.5 * want.abs().max(), "int8 is far from float32"
    same = runtime.run(data, 0.0, 8).labels == bert.run(data, 0.0, 8).labels
    assert same.mean() >= INT8_AGREEMENT


def exit_margin(method: Method, data, exits: np.ndarray) -> torch.Tensor:
    """Each sample's top-two gap at its exit head [N]."""
    gaps = top_two_gap(layer_logits(method, data))  # [N, L]
    return gaps[torch.arange(len(data)), torch.from_numpy(exits.astype(int) - 1)]


@pytest.mark.parametrize("batching", ["shrink", "regroup", "keep"])
def test_fastbert_as_layer_pieces_exits_and_answers_as_torch(fastbert, pieces, batching):
    """Every piece runs in ONNX Runtime (no torch weight is left), driven by the exit loop: at a
    speed between the exit statistics (no decision near the threshold) every sample exits at
    torch's layer, with torch's label wherever that is clear of a tie; every head's logits are
    torch's within float32 rounding (1e-3: the kernels differ by 1e-5 at most)."""
    data = mixed_split(fastbert)
    runtime = pieces
    for method in (fastbert, runtime):
        method.configure([f"batching={batching}"])
    assert not list(runtime.model.parameters()), "a piece still runs in torch"
    assert list(fastbert.model.parameters()), "the original lost its weights"
    # every head after every layer, on one padded batch: float32 rounding apart, torch's logits
    got, want = layer_logits(runtime, data), layer_logits(fastbert, data)
    assert torch.allclose(got, want, atol=1e-3), "a piece is not its torch module"
    speed = spread_speed(fastbert, data)
    want, got = fastbert.run(data, speed, 8), runtime.run(data, speed, 8)
    assert len(set(want.exit_layers)) > 1, "every sample exits alike: nothing is tested"
    assert np.array_equal(got.exit_layers, want.exit_layers), "an exit moved"
    margin = exit_margin(fastbert, data, want.exit_layers)
    assert_same_where_clear(got.labels, want.labels, margin, LOGIT_NOISE, "label")
    assert np.array_equal(got.flops_full, want.flops_full)


def test_fastbert_pieces_in_int8_are_quantized_and_keep_most_labels(onnx_extra, fastbert):
    fastbert.configure(["batching=shrink"])
    data = mixed_split(fastbert)
    runtime = onnx_pieces(fastbert, data, "int8")
    floats, quantized = layer_logits(fastbert, data), layer_logits(runtime, data)
    assert not torch.allclose(quantized, floats, atol=1e-6), "not quantized"
    same = runtime.run(data, 0.0, 8).labels == fastbert.run(data, 0.0, 8).labels
    assert same.mean() >= INT8_AGREEMENT


def test_what_cannot_be_exported_so_is_refused(onnx_extra, two_layers, bert, fastbert) -> None:
    data = toy_test_split(bert)
    with pytest.raises(GeepError, match="is called with more than tensors"):
        onnx_pieces(new_method("pabee", two_layers), data)  # its heads take a layer number
    with pytest.raises(GeepError, match="does not exit through the dynamic-exit loop"):
        onnx_pieces(new_method("hashee", two_layers), data)  # parts of layers, on some tokens
    with pytest.raises(GeepError, match="does not exit through the dynamic-exit loop"):
        onnx_pieces(bert, data)
    with pytest.raises(GeepError, match="not a full-depth classifier"):
        onnx_whole(fastbert, data)
    with pytest.raises(GeepError, match="fp32 or int8"):
        onnx_whole(bert, data, "int4")
    with pytest.raises(GeepError, match="at least two samples"):
        onnx_whole(bert, data.select(torch.tensor([0])))


def test_without_the_extra_the_error_names_it(bert, monkeypatch) -> None:
    monkeypatch.setitem(sys.modules, "onnxruntime", None)  # import fails as if not installed
    with pytest.raises(GeepError, match=r"pip install 'geep\[onnx\]'") as caught:
        onnx_whole(bert, toy_test_split(bert))
    assert "\n" not in str(caught.value)
