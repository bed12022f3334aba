"""Profiles, run files and the report, without training anything real (the harness end to end
is tests/test_benchmarks.py)."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import pandas as pd
import pytest

from geep.errors import GeepError
from geep.profiles import PROFILES, get_profile
from geep.report import fastest_table, load_runs, matched_table, with_realised_speedup
from geep.reproduce import record, recorded, run_file, settings_for, speeds_for
from tests.helpers import new_method, run_row, toy_test_split, trained_on_toy


def test_profile_selection(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("GEEP_PROFILE", raising=False)
    assert get_profile().name == "quick"
    monkeypatch.setenv("GEEP_PROFILE", "smoke")
    assert get_profile().name == "smoke"
    assert get_profile("paper").name == "paper"
    with pytest.raises(GeepError, match="unknown profile 'nope': choose one of smoke, quick"):
        get_profile("nope")


def test_recipes_per_method_and_dataset() -> None:
    quick, paper, compare = PROFILES["quick"], PROFILES["paper"], PROFILES["compare"]
    assert quick.train_config("geep", "tweet-sentiment").seq_len == 64
    assert quick.train_config("geep", "rotten-tomatoes", seed=7).seed == 7
    assert compare.seeds == (1, 2, 3) and compare.train.max_train > quick.train.max_train
    assert paper.train.batching == "random" and quick.train.batching == "length"
    hashee = paper.train_config("hashee", "ag-news")
    assert (hashee.lr, hashee.epochs) == (5e-5, 4)
    assert paper.train_config("geep", "ag-news").lr == 2e-5
    assert paper.model_for("weibo") == "bert-base-chinese"
    assert paper.model_for("ag-news") == "bert-base-uncased"


def test_sweeps_come_from_the_profile_or_the_default_grid() -> None:
    quick, smoke, paper = PROFILES["quick"], PROFILES["smoke"], PROFILES["paper"]
    assert speeds_for(quick, "pabee", "rotten-tomatoes") == [0.0, 4.0, 3.0, 2.0, 1.0]
    assert speeds_for(quick, "hashee", "rotten-tomatoes") == [0.0, 1.0, 2.0, 3.0, 4.0, 5.0]
    assert speeds_for(paper, "pabee", "ag-news")[:2] == [0.0, 10.0]  # 12 layers
    assert speeds_for(quick, "deebert", "tweet-sentiment")[1] == pytest.approx(0.1099, abs=1e-4)
    assert speeds_for(smoke, "geep", "rotten-tomatoes") == [0.0, 0.5, 0.8]
    # threshold methods add the dev-chosen settings; counts (patience, hash depth) do not
    assert settings_for(smoke, "geep", "rotten-tomatoes") == ["0", "0.5", "0.8", "dev1", "dev2"]
    assert settings_for(smoke, "pabee", "rotten-tomatoes") == ["0", "2", "1"]
    compare = PROFILES["compare"]
    assert settings_for(quick, "deebert", "rotten-tomatoes")[-5:] == [
        "0.6238",
        *(f"dev{k}" for k in range(1, 5)),
    ]
    assert settings_for(compare, "deebert", "rotten-tomatoes")[-6:] == [
        f"dev{k}" for k in range(1, 7)
    ]


def test_config_hash_follows_the_settings() -> None:
    quick = PROFILES["quick"]
    assert quick.config_hash() == PROFILES["quick"].config_hash()
    assert replace(quick, max_eval=301).config_hash() != quick.config_hash()
    assert len({p.config_hash() for p in PROFILES.values()}) == len(PROFILES)


def test_run_files_replace_a_setting_and_never_mix_configurations(tiny_model, tmp_path) -> None:
    method = trained_on_toy(new_method("bert", tiny_model))
    data = toy_test_split(method)
    smoke = PROFILES["smoke"]
    record(tmp_path, smoke, method, "toy", data, run_row("0", 0.5, 1.0))
    record(tmp_path, smoke, method, "toy", data, run_row("0", 0.7, 1.0))  # re-measured
    sweep = {"split": "dev", "speeds": [0.5]}
    record(tmp_path, smoke, method, "toy", data, run_row("dev1", 0.6, 2.0), sweep)
    run = json.loads(run_file(tmp_path, "toy", "bert", 42).read_text())
    assert [(r["setting"], r["accuracy"]) for r in run["rows"]] == [("0", 0.7), ("dev1", 0.6)]
    meta = run["provenance"]
    assert meta["profile"] == "smoke" and meta["config_hash"] == smoke.config_hash()
    assert meta["seed"] == 42 and meta["test_samples"] == len(data) and meta["versions"]["torch"]
    assert meta["dev_sweep"] == sweep
    assert recorded(tmp_path, smoke, "toy", "bert", 42, "dev1")
    assert not recorded(tmp_path, smoke, "toy", "bert", 42, "dev2")
    # a run under another configuration replaces the file instead of joining it
    other = replace(smoke, max_eval=64)
    assert not recorded(tmp_path, other, "toy", "bert", 42, "dev1")
    record(tmp_path, other, method, "toy", data, run_row("0.5", 0.6, 2.0))
    run = json.loads(run_file(tmp_path, "toy", "bert", 42).read_text())
    assert [r["setting"] for r in run["rows"]] == ["0.5"]
    # the report refuses two configurations side by side
    record(tmp_path, smoke, method, "toy2", data, run_row("0", 0.7, 1.0))
    with pytest.raises(GeepError, match="mixes runs of different configurations"):
        load_runs(tmp_path)


def test_report_needs_run_files(tmp_path: Path) -> None:
    with pytest.raises(GeepError, match="no run files"):
        load_runs(tmp_path)


def _frame(*rows: tuple[str, dict]) -> pd.DataFrame:
    frame = pd.DataFrame([{"dataset": "d", "method": m, **row} for m, row in rows])
    frame["throughput"] = frame["speedup_full"] * 100  # wall clock follows FLOPs here
    return with_realised_speedup(frame)


def test_matched_table_takes_the_slowest_setting_reaching_each_speedup() -> None:
    """Chosen by FLOPs alone: the most accurate setting (0.79 at 2.1x) is not preferred."""
    frame = _frame(
        ("geep", run_row("0", 0.80, 1.0)),
        ("geep", run_row("dev1", 0.78, 1.6)),
        ("geep", run_row("dev2", 0.79, 2.1)),
        ("geep", run_row("dev3", 0.70, 3.5)),
        ("bert", run_row("0", 0.82, 1.0)),
    )
    lines = matched_table(frame, "d").splitlines()
    assert lines[2] == (
        "| `geep` | 0.800 ± 0.020 (1.00x) | 0.780 ± 0.020 (1.60x) | 0.790 ± 0.020 (2.10x) "
        "| 0.700 ± 0.020 (3.50x) |"
    )
    assert lines[3] == "| `bert` | 0.820 ± 0.020 (1.00x) | - | - | - |"


def test_tables_average_seeds_and_give_their_spread() -> None:
    frame = _frame(
        ("bert", run_row("0", 0.80, 1.0, seed=1)),
        ("bert", run_row("0", 0.84, 1.0, seed=2)),
        ("pabee", run_row("0", 0.80, 1.0, seed=1)),
        ("pabee", run_row("2", 0.796, 2.0, seed=1)),  # within 1 point of bert (0.80)
        ("pabee", run_row("1", 0.70, 3.0, seed=1)),
        ("pabee", run_row("0", 0.84, 1.0, seed=2)),
        ("pabee", run_row("2", 0.826, 2.2, seed=2)),  # 1.4 points below bert (0.84)
        ("pabee", run_row("1", 0.70, 3.0, seed=2)),
    )
    matched = matched_table(frame, "d").splitlines()
    assert matched[3] == (
        "| `pabee` | 0.820 ± 0.020, sd 0.028 (1.00x) | 0.811 ± 0.020, sd 0.021 (2.10x) "
        "| 0.811 ± 0.020, sd 0.021 (2.10x) | 0.700 ± 0.020, sd 0.000 (3.00x) |"
    )
    fastest = fastest_table(frame, "d").splitlines()
    assert fastest[2] == "| `bert` | 0.820 ± 0.020, sd 0.028 (1.00x, 1.00x) | 0, 0 |"
    # seed 1 reaches 2.0x within a point; seed 2 only full depth
    assert fastest[3] == "| `pabee` | 0.818 ± 0.020, sd 0.031 (1.50x, 1.50x) | 2, 0 |"


def test_written_files_get_the_usual_mode(tmp_path: Path) -> None:
    """Atomic writes go through mkstemp (mode 0600); results must stay readable by others."""
    import os

    from geep.storage import atomic_write_text

    atomic_write_text(tmp_path / "a.txt", "x")
    mask = os.umask(0)
    os.umask(mask)
    assert (tmp_path / "a.txt").stat().st_mode & 0o777 == 0o666 & ~mask
