"""Benchmark options: ``--profile`` (else ``$GEEP_PROFILE``, else ``quick``), ``--results``
(else ``$GEEP_RESULTS``, else ``results/<profile>``) and ``--resume`` (else ``$GEEP_RESUME=1``):
skip the units whose rows the run files already hold, so an interrupted run goes on where it
stopped. The latency calibration's rounds are spread evenly over the run (first and last
included), so the model is fitted on the machine as the other units found it."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from geep.profiles import PROFILES, Profile, get_profile


def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("geep")
    group.addoption("--profile", choices=sorted(PROFILES), help="reproduction profile")
    group.addoption("--results", help="folder for run files (default: results/<profile>)")
    group.addoption("--resume", action="store_true", help="skip units already in the run files")


def profile_of(config: pytest.Config) -> Profile:
    return get_profile(config.getoption("--profile"))


@pytest.fixture(scope="session")
def profile(request: pytest.FixtureRequest) -> Profile:
    return profile_of(request.config)


@pytest.fixture(scope="session")
def resume(request: pytest.FixtureRequest) -> bool:
    return request.config.getoption("--resume") or os.environ.get("GEEP_RESUME") == "1"


@pytest.fixture(scope="session")
def results_dir(request: pytest.FixtureRequest, profile: Profile) -> Path:
    chosen = request.config.getoption("--results") or os.environ.get("GEEP_RESULTS")
    return Path(chosen or Path("results") / profile.name)


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Put the latency calibration's rounds at even intervals among the other benchmarks."""
    calibration = [i for i in items if i.originalname == "test_latency_calibration"]
    others = [i for i in items if i.originalname != "test_latency_calibration"]
    if len(calibration) < 2 or not others:
        return
    spread = list(others)
    last = len(calibration) - 1
    for k, item in reversed(list(enumerate(calibration))):
        spread.insert(round(k * len(others) / last), item)
    items[:] = spread
