"""The latency model's calibration run: full-depth ``bert`` timed at several batch sizes and
lengths, on the device the profile's other benchmarks run on (:mod:`geep.measure.latency`).

The profile's encoder with ``bert``'s classifier (its weights do not change its time) runs
windows of the profile's first dataset's dev split, sorted by length as every method batches
them: for each batch size in ``SIZES`` and each length quantile in ``QUANTILES``, two batches
of neighbouring lengths. Each of the ``ROUNDS`` benchmarks times every point once, and
``benchmarks/conftest.py`` spreads the rounds evenly over the whole run, so a point's median
describes the machine over the minutes the other units were timed in, not just the first one.
After every round the medians so far, each point's calls and the operators each kind of call
dispatches are written to ``<results>/latency-calibration.json``; ``geep report`` fits the model
on these points alone and predicts every other unit's measured time.
"""

from __future__ import annotations

import json
import statistics
from pathlib import Path

import pytest
import torch

from geep.common.storage import atomic_write_text, check_target, json_ownership
from geep.core.interface import Method
from geep.core.registry import get_method
from geep.data import load_dataset
from geep.data.encoding import Encoded
from geep.measure.work import calls_to_rows, operators_per_call
from geep.pipeline.evaluate import load_split
from geep.report.results import CALIBRATION_FILE
from geep.reproduce.profiles import Profile
from geep.reproduce.units import device_name

SIZES = (1, 2, 4, 8, 16, 32)
QUANTILES = (0.1, 0.5, 0.9)  # where in the dev split's length order each window sits
ROUNDS = 3


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


class Calibration:
    """The model and the points, built once and timed round by round."""

    def __init__(self, profile: Profile) -> None:
        dataset = profile.datasets[0]
        config = profile.train_config("bert", dataset, profile.seeds[0])
        labels = load_dataset(dataset)["dev"].features["label"].names  # untrained: timing only
        model = profile.model_for(dataset)
        self.method: Method = get_method("bert").create(model, labels, dataset, config)
        if torch.cuda.is_available():
            self.method.to("cuda")
        dev = load_split(self.method, dataset, "dev", profile.max_eval).data
        self.points = windows(dev, SIZES)
        self.seconds: list[list[float]] = [[] for _ in self.points]
        self.calls, self.operators = [], []  # untimed: also the first-call allocations
        for size, data in self.points:
            self.calls.append(calls_to_rows(self.method.run(data, 0.0, size).calls))
            self.operators.append(
                operators_per_call(lambda d=data, s=size: self.method.run(d, 0.0, s))
            )
        self.header = {
            "profile": profile.name,
            "model": model,
            "dataset": dataset,
            "split": "dev",
            "device": device_name(self.method.device),
            "backend": self.method.device.type,
        }

    def time_round(self) -> None:
        for i, (size, data) in enumerate(self.points):
            self.seconds[i].append(sum(self.method.run(data, 0.0, size).batch_seconds))

    def write(self, path: Path) -> None:
        rows = [
            {
                "batch_size": size,
                "samples": len(data),
                "mean_length": float(data.lengths.float().mean()),
                "seconds": statistics.median(times),
                "calls": calls,
                "operators": operators,
            }
            for (size, data), times, calls, operators in zip(
                self.points, self.seconds, self.calls, self.operators, strict=True
            )
        ]
        out = {**self.header, "rounds": len(self.seconds[0]), "points": rows}
        check_target(path, "the calibration file", "file", json_ownership("points"))
        atomic_write_text(path, json.dumps(out, indent=1) + "\n")


_calibration: dict[str, Calibration] = {}


@pytest.mark.parametrize("round_", range(1, ROUNDS + 1))
def test_latency_calibration(benchmark, profile: Profile, results_dir: Path, round_: int) -> None:
    if profile.name not in _calibration:
        _calibration[profile.name] = Calibration(profile)
    calibration = _calibration[profile.name]
    benchmark.pedantic(calibration.time_round, rounds=1, iterations=1)
    calibration.write(results_dir / CALIBRATION_FILE)
    benchmark.extra_info.update({**calibration.header, "round": round_})
