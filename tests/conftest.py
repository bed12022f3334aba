"""Shared fixtures: a tiny random BERT saved as a local model folder, a toy dataset folder,
a private cache, and the fakes of a GPU (tests/fakes.py) every GPU-branch test shares.
Hypothesis keeps its files in the temporary folder: tests write nothing into the checkout.
Under pytest-xdist (``tox -e test`` runs two workers) a worker's marks are taken out of the
environment, so the benchmark runs the tests start as a user would are not taken for workers."""

from __future__ import annotations

import os
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch
from hypothesis.configuration import set_hypothesis_home_dir
from transformers import BertConfig, BertModel, BertTokenizer

from geep.core.interface import Method
from geep.methods import exit_table
from tests.fakes import GPU, MIB, FakeCuda, FakeCupy, FakeNvml, OnFakeGpu
from tests.helpers import new_method, toy

set_hypothesis_home_dir(Path(tempfile.gettempdir()) / "geep-hypothesis")
for _mark in ("PYTEST_XDIST_WORKER", "PYTEST_XDIST_WORKER_COUNT", "PYTEST_XDIST_TESTRUNUID"):
    os.environ.pop(_mark, None)  # read by benchmarks/conftest.py in the runs tests start

WORDS = (
    "good great fine nice love best happy bad awful poor hate worst sad boring "
    "the movie film plot was is a an and very not it this of to"
).split()


def make_tiny_model(folder: Path, layers: int = 4, seed: int = 0, dropout: float = 0.1) -> Path:
    """Save a random 4-layer, hidden-32 BERT (``dropout`` in the encoder and the heads) and a
    word-level vocab to ``folder``."""
    import torch

    torch.manual_seed(seed)
    folder.mkdir(parents=True, exist_ok=True)
    vocab = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *WORDS, *"abcdefghijklmnopqrstuvwxyz"]
    tokenizer = BertTokenizer(vocab={token: i for i, token in enumerate(vocab)}, do_lower_case=True)
    config = BertConfig(
        vocab_size=len(vocab),
        hidden_size=32,
        num_hidden_layers=layers,
        num_attention_heads=4,
        intermediate_size=64,
        max_position_embeddings=64,
        hidden_dropout_prob=dropout,
        attention_probs_dropout_prob=dropout,
    )
    BertModel(config).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_tiny_model(tmp_path_factory.mktemp("tiny-bert"))


@pytest.fixture(scope="module")
def toy_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A UER-format dataset folder (train/dev/test TSV) of the separable toy task."""
    folder = tmp_path_factory.mktemp("toy")
    for split, n, seed in (("train", 80, 0), ("dev", 20, 1), ("test", 20, 2)):
        texts, labels = toy(n, seed)
        rows = [f"{y}\t{t}" for t, y in zip(texts, labels, strict=True)]
        (folder / f"{split}.tsv").write_text("label\ttext_a\n" + "\n".join(rows) + "\n")
    return folder


@pytest.fixture
def private_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Point $GEEP_CACHE at an empty folder for one test."""
    monkeypatch.setenv("GEEP_CACHE", str(tmp_path / "cache"))
    return tmp_path / "cache"


@pytest.fixture(scope="module")
def results(tiny_model: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A profile's results folder, reported: run files of bert (one setting) and geep (two) on
    the toy task, as the benchmark harness records them."""
    from geep.cli import main
    from geep.reproduce.profiles import get_profile
    from geep.reproduce.units import record
    from tests.helpers import new_method, run_row, toy_test_split, trained_on_toy

    folder = tmp_path_factory.mktemp("results")
    measured = {"bert": [("0", 0.9, 1.0)], "geep": [("0", 0.9, 1.0), ("0.5", 0.8, 2.0)]}
    for name, settings in measured.items():
        method = trained_on_toy(new_method(name, tiny_model))
        data = toy_test_split(method)
        for setting in settings:
            record(folder, get_profile("smoke"), method, "toy", data, run_row(*setting))
    assert main(["report", str(folder)]) == 0
    return folder


# --- the fakes of a GPU (tests/fakes.py) ---------------------------------------------------------


@pytest.fixture
def fake_cuda(monkeypatch: pytest.MonkeyPatch) -> FakeCuda:
    return FakeCuda(monkeypatch)


@pytest.fixture
def fake_cupy(monkeypatch: pytest.MonkeyPatch, fake_cuda: FakeCuda) -> Iterator[FakeCupy]:
    """A fake CuPy (and the fake torch.cuda) under the fake-GPU tensor mode."""
    cupy = FakeCupy()
    monkeypatch.setitem(sys.modules, "cupy", cupy)
    exit_table._cuda_kernels.cache_clear()  # compiled per process: none from another test
    with OnFakeGpu():
        yield cupy
    exit_table._cuda_kernels.cache_clear()


@pytest.fixture
def fake_nvml(monkeypatch: pytest.MonkeyPatch) -> FakeNvml:
    """The fake NVML as ``pynvml``, and torch.cuda's peak-memory calls patched beside it."""
    nvml = FakeNvml()
    monkeypatch.setitem(sys.modules, "pynvml", nvml)
    monkeypatch.setattr(torch.cuda, "reset_peak_memory_stats", nvml.reset.append)
    monkeypatch.setattr(torch.cuda, "max_memory_allocated", lambda device: 64 * MIB)
    return nvml


@pytest.fixture(scope="module")
def bert(tiny_model: Path) -> Method:
    """An untrained ``bert`` (its predictions do not matter here, only what it calls)."""
    return new_method("bert", tiny_model)


@pytest.fixture
def bert_on_gpu(bert: Method, monkeypatch: pytest.MonkeyPatch) -> Method:
    """``bert`` whose device is the fake ``cuda:1`` (its weights stay on the CPU)."""
    monkeypatch.setattr(type(bert), "device", property(lambda self: GPU))
    return bert
