"""Every (dataset, method, seed, setting, batching) of the profile: accuracy with its interval,
FLOPs, exits, latency, utilisation.

One benchmark per unit; pytest-benchmark times ``profile.rounds`` runs over the test split after
a warm-up, and ``extra_info`` carries everything :func:`geep.reproduce.units.measure` measured (the
work counts of :mod:`geep.measure.work` included; the calls themselves only in the run files) plus
"method", "dataset", "seed", "setting", "speed_source", "batching" and "batch_size"; in a profile
of another precision than float32, also what it changed against float32 eager ("exit_changed",
"label_changed", "float32_accuracy": geep.pipeline.evaluate.precision_changes). A setting
is a speed of the fixed sweep (``0.5``) or one chosen on the dev split (``dev3``: geep.core.sweeps);
a dynamic-exit method measures each setting under every batching policy of the profile
(``shrink``, ``regroup``: geep.core.dynamic_exit), one after the other. Each row is also kept in
``<results>/runs/<dataset>/<method>-seed<seed>.json`` for ``geep report``.
Checkpoints are trained once and cached, so a re-run only re-measures; with ``--resume`` it skips
the units already recorded (those then have no entry in that run's ``--benchmark-json``; the run
files hold them all).
"""

from __future__ import annotations

from pathlib import Path

import pytest

from benchmarks.conftest import profile_of
from geep.common.errors import GeepError
from geep.reproduce.profiles import Profile
from geep.reproduce.run_files import read_run_file
from geep.reproduce.units import Trained, Unit, load_unit, measure, record, recorded, row_key, units

_loaded: dict[tuple[str, str, int], Trained] = {}


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    if "unit" in metafunc.fixturenames:
        found = units(profile_of(metafunc.config))
        metafunc.parametrize("unit", found, ids=[unit.id for unit in found])


def trained(profile: Profile, method: str, dataset: str, seed: int) -> Trained:
    """The unit's model, test split and dev sweep, kept while its settings are measured."""
    key = (method, dataset, seed)
    if key not in _loaded:
        _loaded.clear()
        _loaded[key] = load_unit(profile, method, dataset, seed)
    return _loaded[key]


def test_unit(benchmark, profile: Profile, results_dir: Path, resume: bool, unit: Unit) -> None:
    dataset, name, seed, setting, batching = unit
    if resume and recorded(results_dir, profile, unit):
        pytest.skip("already in the run file (--resume)")
    loaded = trained(profile, name, dataset, seed)
    try:
        fields = loaded.resolve(setting)
    except GeepError as err:
        pytest.skip(str(err))
    if batching is not None:
        loaded.method.configure([f"batching={batching}"])

    def timer(fn, rounds: int) -> None:
        benchmark.pedantic(fn, rounds=rounds, iterations=1)

    timed_by = None if benchmark.disabled else timer  # off under xdist: measure times itself
    row = measure(
        loaded.method, loaded.test, fields["speed"], profile.batch_size, profile.rounds, timed_by
    )
    row.update(fields)
    row.update(loaded.precision_changes(fields["speed"], profile.batch_size))
    path = record(
        results_dir, profile, loaded.method, dataset, loaded.test, row, loaded.sweep, name
    )
    info = {k: v for k, v in row.items() if k != "calls"}  # the run file keeps the calls
    benchmark.extra_info.update(
        {"method": name, "dataset": dataset, "seed": seed, "profile": profile.name, **info}
    )
    # the row as `geep report` will read it: the file checks, and holds the unit's row once
    keys = [row_key(r) for r in read_run_file(path)["rows"]]
    assert keys.count((setting, batching)) == 1
