"""Benchmark options: ``--profile`` (else ``$GEEP_PROFILE``, else ``quick``) and ``--results``
(else ``$GEEP_RESULTS``, else ``results/<profile>``)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from geep.profiles import PROFILES, Profile, get_profile


def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("geep")
    group.addoption("--profile", choices=sorted(PROFILES), help="reproduction profile")
    group.addoption("--results", help="folder for run files (default: results/<profile>)")


def profile_of(config: pytest.Config) -> Profile:
    return get_profile(config.getoption("--profile"))


@pytest.fixture(scope="session")
def profile(request: pytest.FixtureRequest) -> Profile:
    return profile_of(request.config)


@pytest.fixture(scope="session")
def results_dir(request: pytest.FixtureRequest, profile: Profile) -> Path:
    chosen = request.config.getoption("--results") or os.environ.get("GEEP_RESULTS")
    return Path(chosen or Path("results") / profile.name)
