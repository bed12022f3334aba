"""What verifying a checkpoint's files costs, against the evaluation it guards.

:func:`geep.runner.load_checkpoint` hashes every file a checkpoint recorded and compares the
SHA-256 digests with its config.json (:func:`geep.runner.checksum_problem`) before it builds
the method. This benchmark times that check on the profile's ``bert`` checkpoint of its first
dataset (trained once and cached) and, in the same rounds, a full-depth evaluation of the
first 1,275 samples of that dataset's test split (all of them when it has fewer) at the
profile's batch size. ``extra_info``: ``checksum_seconds`` and ``evaluation_seconds`` (medians),
``checksum_share`` (their ratio; the target is at most 2%), ``bytes`` hashed and
``evaluation_samples``. The files are read from the page cache after the first round, as they
are when a checkpoint is loaded again; a first load from disk reads them once either way.
"""

from __future__ import annotations

import json
import statistics
import time

import torch

from geep.evaluation import load_split
from geep.profiles import Profile
from geep.reproduce import checkpoint, device_name
from geep.runner import INFO_FILE, checksum_problem, load_checkpoint
from geep.storage import file_sha256

EVALUATION_SAMPLES = 1275
ROUNDS = 3
SHARE_TARGET = 0.02


def test_checksum_cost(benchmark, profile: Profile) -> None:
    dataset = profile.datasets[0]
    path = checkpoint(profile, "bert", dataset, profile.seeds[0])
    info = json.loads((path / INFO_FILE).read_text())
    # a cached checkpoint saved before checksums were recorded: the same files, hashed now
    files = [name for name in info["files"] if name != INFO_FILE]
    sha256 = info.get("sha256") or {name: file_sha256(path / name) for name in files}
    method = load_checkpoint(path)
    test = load_split(method, dataset, "test", EVALUATION_SAMPLES).data
    speed = method.default_speeds()[0]
    batch_size = method.warm_up(test, speed, profile.batch_size)
    checks, evaluations = [], []
    for _ in range(ROUNDS):
        start = time.perf_counter()
        assert checksum_problem(path, sha256) is None
        checks.append(time.perf_counter() - start)
        start = time.perf_counter()
        method.run(test, speed, batch_size)
        evaluations.append(time.perf_counter() - start)
    checksum_seconds = statistics.median(checks)
    evaluation_seconds = statistics.median(evaluations)
    benchmark.extra_info.update(
        {
            "dataset": dataset,
            "profile": profile.name,
            "device": device_name(method.device),
            "torch_threads": torch.get_num_threads(),
            "bytes": sum((path / name).stat().st_size for name in sha256),
            "evaluation_samples": len(test),
            "batch_size": batch_size,
            "seq_len": method.info.seq_len,
            "rounds": ROUNDS,
            "checksum_seconds": checksum_seconds,
            "evaluation_seconds": evaluation_seconds,
            "checksum_share": checksum_seconds / evaluation_seconds,
        }
    )
    benchmark.pedantic(checksum_problem, args=(path, sha256), rounds=ROUNDS)
    assert checksum_seconds <= SHARE_TARGET * evaluation_seconds, benchmark.extra_info
