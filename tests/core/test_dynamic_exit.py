"""Exit rules on hand-built logits, and dynamic exit with a shrinking batch."""

from __future__ import annotations

import math

import pytest
import torch
from transformers import BertConfig

from geep.baselines.fastbert import normalized_entropy
from geep.baselines.pabee import PatienceRule
from geep.core.dynamic_exit import dynamic_exit, entropy, first_exit_layer
from geep.data.encoding import Encoded
from geep.model.backbone import Backbone

pytestmark = pytest.mark.kernels  # per-sample decisions on floats: also run under other CPU kernels


def test_normalized_entropy_on_hand_built_logits() -> None:
    p = torch.tensor([0.75, 0.25])
    cases = [
        ([0.0, 0.0], 1.0),  # uniform
        ([100.0, 0.0], 0.0),  # certain
        ([0.0, 0.0, 0.0, 0.0], 1.0),  # uniform over 4 classes: normalised by log 4
        ([math.log(3), 0.0], float(-(p * p.log()).sum() / math.log(2))),  # p = (3/4, 1/4)
    ]
    for logits, expected in cases:
        assert normalized_entropy(torch.tensor(logits)).item() == pytest.approx(expected, abs=1e-6)
    batch = torch.tensor([[0.0, 0.0], [100.0, 0.0]])
    assert normalized_entropy(batch).tolist() == pytest.approx([1.0, 0.0], abs=1e-6)


def test_first_exit_layer_takes_the_first_confident_layer_else_the_last() -> None:
    uncertainty = torch.tensor(
        [
            [0.05, 0.01, 0.01],  # confident at once -> 1
            [0.50, 0.20, 0.01],  # -> 3 at speed 0.1
            [0.90, 0.80, 0.70],  # never below -> L = 4
            [0.10, 0.05, 0.50],  # exactly the speed is not below it -> 2
        ]
    )
    assert first_exit_layer(uncertainty, 0.1).tolist() == [1, 3, 4, 2]
    assert first_exit_layer(uncertainty, 0.0).tolist() == [4, 4, 4, 4]  # speed 0: full depth
    assert first_exit_layer(uncertainty, 1.0).tolist() == [1, 1, 1, 1]


def test_dynamic_exit_shrinks_the_batch_and_keeps_each_samples_own_exit() -> None:
    config = BertConfig(
        hidden_size=16, num_hidden_layers=4, num_attention_heads=2, intermediate_size=32
    )
    backbone = Backbone.from_config(config).eval()
    lengths = torch.tensor([2, 5, 3, 9, 4])  # a sample of length n exits at layer n - 1
    mask = (torch.arange(9) < lengths[:, None]).long()  # [5, 9]
    ids = torch.randint(5, 90, (5, 9)) * mask
    data = Encoded.from_padded(ids, mask, torch.zeros_like(ids), torch.zeros(5).long())

    rows: list[tuple[int, int]] = []  # (layer, batch rows) of every layer call
    for i, layer in enumerate(backbone.encoder.encoder.layer, start=1):
        layer.register_forward_hook(lambda m, a, o, i=i: rows.append((i, a[0].shape[0])))

    def head(layer: int, hidden: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        return torch.stack(
            [attention_mask.sum(1).float(), torch.full_like(hidden[:, 0, 0], layer)], 1
        )

    def exits(layer: int, logits: torch.Tensor, running: torch.Tensor) -> torch.Tensor:
        return logits[:, 0] <= layer + 1

    with torch.no_grad():
        logits, layers = dynamic_exit(backbone, data.batch(torch.arange(5)), head, exits)
    expected = torch.clamp(lengths - 1, 1, 4)
    assert layers.tolist() == expected.tolist()
    assert logits[:, 1].tolist() == expected.float().tolist()  # each its own exit's logits
    assert rows == [(k, int((expected >= k).sum())) for k in range(1, 5)]  # the batch shrinks


def test_raw_entropy_is_in_nats() -> None:
    assert entropy(torch.tensor([0.0, 0.0])).item() == pytest.approx(math.log(2))
    assert entropy(torch.tensor([0.0, 0.0, 0.0])).item() == pytest.approx(math.log(3))
    assert entropy(torch.tensor([100.0, 0.0])).item() == pytest.approx(0.0, abs=1e-6)


def test_patience_counts_agreements_resets_on_change_and_breaks_ties_to_the_first_class():
    rule = PatienceRule(patience=2, samples=3, device="cpu")
    everyone = torch.arange(3)
    layers = [  # per layer, logits of samples 0, 1, 2
        [[1.0, 0.0], [1.0, 0.0], [0.5, 0.5]],  # 0, 0, 0 (tie -> class 0): counters 0 0 0
        [[1.0, 0.0], [0.0, 1.0], [0.5, 0.5]],  # 0, 1, 0: counters 1 0 1
        [[1.0, 0.0], [0.0, 1.0], [0.0, 1.0]],  # 0, 1, 1: counters 2 1 0 -> sample 0 exits
    ]
    decisions = [
        rule(k, torch.tensor(logits), everyone).tolist() for k, logits in enumerate(layers)
    ]
    assert decisions == [[False] * 3, [False] * 3, [True, False, False]]
    # the batch shrinks to samples 1 and 2: their counters carry on
    assert rule(4, torch.tensor([[0.0, 1.0], [0.0, 1.0]]), torch.tensor([1, 2])).tolist() == [
        True,
        False,
    ]
