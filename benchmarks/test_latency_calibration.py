"""The latency model's calibration run: full-depth ``bert`` timed at several batch sizes and
lengths, on the device the profile's other benchmarks run on (:mod:`geep.latency`).

The profile's encoder with ``bert``'s classifier (its weights do not change its time) runs
windows of the profile's first dataset's dev split, sorted by length as every method batches
them: for each batch size in ``SIZES`` and each length quantile in ``QUANTILES``, two batches
of neighbouring lengths. Rounds go over every point in turn, so each point's median comes from
the same minutes of a shared machine. The median run time of each point, its calls and the
operators each kind of call dispatches go to ``<results>/latency-calibration.json``; ``geep
report`` fits the model on these points alone and predicts every other method's measured time.
"""

from __future__ import annotations

import json
import statistics
from pathlib import Path

import torch

from geep.encoding import Encoded
from geep.profiles import Profile
from geep.reproduce import device_name, eval_split
from geep.runner import Method, get_method
from geep.storage import atomic_write_text
from geep.work import calls_to_rows, operators_per_call

SIZES = (1, 2, 4, 8, 16, 32)
QUANTILES = (0.1, 0.5, 0.9)  # where in the dev split's length order each window sits
ROUNDS = 5
CALIBRATION_FILE = "latency-calibration.json"


def windows(data: Encoded, sizes: tuple[int, ...]) -> list[tuple[int, Encoded]]:
    """(batch size, two batches of samples of neighbouring lengths) at every quantile."""
    order = torch.argsort(data.lengths, stable=True)
    out = []
    for size in sizes:
        rows = min(2 * size, len(data))
        for q in QUANTILES:
            start = min(int(q * len(data)), len(data) - rows)
            out.append((size, data.select(order[start : start + rows])))
    return out


def test_latency_calibration(benchmark, profile: Profile, results_dir: Path) -> None:
    dataset = profile.datasets[0]
    config = profile.train_config("bert", dataset, profile.seeds[0])
    labels = ["a", "b"]  # timing only: the classes do not matter
    method: Method = get_method("bert").create(profile.model_for(dataset), labels, dataset, config)
    if torch.cuda.is_available():
        method.to("cuda")
    points = windows(eval_split(method, dataset, profile.max_eval, split="dev"), SIZES)
    seconds: list[list[float]] = [[] for _ in points]

    def calibrate() -> None:
        for size, data in points:  # untimed: first-call allocations
            method.run(data, 0.0, size)
        for _ in range(ROUNDS):
            for i, (size, data) in enumerate(points):
                seconds[i].append(sum(method.run(data, 0.0, size).batch_seconds))

    benchmark.pedantic(calibrate, rounds=1, iterations=1)
    rows = []
    for (size, data), times in zip(points, seconds, strict=True):
        rows.append(
            {
                "batch_size": size,
                "samples": len(data),
                "mean_length": float(data.lengths.float().mean()),
                "seconds": statistics.median(times),
                "calls": calls_to_rows(method.run(data, 0.0, size).calls),
                "operators": operators_per_call(lambda d=data, s=size: method.run(d, 0.0, s)),
            }
        )
    out = {
        "profile": profile.name,
        "model": profile.model_for(dataset),
        "dataset": dataset,
        "split": "dev",
        "device": device_name(method.device),
        "backend": method.device.type,
        "rounds": ROUNDS,
        "points": rows,
    }
    results_dir.mkdir(parents=True, exist_ok=True)
    atomic_write_text(results_dir / CALIBRATION_FILE, json.dumps(out, indent=1) + "\n")
    benchmark.extra_info.update({k: v for k, v in out.items() if k != "points"})
    assert len(rows) == len(SIZES) * len(QUANTILES)
