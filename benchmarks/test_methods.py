"""Every (dataset, method, speed) of the profile: accuracy, FLOPs, exits, latency, utilisation.

One benchmark per unit; pytest-benchmark times ``profile.rounds`` runs over the test split after
a warm-up, and ``extra_info`` carries everything :func:`geep.reproduce.measure` measured plus
"method", "dataset", "speed" and "batch_size". Each row is also kept in
``<results>/runs/<dataset>/<method>.json`` for ``geep report``. Checkpoints are trained once and
cached, so a re-run only re-measures; with ``--resume`` it skips the units already recorded
(those then have no entry in that run's ``--benchmark-json``; the run files hold them all).
"""

from __future__ import annotations

from pathlib import Path

import pytest

from benchmarks.conftest import profile_of
from geep.encoding import Encoded
from geep.profiles import Profile
from geep.reproduce import load_unit, measure, record, recorded, speeds_for
from geep.runner import Method

_loaded: dict[tuple[str, str], tuple[Method, Encoded]] = {}


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    if "unit" in metafunc.fixturenames:
        profile = profile_of(metafunc.config)
        units = [
            (dataset, method, speed)
            for dataset in profile.datasets
            for method in profile.methods
            for speed in speeds_for(profile, method, dataset)
        ]
        metafunc.parametrize("unit", units, ids=[f"{d}-{m}-{s:g}" for d, m, s in units])


def trained(profile: Profile, method: str, dataset: str) -> tuple[Method, Encoded]:
    """The unit's model and test split, kept while its speeds are measured (one at a time)."""
    key = (method, dataset)
    if key not in _loaded:
        _loaded.clear()
        _loaded[key] = load_unit(profile, method, dataset)
    return _loaded[key]


def test_unit(benchmark, profile: Profile, results_dir: Path, resume: bool, unit) -> None:
    dataset, name, speed = unit
    if resume and recorded(results_dir, profile, dataset, name, speed):
        pytest.skip("already in the run file (--resume)")
    method, data = trained(profile, name, dataset)

    def timer(fn, rounds: int) -> None:
        benchmark.pedantic(fn, rounds=rounds, iterations=1)

    row = measure(method, data, speed, profile.batch_size, profile.rounds, timer)
    record(results_dir, profile, method, dataset, data, row)
    benchmark.extra_info.update(
        {"method": name, "dataset": dataset, "profile": profile.name, **row}
    )
    assert row["n"] == len(data) and 0.0 <= row["accuracy"] <= 1.0
