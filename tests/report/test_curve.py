"""A learning curve's report: its pieces' run files -> accuracy against training-set size at full
depth and at the setting chosen on dev for 2x FLOPs, the claims' gaps, a plot, each piece's own
report."""

from __future__ import annotations

import dataclasses
import json
import shutil
from pathlib import Path

import pandas as pd
import pytest

from geep.cli import main
from geep.report.curve import finished, gap_trend, load_curve, plot_curve
from geep.reproduce.profiles import PROFILES, Profile
from geep.reproduce.run_files import run_file_text
from geep.reproduce.units import record
from tests.helpers import assert_one_error_line, new_method, run_row, toy_test_split, trained_on_toy

# (piece, training samples) -> entry -> per seed, its accuracy at full depth and at dev2 (2x)
MEASURED = {
    ("learning-1k", 100): {
        "bert": [(0.80, None), (0.82, None)],
        "geep": [(0.78, 0.70), (0.80, 0.72)],
        "geep-two-step": [(0.79, 0.74), (0.80, 0.75)],
        "fastbert": [(0.81, 0.76), (0.81, 0.78)],
    },
    ("learning-2k", 200): {
        "bert": [(0.86, None), (0.86, None)],
        "geep": [(0.84, 0.80), (0.84, 0.80)],
        "geep-two-step": [(0.85, 0.80), (0.85, 0.81)],
        "fastbert": [(0.85, 0.79), (0.85, 0.80)],
    },
}
METHODS = {"bert": "bert", "geep": "geep", "geep-two-step": "geep", "fastbert": "fastbert"}
# a threshold method's dev sweep: settings for 1.5x and 2x on dev, none for 3x (so no dev3 row)
SWEEP = {"speeds": [0.5, 0.5, None], "dev_speedup_full": [1.6, 2.1, None]}


def _toy_piece(real: Profile) -> Profile:
    """A piece of the learning curve on the toy task: the entries and seeds of MEASURED."""
    return dataclasses.replace(
        real,
        datasets=("toy",),
        methods=("bert", "geep", "fastbert"),
        speeds={"bert": (0.0,), "geep": (0.0,), "fastbert": (0.0,)},
        ablations={"geep-two-step": real.ablations["geep-two-step"]},
        seeds=(1, 2),
    )


@pytest.fixture(scope="module", autouse=True)
def toy_pieces():
    """The pieces' profiles on the toy task, under the pieces' names, so that a piece whose run
    files hold every unit of its profile counts as finished."""
    with pytest.MonkeyPatch.context() as patch:
        for piece, _ in MEASURED:
            patch.setitem(PROFILES, piece, _toy_piece(PROFILES[piece]))
        yield


def _write_piece(folder: Path, piece: str, size: int, trained: dict, drop: str = "") -> None:
    """The run files of one piece: each entry and seed at full depth, and a threshold method at
    dev1 (for 1.5x, at a lower accuracy the 2x table must not take) and dev2 (for 2x)."""
    profile = PROFILES[piece]
    sweep = {**SWEEP, "target_speedups": list(profile.dev_speedups)}
    for entry, seeds in MEASURED[piece, size].items():
        method = trained[METHODS[entry]]
        batching = "shrink" if entry == "fastbert" else None
        for seed, (full, at_2x) in enumerate(seeds, start=1):
            method.info.train = {**method.info.train, "seed": seed}
            method.info.train_samples = None if entry == drop else size
            rows = [run_row("0", full, 1.0, batching=batching)]
            if at_2x is not None:
                rows.append(run_row("dev1", 0.5, 1.6, dev_target=1.5, batching=batching))
                rows.append(run_row("dev2", at_2x, 2.1, dev_target=2.0, batching=batching))
            data = toy_test_split(method)
            for row in rows:
                kept = sweep if at_2x is not None else None
                record(folder / piece, profile, method, "toy", data, row, kept, entry)


@pytest.fixture(scope="module")
def trained(tiny_model: Path) -> dict:
    return {name: trained_on_toy(new_method(name, tiny_model)) for name in set(METHODS.values())}


@pytest.fixture(scope="module")
def curve(trained: dict, tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("learning-curve")
    for piece, size in MEASURED:
        _write_piece(folder, piece, size, trained)
    return folder


def _row(text: str, first_cell: str) -> list[str]:
    (line,) = [line for line in text.splitlines() if line.startswith(f"| {first_cell} |")]
    return [cell.strip() for cell in line.strip("|").split("|")]


def test_a_curve_tabulates_accuracy_against_training_set_size(curve: Path, capsys) -> None:
    assert main(["report", str(curve)]) == 0
    text = (curve / "tables.md").read_text()
    full, at_2x = text.split("At the setting chosen on dev for 2x FLOPs:")
    at_2x = at_2x.split("Gaps")[0]
    assert "| method | batching | 100 | 200 |" in full
    assert _row(full, "`geep`") == [
        "`geep`",
        "-",
        "0.790 ± 0.020, sd 0.014 (1.00x)",
        "0.840 ± 0.020, sd 0.000 (1.00x)",
    ]
    # at 2x: dev2's rows, not dev1's; bert at full depth as the reference
    assert _row(at_2x, "`geep`")[2:] == [
        "0.710 ± 0.020, sd 0.014 (2.10x)",
        "0.800 ± 0.020, sd 0.000 (2.10x)",
    ]
    assert _row(at_2x, "`fastbert`")[1:3] == ["shrink", "0.770 ± 0.020, sd 0.014 (2.10x)"]
    assert _row(at_2x, "`bert`")[2] == "0.810 ± 0.020, sd 0.014 (1.00x)"
    written = (curve / "learning-1k" / "runs" / "toy" / "geep-seed1.json").read_text()
    assert written == run_file_text(json.loads(written))  # record() writes a row a line
    for piece, _ in MEASURED:  # each piece's own report beside the curve's
        assert (curve / piece / "tables.md").read_text().startswith(f"# Results: profile `{piece}`")
    assert {p.name for p in curve.glob("*.png")} == {"learning-curve-toy.png"}
    assert main(["report", str(curve)]) == 0  # its own outputs are replaced on a second run


def test_the_claims_gaps_are_seed_by_seed_differences(curve: Path) -> None:
    assert main(["report", str(curve)]) == 0
    gaps = (curve / "tables.md").read_text().split("Gaps at 2x")[1].split("Gaps at full depth")[0]
    assert "whether the gap grows, holds or closes" in gaps  # two sizes: the trend column
    # geep - geep-two-step per seed: -0.04, -0.03 at 100; 0.00, -0.01 at 200
    assert _row(gaps, "one step of training is enough")[2:4] == [
        "-0.035, sd 0.007",
        "-0.005, sd 0.007",
    ]
    # geep-two-step - fastbert: -0.02, -0.03 at 100; +0.01, +0.01 at 200; its slope per tenfold
    # size is 0.035 / log10(2), and with 2 degrees of freedom t = 4.303 widens its 0.0166 error
    (line,) = [x for x in gaps.splitlines() if "`geep-two-step` - `fastbert`" in x]
    assert line.endswith(
        "| -0.025, sd 0.007 | +0.010, sd 0.000 | closes: +0.116 [+0.045, +0.188] |"
    )
    assert "teacher" not in gaps  # geep-teacher-last was not measured: no row


def _gaps(small: list[float], large: list[float]) -> pd.Series:
    """Gaps of three seeds at 1,000 and 10,000 samples, indexed as the curve's tables index them."""
    sizes = [1000] * len(small) + [10000] * len(large)
    index = pd.MultiIndex.from_arrays([sizes, [1, 2, 3][: len(small)] + [1, 2, 3][: len(large)]])
    return pd.Series([*small, *large], index=index)


def test_a_gap_grows_holds_or_closes_by_its_slope_against_log_size() -> None:
    # +0.04 per tenfold; residuals of -0.005, 0.005, 0 twice: error 0.00408, t(4) = 2.776
    grows = gap_trend(_gaps([0.01, 0.02, 0.015], [0.05, 0.06, 0.055]))
    assert grows["trend"] == "grows" and grows["slope"] == pytest.approx(0.04)
    assert (grows["low"], grows["high"]) == pytest.approx((0.04 - 0.01133, 0.04 + 0.01133), 1e-3)
    assert gap_trend(_gaps([-0.01, -0.02, -0.015], [-0.05, -0.06, -0.055]))["trend"] == "grows"
    assert gap_trend(_gaps([0.06, 0.05, 0.055], [0.0, 0.01, 0.005]))["trend"] == "closes"
    assert gap_trend(_gaps([-0.06, -0.05, -0.055], [0.0, 0.01, -0.005]))["trend"] == "closes"
    assert gap_trend(_gaps([0.02, 0.03, 0.01], [0.03, 0.01, 0.02]))["trend"] == "holds"
    assert gap_trend(_gaps([0.0, 0.0, 0.0], [0.02, 0.03, 0.025]))["trend"] == "grows"
    assert gap_trend(_gaps([0.02, 0.03, 0.01], [])) is None  # one size: no trend


def test_the_plot_draws_each_methods_seed_means_against_size(curve: Path) -> None:
    figure = plot_curve(load_curve(finished(curve)[0]), "toy")
    full, at_2x = figure.axes
    names = [c.get_label() for c in full.containers]  # labelled once, the panels alike
    assert len(names) == len(at_2x.containers) == 4
    drawn = {
        n: c.lines[0].get_xydata().tolist() for n, c in zip(names, at_2x.containers, strict=True)
    }
    assert drawn["geep"] == [[100, pytest.approx(0.71)], [200, pytest.approx(0.80)]]
    assert drawn["fastbert (shrink)"] == [[100, pytest.approx(0.77)], [200, pytest.approx(0.795)]]
    assert full.get_xscale() == "log"


def test_a_piece_that_does_not_say_its_training_set_size_is_refused(
    trained: dict, tmp_path: Path, capsys
) -> None:
    _write_piece(tmp_path, "learning-1k", 100, trained, drop="geep")
    _write_piece(tmp_path, "learning-2k", 200, trained)
    assert main(["report", str(tmp_path)]) == 2
    assert_one_error_line(capsys.readouterr().err, "learning-1k: a run file does not say how many")
    assert (
        not (tmp_path / "tables.md").exists()
        and not (tmp_path / "learning-2k" / "tables.md").exists()
    )


def test_an_unfinished_piece_is_left_out_and_named(curve: Path, tmp_path: Path, capsys) -> None:
    for piece, _ in MEASURED:
        shutil.copytree(curve / piece / "runs", tmp_path / piece / "runs")
    (tmp_path / "learning-2k" / "runs" / "toy" / "fastbert-seed2.json").unlink()  # still to run
    assert main(["report", str(tmp_path)]) == 0
    text = (tmp_path / "tables.md").read_text()
    # fastbert's seed 2: full depth and dev1..dev3; bert 1 unit a seed, the others 4
    assert "Left out until their runs finish: `learning-2k`: 22 of its 26 units measured." in text
    assert "| method | batching | 100 |\n" in text
    assert not (tmp_path / "learning-2k" / "tables.md").exists()
    stale = tmp_path / "learning-2k" / "runs" / "toy" / "geep-seed1.json"  # another recipe's
    run = json.loads(stale.read_text())
    run["provenance"]["config_hash"] = "0" * 12
    stale.write_text(run_file_text(run))
    assert main(["report", str(tmp_path)]) == 0
    assert (
        "`learning-2k`: 18 of its 26 units measured, 1 of its run files made under another "
        "configuration of `learning-2k` (a resumed run measures their units again)."
    ) in (tmp_path / "tables.md").read_text()
    (tmp_path / "learning-1k" / "runs" / "toy" / "bert-seed1.json").unlink()
    assert main(["report", str(tmp_path)]) == 2
    assert_one_error_line(capsys.readouterr().err, "has finished its run: `learning-1k`: 25 of")


def test_two_pieces_of_one_size_are_refused(curve: Path, tmp_path: Path, capsys) -> None:
    shutil.copytree(curve / "learning-1k", tmp_path / "learning-1k")
    shutil.copytree(curve / "learning-1k", tmp_path / "again")
    assert main(["report", str(tmp_path)]) == 2
    assert_one_error_line(capsys.readouterr().err, "two pieces of")


def test_each_device_is_named_with_what_ran_on_it(curve: Path, tmp_path: Path) -> None:
    """Pieces measured on two machines: the curve names each device with its pieces, a piece's
    own tables each device with its methods."""
    for piece, _ in MEASURED:
        shutil.copytree(curve / piece / "runs", tmp_path / piece / "runs")
    runs = {path: json.loads(path.read_text()) for path in tmp_path.rglob("*.json")}
    here = next(iter(runs.values()))["provenance"]["device"]
    other = "Other CPU, 2 threads"
    for path, run in runs.items():
        if "learning-2k" in path.parts or path.name.startswith("fastbert"):
            run["provenance"]["device"] = other
            path.write_text(run_file_text(run))
    assert main(["report", str(tmp_path)]) == 0
    text = (tmp_path / "tables.md").read_text()
    assert f"device: {here} (learning-1k); device: {other} (learning-1k, learning-2k);" in text
    piece = (tmp_path / "learning-1k" / "tables.md").read_text()
    assert f"Device: {here} (bert, geep, geep-two-step); Device: {other} (fastbert), " in piece
    alone = (tmp_path / "learning-2k" / "tables.md").read_text()
    assert f"Device: {other}, " in alone and here not in alone
