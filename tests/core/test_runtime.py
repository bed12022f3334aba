"""Inference precision and CUDA graphs (geep/core/runtime.py): graphed inference answers as eager
inference does, at bucketed shapes whose padding the work counters see, on trained checkpoints
of every method that graphs; bfloat16 runs for real on the CPU; what cannot run is refused.

Graphed and eager runs use the same kernels and their labels are compared where the logits'
margin is clear, so only the bfloat16 tests are run again under other CPU kernels."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from geep.common.errors import GeepError
from geep.core.interface import Method
from geep.core.runtime import GraphRunner, Runtime, row_bucket, token_bucket
from geep.measure import work
from geep.measure.work import work_counts
from geep.pipeline.evaluate import float32_copy, precision_changes
from tests.fakes import ReplayingGraphs
from tests.helpers import (
    FASTBERT_TOY,
    LOGIT_NOISE,
    assert_same_where_clear,
    layer_logits,
    mixed_split,
    new_method,
    spread_exit_labels,
    spread_speed,
    top_two_gap,
    trained_on_toy,
)

CASES = {
    "bert": (),
    "geep": (),
    "fastbert": (),
    "fastbert-regroup": ("batching=regroup",),
    "fastbert-keep": ("batching=keep",),
    "deebert": (),
    "pabee": (),
    "geep-dynamic": ("mode=dynamic",),
}


@pytest.fixture(scope="module", params=list(CASES))
def trained(request, tiny_model: Path) -> Method:
    name = request.param.split("-")[0]
    recipe = FASTBERT_TOY if name == "fastbert" else {}
    method = trained_on_toy(new_method(name, tiny_model, *CASES[request.param], **recipe))
    if method.inference_of(method.options) == "predicted":
        spread_exit_labels(method)  # predicted exits over every layer: a graph per depth
    return method


def test_a_graphed_run_answers_as_an_eager_run_at_padded_shapes(trained: Method) -> None:
    data = mixed_split(trained)
    dynamic = trained.inference_of(trained.options) == "dynamic"
    speed = spread_speed(trained, data) if dynamic else (0.5 if trained.speed_bounds[1] else 0.0)
    eager = trained.run(data, speed, 7)  # 7 rows: every call padded up to 8 or fewer
    backend = ReplayingGraphs()
    try:
        trained.use_runtime(Runtime(graphs=True), backend=backend)
        graphed = trained.run(data, speed, 7)
        again = trained.run(data, speed, 7)  # the same shapes: no new capture
        captures = trained.graphs.captures
    finally:
        trained.use_runtime(Runtime())
    np.testing.assert_array_equal(graphed.exit_layers, eager.exit_layers)
    if trained.reference:
        with torch.no_grad():
            margin = top_two_gap(trained.model.logits(data.padded()))
    else:  # the margin of each sample's answer at its exit
        exits = torch.from_numpy(eager.exit_layers.astype(int) - 1)
        margin = top_two_gap(layer_logits(trained, data))[torch.arange(len(data)), exits]
    assert_same_where_clear(graphed.labels, eager.labels, margin, LOGIT_NOISE, "label")
    np.testing.assert_array_equal(again.labels, graphed.labels)
    # the useful FLOPs are the samples' own; the executed ones and the rows include the padding
    np.testing.assert_array_equal(graphed.flops_full, eager.flops_full)
    plain, padded = work_counts(eager.calls, len(data)), work_counts(graphed.calls, len(data))
    assert padded["layer_batches"] == plain["layer_batches"]
    assert padded["mean_layer_batch_rows"] > plain["mean_layer_batch_rows"]
    assert padded["flops_executed_full"] > plain["flops_executed_full"]
    layer_calls = [c for c in graphed.calls if c.kind == "layer"]
    assert {c.rows for c in layer_calls} <= {1, 2, 4, 8}
    assert all(c.tokens % 16 == 0 for c in layer_calls)
    # a replay per whole forward (bert, GEEP), or per embedding and per layer call (dynamic)
    replayed = ("embed", "layer") if dynamic else ("embed",)
    per_run = sum(n for c, n in graphed.calls.items() if c.kind in replayed)
    assert backend.replays == 2 * per_run
    assert 1 <= captures < per_run


def test_shapes_go_to_buckets() -> None:
    assert [row_bucket(r) for r in (1, 2, 3, 4, 5, 8, 9, 32, 33)] == [1, 2, 4, 4, 8, 8, 16, 32, 64]
    assert [token_bucket(t) for t in (1, 16, 17, 64, 65)] == [16, 16, 32, 64, 80]


def test_a_graph_runner_pads_replays_and_cuts() -> None:
    """Rows padded by the last row, tokens by zeros; outputs cut back; one capture per bucket;
    each replay counts the captured call's work again."""
    backend = ReplayingGraphs()
    runner = GraphRunner(backend)
    seen: list[tuple[int, ...]] = []

    def fn(hidden: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        seen.append(tuple(hidden.shape))
        work.record("layer", hidden.shape[0], hidden.shape[1], 10, 0)
        return hidden * 2, mask.sum(dim=1)

    hidden = torch.arange(3 * 5 * 2, dtype=torch.float32).view(3, 5, 2)
    mask = torch.ones(3, 5)
    with work.counting() as calls:
        doubled, sums = runner("k", fn, hidden, mask)
        runner("k", fn, hidden[:2], mask[:2])  # 2 rows: a bucket of its own
        runner("k", fn, hidden + 1, mask)  # the first bucket again
    torch.testing.assert_close(doubled, hidden * 2)
    torch.testing.assert_close(sums, torch.full((3,), 5.0))
    assert set(seen) == {(4, 16, 2), (2, 16, 2)}  # every run at the bucketed shape
    assert runner.captures == 2 and backend.replays == 3
    assert calls == {work.Call("layer", 4, 16, 10, 0): 2, work.Call("layer", 2, 16, 10, 0): 1}


@pytest.mark.kernels  # bfloat16 against float32: also under other CPU kernels
def test_bfloat16_runs_for_real_on_the_cpu(tiny_model: Path) -> None:
    method = trained_on_toy(new_method("bert", tiny_model))
    data = mixed_split(new_method("fastbert", tiny_model))
    full = method.run(data, 0.0, 8)
    with torch.no_grad():
        gaps = top_two_gap(method.model.logits(data.padded()))
    method.use_runtime(Runtime("bfloat16"))
    assert {p.dtype for p in method.model.parameters()} == {torch.bfloat16}
    low = method.run(data, 0.0, 8)
    # bfloat16 keeps 8 bits of mantissa: labels agree wherever the float32 margin is clear of it
    assert_same_where_clear(low.labels, full.labels, gaps, 0.1, "bfloat16 label")
    layer = {p: [c for c in r.calls if c.kind == "layer"] for p, r in (("f", full), ("b", low))}
    assert sum(c.bytes for c in layer["b"]) < sum(c.bytes for c in layer["f"])  # 2-byte values


def test_what_cannot_run_is_refused(tiny_model: Path) -> None:
    bert = new_method("bert", tiny_model)
    with pytest.raises(GeepError, match="unknown precision 'int4'"):
        Runtime("int4")  # type: ignore[arg-type]
    with pytest.raises(GeepError, match="tf32 is a CUDA setting"):
        bert.use_runtime(Runtime("tf32"))
    with pytest.raises(GeepError, match="CUDA graphs need a CUDA device"):
        bert.use_runtime(Runtime(graphs=True))
    hashee = new_method("hashee", tiny_model)
    with pytest.raises(GeepError, match="cannot run this method: HashEE's layers"):
        hashee.use_runtime(Runtime(graphs=True), backend=ReplayingGraphs())
    assert {p.dtype for p in bert.model.parameters()} == {torch.float32}  # nothing was cast


def test_tf32_is_on_for_a_run_only() -> None:
    matmul = torch.backends.cuda.matmul
    before = matmul.allow_tf32
    with Runtime("tf32").matmul_settings():
        assert matmul.allow_tf32 and torch.backends.cudnn.allow_tf32
        with Runtime("bfloat16").matmul_settings():
            assert not matmul.allow_tf32
        assert matmul.allow_tf32
    assert matmul.allow_tf32 == before
    assert Runtime("bfloat16", graphs=True).label == "bfloat16 + CUDA graphs"
    assert Runtime().label == "float32 eager"


@pytest.mark.kernels  # bfloat16 against float32: also under other CPU kernels
def test_a_float32_copy_measures_what_bfloat16_changed(tiny_model: Path) -> None:
    method = trained_on_toy(new_method("fastbert", tiny_model, **FASTBERT_TOY))
    data = mixed_split(method)
    speed = spread_speed(method, data)
    reference = float32_copy(method)
    method.use_runtime(Runtime("bfloat16"))
    assert {p.dtype for p in reference.model.parameters()} == {torch.float32}
    base, low = reference.run(data, speed, 8), method.run(data, speed, 8)
    labels = data.labels.numpy() if (data.labels >= 0).all() else base.labels
    changes = precision_changes(base, low, labels)
    assert changes["exit_changed"] == np.mean(base.exit_layers != low.exit_layers)
    assert changes["label_changed"] == np.mean(base.labels != low.labels)
    assert changes["float32_accuracy"] == np.mean(base.labels == labels)
