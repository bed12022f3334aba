"""Is GEEP's sorted, predicted-exit inference as fast as its FLOPs say? (issue 3, "Performance")

For each speed, rounds alternate the same trained GEEP model at full depth (speed 0) and at that
speed on the test split, batch 32, so both medians come from the same minutes of the same
machine. ``extra_info`` records:

- ``flops_speedup``: mean FLOPs per sample at full depth over those at the speed, ``full``
  convention (every matmul, so attention counts as it costs).
- ``wall_speedup``: median wall time of a full-depth run over that of a run at the speed.
- ``realised_fraction``: wall_speedup / flops_speedup; 1.0 is the limit (time proportional to
  the layers run), the target is at least 0.9.
- ``exit_prediction_share``: median time of the exit prediction alone (tokens -> table ->
  sort, :meth:`Geep.plan`) over the median run time at that speed; the target is under 2%.
- ``dynamic_*``: the same weights and speed in ``mode=dynamic`` (FastBERT's exit: a student after
  every layer, the batch shrinks), timed in the same rounds, so prediction and dynamic exit are
  compared on one model and one machine.

``test_exit_table_rates`` times the hash table's build and lookup in keys per second on the
model's device against a dense [vocab, L] array lookup (possible for token ids only, not for
bigram keys).
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable

import pytest
import torch

from benchmarks.checkpoints import trained_checkpoint
from geep.config import TrainConfig
from geep.data import load_dataset
from geep.encoding import Encoded, encode_split
from geep.exit_table import ExitTable
from geep.geep import Geep
from geep.runner import load_checkpoint

DATASET = "rotten-tomatoes"
TRAIN = TrainConfig(max_train=2000, epochs=2, seq_len=48)
SPEEDS = [0.4, 0.5, 0.6, 0.8]
BATCH_SIZE = 32
ROUNDS = 5


def median_seconds(fn: Callable[[], object], rounds: int) -> float:
    times = []
    for _ in range(rounds):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def load(*settings: str) -> Geep:
    geep = load_checkpoint(trained_checkpoint("geep", DATASET, TRAIN))
    geep.configure(settings)
    return geep.to("cuda") if torch.cuda.is_available() else geep


@pytest.fixture(scope="module")
def method() -> Geep:
    return load()


@pytest.fixture(scope="module")
def dynamic() -> Geep:
    return load("mode=dynamic")


@pytest.fixture(scope="module")
def test_split(method: Geep) -> Encoded:
    return encode_split(method.tokenizer, load_dataset(DATASET)["test"], TRAIN.seq_len)


def describe(method: Geep) -> dict[str, object]:
    return {
        "method": "geep",
        "dataset": DATASET,
        "batch_size": BATCH_SIZE,
        "device": torch.cuda.get_device_name() if method.device.type == "cuda" else "cpu",
        "torch_threads": torch.get_num_threads(),
        "train": TRAIN.to_dict(),
    }


@pytest.mark.parametrize("speed", SPEEDS)
def test_wall_clock_follows_flops(
    benchmark, method: Geep, dynamic: Geep, test_split: Encoded, speed: float
) -> None:
    method.prepare(0.0)
    method.prepare(speed)  # exit tables are built before any timing
    warm_up = test_split.select(torch.arange(BATCH_SIZE))
    method.run(warm_up, speed, BATCH_SIZE)
    dynamic.run(warm_up, speed, BATCH_SIZE)
    cases = {"full": (method, 0.0), "predict": (method, speed), "dynamic": (dynamic, speed)}
    seconds: dict[str, list[float]] = {case: [] for case in cases}
    runs = {}

    def one_round() -> None:
        for case, (runner, s) in cases.items():
            start = time.perf_counter()
            runs[case] = runner.run(test_split, s, BATCH_SIZE)
            seconds[case].append(time.perf_counter() - start)

    benchmark.pedantic(one_round, rounds=ROUNDS, iterations=1)
    full, fast, dyn = runs["full"], runs["predict"], runs["dynamic"]
    flops_speedup = float(full.flops_full.mean() / fast.flops_full.mean())
    dynamic_flops_speedup = float(full.flops_full.mean() / dyn.flops_full.mean())
    wall = {case: statistics.median(times) for case, times in seconds.items()}
    wall_full, wall_fast = wall["full"], wall["predict"]
    plan = median_seconds(lambda: method.plan(test_split, speed, BATCH_SIZE), 5)
    labels = test_split.labels.numpy()
    benchmark.extra_info.update(
        describe(method)
        | {
            "speed": speed,
            "n": len(test_split),
            "rounds": ROUNDS,
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
            "dynamic_accuracy": float((dyn.labels == labels).mean()),
            "dynamic_avg_exit_layer": float(dyn.exit_layers.mean()),
            "dynamic_flops_speedup": dynamic_flops_speedup,
            "dynamic_wall_seconds": wall["dynamic"],
            "dynamic_wall_speedup": wall_full / wall["dynamic"],
            "dynamic_realised_fraction": wall_full / wall["dynamic"] / dynamic_flops_speedup,
        }
    )


def test_exit_table_rates(benchmark, method: Geep, test_split: Encoded) -> None:
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
        describe(method)
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
