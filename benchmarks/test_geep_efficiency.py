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
from geep.exit_table import ExitTable, sample_keys
from geep.exits import first_exit_layer
from geep.geep import Geep
from geep.runner import load_checkpoint

DATASET = "rotten-tomatoes"
TRAIN = TrainConfig(max_train=2000, epochs=2, seq_len=48)
SPEEDS = [0.2, 0.4, 0.6]
BATCH_SIZE = 32
ROUNDS = 3


def median_seconds(fn: Callable[[], object], rounds: int) -> float:
    times = []
    for _ in range(rounds):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


@pytest.fixture(scope="module")
def method() -> Geep:
    geep = load_checkpoint(trained_checkpoint("geep", DATASET, TRAIN))
    if torch.cuda.is_available():
        geep.to("cuda")
    return geep


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
def test_wall_clock_follows_flops(benchmark, method: Geep, test_split: Encoded, speed: float):
    method.prepare(0.0)
    method.prepare(speed)  # exit tables are built before any timing
    method.run(test_split.select(torch.arange(BATCH_SIZE)), speed, BATCH_SIZE)  # warm-up
    seconds: dict[float, list[float]] = {0.0: [], speed: []}
    runs = {}

    def full_then_geep() -> None:
        for s in (0.0, speed):
            start = time.perf_counter()
            runs[s] = method.run(test_split, s, BATCH_SIZE)
            seconds[s].append(time.perf_counter() - start)

    benchmark.pedantic(full_then_geep, rounds=ROUNDS, iterations=1)
    full, fast = runs[0.0], runs[speed]
    flops_speedup = float(full.flops_full.mean() / fast.flops_full.mean())
    wall_full, wall_fast = statistics.median(seconds[0.0]), statistics.median(seconds[speed])
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
        }
    )


def test_exit_table_rates(benchmark, method: Geep, test_split: Encoded) -> None:
    device = method.device
    extras = method.extras
    ids = extras["train_input_ids"].long()
    attention = (torch.arange(ids.shape[1]) < extras["train_lengths"].unsqueeze(1)).long()
    special = method.tokenizer.all_special_ids
    train_keys = sample_keys(ids, attention, special)  # [N, K]
    exits = first_exit_layer(extras["train_uncertainty"], 0.4)
    pairs = int((train_keys >= 0).sum())
    build = median_seconds(
        lambda: ExitTable.from_samples(train_keys, exits, method.num_layers, device=device), 5
    )
    table = ExitTable.from_samples(train_keys, exits, method.num_layers, device=device)
    queries = sample_keys(test_split.input_ids, test_split.attention_mask, special)
    queries = queries[queries >= 0].to(device)  # [M]
    dense = torch.zeros(len(method.tokenizer), method.num_layers, dtype=torch.int32, device=device)
    dense[table.items()[0].to(device)] = table.items()[1].to(device)

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
