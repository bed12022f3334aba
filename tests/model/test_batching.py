"""How samples are batched: length-bucketed training batches, and the one inference order every
method gets (by length by default, input order on request) with results in input order."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from geep.core.dynamic_exit import DynamicExitMethod
from geep.core.interface import Method
from geep.core.registry import method_names
from geep.model.training import EpochBatches
from tests.helpers import (
    LOGIT_NOISE,
    assert_same_where_clear,
    new_method,
    top_two_gap,
    toy_test_split,
    trained_on_toy,
)

pytestmark = pytest.mark.kernels  # per-sample decisions on floats: also run under other CPU kernels

LENGTHS = torch.randint(5, 60, (1000,), generator=torch.Generator().manual_seed(0))


def epoch(batching: str, seed: int = 0) -> list[list[int]]:
    generator = torch.Generator().manual_seed(seed)
    return list(EpochBatches(LENGTHS, 16, batching, generator))


def padding_share(batches: list[list[int]]) -> float:
    padded = sum(len(b) * int(LENGTHS[b].max()) for b in batches)
    return 1 - int(LENGTHS.sum()) / padded


@pytest.mark.parametrize("batching", ["length", "random"])
def test_an_epoch_draws_every_sample_once_in_a_seeded_order(batching: str) -> None:
    batches = epoch(batching)
    assert sorted(i for b in batches for i in b) == list(range(len(LENGTHS)))
    assert len(batches) == len(EpochBatches(LENGTHS, 16, batching, torch.Generator()))
    assert batches == epoch(batching) and batches != epoch(batching, seed=1)


def test_length_batches_carry_little_padding_and_stay_shuffled() -> None:
    length, random = epoch("length"), epoch("random")
    assert padding_share(length) < 0.1 < 0.3 < padding_share(random)
    firsts = [int(LENGTHS[b].min()) for b in length]
    assert firsts != sorted(firsts)  # the batches themselves come in a random order


@pytest.fixture(scope="module", params=method_names())
def trained(request, tiny_model: Path) -> Method:
    return trained_on_toy(new_method(request.param, tiny_model))


def full_depth_margin(method: Method, data) -> torch.Tensor:
    """The top-two gap of each sample's full-depth logits (one batch, no exit)."""
    batch = data.batch(torch.arange(len(data)))
    with torch.no_grad():
        if isinstance(method, DynamicExitMethod):
            hidden, mask = method.backbone.embed(**batch.inputs())
            hidden = method.backbone.run_layers(hidden, mask, 0, method.num_layers)
            return top_two_gap(method.exit_head(method.num_layers, hidden, batch.attention_mask))
        method.prepare(0)
        return top_two_gap(method.model.logits(batch))


def test_every_method_batches_by_length_by_default(trained: Method, monkeypatch) -> None:
    """Every method, `bert` included, gets its samples sorted by length (or in input order on
    request) and returns its results in input order with the same predictions."""
    data = toy_test_split(trained)
    seen: list[np.ndarray] = []
    real = type(trained).predict_batches

    def spy(self, data, speed, batch_size):
        seen.append(data.lengths.numpy())
        return real(self, data, speed, batch_size)

    monkeypatch.setattr(type(trained), "predict_batches", spy)
    by_length = trained.run(data, 0.0, 8)
    in_order = trained.run(data, 0.0, 8, order="input")
    lengths = data.lengths.numpy()
    assert (seen[0] == np.sort(lengths, kind="stable")).all() and (seen[1] == lengths).all()
    assert len(set(lengths.tolist())) > 1  # the order matters
    assert (by_length.exit_layers == in_order.exit_layers).all()
    assert (by_length.flops_full == in_order.flops_full).all()  # FLOPs follow each sample
    margin = full_depth_margin(trained, data)
    assert_same_where_clear(by_length.labels, in_order.labels, margin, LOGIT_NOISE, "label")
