"""HashEE on a tiny random BERT: the frequency hash, special and unseen tokens, exited tokens
carried forward unchanged, active-token layers equal to the encoder's own, FLOPs per token."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from geep.baselines.hashee import HashEE, frequency_hash, token_counts
from geep.common.errors import GeepError
from geep.core.registry import load_checkpoint
from geep.data.encoding import Encoded
from tests.helpers import (
    LOGIT_NOISE,
    assert_same_where_clear,
    counted_flops,
    linear_only_flops,
    new_method,
    top_two_gap,
    toy_test_split,
    trained_on_toy,
)

pytestmark = pytest.mark.kernels  # per-sample decisions on floats: also run under other CPU kernels

LAYERS = 4  # the tiny model's depth


@pytest.fixture(scope="module")
def trained(tiny_model: Path) -> HashEE:
    return trained_on_toy(new_method("hashee", tiny_model))


@pytest.fixture(scope="module")
def test_data(trained: HashEE) -> Encoded:
    return toy_test_split(trained)


# --- the frequency hash ------------------------------------------------------------------------

# ids 0-1 never seen (e.g. special), 2..7 seen with these counts, 8 unseen
COUNTS = torch.tensor([0, 0, 50, 7, 30, 7, 1, 90, 0])
# most frequent first, ties by smaller id: 7 (90), 2 (50), 4 (30), 3 (7), 5 (7), 6 (1)
RANKED = [7, 2, 4, 3, 5, 6]


@pytest.mark.parametrize(
    ("speed", "buckets", "ranked_layers"),
    [
        (0, 0, [4, 4, 4, 4, 4, 4]),  # full depth
        (3, 0, [1, 1, 2, 3, 3, 4]),  # 4 buckets of 6 tokens over layers 1..4
        (1, 0, [3, 3, 3, 4, 4, 4]),  # 2 buckets over layers 3..4
        (3, 2, [1, 1, 1, 3, 3, 3]),  # 2 buckets spread over layers 1..4
        (3, 6, [1, 1, 2, 3, 3, 4]),  # 6 buckets over 4 layers: floor(b * 4 / 6)
        (2, 1, [2, 2, 2, 2, 2, 2]),  # one bucket at the lowest layer of the range
    ],
)
def test_frequency_hash_buckets(speed: int, buckets: int, ranked_layers: list[int]) -> None:
    layers = frequency_hash(COUNTS, LAYERS, speed, buckets)
    assert layers[RANKED].tolist() == ranked_layers
    assert layers[[0, 1, 8]].tolist() == [LAYERS] * 3  # unseen and special: the top layer


def test_token_counts_skip_special_tokens_and_padding() -> None:
    ids = torch.tensor([[2, 5, 6, 5, 3, 0, 0], [2, 6, 3, 0, 0, 0, 0]])  # 2 = CLS, 3 = SEP, 0 = PAD
    mask = (ids != 0).long()
    counts = token_counts(ids, mask, special_ids=[0, 2, 3], vocab=8)
    assert counts.tolist() == [0, 0, 0, 0, 0, 2, 2, 0]


def test_special_and_unseen_tokens_run_every_layer(trained: HashEE) -> None:
    batch = trained.encode(["good movie x q"]).batch(torch.tensor([0]))  # x, q: unseen words
    trained.prepare(LAYERS - 1)
    exits = trained.model.token_exit_layers(batch)[0]
    tokens = trained.tokenizer.convert_ids_to_tokens(batch.input_ids[0])
    by_token = dict(zip(tokens, exits.tolist(), strict=True))
    assert tokens[0] == "[CLS]" and "[SEP]" in tokens
    assert by_token["[CLS]"] == by_token["[SEP]"] == LAYERS
    assert trained.extras["train_token_counts"][trained.tokenizer.convert_tokens_to_ids("x")] == 0
    assert by_token["x"] == by_token["q"] == LAYERS
    assert by_token["movie"] < LAYERS  # a frequent training word leaves early


# --- the forward pass ------------------------------------------------------------------------


def test_all_tokens_active_equals_the_encoders_layer(trained: HashEE) -> None:
    backbone = trained.backbone
    batch = trained.encode(["good movie", "the plot was very boring to me"]).batch(torch.arange(2))
    hidden, mask = backbone.embed(**batch.inputs())
    real = batch.attention_mask.bool()
    with torch.no_grad():
        ours = backbone.run_layer_on_tokens(1, hidden, batch.attention_mask, active=real)
        theirs = backbone.run_layers(hidden, mask, 0, 1)
    torch.testing.assert_close(ours[real], theirs[real], atol=1e-5, rtol=1e-5)
    assert torch.equal(ours[~real], hidden[~real])  # padding is never updated


@torch.no_grad()
def test_exited_tokens_are_carried_forward_unchanged(trained: HashEE, test_data: Encoded) -> None:
    """Layer by layer, against the encoder's own layer applied to every token then masked:
    an exited token's state stays bit-for-bit; an active one gets the encoder's update."""
    trained.prepare(LAYERS - 1)
    batch = test_data.batch(torch.arange(8))
    backbone, model = trained.backbone, trained.model
    exits = model.token_exit_layers(batch)
    hidden, mask = backbone.embed(**batch.inputs())
    ever_frozen = False
    for layer in range(1, LAYERS + 1):
        active = exits >= layer
        ours = backbone.run_layer_on_tokens(layer, hidden, batch.attention_mask, active)
        full = backbone.run_layers(hidden, mask, layer - 1, layer)
        assert torch.equal(ours[~active], hidden[~active])
        torch.testing.assert_close(ours[active], full[active], atol=1e-5, rtol=1e-5)
        ever_frozen |= bool((~active & batch.attention_mask.bool()).any())
        hidden = ours
    assert ever_frozen  # some real token did exit early
    sentence = backbone.sentence_vector(hidden, batch.attention_mask)
    torch.testing.assert_close(model.classifier(sentence), model.logits(batch))


def test_predictions_do_not_depend_on_batch_size(trained: HashEE, test_data: Encoded) -> None:
    runs = [trained.run(test_data, LAYERS - 1, bs) for bs in (1, 3, 40)]
    with torch.no_grad():  # batch rows and padding change the logits' last bits only
        logits = trained.model.logits(test_data.batch(torch.arange(len(test_data))))  # padded
        alone = [
            trained.model.logits(test_data.batch(torch.tensor([i]))) for i in range(len(test_data))
        ]
    assert len(set(test_data.lengths.tolist())) > 1  # the batch holds padding
    assert torch.allclose(logits, torch.cat(alone), atol=LOGIT_NOISE)  # padding is never a key
    for out in runs[1:]:
        assert_same_where_clear(
            out.labels, runs[0].labels, top_two_gap(logits), LOGIT_NOISE, "label"
        )
        np.testing.assert_allclose(out.exit_layers, runs[0].exit_layers)
        assert (out.flops_full == runs[0].flops_full).all()


# --- exits, FLOPs and the speed knob -----------------------------------------------------------


def test_exit_layer_is_the_mean_over_real_tokens(trained: HashEE, test_data: Encoded) -> None:
    out = trained.run(test_data, 2, 8)
    trained.prepare(2)
    batch = test_data.batch(torch.arange(len(test_data)))
    exits = trained.model.token_exit_layers(batch).float()
    expected = exits.sum(1) / batch.attention_mask.sum(1)
    np.testing.assert_allclose(out.exit_layers, expected.numpy(), rtol=1e-6)
    assert (out.exit_layers >= LAYERS - 2).all() and (out.exit_layers < LAYERS).any()


@pytest.mark.parametrize("speed", [0, 2, 3])
def test_flops_count_what_ran(trained: HashEE, test_data: Encoded, speed: int) -> None:
    """Per sample (batch size 1, so no padded query slot): FlopCounterMode for ``full``, and
    nn.Linear hooks for ``fastbert``, on the real forward."""
    out = trained.run(test_data, speed, 1)
    for i in (0, 5, 17):
        batch = test_data.batch(torch.tensor([i]))

        def run(batch=batch) -> None:
            with torch.no_grad():
                trained.model.logits(batch)

        assert out.flops_full[i] == counted_flops(run)
        assert out.flops_fastbert[i] == linear_only_flops(trained.model, run)
    if speed == 0:
        full = trained.full_depth_flops(test_data.lengths.numpy(), "full")
        assert (out.flops_full == full).all() and (out.exit_layers == LAYERS).all()


def test_sweep_spans_full_depth_to_early_exit(trained: HashEE, test_data: Encoded) -> None:
    speeds = trained.default_speeds()
    assert speeds == [0.0, 1.0, 2.0, 3.0]
    cost = [float(trained.run(test_data, s, 8).flops_full.mean()) for s in speeds]
    assert cost == sorted(cost, reverse=True) and len(set(cost)) == len(cost)


def test_trained_hash_learns_the_toy_task(trained: HashEE, test_data: Encoded) -> None:
    out = trained.run(test_data, trained.train_speed, 8)
    assert trained.train_speed == LAYERS - 1
    assert (out.labels == test_data.labels.numpy()).mean() >= 0.9
    assert out.exit_layers.mean() < LAYERS - 1


@pytest.mark.parametrize(
    ("speed", "message"), [(0.5, "not a whole number"), (4, "use 0..3"), (-1, "out of range")]
)
def test_bad_speeds(trained: HashEE, speed: float, message: str) -> None:
    with pytest.raises(GeepError, match=message):
        trained.check_speed(speed)


def test_bad_options(tiny_model: Path) -> None:
    with pytest.raises(GeepError, match="train_speed=4 exceeds 3"):
        new_method("hashee", tiny_model, "train_speed=4")
    with pytest.raises(GeepError, match="buckets must be >= 0"):
        new_method("hashee", tiny_model, "buckets=-2")


def test_untrained_model_refuses_to_predict(tiny_model: Path) -> None:
    with pytest.raises(GeepError, match="train it"):
        new_method("hashee", tiny_model).predict(["good"], speed=1)


def test_checkpoint_keeps_the_token_counts(trained, test_data, tmp_path: Path) -> None:
    trained.save(tmp_path / "ckpt")
    loaded = load_checkpoint(tmp_path / "ckpt")
    assert torch.equal(loaded.extras["train_token_counts"], trained.extras["train_token_counts"])
    a, b = trained.run(test_data, 2, 8), loaded.run(test_data, 2, 8)  # same batches: exact
    assert (a.labels == b.labels).all() and (a.flops_full == b.flops_full).all()
    extra = loaded.diagnostics(test_data, 2, b)
    assert extra["train_speed"] == LAYERS - 1
    # every toy sample has [CLS] and [SEP] and 3-7 words, all seen in training
    assert 2 / 9 <= extra["special_token_share"] <= 2 / 5 and extra["unseen_token_share"] == 0
