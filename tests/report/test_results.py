"""The committed results say what their run files say: `geep report` regenerates each profile's
tables and CSV from its run files byte for byte, and the README's tables are the committed ones."""

from __future__ import annotations

import re
import shutil
from pathlib import Path

import pytest

from geep.report.curve import finished, pieces, write_curve_report
from geep.report.results import write_report

ROOT = Path(__file__).resolve().parents[2]
pytestmark = pytest.mark.tables  # orderings: tox -e test runs it again with other numpy kernels
PROFILES = sorted(p.name for p in (ROOT / "results").iterdir() if (p / "runs").is_dir())


@pytest.mark.parametrize("profile", PROFILES)
def test_committed_tables_are_what_geep_report_makes_of_the_run_files(
    profile: str, tmp_path: Path
) -> None:
    committed = ROOT / "results" / profile
    copy = shutil.copytree(committed, tmp_path / profile)
    write_report(copy)
    for name in ("tables.md", "results.csv"):  # the PNGs' bytes depend on matplotlib's version
        assert (copy / name).read_text() == (committed / name).read_text(), name


CURVES = sorted(p.name for p in (ROOT / "results").iterdir() if p.is_dir() and pieces(p))


@pytest.mark.parametrize("curve", CURVES)
def test_committed_curves_are_what_geep_report_makes_of_their_pieces(
    curve: str, tmp_path: Path
) -> None:
    committed = ROOT / "results" / curve
    copy = shutil.copytree(committed, tmp_path / curve)
    write_curve_report(copy)
    assert (copy / "tables.md").read_text() == (committed / "tables.md").read_text()
    for piece in finished(committed)[0]:
        for name in ("tables.md", "results.csv"):
            assert (copy / piece.name / name).read_text() == (piece / name).read_text(), name


def readme_tables() -> dict[str, str]:
    """The README's result tables by dataset, each as its block of `|` lines."""
    text = (ROOT / "README.md").read_text()
    found = re.finditer(r"(?m)^\*\*([\w-]+) \(\d+ test samples\)\*\*\n\n((?:\|.*\|\n)+)", text)
    return {m[1]: m[2] for m in found}


def test_the_readme_tables_are_the_compare_profiles() -> None:
    tables = readme_tables()
    assert sorted(tables) == ["rotten-tomatoes", "tweet-sentiment"]
    committed = (ROOT / "results" / "compare" / "tables.md").read_text()
    sections = {s.split(" ", 1)[0]: s for s in committed.split("\n## ")[1:]}
    for dataset, table in tables.items():
        assert table in sections[dataset], dataset
