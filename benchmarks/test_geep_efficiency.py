"""Is GEEP's sorted, predicted-exit inference as fast as its FLOPs say?

On the profile's first dataset, with the profile's GEEP checkpoint and test split, at the
profile's ``efficiency_settings`` (by default ``dev2``, ``dev4``, ``dev6``: settings chosen on the
dev split a third, two thirds and all of the way from full depth to the fastest in dev FLOPs;
geep.core.sweeps): ``efficiency_rounds`` rounds alternate the
same model at full depth (speed 0) and at that speed, at the profile's batch size, so both
medians come from the same minutes of the same machine. ``extra_info`` records:

- ``flops_speedup``: mean FLOPs per sample at full depth over those at the speed, ``full``
  convention (every matmul, so attention counts as it costs).
- ``wall_speedup``: median wall time of a full-depth run over that of a run at the speed.
- ``realised_fraction``: wall_speedup / flops_speedup; 1.0 is the limit (time proportional to
  the layers run), the target is at least 0.9.
- ``exit_prediction_share``: median time of the exit prediction alone (tokens -> table ->
  sort, :meth:`Geep.plan`) over the median run time at that speed; the target is under 2%.
- ``dynamic_*``: the same weights and speed in ``mode=dynamic`` (FastBERT's exit: a student after
  every layer, the batch shrinks), and ``regroup_*``: ``mode=dynamic`` with ``batching=regroup``
  (the rows that go on after a layer wait in a pool until it holds a full batch;
  geep.core.dynamic_exit), timed in the same rounds, so predicted exits, shrinking and
  regrouped dynamic exits are compared on one model and one machine. ``*layer_batch_rows`` is
  the mean rows per layer call (geep.measure.work), what keeps the hardware busy;
  ``regroup_exit_agreement`` the share of samples whose exit layer is the same under both
  policies (1.0 but for padding noise next to the threshold).

``test_exit_table_rates`` times the hash table's build and lookup in keys per second on the
model's device against a dense [vocab, L] array lookup (possible for token ids only, not for
bigram keys).
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable

import numpy as np
import pytest
import torch

from benchmarks.conftest import profile_of
from geep.common.errors import GeepError
from geep.core.interface import Predictions
from geep.data.encoding import Encoded
from geep.measure.work import work_counts
from geep.methods.exit_table import ExitTable
from geep.methods.geep import Geep
from geep.pipeline.evaluate import prepare_checkpoint
from geep.reproduce.profiles import Profile
from geep.reproduce.units import Trained, checkpoint, device_name, load_unit


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    if "setting" in metafunc.fixturenames:
        metafunc.parametrize("setting", profile_of(metafunc.config).efficiency_settings)


def median_seconds(fn: Callable[[], object], rounds: int) -> float:
    times = []
    for _ in range(rounds):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def load(profile: Profile, *settings: str) -> Geep:
    return prepare_checkpoint(
        checkpoint(profile, "geep", profile.datasets[0], profile.seeds[0]), settings
    )


@pytest.fixture(scope="module")
def trained(profile: Profile) -> Trained:
    """The profile's GEEP model on its first dataset, with its test split and dev sweep."""
    return load_unit(profile, "geep", profile.datasets[0], profile.seeds[0])


@pytest.fixture(scope="module")
def method(trained: Trained) -> Geep:
    return trained.method


@pytest.fixture(scope="module")
def dynamic(profile: Profile) -> Geep:
    return load(profile, "mode=dynamic")


@pytest.fixture(scope="module")
def regrouped(profile: Profile) -> Geep:
    return load(profile, "mode=dynamic", "batching=regroup")


@pytest.fixture(scope="module")
def test_split(trained: Trained) -> Encoded:
    return trained.test


@pytest.fixture(scope="module")
def describe(method: Geep, profile: Profile) -> dict[str, object]:
    return {
        "method": "geep",
        "dataset": profile.datasets[0],
        "profile": profile.name,
        "batch_size": profile.batch_size,
        "device": device_name(method.device),
        "torch_threads": torch.get_num_threads(),
        "train": method.info.train,
    }


def test_wall_clock_follows_flops(
    benchmark,
    profile: Profile,
    trained: Trained,
    method: Geep,
    dynamic: Geep,
    regrouped: Geep,
    test_split: Encoded,
    describe: dict,
    setting: str,
) -> None:
    try:
        speed = trained.resolve(setting)["speed"]
    except GeepError as err:
        pytest.skip(str(err))
    method.prepare(0.0)
    method.prepare(speed)  # exit tables are built before any timing
    method.warm_up(test_split, speed, profile.batch_size)
    dynamic.warm_up(test_split, speed, profile.batch_size)
    regrouped.warm_up(test_split, speed, profile.batch_size)
    cases = {
        "full": (method, 0.0),
        "predict": (method, speed),
        "dynamic": (dynamic, speed),
        "regroup": (regrouped, speed),
    }
    runs, wall = timed_rounds(benchmark, cases, test_split, profile)
    full, fast = runs["full"], runs["predict"]
    flops_speedup = float(full.flops_full.mean() / fast.flops_full.mean())
    wall_full, wall_fast = wall["full"], wall["predict"]
    plan = median_seconds(lambda: method.plan(test_split, speed, profile.batch_size), 5)
    labels = test_split.labels.numpy()
    benchmark.extra_info.update(
        describe
        | {
            "setting": setting,
            "speed": speed,
            "n": len(test_split),
            "rounds": profile.efficiency_rounds,
            "accuracy": float((fast.labels == labels).mean()),
            "accuracy_full_depth": float((full.labels == labels).mean()),
            "avg_exit_layer": float(fast.exit_layers.mean()),
            "flops_speedup": flops_speedup,
            "flops_speedup_fastbert": float(
                full.flops_fastbert.mean() / fast.flops_fastbert.mean()
            ),
            "wall_seconds_full_depth": wall_full,
            "wall_seconds": wall_fast,
            "wall_speedup": wall_full / wall_fast,
            "realised_fraction": wall_full / wall_fast / flops_speedup,
            "exit_prediction_seconds": plan,
            "exit_prediction_share": plan / wall_fast,
            "layer_batch_rows": rows_per_layer_batch(fast, test_split),
            **dynamic_fields(runs, wall, test_split),
        }
    )


def timed_rounds(
    benchmark, cases: dict[str, tuple[Geep, float]], test_split: Encoded, profile: Profile
) -> tuple[dict[str, Predictions], dict[str, float]]:
    """Run every case (a model and its speed) once per round, in turn, for the profile's
    ``efficiency_rounds``: each case's last run and its median wall seconds."""
    seconds: dict[str, list[float]] = {case: [] for case in cases}
    runs = {}

    def one_round() -> None:
        for case, (runner, s) in cases.items():
            start = time.perf_counter()
            runs[case] = runner.run(test_split, s, profile.batch_size)
            seconds[case].append(time.perf_counter() - start)

    benchmark.pedantic(one_round, rounds=profile.efficiency_rounds, iterations=1)
    return runs, {case: statistics.median(times) for case, times in seconds.items()}


def rows_per_layer_batch(run: Predictions, test_split: Encoded) -> float:
    """The mean rows per layer call of ``run`` (geep.measure.work)."""
    return work_counts(run.calls, len(test_split))["mean_layer_batch_rows"]


def dynamic_fields(
    runs: dict[str, Predictions], wall: dict[str, float], test_split: Encoded
) -> dict[str, float]:
    """The ``dynamic_*`` and ``regroup_*`` fields of the module's docstring, measured against
    the full-depth run, and ``regroup_exit_agreement``."""
    full, labels = runs["full"], test_split.labels.numpy()
    values = {}
    for case in ("dynamic", "regroup"):
        out = runs[case]
        case_flops_speedup = float(full.flops_full.mean() / out.flops_full.mean())
        values |= {
            f"{case}_accuracy": float((out.labels == labels).mean()),
            f"{case}_avg_exit_layer": float(out.exit_layers.mean()),
            f"{case}_flops_speedup": case_flops_speedup,
            f"{case}_wall_seconds": wall[case],
            f"{case}_wall_speedup": wall["full"] / wall[case],
            f"{case}_realised_fraction": wall["full"] / wall[case] / case_flops_speedup,
            f"{case}_layer_batch_rows": rows_per_layer_batch(out, test_split),
        }
    # the policy must not change a sample's exit; padding noise may, next to the threshold
    agreement = np.mean(runs["regroup"].exit_layers == runs["dynamic"].exit_layers)
    values["regroup_exit_agreement"] = float(agreement)
    return values


def test_exit_table_rates(benchmark, method: Geep, test_split: Encoded, describe: dict) -> None:
    device = method.device
    train_keys, exits = method.train_keys(), method.exit_labels(0.4)  # [N, K], [N]
    pairs = int((train_keys >= 0).sum())
    build = median_seconds(
        lambda: ExitTable.from_samples(train_keys, exits, method.num_layers, device=device), 5
    )
    table = method.exit_table(0.4)
    queries = method.keys(test_split)
    queries = queries[queries >= 0].to(device)  # [M]
    dense = torch.zeros(len(method.tokenizer), method.num_layers, dtype=torch.int32, device=device)
    stored_keys, stored_counts = table.items()
    dense[stored_keys.to(device)] = stored_counts.to(device)

    def sync() -> None:
        if device.type == "cuda":
            torch.cuda.synchronize(device)

    def lookup() -> None:
        table.lookup(queries)
        sync()

    def dense_lookup() -> None:
        dense[queries]
        sync()

    assert torch.equal(table.lookup(queries), dense[queries])
    benchmark.pedantic(lookup, rounds=20, iterations=5, warmup_rounds=2)
    hash_rate = len(queries) / benchmark.stats.stats.median
    dense_rate = len(queries) / median_seconds(dense_lookup, 20)
    benchmark.extra_info.update(
        describe
        | {
            "speed": 0.4,
            "table_keys": len(table),
            "build_pairs": pairs,
            "build_seconds": build,
            "build_pairs_per_s": pairs / build,
            "lookup_keys": len(queries),
            "lookup_keys_per_s": hash_rate,
            "dense_lookup_keys_per_s": dense_rate,
            "hash_over_dense_time": dense_rate / hash_rate,
        }
    )
