"""FastBERT on a tiny random BERT: two-step training, dynamic exit with a shrinking batch, FLOPs."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from geep.baselines import fastbert
from geep.baselines.fastbert import FastBERT
from geep.core.dynamic_exit import first_exit_layer
from geep.core.registry import load_checkpoint
from geep.data.encoding import Encoded
from tests.helpers import (
    FASTBERT_TOY,
    exit_path_flops,
    new_method,
    threshold_in_gap,
    toy,
    toy_test_split,
    trained_on_toy,
)

pytestmark = pytest.mark.kernels  # per-sample decisions on floats: also run under other CPU kernels


@pytest.fixture(scope="module")
def trained(tiny_model: Path) -> FastBERT:
    return trained_on_toy(new_method("fastbert", tiny_model, **FASTBERT_TOY))


@pytest.fixture(scope="module")
def test_data(trained: FastBERT) -> Encoded:
    return toy_test_split(trained)


@pytest.fixture(scope="module")
def speed(trained: FastBERT, test_data: Encoded) -> float:
    """A threshold inside the students' uncertainties, so that some samples exit early and some
    do not, placed in a gap between them so that no sample's exit hangs on float rounding."""
    uncertainty = trained.exit_statistics(test_data)  # [N, L-1]
    return threshold_in_gap(
        uncertainty, lambda t: len(first_exit_layer(uncertainty, t).unique()) > 1
    )


def test_learns_the_toy_task_at_full_depth(trained: FastBERT, test_data: Encoded) -> None:
    out = trained.run(test_data, 0.0, 8)
    assert out.exit_layers.tolist() == [trained.num_layers] * len(test_data)
    assert (out.labels == test_data.labels.numpy()).mean() >= 0.9


def test_step_two_trains_only_the_students(tiny_model: Path, monkeypatch) -> None:
    method = new_method("fastbert", tiny_model, epochs=1)
    texts, labels = toy(16)
    snapshots = []
    real = fastbert.train_loop

    def spy(model, params, data, config, lr=None, desc="", **kwargs):
        snapshots.append({k: v.clone() for k, v in model.state_dict().items()})
        return real(model, params, data, config, lr=lr, desc=desc, **kwargs)

    monkeypatch.setattr("geep.baselines.fastbert.train_loop", spy)
    method.fit(method.encode(texts, labels=labels))
    before, after = snapshots[1], method.model.state_dict()  # around step 2
    changed = {k.split(".")[0] for k in after if not torch.equal(before[k], after[k])}
    assert changed == {"students"}


def test_exits_at_the_first_confident_layer_and_the_batch_shrinks(trained, test_data, speed):
    rows: list[tuple[int, int]] = []  # (layer, rows) of every layer call
    for i, layer in enumerate(trained.backbone.encoder.encoder.layer, start=1):
        layer.register_forward_hook(lambda m, a, o, i=i: rows.append((i, a[0].shape[0])))
    try:
        out = trained.run(test_data, speed, 8)
    finally:
        for layer in trained.backbone.encoder.encoder.layer:
            layer._forward_hooks.clear()
    oracle = first_exit_layer(trained.exit_statistics(test_data), speed).numpy()
    assert len(set(oracle)) > 1 and (out.exit_layers == oracle).all()
    by_length = oracle[torch.argsort(test_data.lengths, stable=True).numpy()]
    expected = []  # batches in length order; layer k runs the samples not yet exited
    for start in range(0, len(test_data), 8):
        exits = by_length[start : start + 8]
        expected += [(k, int((exits >= k).sum())) for k in range(1, exits.max() + 1)]
    assert rows == expected


def test_flops_count_every_layer_and_head_that_ran(trained, test_data, speed) -> None:
    out = trained.run(test_data, speed, 8)
    for i in range(0, len(test_data), 7):
        batch = test_data.batch(torch.tensor([i]))

        assert out.flops_full[i] == exit_path_flops(trained, batch, int(out.exit_layers[i])), i


def test_checkpoint_round_trip(trained: FastBERT, test_data: Encoded, tmp_path: Path) -> None:
    loaded = load_checkpoint(trained.save(tmp_path / "fastbert"))
    assert isinstance(loaded, FastBERT)
    a, b = trained.run(test_data, 0.3, 8), loaded.run(test_data, 0.3, 8)  # same batches: exact
    assert np.array_equal(a.labels, b.labels) and np.array_equal(a.exit_layers, b.exit_layers)
