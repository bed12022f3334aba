"""Profiles, run files and the report, without training anything real (the harness end to end
is tests/reproduce/test_benchmarks.py)."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from dataclasses import asdict, replace
from pathlib import Path
from types import SimpleNamespace

import pandas as pd
import pytest
import torch

from geep.common.errors import GeepError
from geep.core.registry import get_method
from geep.data.registry import get_spec
from geep.measure.flops import dims_for
from geep.report.results import (
    _method_order,
    exit_rule_section,
    fastest_table,
    load_runs,
    matched_table,
    method_traits,
    precision_section,
    variant,
    with_realised_speedup,
    write_report,
)
from geep.reproduce import units as reproduce
from geep.reproduce.plan import split_sizes
from geep.reproduce.profiles import LEARNING_CURVE, PROFILES, Ablation, curve_pieces, get_profile
from geep.reproduce.units import Unit, record, recorded, run_file, settings_for, speeds_for, units
from tests.helpers import COMMITTED_RUNS, new_method, run_row, toy_test_split, trained_on_toy


def test_profile_selection(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("GEEP_PROFILE", raising=False)
    assert get_profile().name == "quick"
    monkeypatch.setenv("GEEP_PROFILE", "smoke")
    assert get_profile().name == "smoke"
    assert get_profile("paper").name == "paper"
    with pytest.raises(GeepError, match="unknown profile 'nope': choose one of smoke, quick"):
        get_profile("nope")


# every profile, and one with every kind of change: per-dataset length, per-method recipe
CHANGED = replace(
    PROFILES["smoke"],
    name="changed",
    seq_len={"rotten-tomatoes": 40},
    max_train={"rotten-tomatoes": 150},
    method_train={"geep": {"lr": 1e-3, "epochs": 2}},
    speeds={"fastbert": (0.0, 0.7)},
)
UNITS = [
    (profile, method, dataset)
    for profile in (*PROFILES.values(), CHANGED)
    for method in profile.method_names()
    for dataset in profile.datasets
]


@pytest.mark.parametrize(
    "profile, method, dataset", UNITS, ids=[f"{p.name}-{m}-{d}" for p, m, d in UNITS]
)
def test_each_recipe_is_the_profiles_with_its_method_dataset_and_seed_changes(
    profile, method, dataset
) -> None:
    expected = {
        **asdict(profile.train),
        **profile.method_train.get(method, {}),
        **({"seq_len": profile.seq_len[dataset]} if dataset in profile.seq_len else {}),
        **({"max_train": profile.max_train[dataset]} if dataset in profile.max_train else {}),
    }
    assert asdict(profile.train_config(method, dataset)) == expected
    assert asdict(profile.train_config(method, dataset, seed=7)) == {**expected, "seed": 7}


@pytest.mark.parametrize(
    "profile, method, dataset", UNITS, ids=[f"{p.name}-{m}-{d}" for p, m, d in UNITS]
)
def test_settings_are_the_fixed_sweep_then_the_dev_chosen_ones(profile, method, dataset) -> None:
    """The fixed sweep is the profile's, else the method's grid for the dataset's encoder and
    classes; threshold methods add dev1..devK, one per target speedup where the profile has
    them (counts such as patience do not)."""
    cls = get_method(method)
    layers = dims_for(profile.model_for(dataset)).num_layers
    grid = profile.speeds.get(method) or cls.speed_grid(layers, get_spec(dataset).num_classes)
    assert speeds_for(profile, method, dataset) == list(grid)
    chosen = len(profile.dev_speedups) or profile.dev_settings
    dev = [f"dev{k}" for k in range(1, chosen + 1)] if cls.calibrates else []
    assert settings_for(profile, method, dataset) == [f"{s:g}" for s in grid] + dev


@pytest.mark.parametrize("profile", [*PROFILES.values(), CHANGED], ids=lambda p: p.name)
def test_dynamic_exit_methods_run_each_setting_under_every_batching(profile) -> None:
    """FastBERT, DeeBERT and PABEE measure every setting under each of the profile's batching
    policies, one after the other; the methods without dynamic exits once, with None."""
    found = units(profile)
    assert len({u.id for u in found}) == len(found)
    for dataset in profile.datasets:
        for method in profile.method_names():
            settings = settings_for(profile, method, dataset)
            policies = (
                list(profile.batchings) if method in {"fastbert", "deebert", "pabee"} else [None]
            )
            expected = [(s, b) for s in settings for b in policies] * len(profile.seeds)
            mine = [(u.setting, u.batching) for u in found if u[:2] == (dataset, method)]
            assert mine == expected
    assert PROFILES["compare"].batchings == ("shrink", "regroup")


def test_an_ablation_trains_its_method_with_its_options_and_keeps_runs_of_its_own(
    tiny_model, tmp_path, monkeypatch
) -> None:
    """An ablation trains its method with its options into a checkpoint of its own,
    measures its own sweep, and records run files under its name that join the profile's
    others; the methods' checkpoints, recipes and configuration stay as they are."""
    smoke = PROFILES["smoke"]
    varied = replace(
        smoke, ablations={"geep-last": Ablation("geep", ("teacher_inputs=last",), speeds=(0.0,))}
    )
    assert varied.config_hash() == smoke.config_hash()
    assert varied.entries() == [*smoke.method_names(), "geep-last"]
    dataset = smoke.datasets[0]
    assert varied.train_config("geep-last", dataset, 3) == smoke.train_config("geep", dataset, 3)
    mine = [(u.setting, u.batching) for u in units(varied) if u.method == "geep-last"]
    assert mine == [("0", None), ("dev1", None), ("dev2", None)] * len(smoke.seeds)

    trained = []

    def train(method, dataset, path, model, config, settings=(), **_) -> None:
        trained.append((method, tuple(settings), path.name.rsplit("-", 1)[0]))
        path.mkdir(parents=True)
        (path / "config.json").write_text("{}")

    monkeypatch.setenv("GEEP_CACHE", str(tmp_path / "cache"))
    monkeypatch.setattr(reproduce, "train_method", train)
    plain = reproduce.checkpoint(varied, "geep", dataset, 1)
    assert plain == reproduce.checkpoint(smoke, "geep", dataset, 1)  # the method's, unchanged
    assert reproduce.checkpoint(varied, "geep-last", dataset, 1) != plain
    assert trained == [
        ("geep", (), f"geep-{dataset}"),
        ("geep", ("teacher_inputs=last",), f"geep-last-{dataset}"),
    ]

    method = trained_on_toy(new_method("geep", tiny_model))
    data = toy_test_split(method)
    # rows as measure() makes them, which names the batching policy
    record(tmp_path, varied, method, "toy", data, run_row("0", 0.7, 1.0, batching=None))
    row = run_row("0", 0.6, 1.0, batching=None)
    record(tmp_path, varied, method, "toy", data, row, entry="geep-last")
    assert recorded(tmp_path, varied, Unit("toy", "geep-last", 42, "0", None))
    assert json.loads(run_file(tmp_path, "toy", "geep-last", 42).read_text())["method"] == (
        "geep-last"
    )
    frame = load_runs(tmp_path)
    assert dict(zip(frame["method"], frame["accuracy"], strict=True)) == {
        "geep": 0.7,
        "geep-last": 0.6,
    }


def test_tables_list_each_ablation_after_its_method() -> None:
    names = ["pabee", "geep-two-step", "zeta", "geep", "bert", "geep-teacher-last", "hashee"]
    frame = pd.DataFrame({"method": names}).sort_values("method", key=_method_order)
    expected = ["bert", "geep", "geep-teacher-last", "geep-two-step", "hashee", "pabee", "zeta"]
    assert frame["method"].tolist() == expected
    with pytest.raises(GeepError, match=r"ablation 'last' of geep: name it geep-\.\.\."):
        replace(PROFILES["smoke"], ablations={"last": Ablation("geep", ("teacher_inputs=last",))})


def test_deebert_thresholds_are_fractions_of_the_largest_entropy() -> None:
    """DeeBERT's grid is in nats: tenths of ln C, the entropy of C equal classes (4 places)."""
    grid = get_method("deebert").speed_grid(6, 3)
    assert grid == [round(k / 10 * math.log(3), 4) for k in range(10)]


def test_config_hash_is_the_same_in_every_process_and_follows_the_settings() -> None:
    code = (
        "from geep.reproduce.profiles import PROFILES; "
        "print([p.config_hash() for p in PROFILES.values()])"
    )
    hashes = {
        subprocess.run(
            [sys.executable, "-c", code],
            env={**os.environ, "PYTHONHASHSEED": seed},
            capture_output=True,
            text=True,
            check=True,
        ).stdout
        for seed in ("1", "2")
    }
    assert hashes == {f"{[p.config_hash() for p in PROFILES.values()]}\n"}
    quick = PROFILES["quick"]
    assert replace(quick, max_eval=301).config_hash() != quick.config_hash()
    assert len({p.config_hash() for p in PROFILES.values()}) == len(PROFILES)


def test_the_learning_curves_pieces_differ_in_their_training_sets_alone() -> None:
    """Each piece trains on its sizes (rotten-tomatoes' whole split at the top) and measures the
    whole test splits; everything else is the same in every piece, and each hashes apart."""
    pieces = curve_pieces(LEARNING_CURVE)
    sizes = [[split_sizes(p, d, "geep")[0] for d in p.datasets] for p in pieces]
    assert sizes == [[1000, 1000], [2000, 2000], [5000, 5000], [10202, 10000]]
    assert all(split_sizes(p, "tweet-sentiment", "bert")[2] == 3718 for p in pieces)
    assert len({p.config_hash() for p in pieces}) == 4
    alike = {replace(p, name="", description="", max_train={}).config_hash() for p in pieces}
    assert len(alike) == 1
    assert settings_for(pieces[0], "fastbert", "rotten-tomatoes") == ["0", "dev1", "dev2", "dev3"]
    assert curve_pieces("quick") == [PROFILES["quick"]]


@pytest.mark.parametrize("folder", COMMITTED_RUNS, ids=lambda p: p.parent.name)
def test_committed_run_files_hash_as_their_profile_does(folder: Path) -> None:
    """A profile's fields added since its runs leave its hash alone when unset, so those run
    files still resume and report under it."""
    for path in folder.glob("*/*.json"):
        meta = json.loads(path.read_text())["provenance"]
        assert meta["config_hash"] == PROFILES[meta["profile"]].config_hash(), path


def test_a_dev_setting_no_target_reaches_is_skipped_with_its_target() -> None:
    sweep = {"speeds": [0.3, None], "dev_speedup_full": [2.1, None], "target_speedups": [2, 6]}
    trained = reproduce.Trained(None, None, sweep, "geep")
    assert trained.resolve("dev1")["speed"] == 0.3
    with pytest.raises(GeepError, match="no setting reaches 6x FLOPs on dev"):
        trained.resolve("dev2")


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
    assert recorded(tmp_path, smoke, Unit("toy", "bert", 42, "dev1", None))
    assert not recorded(tmp_path, smoke, Unit("toy", "bert", 42, "dev2", None))
    assert not recorded(tmp_path, smoke, Unit("toy", "bert", 42, "dev1", "regroup"))
    # a setting under another batching policy is a row of its own; the same one replaces it
    record(tmp_path, smoke, method, "toy", data, run_row("0", 0.8, 1.0, batching="regroup"))
    record(tmp_path, smoke, method, "toy", data, run_row("0", 0.9, 1.0, batching="regroup"))
    run = json.loads(run_file(tmp_path, "toy", "bert", 42).read_text())
    rows = [(r["setting"], r.get("batching"), r["accuracy"]) for r in run["rows"]]
    assert rows == [("0", None, 0.7), ("0", "regroup", 0.9), ("dev1", None, 0.6)]
    assert recorded(tmp_path, smoke, Unit("toy", "bert", 42, "0", "regroup"))
    # a run under another configuration replaces the file instead of joining it
    other = replace(smoke, max_eval=64)
    assert not recorded(tmp_path, other, Unit("toy", "bert", 42, "dev1", None))
    record(tmp_path, other, method, "toy", data, run_row("0.5", 0.6, 2.0))
    run = json.loads(run_file(tmp_path, "toy", "bert", 42).read_text())
    assert [r["setting"] for r in run["rows"]] == ["0.5"]
    # the report refuses two configurations side by side
    record(tmp_path, smoke, method, "toy2", data, run_row("0", 0.7, 1.0))
    with pytest.raises(GeepError, match="mixes runs of different configurations"):
        load_runs(tmp_path)


def test_a_row_without_its_batching_takes_the_run_files_options(tiny_model, tmp_path) -> None:
    """Rows that name no policy ran under their run file's options: a dynamic-exit method's
    default is ``shrink``; a method without dynamic exits has none."""
    method = trained_on_toy(new_method("bert", tiny_model))
    smoke = PROFILES["smoke"]
    record(tmp_path, smoke, method, "toy", toy_test_split(method), run_row("0", 0.7, 1.0))
    run = json.loads(run_file(tmp_path, "toy", "bert", 42).read_text())
    run["method"], run["provenance"]["options"] = "pabee", {}
    run_file(tmp_path, "toy", "pabee", 42).write_text(json.dumps(run))
    frame = load_runs(tmp_path).set_index("method")
    assert pd.isna(frame.loc["bert", "batching"]) and frame.loc["bert", "variant"] == "bert"
    assert frame.loc["pabee", "batching"] == "shrink"
    assert frame.loc["pabee", "variant"] == "pabee (shrink)"


def test_report_needs_run_files(tmp_path: Path) -> None:
    with pytest.raises(GeepError, match="no run files"):
        load_runs(tmp_path)


def _frame(*rows: tuple[str, dict]) -> pd.DataFrame:
    """Rows as load_runs gives them, each (method, run row); wall clock follows FLOPs unless a
    row's throughput says otherwise."""
    frame = pd.DataFrame(
        [
            {
                "dataset": "d",
                "method": m,
                "variant": variant(m, row.get("batching")),
                "git_commit": "c1",
                **method_traits(m, {}),
                **row,
            }
            for m, row in rows
        ]
    )
    return with_realised_speedup(frame)


def test_wall_clock_speedups_compare_runs_of_one_commit_only() -> None:
    """A run made later (another commit) may have had a faster machine: no ratio to `bert`."""
    frame = _frame(
        ("bert", run_row("0", 0.82, 1.0)),
        ("geep", run_row("0.5", 0.80, 2.0)),
        ("fastbert", run_row("0.5", 0.80, 2.0, git_commit="c2")),
    )
    wall = dict(zip(frame["method"], frame["wall_speedup"], strict=True))
    assert wall["bert"] == 1.0 and wall["geep"] == pytest.approx(2.0)
    assert math.isnan(wall["fastbert"])


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
        "| `geep` | - | 0.800 ± 0.020 (1.00x) | 0.780 ± 0.020 (1.60x) | 0.790 ± 0.020 (2.10x) "
        "| 0.700 ± 0.020 (3.50x) |"
    )
    assert lines[3] == "| `bert` | - | 0.820 ± 0.020 (1.00x) | - | - | - |"


def test_policies_that_exit_alike_share_an_accuracy_row_and_keep_their_times() -> None:
    """A dynamic-exit method whose shrinking and regrouped runs have the same accuracy, FLOPs
    and exits is one row of the accuracy table; the fastest-setting table, which holds wall
    clock, keeps a row per policy."""
    frame = _frame(
        ("bert", run_row("0", 0.82, 1.0)),
        ("fastbert", run_row("0", 0.81, 1.0, batching="shrink")),
        ("fastbert", run_row("0.5", 0.815, 2.0, batching="shrink", throughput=150)),
        ("fastbert", run_row("0", 0.81, 1.0, batching="regroup")),
        ("fastbert", run_row("0.5", 0.815, 2.0, batching="regroup")),
    )
    lines = matched_table(frame, "d").splitlines()
    assert lines[3:] == [
        "| `fastbert` | shrink = regroup | 0.810 ± 0.020 (1.00x) | 0.815 ± 0.020 (2.00x) "
        "| 0.815 ± 0.020 (2.00x) | - |",
    ]
    fastest = fastest_table(frame, "d").splitlines()  # the same FLOPs, not the same time
    assert fastest[3] == "| `fastbert` | shrink | 0.815 ± 0.020 (2.00x, 1.50x) | 0.5 |"
    assert fastest[4] == "| `fastbert` | regroup | 0.815 ± 0.020 (2.00x, 2.00x) | 0.5 |"


def test_wall_clock_of_several_timed_runs_carries_their_spread() -> None:
    timed = {"rounds": 5, "round_spread": 0.08}
    frame = _frame(
        ("bert", run_row("0", 0.82, 1.0, **timed)),
        ("geep", run_row("0.5", 0.815, 2.0, throughput=150, **timed)),
    )
    assert fastest_table(frame, "d").splitlines()[3] == (
        "| `geep` | - | 0.815 ± 0.020 (2.00x, 1.50x, spread 8%) | 0.5 |"
    )
    once = _frame(("bert", run_row("0", 0.82, 1.0)), ("geep", run_row("0.5", 0.815, 2.0)))
    assert "spread" not in fastest_table(once, "d")


@pytest.mark.parametrize(
    "differs", [{"accuracy": 0.8}, {"speedup_full": 2.5}, {"exit_histogram": [0, 0, 1, 9]}]
)
def test_policies_that_exit_differently_keep_a_row_each(differs: dict) -> None:
    frame = _frame(
        ("bert", run_row("0", 0.82, 1.0)),
        ("pabee", run_row("0", 0.81, 1.0, batching="shrink")),
        ("pabee", run_row("2", 0.815, 2.0, batching="shrink")),
        ("pabee", run_row("0", 0.81, 1.0, batching="regroup")),
        ("pabee", run_row("2", 0.815, 2.0, batching="regroup") | differs),
    )
    rows = matched_table(frame, "d").splitlines()[3:]
    assert [r.split(" | ")[1] for r in rows] == ["shrink", "regroup"]


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
        "| `pabee` | - | 0.820 ± 0.020, sd 0.028 (1.00x) | 0.811 ± 0.020, sd 0.021 (2.10x) "
        "| 0.811 ± 0.020, sd 0.021 (2.10x) | 0.700 ± 0.020, sd 0.000 (3.00x) |"
    )
    fastest = fastest_table(frame, "d").splitlines()
    assert fastest[2] == "| `bert` | - | 0.820 ± 0.020, sd 0.028 (1.00x, 1.00x) | 0, 0 |"
    # seed 1 reaches 2.0x within a point; seed 2 only full depth
    assert fastest[3] == "| `pabee` | - | 0.818 ± 0.020, sd 0.031 (1.50x, 1.50x) | 2, 0 |"


def test_written_files_get_the_usual_mode(tmp_path: Path) -> None:
    """Atomic writes go through mkstemp (mode 0600); results must stay readable by others."""
    import os

    from geep.common.storage import atomic_write_text

    atomic_write_text(tmp_path / "a.txt", "x")
    mask = os.umask(0)
    os.umask(mask)
    assert (tmp_path / "a.txt").stat().st_mode & 0o777 == 0o666 & ~mask


def test_the_report_prints_each_run_files_exit_rule_comparison(tiny_model, tmp_path) -> None:
    """Any run file whose dev sweep records a choice (GEEP's exit rule) gets its rows in the
    report's table; a rule that never reached the target speedup says so."""
    method = trained_on_toy(new_method("bert", tiny_model))
    data = toy_test_split(method)
    compared = [
        {"rule": "quantile", "reached": True, "speed": 0.4, "dev_speedup_full": 2.01}
        | {"dev_accuracy": 0.75, "exit_mae": 0.9, "exit_too_early": 0.3, "exit_too_late": 0.2},
        {"rule": "loglik", "reached": True, "speed": 0.5, "dev_speedup_full": 2.04}
        | {"dev_accuracy": 0.78, "exit_mae": 0.7, "exit_too_early": 0.25, "exit_too_late": 0.1},
        {"rule": "deepest", "reached": False},
    ]
    choice = {"option": "exit_rule", "chosen": "loglik", "split": "dev", "samples": 40}
    choice |= {"target_speedup": 2.0, "compared": compared}
    sweep = {"split": "dev", "speeds": [0.5], "choice": choice}
    smoke = PROFILES["smoke"]
    record(tmp_path, smoke, method, "toy", data, run_row("dev1", 0.6, 2.0), sweep)
    section = exit_rule_section(tmp_path)
    assert "On 40 dev samples" in section and "at most 1/2 of full depth's" in section
    rows = [line for line in section.splitlines() if line.startswith("| toy")]
    assert rows == [
        "| toy | `bert` | 42 | `quantile` | 2.01x | 0.750 | 0.90 | 0.30 | 0.20 |",
        "| toy | `bert` | 42 | `loglik` (chosen) | 2.04x | 0.780 | 0.70 | 0.25 | 0.10 |",
        "| toy | `bert` | 42 | `deepest` | not reached |  |  |  |  |",
    ]
    write_report(tmp_path)
    assert section in (tmp_path / "tables.md").read_text()
    record(tmp_path, smoke, method, "toy", data, run_row("dev1", 0.6, 2.0), {"speeds": [0.5]})
    assert exit_rule_section(tmp_path) is None


def test_a_profile_in_bfloat16_runs_each_unit_beside_a_float32_copy(
    tiny_model: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """load_unit casts the checkpoint to the profile's precision and keeps a float32 eager copy;
    the changes it counts come from the two runs, under the unit's batching; a float32 profile
    keeps no copy and counts nothing."""
    method = trained_on_toy(new_method("fastbert", tiny_model))
    test = toy_test_split(method)
    monkeypatch.setattr(reproduce, "checkpoint", lambda *args: Path("unused"))
    monkeypatch.setattr(reproduce, "prepare_checkpoint", lambda path: method)
    monkeypatch.setattr(reproduce, "load_split", lambda *args: SimpleNamespace(data=test))
    profile = replace(PROFILES["smoke"], precision="bfloat16", dev_settings=0)
    loaded = reproduce.load_unit(profile, "fastbert", "toy", 1)
    assert loaded.method is method and method.runtime.precision == "bfloat16"
    assert {p.dtype for p in loaded.float32.model.parameters()} == {torch.float32}
    runs = []
    run = type(method).run

    def spied(self, *args, **kwargs):  # bfloat16's labels flipped: every one changes
        runs.append((self.runtime.precision, self.batching))
        out = run(self, *args, **kwargs)
        if self.runtime.precision == "bfloat16":
            out.labels = 1 - out.labels
        return out

    monkeypatch.setattr(type(method), "run", spied)
    method.configure(["batching=regroup"])
    changes = loaded.precision_changes(0.5, 8)
    assert runs == [("float32", "regroup"), ("bfloat16", "regroup")]
    assert changes["label_changed"] == 1.0 and changes["exit_changed"] == 0.0
    plain = reproduce.load_unit(replace(profile, precision="float32"), "fastbert", "toy", 1)
    assert plain.float32 is None and plain.precision_changes(0.5, 8) == {}


def test_the_report_says_what_a_lower_precision_changed() -> None:
    rows = [
        {"dataset": "d", "variant": "fastbert (shrink)", "setting": "dev1", "accuracy": a}
        | {"float32_accuracy": 0.8, "exit_changed": e, "label_changed": x}
        | {"runtime": "bfloat16 eager"}
        for a, e, x in [(0.8, 0.1, 0.0), (0.7, 0.3, 0.1)]  # two seeds
    ]
    rows.append({**rows[0], "setting": "dev2", "exit_changed": 0.0, "label_changed": 0.0})
    section = precision_section(pd.DataFrame(rows))
    assert "## What bfloat16 eager changed against float32 eager" in section
    assert "| d | `fastbert` | shrink | dev1 | 0.750 | 0.800 | 20.0% | 5.0% |" in section
    assert "`fastbert (shrink)` 20.0% of exits, 5.0% of labels" in section
    assert "| d | `fastbert` | shrink | dev2 | 0.800 | 0.800 | 0.0% | 0.0% |" in section
    float32 = pd.DataFrame([{**rows[0], "exit_changed": None}])
    assert precision_section(float32) is None


def _drawn(fig) -> dict[str, str]:
    """Each label of a figure's legend and the colour it is drawn in (as #rrggbb)."""
    from matplotlib.colors import to_hex

    (legend,) = fig.legends  # one legend, the figure's: outside the axes
    assert all(ax.get_legend() is None for ax in fig.axes)
    drawn = {}
    for text, handle in zip(legend.get_texts(), legend.legend_handles, strict=True):
        colour = handle.get_color() if hasattr(handle, "get_color") else handle.get_facecolor()
        drawn[text.get_text()] = to_hex(colour[0] if len(colour) == 4 else colour)
    return drawn


def test_a_method_has_one_colour_in_every_plot_whichever_others_are_drawn() -> None:
    """Speed-accuracy, realised and modelled speedups: a method's colour is the registry's
    (Okabe-Ito, colour-blind safe), with or without an ablation beside it; its policies share
    it; every legend lies outside the axes."""
    from geep.common.style import PALETTE, colours
    from geep.core.registry import method_names
    from geep.report.results import (
        plot_modelled_speedup,
        plot_realised_speedup,
        plot_speed_accuracy,
    )

    assert PALETTE[:8] == (
        "#000000", "#E69F00", "#56B4E9", "#009E73", "#D55E00", "#0072B2", "#CC79A7", "#F0E442",
    )  # fmt: skip
    expected = colours(method_names())
    rows = [
        ("bert", run_row("0", 0.82, 1.0, modelled_h100_speedup=1.0)),
        ("fastbert", run_row("0.5", 0.81, 2.0, batching="shrink", modelled_h100_speedup=1.5)),
        ("fastbert", run_row("0.5", 0.8, 2.0, batching="regroup", modelled_h100_speedup=1.6)),
    ]
    ablation = ("geep-two-step", run_row("0.5", 0.80, 2.0, modelled_h100_speedup=1.7))
    for frame in (_frame(*rows), _frame(ablation, *rows)):
        for fig in (
            plot_speed_accuracy(frame, "d"),
            plot_realised_speedup(frame),
            plot_modelled_speedup(frame, "d"),
        ):
            drawn = _drawn(fig)
            assert drawn["bert"] == expected["bert"].lower()
            assert drawn["fastbert (shrink)"] == drawn["fastbert (regroup)"]
            assert drawn["fastbert (shrink)"] == expected["fastbert"].lower()
