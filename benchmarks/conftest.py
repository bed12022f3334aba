"""Benchmark options: ``--profile`` (else ``$GEEP_PROFILE``, else ``quick``), ``--results``
(else ``$GEEP_RESULTS``, else ``geep-results/<profile>`` in the system's temporary folder, so a
run writes nothing into the checkout unless asked: ``tox -e reproduce`` asks for
``results/<profile>``) and ``--resume`` (else ``$GEEP_RESUME=1``): skip the units whose rows
the run files already hold, so an interrupted run goes on where it stopped. A damaged run
file is set aside first, with a line saying so, and its units run again. The latency
calibration's rounds are spread evenly over the run (first and last included), so the model
is fitted on the machine as the other units found it.

With pytest-xdist (``pytest benchmarks/ -n 2 --dist loadgroup``) the units are spread over
workers: one (dataset, method, seed) stays on one worker (its model is loaded once), the
calibration's rounds run on one worker, each worker gets a GPU of its own or an equal share of
the CPU cores, and the run files are written under a lock (:func:`geep.reproduce.units.record`).
pytest-benchmark switches itself off under xdist, so the units time themselves (their rows
are the same either way) and the benchmarks that only report to ``--benchmark-json`` (GEEP's
efficiency, the training speed) are skipped: run those in one process (docs/distributed.md)."""

from __future__ import annotations

import os
import sys
import tempfile
from pathlib import Path

import pytest
import torch

from geep.common.errors import GeepError
from geep.common.storage import check_folder
from geep.reproduce.profiles import PROFILES, Profile, get_profile
from geep.reproduce.units import recover_run_files


def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("geep")
    group.addoption("--profile", choices=sorted(PROFILES), help="reproduction profile")
    group.addoption(
        "--results",
        help="folder for run files (default: $GEEP_RESULTS, else geep-results/<profile> in the "
        "system's temporary folder)",
    )
    group.addoption("--resume", action="store_true", help="skip units already in the run files")


def profile_of(config: pytest.Config) -> Profile:
    return get_profile(config.getoption("--profile"))


@pytest.fixture(scope="session")
def profile(request: pytest.FixtureRequest) -> Profile:
    return profile_of(request.config)


@pytest.fixture(scope="session")
def resume(request: pytest.FixtureRequest) -> bool:
    return request.config.getoption("--resume") or os.environ.get("GEEP_RESUME") == "1"


def results_of(config: pytest.Config) -> Path:
    """The folder the run files go to: ``--results``, else ``$GEEP_RESULTS``, else one per
    profile in the temporary folder (the same on every run, so ``--resume`` finds it)."""
    chosen = config.getoption("--results") or os.environ.get("GEEP_RESULTS")
    if chosen:
        return Path(chosen)
    return Path(tempfile.gettempdir()) / "geep-results" / profile_of(config).name


@pytest.fixture(scope="session")
def results_dir(request: pytest.FixtureRequest) -> Path:
    return results_of(request.config)


def pytest_sessionstart(session: pytest.Session) -> None:
    """Check the results folder, and set aside the profile's damaged run files before any unit
    runs, one line each: their units are then measured again (with ``--resume`` too) and their
    files rewritten whole."""
    config = session.config
    results = results_of(config)
    try:
        check_folder(results, "the results folder", "give --results a folder you can write to")
    except GeepError as err:
        raise pytest.UsageError(str(err)) from None
    reporter = config.pluginmanager.get_plugin("terminalreporter")
    for line in recover_run_files(results, profile_of(config)):
        reporter.write_line(line) if reporter else print(line, file=sys.stderr)


def pytest_terminal_summary(
    terminalreporter: pytest.TerminalReporter, config: pytest.Config
) -> None:
    """Say where the run files went (``geep report FOLDER`` makes the tables)."""
    terminalreporter.write_line(f"geep: run files in {results_of(config)}")


def worker() -> tuple[int, int] | None:
    """(index, count) of this pytest-xdist worker; None in a run without workers."""
    name = os.environ.get("PYTEST_XDIST_WORKER")
    if name is None:
        return None
    return int(name.removeprefix("gw")), int(os.environ["PYTEST_XDIST_WORKER_COUNT"])


def pytest_configure(config: pytest.Config) -> None:
    """Give each xdist worker its own device: a GPU of its own, or its share of the CPU."""
    place = worker()
    if place is None:
        return
    index, count = place
    if torch.cuda.is_available():
        torch.cuda.set_device(index % torch.cuda.device_count())
    else:
        torch.set_num_threads(max(1, len(os.sched_getaffinity(0)) // count))


ONE_PROCESS_ONLY = ("test_geep_efficiency.py", "test_training_speed.py")


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Group the units for xdist (see the module docstring) and put the latency calibration's
    rounds at even intervals among the other benchmarks."""
    for item in items:
        if item.originalname == "test_latency_calibration":
            item.add_marker(pytest.mark.xdist_group("latency-calibration"))
        elif item.originalname == "test_unit":
            dataset, method, seed, *_ = item.callspec.params["unit"]
            item.add_marker(pytest.mark.xdist_group(f"{dataset}-{method}-seed{seed}"))
        elif worker() is not None and item.path.name in ONE_PROCESS_ONLY:
            item.add_marker(pytest.mark.skip(reason="pytest-benchmark is off under xdist"))
    calibration = [i for i in items if i.originalname == "test_latency_calibration"]
    others = [i for i in items if i.originalname != "test_latency_calibration"]
    if len(calibration) < 2 or not others:
        return
    spread = list(others)
    last = len(calibration) - 1
    for k, item in reversed(list(enumerate(calibration))):
        spread.insert(round(k * len(others) / last), item)
    items[:] = spread
