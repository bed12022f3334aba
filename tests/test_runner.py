"""The runner interface, the `bert` reference method and checkpoints, on a tiny random BERT."""

from __future__ import annotations

import json
import random
from pathlib import Path

import numpy as np
import pytest
import torch
from accelerate.utils import set_seed

from geep.config import TrainConfig
from geep.encoding import Encoded
from geep.errors import GeepError
from geep.runner import Method, get_method, load_checkpoint, method_names
from tests.test_flops import counted_flops

POSITIVE = "good great love best nice happy fine".split()
NEGATIVE = "bad awful hate worst boring sad poor".split()
FILLER = "the movie film plot was is a an and very it this of to".split()


def toy(n: int, seed: int = 0) -> tuple[list[str], list[int]]:
    """A separable two-class task: label 1 iff the text holds a positive word (seeded, varied)."""
    rng = random.Random(seed)
    texts, labels = [], []
    for i in range(n):
        cue = rng.choice(POSITIVE if i % 2 else NEGATIVE)
        words = [*rng.sample(FILLER, rng.randint(2, 6)), cue]
        rng.shuffle(words)
        texts.append(" ".join(words))
        labels.append(i % 2)
    return texts, labels


def new_method(name: str, tiny_model: Path, *settings: str, **train: object) -> Method:
    """An untrained method on the tiny model, with settings that learn the toy task.

    Seeded before the heads are built, as ``geep train`` does, so no test depends on the order
    the tests ran in.
    """
    config = TrainConfig(**{"epochs": 8, "batch_size": 8, "lr": 3e-3, "seq_len": 16, **train})
    set_seed(config.seed)
    labels = ["negative", "positive"]
    return get_method(name).create(str(tiny_model), labels, "toy", config, settings=settings)


def trained_on_toy(method: Method) -> Method:
    """``method`` fitted on 80 toy samples."""
    texts, labels = toy(80)
    method.fit(method.encode(texts, labels=labels))
    return method


def toy_test_split(method: Method) -> Encoded:
    """40 toy samples the methods were not trained on."""
    texts, labels = toy(40, seed=3)
    return method.encode(texts, labels=labels)


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
    assert (one.labels == many.labels).all()
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
    a, b = trained.predict(texts, 0.0), loaded.predict(texts, 0.0)
    assert (a.labels == b.labels).all() and (a.flops_full == b.flops_full).all()
    for name, tensor in trained.model.state_dict().items():
        assert torch.equal(tensor, loaded.model.state_dict()[name]), name
    assert loaded.info.label_names == ["negative", "positive"]


@pytest.mark.parametrize(
    "damage, message",
    [
        (lambda p: (p / "config.json").unlink(), "is not a checkpoint"),
        (lambda p: (p / "config.json").write_text("{not json"), "is corrupted"),
        (lambda p: (p / "model.safetensors").write_bytes(b"\x00" * 10), "incomplete or corrupted"),
        (lambda p: (p / "model.safetensors").unlink(), "incomplete or corrupted"),
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

    def explode(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr("geep.runner.save_model", explode)
    with pytest.raises(OSError):
        trained.save(path)
    assert (path / "model.safetensors").read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ckpt"]  # no temporary left behind
