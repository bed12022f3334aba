"""Resource limits: data too large for memory fails early with one clear line, and an
out-of-GPU-memory batch is halved until it fits (simulated here: tests never need a GPU)."""

from __future__ import annotations

import string

import pytest
import torch

from geep.cli import main
from geep.common import resources
from geep.common.errors import GeepError
from geep.core.interface import Method
from geep.reproduce.units import measure
from tests.helpers import (
    assert_one_error_line,
    new_method,
    toy_test_split,
    train_args,
    trained_on_toy,
)


@pytest.mark.parametrize(
    "meminfo, limit, used, expected",
    [
        ("MemTotal: 900 kB\nMemAvailable: 500 kB\n", None, None, 500 * 1024),
        ("MemAvailable: 500 kB\n", "1048576\n", "1000000\n", 48576),  # the cgroup's room
        ("MemAvailable: 500 kB\n", "max\n", "1000000\n", 500 * 1024),  # no cgroup limit
        (None, "1048576\n", "48576\n", 2**20 - 48576),
        (None, None, None, None),  # neither known: not Linux
    ],
)
def test_available_memory_is_meminfo_capped_by_the_cgroup(
    meminfo, limit, used, expected, tmp_path, monkeypatch
) -> None:
    files = {tmp_path / "meminfo": meminfo, tmp_path / "memory.max": limit}
    files[tmp_path / "memory.current"] = used
    for path, text in files.items():
        if text is not None:
            path.write_text(text)
    monkeypatch.setattr(resources, "_MEMINFO", tmp_path / "meminfo")
    monkeypatch.setattr(resources, "_CGROUP", tmp_path)
    assert resources.available_memory() == expected


def test_a_file_too_large_for_memory_fails_before_it_is_read(
    tiny_model, tmp_path, capsys, monkeypatch
) -> None:
    big = tmp_path / "big.tsv"
    big.write_text("label\ttext_a\n" + "0\tgood film\n" * 20_000)  # 234 KiB: ~2.7 MiB to load
    monkeypatch.setattr(resources, "available_memory", lambda: 2**20)
    assert main(train_args(big, tiny_model, tmp_path / "out")) == 2
    err = capsys.readouterr().err
    assert_one_error_line(err, f"loading {big} (234 KiB) needs about 2.7 MiB of memory but 1.0 MiB")
    assert not (tmp_path / "out").exists()


def test_a_split_too_large_to_tokenize_fails_before_tokenizing(
    tiny_model, tmp_path, capsys, monkeypatch
) -> None:
    # 676 two-letter texts: the file fits (4 KiB, ~48 KiB to load); its 540 training samples
    # x (64 int16 tokens + three int64 numbers) do not
    pairs = [f"{a} {b}" for a in string.ascii_lowercase for b in string.ascii_lowercase]
    rows = [f"{i % 2}\t{text}" for i, text in enumerate(pairs)]
    letters = tmp_path / "letters.tsv"
    letters.write_text("label\ttext_a\n" + "\n".join(rows) + "\n")
    monkeypatch.setattr(resources, "available_memory", lambda: 64 * 2**10)
    assert main(train_args(letters, tiny_model, tmp_path / "out", "--seq-len", "64")) == 2
    assert_one_error_line(
        capsys.readouterr().err,
        "tokenizing 540 samples at --seq-len 64 needs about 80 KiB of memory but 64 KiB is "
        "free; lower --max-train, --max-eval or --seq-len",
    )
    assert not (tmp_path / "out").exists()


def oom_above(limit: int, method: Method, monkeypatch: pytest.MonkeyPatch) -> None:
    """Make ``method.run`` raise torch's out-of-memory error for batches above ``limit``."""
    run = method.run

    def limited(data, speed, batch_size, **kwargs):
        if min(batch_size, len(data)) > limit:
            raise torch.OutOfMemoryError("CUDA out of memory (simulated)")
        return run(data, speed, batch_size, **kwargs)

    monkeypatch.setattr(method, "run", limited)


def test_out_of_memory_halves_the_batch_and_records_it(tiny_model, monkeypatch, capsys) -> None:
    method = trained_on_toy(new_method("bert", tiny_model, epochs=1))
    data = toy_test_split(method)
    expected = measure(method, data, 0.0, batch_size=4, rounds=1)
    oom_above(4, method, monkeypatch)
    row = measure(method, data, 0.0, batch_size=32, rounds=1)
    assert (row["batch_size"], row["batch_size_requested"]) == (4, 32)
    assert row["accuracy"] == expected["accuracy"] and row["n"] == len(data)
    err = capsys.readouterr().err
    assert "ran out of GPU memory at batch size 32; trying 16" in err
    assert "at batch size 8; trying 4" in err


def test_out_of_memory_even_at_batch_size_one_is_a_clear_error(tiny_model, monkeypatch) -> None:
    method = trained_on_toy(new_method("bert", tiny_model, epochs=1))
    oom_above(0, method, monkeypatch)
    with pytest.raises(GeepError, match="runs out of GPU memory even at batch size 1"):
        measure(method, toy_test_split(method), 0.0, batch_size=8, rounds=1)


def test_out_of_memory_in_training_is_a_clear_error(
    toy_dir, tiny_model, tmp_path, capsys, monkeypatch
) -> None:
    def fit(self, train):
        raise torch.OutOfMemoryError("CUDA out of memory (simulated)")

    monkeypatch.setattr(type(new_method("bert", tiny_model)), "fit", fit)
    assert main(train_args(toy_dir, tiny_model, tmp_path / "out", "--seq-len", "16")) == 2
    assert_one_error_line(
        capsys.readouterr().err, "out of GPU memory training bert at batch size 16, --seq-len 16"
    )
    assert not (tmp_path / "out").exists()
