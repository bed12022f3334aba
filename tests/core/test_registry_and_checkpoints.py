"""The runner interface, the `bert` reference method and checkpoints, on a tiny random BERT."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import torch

from geep.common.errors import GeepError
from geep.core.interface import Method
from geep.core.registry import get_method, load_checkpoint, method_names
from tests.helpers import (
    LOGIT_NOISE,
    assert_same_where_clear,
    counted_flops,
    new_method,
    top_two_gap,
    toy,
    trained_on_toy,
)

pytestmark = pytest.mark.kernels  # per-sample decisions on floats: also run under other CPU kernels


@pytest.fixture(scope="module")
def trained(tiny_model: Path) -> Method:
    return trained_on_toy(new_method("bert", tiny_model))


def test_registry_lists_bert_and_rejects_unknown() -> None:
    assert "bert" in method_names()
    with pytest.raises(GeepError, match="unknown method 'fastbrt'"):
        get_method("fastbrt")


def test_training_learns_the_toy_task(tiny_model: Path, trained: Method) -> None:
    texts, labels = toy(40)
    untrained = new_method("bert", tiny_model).predict(texts, speed=0.0).labels
    after = trained.predict(texts, speed=0.0).labels
    assert np.mean(after == labels) == 1.0
    assert np.mean(untrained == labels) < 1.0


def test_predictions_report_full_depth_and_real_length_flops(trained: Method) -> None:
    texts = ["good", "the best film and a great plot", "hate it"]
    out = trained.predict(texts, speed=0.0, batch_size=3)
    assert out.exit_layers.tolist() == [trained.num_layers] * 3
    assert len(out.batch_seconds) == 1
    for i, text in enumerate(texts):  # each sample alone, unpadded, under a real FLOP counter
        batch = trained.encode([text]).batch(torch.tensor([0]))
        with torch.no_grad():
            measured = counted_flops(lambda b=batch: trained.model.logits(b))
        assert out.flops_full[i] == measured
    assert out.flops_full[1] > out.flops_full[0]
    assert (out.flops_fastbert < out.flops_full).all()


def test_predictions_do_not_depend_on_batch_size(trained: Method) -> None:
    texts, _ = toy(23)
    one = trained.predict(texts, speed=0.0, batch_size=1)
    many = trained.predict(texts, speed=0.0, batch_size=8)
    encoded = trained.encode(texts)
    with torch.no_grad():  # padding and batch rows change the logits' last bits only
        logits = trained.model.logits(encoded.batch(torch.arange(len(texts))))  # padded
        alone = torch.cat(
            [trained.model.logits(trained.encode([t]).batch(torch.tensor([0]))) for t in texts]
        )
    assert len(set(encoded.lengths.tolist())) > 1  # the batch holds padding
    assert torch.allclose(logits, alone, atol=LOGIT_NOISE)  # padding never reaches a token
    assert_same_where_clear(many.labels, one.labels, top_two_gap(logits), LOGIT_NOISE, "label")
    assert (one.flops_full == many.flops_full).all()


def test_bert_has_no_speed_knob(trained: Method) -> None:
    with pytest.raises(GeepError, match=r"speed 0\.5 is out of range for bert"):
        trained.predict(["good"], speed=0.5)


def test_checkpoint_round_trip_without_pickle(trained: Method, tmp_path: Path) -> None:
    trained.save(tmp_path / "ckpt")
    files = sorted(p.name for p in (tmp_path / "ckpt").iterdir())
    assert "model.safetensors" in files and "config.json" in files
    assert not [f for f in files if f.endswith((".bin", ".pt", ".pkl", ".pth"))]
    loaded = load_checkpoint(tmp_path / "ckpt")
    texts, _ = toy(12)
    a, b = trained.predict(texts, 0.0), loaded.predict(texts, 0.0)  # same batches: exact
    assert (a.labels == b.labels).all() and (a.flops_full == b.flops_full).all()
    for name, tensor in trained.model.state_dict().items():
        assert torch.equal(tensor, loaded.model.state_dict()[name]), name
    assert loaded.info.label_names == ["negative", "positive"]


def without_checksums(damage: Callable[[Path], object]) -> Callable[[Path], None]:
    """``damage`` to a checkpoint saved before checksums were recorded (no ``sha256``)."""

    def damaged(path: Path) -> None:
        info = json.loads((path / "config.json").read_text())
        del info["sha256"]
        (path / "config.json").write_text(json.dumps(info))
        damage(path)

    return damaged


@pytest.mark.parametrize(
    "damage, message",
    [
        (lambda p: (p / "config.json").unlink(), "is not a checkpoint"),
        (lambda p: (p / "config.json").write_text("{not json"), "is corrupted"),
        (lambda p: (p / "model.safetensors").write_bytes(b"\x00" * 10), "safetensors is not the"),
        (lambda p: (p / "model.safetensors").unlink(), "model.safetensors is missing"),
        (without_checksums(lambda p: (p / "model.safetensors").write_bytes(b"\x00" * 10)), "incom"),
        (
            lambda p: (p / "config.json").write_text(
                json.dumps({**json.loads((p / "config.json").read_text()), "method": "nope"})
            ),
            "unknown method 'nope'",
        ),
    ],
)
def test_damaged_checkpoints_raise_one_clear_error(trained, tmp_path, damage, message) -> None:
    path = trained.save(tmp_path / "ckpt")
    damage(path)
    with pytest.raises(GeepError, match=message):
        load_checkpoint(path)


def test_missing_checkpoint(tmp_path: Path) -> None:
    with pytest.raises(GeepError, match="does not exist"):
        load_checkpoint(tmp_path / "nowhere")


def test_failed_save_leaves_old_checkpoint_intact(trained, tmp_path, monkeypatch) -> None:
    path = trained.save(tmp_path / "ckpt")
    before = (path / "model.safetensors").read_bytes()

    def disk_full(model, filename, **kwargs):  # the disk fills half-way through the weights
        Path(filename).write_bytes(before[: len(before) // 2])
        raise OSError("disk full")

    monkeypatch.setattr("geep.core.checkpoint.save_model", disk_full)
    with pytest.raises(OSError):
        trained.save(path)
    assert (path / "model.safetensors").read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ckpt"]  # no temporary left behind
