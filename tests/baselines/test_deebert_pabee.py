"""DeeBERT and PABEE on a tiny random BERT: training stages, exit rules with a shrinking batch,
and FLOPs that count every layer and head that ran."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from geep.common.errors import GeepError
from geep.core.dynamic_exit import DynamicExitMethod, entropy
from geep.core.registry import load_checkpoint
from geep.core.sweeps import even_flops_speeds
from geep.data.encoding import Encoded
from tests.helpers import (
    ENTROPY_NOISE,
    LOGIT_NOISE,
    assert_same_where_clear,
    exit_path_flops,
    new_method,
    top_two_gap,
    toy,
    toy_test_split,
    trained_on_toy,
)

pytestmark = pytest.mark.kernels  # per-sample decisions on floats: also run under other CPU kernels

METHODS = ["deebert", "pabee"]


@pytest.fixture(scope="module", params=METHODS)
def trained(request, tiny_model: Path) -> DynamicExitMethod:
    return trained_on_toy(new_method(request.param, tiny_model))


@pytest.fixture(scope="module")
def test_data(trained: DynamicExitMethod) -> Encoded:
    return toy_test_split(trained)


@torch.no_grad()
def layer_logits(method: DynamicExitMethod, data: Encoded) -> torch.Tensor:
    """Logits [N, L, C] of every head on every sample, one sample at a time (no batching)."""
    out = []
    for i in range(len(data)):
        batch = data.batch(torch.tensor([i]))
        hidden, mask = method.backbone.embed(**batch.inputs())
        rows = []
        for layer in range(1, method.num_layers + 1):
            hidden = method.backbone.run_layers(hidden, mask, layer - 1, layer)
            rows.append(method.exit_head(layer, hidden, batch.attention_mask)[0])
        out.append(torch.stack(rows))
    return torch.stack(out)


def expected_exits(
    method: DynamicExitMethod, logits: torch.Tensor, speed: float
) -> tuple[np.ndarray, np.ndarray]:
    """Each method's rule, written out per sample in plain Python: the exit layer [N], and how
    far [N] the closest decision on the sample's path (layers 1..its exit) sat from its boundary:
    DeeBERT's entropy from the threshold, PABEE's top two logits from a tie."""
    num_layers, exits, distances = method.num_layers, [], []
    for sample in logits:
        exit_layer, distance = num_layers, np.inf
        if method.name == "deebert":
            for layer in range(1, num_layers):
                value = entropy(sample[layer - 1]).item()
                distance = min(distance, abs(value - speed))
                if value < speed:
                    exit_layer = layer
                    break
        elif speed > 0:
            count, previous = 0, None
            for layer in range(1, num_layers):
                prediction = int(sample[layer - 1].argmax())
                distance = min(distance, float(top_two_gap(sample[layer - 1])))
                count = count + 1 if prediction == previous else 0
                previous = prediction
                if count >= speed:
                    exit_layer = layer
                    break
        exits.append(exit_layer)
        distances.append(distance)
    return np.array(exits), np.array(distances)


def test_full_depth_learns_the_toy_task(trained: DynamicExitMethod, test_data: Encoded) -> None:
    out = trained.run(test_data, 0.0, 8)
    assert out.exit_layers.tolist() == [trained.num_layers] * len(test_data)
    assert (out.labels == test_data.labels.numpy()).mean() >= 0.9


def test_the_sweep_spans_full_depth_to_early_exit(trained, test_data) -> None:
    """The fixed grid, plus for DeeBERT's threshold the speeds chosen on a dev split (a tiny
    model's highways can be confident everywhere, so its grid alone may not spread)."""
    speeds = trained.default_speeds()
    assert speeds[0] == 0.0 and len(speeds) >= 3
    if trained.calibrates:
        texts, labels = toy(20, seed=1)
        dev = trained.encode(texts, labels=labels)
        speeds += [speed for speed, _ in even_flops_speeds(trained.calibrate(dev), 4)]
    flops = {float(trained.run(test_data, s, 8).flops_full.mean()) for s in speeds}
    assert len(flops) >= 3


def test_exits_follow_the_rule_and_the_batch_shrinks(trained, test_data) -> None:
    logits = layer_logits(trained, test_data)
    for speed in trained.default_speeds()[1:]:
        expected, distance = expected_exits(trained, logits, speed)
        rows: list[tuple[int, int]] = []
        hooks = [
            layer.register_forward_hook(
                lambda m, a, o, i=i, rows=rows: rows.append((i, a[0].shape[0]))
            )
            for i, layer in enumerate(trained.backbone.encoder.encoder.layer, start=1)
        ]
        try:
            out = trained.run(test_data, speed, 8)
        finally:
            for hook in hooks:
                hook.remove()
        noise = ENTROPY_NOISE if trained.name == "deebert" else LOGIT_NOISE
        assert_same_where_clear(out.exit_layers, expected, distance, noise, f"exit at {speed}")
        by_length = out.exit_layers[torch.argsort(test_data.lengths, stable=True).numpy()]
        shrinking = []  # batches in length order: layer k runs the samples not yet exited
        for start in range(0, len(test_data), 8):
            exits = by_length[start : start + 8].astype(int)
            shrinking += [(k, int((exits >= k).sum())) for k in range(1, exits.max() + 1)]
        assert rows == shrinking, speed
        at_exit = logits[np.arange(len(test_data)), out.exit_layers.astype(int) - 1]  # [N, C]
        final = at_exit.argmax(-1).numpy()  # the prediction of the exit layer's head
        margin = top_two_gap(at_exit)
        assert_same_where_clear(out.labels, final, margin, LOGIT_NOISE, f"label at {speed}")


def test_flops_count_every_layer_and_head_that_ran(trained, test_data) -> None:
    speed = trained.default_speeds()[-1]
    out = trained.run(test_data, speed, 8)
    assert out.exit_layers.min() < trained.num_layers
    for i in range(0, len(test_data), 5):
        batch = test_data.batch(torch.tensor([i]))

        assert out.flops_full[i] == exit_path_flops(trained, batch, int(out.exit_layers[i])), i


def test_checkpoint_round_trip(trained, test_data, tmp_path) -> None:
    loaded = load_checkpoint(trained.save(tmp_path / trained.name))
    speed = trained.default_speeds()[-1]
    a, b = trained.run(test_data, speed, 8), loaded.run(test_data, speed, 8)  # same batches
    assert np.array_equal(a.labels, b.labels) and np.array_equal(a.exit_layers, b.exit_layers)


def test_deebert_stage_two_trains_only_the_highways(tiny_model: Path) -> None:
    method = new_method("deebert", tiny_model)
    texts, labels = toy(6)
    batch = method.encode(texts, labels=labels).batch(torch.arange(6))
    method.model(batch, stage="highways").backward()
    assert all(p.grad is not None for p in method.model.highways.parameters())
    frozen = [*method.backbone.parameters(), *method.model.classifier.parameters()]
    assert all(p.grad is None for p in frozen)


def test_pabee_loss_weights_deeper_layers_more(tiny_model: Path) -> None:
    method = new_method("pabee", tiny_model)
    method.model.eval()
    texts, labels = toy(6)
    data = method.encode(texts, labels=labels)
    batch = data.batch(torch.arange(6))
    per_layer = [F.cross_entropy(row, batch.labels) for row in layer_logits(method, data).unbind(1)]
    weighted = sum(j * ce for j, ce in enumerate(per_layer, start=1)) / sum(range(1, 5))
    assert method.model(batch).item() == pytest.approx(weighted.item(), rel=1e-5)


def test_pabee_patience_must_be_whole(tiny_model: Path) -> None:
    with pytest.raises(GeepError, match="not a whole number"):
        new_method("pabee", tiny_model).predict(["good"], speed=2.5)


def test_deebert_reuses_a_fine_tuned_bert_as_its_first_stage(tiny_model: Path) -> None:
    """The profile runner's shortcut: bert's backbone and classifier, then only the highways."""
    bert = trained_on_toy(new_method("bert", tiny_model))
    deebert = new_method("deebert", tiny_model)
    texts, labels = toy(40)
    before = [p.detach().clone() for p in deebert.model.highways.parameters()]
    deebert.fit_from(bert, deebert.encode(texts, labels=labels))
    reused = {
        **{f"backbone.{k}": v for k, v in bert.model.backbone.state_dict().items()},
        **{f"classifier.{k}": v for k, v in bert.model.classifier.state_dict().items()},
    }
    state = deebert.model.state_dict()
    assert all(torch.equal(state[k], v) for k, v in reused.items())
    after = list(deebert.model.highways.parameters())
    assert any(not torch.equal(a, b) for a, b in zip(after, before, strict=True))
    with pytest.raises(GeepError, match="starts from a fine-tuned bert, not pabee"):
        deebert.fit_from(new_method("pabee", tiny_model), deebert.encode(texts, labels=labels))
    with pytest.raises(GeepError, match="pabee cannot start from a fine-tuned model"):
        new_method("pabee", tiny_model).fit_from(bert, deebert.encode(texts, labels=labels))
