"""What verifying a checkpoint's files costs, against the evaluation it guards.

:func:`geep.core.registry.load_checkpoint` hashes every file a checkpoint recorded and compares the
SHA-256 digests with its config.json (:func:`geep.core.checkpoint.checksum_problem`), in a thread
while
it builds the model from the config, and refuses a mismatch before it reads the weights. On the
profile's ``bert`` checkpoint of its first dataset (trained once and cached), each round times
the hashing alone, ``load_checkpoint`` with and without the check, and ``geep evaluate`` of the
first 1,275 test samples at 64 tokens (the quick and compare profiles' length) run in this
process (the checkpoint loaded, the split read and encoded from the cache, full depth at batch
32). ``extra_info`` (medians of the rounds): ``checksum_seconds`` (the hashing's own time),
``added_seconds`` (what the check adds to a load), ``evaluation_seconds``, and
``checksum_share``: added over evaluation, the target at most 2%. The files are read from the
page cache after the first round, as when a checkpoint is loaded again. The evaluation leaves out
the interpreter's start and imports, which a `geep evaluate` command adds: the share of a command
is smaller.
"""

from __future__ import annotations

import contextlib
import io
import json
import shutil
import statistics
import time
from collections.abc import Callable
from pathlib import Path

import pytest
import torch

import geep.core.registry
from geep.cli import main
from geep.common.storage import file_sha256
from geep.core.checkpoint import INFO_FILE, checksum_problem
from geep.core.registry import load_checkpoint
from geep.reproduce.profiles import Profile
from geep.reproduce.units import checkpoint

EVALUATION_SAMPLES = 1275
EVALUATION_SEQ_LEN = 64
ROUNDS = 5
SHARE_TARGET = 0.02


def evaluate(path: Path) -> None:
    """`geep evaluate --checkpoint PATH --max-eval 1275 --seq-len 64`, its table swallowed."""
    argv = ["evaluate", "--checkpoint", str(path), "--max-eval", str(EVALUATION_SAMPLES)]
    argv += ["--seq-len", str(EVALUATION_SEQ_LEN)]
    with contextlib.redirect_stdout(io.StringIO()):
        assert main(argv) == 0


def seconds(fn: Callable[[], object]) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def test_checksum_cost(
    benchmark, profile: Profile, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    dataset = profile.datasets[0]
    path = checkpoint(profile, "bert", dataset, profile.seeds[0])
    info = json.loads((path / INFO_FILE).read_text())
    if "sha256" not in info:  # cached before checksums were recorded: a copy, as saved now
        path = Path(shutil.copytree(path, tmp_path / path.name))
        files = [name for name in info["files"] if name != INFO_FILE]
        info["sha256"] = {name: file_sha256(path / name) for name in files}
        (path / INFO_FILE).write_text(json.dumps(info, indent=2) + "\n")
    sha256 = info["sha256"]
    evaluate(path)  # warm-up: the split's encoding cached, the allocator
    rounds: dict[str, list[float]] = {"hash": [], "checked": [], "unchecked": [], "evaluate": []}
    for _ in range(ROUNDS):
        rounds["hash"].append(seconds(lambda: checksum_problem(path, sha256)))
        rounds["checked"].append(seconds(lambda: load_checkpoint(path)))
        with monkeypatch.context() as patch:
            patch.setattr(geep.core.registry, "checksum_problem", lambda *args: None)
            rounds["unchecked"].append(seconds(lambda: load_checkpoint(path)))
        rounds["evaluate"].append(seconds(lambda: evaluate(path)))
    median = {name: statistics.median(times) for name, times in rounds.items()}
    added = max(0.0, median["checked"] - median["unchecked"])
    benchmark.extra_info.update(
        {
            "dataset": dataset,
            "profile": profile.name,
            "torch_threads": torch.get_num_threads(),
            "bytes": sum((path / name).stat().st_size for name in sha256),
            "evaluation_samples": EVALUATION_SAMPLES,
            "seq_len": EVALUATION_SEQ_LEN,
            "rounds": ROUNDS,
            "checksum_seconds": median["hash"],
            "load_seconds": median["unchecked"],
            "added_seconds": added,
            "evaluation_seconds": median["evaluate"],
            "checksum_share": added / median["evaluate"],
        }
    )
    benchmark.pedantic(checksum_problem, args=(path, sha256), rounds=ROUNDS)
    assert added <= SHARE_TARGET * median["evaluate"], benchmark.extra_info
