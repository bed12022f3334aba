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
from geep.report import load_runs, matched_table
from geep.reproduce import record, run_file, speeds_for
from tests.helpers import new_method, toy_test_split, trained_on_toy


def test_profile_selection(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("GEEP_PROFILE", raising=False)
    assert get_profile().name == "quick"
    monkeypatch.setenv("GEEP_PROFILE", "smoke")
    assert get_profile().name == "smoke"
    assert get_profile("paper").name == "paper"
    with pytest.raises(GeepError, match="unknown profile 'nope': choose one of smoke, quick"):
        get_profile("nope")


def test_recipes_per_method_and_dataset() -> None:
    quick, paper = PROFILES["quick"], PROFILES["paper"]
    assert quick.train_config("geep", "rotten-tomatoes").seq_len == 48
    assert quick.train_config("geep", "chinese-reviews").seq_len == 64
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


def test_config_hash_follows_the_settings() -> None:
    quick = PROFILES["quick"]
    assert quick.config_hash() == PROFILES["quick"].config_hash()
    assert replace(quick, max_eval=301).config_hash() != quick.config_hash()
    assert len({p.config_hash() for p in PROFILES.values()}) == len(PROFILES)


def _row(speed: float, accuracy: float, speedup: float) -> dict:
    return {"speed": speed, "accuracy": accuracy, "speedup_full": speedup, "n": 10}


def test_run_files_replace_a_speed_and_never_mix_configurations(tiny_model, tmp_path) -> None:
    method = trained_on_toy(new_method("bert", tiny_model))
    data = toy_test_split(method)
    smoke = PROFILES["smoke"]
    record(tmp_path, smoke, method, "toy", data, _row(0.0, 0.5, 1.0))
    record(tmp_path, smoke, method, "toy", data, _row(0.0, 0.7, 1.0))  # re-measured
    run = json.loads(run_file(tmp_path, "toy", "bert").read_text())
    assert [r["accuracy"] for r in run["rows"]] == [0.7]
    meta = run["provenance"]
    assert meta["profile"] == "smoke" and meta["config_hash"] == smoke.config_hash()
    assert meta["seed"] == 42 and meta["test_samples"] == len(data) and meta["versions"]["torch"]
    # a run under another configuration replaces the file instead of joining it
    other = replace(smoke, max_eval=64)
    record(tmp_path, other, method, "toy", data, _row(0.5, 0.6, 2.0))
    run = json.loads(run_file(tmp_path, "toy", "bert").read_text())
    assert [r["speed"] for r in run["rows"]] == [0.5]
    # the report refuses two configurations side by side
    record(tmp_path, smoke, method, "toy2", data, _row(0.0, 0.7, 1.0))
    with pytest.raises(GeepError, match="mixes runs of different configurations"):
        load_runs(tmp_path)


def test_report_needs_run_files(tmp_path: Path) -> None:
    with pytest.raises(GeepError, match="no run files"):
        load_runs(tmp_path)


def test_matched_table_takes_the_most_accurate_setting_reaching_each_speedup() -> None:
    frame = pd.DataFrame(
        [
            {"dataset": "d", "method": "geep", **_row(0.0, 0.80, 1.0)},
            {"dataset": "d", "method": "geep", **_row(0.5, 0.78, 1.6)},
            {"dataset": "d", "method": "geep", **_row(0.6, 0.79, 2.1)},
            {"dataset": "d", "method": "geep", **_row(0.9, 0.70, 3.5)},
            {"dataset": "d", "method": "bert", **_row(0.0, 0.82, 1.0)},
        ]
    )
    lines = matched_table(frame, "d").splitlines()
    assert lines[2] == (
        "| `geep` | 0.800 (1.00x) | 0.790 (2.10x, speed 0.6) | 0.790 (2.10x, speed 0.6) "
        "| 0.700 (3.50x, speed 0.9) |"
    )
    assert lines[3] == "| `bert` | 0.820 (1.00x) | - | - | - |"


def test_written_files_get_the_usual_mode(tmp_path: Path) -> None:
    """Atomic writes go through mkstemp (mode 0600); results must stay readable by others."""
    import os

    from geep.storage import atomic_write_text

    atomic_write_text(tmp_path / "a.txt", "x")
    mask = os.umask(0)
    os.umask(mask)
    assert (tmp_path / "a.txt").stat().st_mode & 0o777 == 0o666 & ~mask
