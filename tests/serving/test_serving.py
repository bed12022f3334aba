"""Serving (geep.serving.server): the batcher's queues, the server's batches and answers, and
LoadGen driving the server in its scenarios."""

from __future__ import annotations

import json
import math
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from geep.common.errors import GeepError
from geep.core.interface import Method
from geep.data.encoding import Encoded
from geep.report.serving import plot_server_latency, serving_files, serving_section
from geep.serving.server import (
    DROPPED,
    BatcherConfig,
    BatchingServer,
    BatchQueues,
    LoadSettings,
    Request,
    ServingPlan,
    choose_settings,
    describe,
    highest_rate,
    measure_serving,
    overload_figures,
    run_scenario,
    served_labels,
)
from tests.helpers import (
    LOGIT_NOISE,
    assert_same_where_clear,
    layer_logits,
    mixed_split,
    new_method,
    spread_exit_labels,
    spread_speed,
    top_two_gap,
    trained_on_toy,
)

# --- the queues ----------------------------------------------------------------------------------


def arriving(n: int, at: float = 0.0, first: int = 0) -> list[Request]:
    return [Request(first + i, first + i, at) for i in range(n)]


def test_a_full_queue_goes_at_once_in_whole_batches_and_the_rest_when_due() -> None:
    queues = BatchQueues(BatcherConfig(max_batch=4, max_wait=1.0, max_dispatch=8))
    for request in arriving(10):
        queues.add(request)
    key, taken = queues.take(0.0)
    assert (key, [r.id for r in taken]) == (0, list(range(8)))  # two batches: max_dispatch
    assert queues.take(0.5) is None  # two left: neither a full batch nor due
    assert queues.due() == 1.0
    key, taken = queues.take(1.0)
    assert [r.id for r in taken] == [8, 9]
    assert queues.take(2.0) is None and queues.due() is None and len(queues) == 0


def test_the_ready_queue_whose_oldest_came_first_goes_first_and_alone() -> None:
    queues = BatchQueues(BatcherConfig(max_batch=2, max_wait=1.0, max_dispatch=4))
    queues.add(Request(0, 0, 0.5), key=6)
    queues.add(Request(1, 1, 0.1), key=2)
    queues.add(Request(2, 2, 0.6), key=6)
    queues.add(Request(3, 3, 0.7), key=2)  # both queues are full: key 2's oldest came first
    assert [(k, [r.id for r in t]) for k, t in [queues.take(0.8), queues.take(0.8)]] == [
        (2, [1, 3]),
        (6, [0, 2]),
    ]


def test_in_a_stream_no_request_waits_past_max_wait_and_a_batch_holds_one_key() -> None:
    """Poisson arrivals with random exit layers; an idle worker polls at every arrival and every
    due time (a simulated clock). Every request goes in one dispatch of its own key, none waits
    longer than ``max_wait``, and a dispatch smaller than a batch leaves only when due."""
    rng = np.random.default_rng(0)
    n = 3000
    arrival = np.cumsum(rng.exponential(0.002, n))
    layer = rng.integers(1, 7, n)
    config = BatcherConfig(max_batch=8, max_wait=0.01, max_dispatch=16)
    queues = BatchQueues(config)
    dispatched: dict[int, float] = {}
    i = 0
    for _ in range(3 * n):  # every poll takes a request or admits one: 2n polls are enough
        if i == n and not len(queues):
            break
        due = queues.due()
        now = min(arrival[i] if i < n else math.inf, math.inf if due is None else due)
        while i < n and arrival[i] <= now:
            queues.add(Request(i, i, float(arrival[i])), key=int(layer[i]))
            i += 1
        while (taken := queues.take(now)) is not None:
            key, requests = taken
            ids = [r.id for r in requests]
            assert set(layer[ids]) == {key}, "a dispatch mixes predicted layers"
            assert not dispatched.keys() & set(ids), "a request went twice"
            dispatched |= dict.fromkeys(ids, now)
            if len(requests) < config.max_batch:  # only when its oldest request is due
                assert now == requests[0].arrival + config.max_wait
    waits = np.array([dispatched[i] - arrival[i] for i in range(n)])
    assert len(dispatched) == n
    assert waits.max() <= config.max_wait + 1e-12
    assert (waits < config.max_wait / 2).mean() > 0.1  # full batches leave before they are due


def test_a_batcher_that_cannot_form_batches_is_refused() -> None:
    with pytest.raises(GeepError, match="max_dispatch >= max_batch"):
        BatcherConfig(max_batch=32, max_dispatch=16)


# --- the server on trained checkpoints -----------------------------------------------------------


CASES = {
    "bert": (),
    "fastbert-shrink": ("batching=shrink",),
    "fastbert-regroup": ("batching=regroup",),
    "fastbert-keep": ("batching=keep",),
    "geep": (),  # predicted exits: the exit-aware batcher
}


@pytest.fixture(scope="module")
def checkpoints(tiny_model: Path) -> dict[str, Method]:
    """One trained checkpoint per method, trained when first asked for."""
    return {}


@pytest.fixture(params=list(CASES))
def served(request, checkpoints, tiny_model: Path) -> tuple[Method, Encoded, float]:
    """A trained checkpoint with the case's options, the data it serves and a speed at which
    its exits spread."""
    name = request.param.split("-")[0]
    if name not in checkpoints:
        checkpoints[name] = trained_on_toy(new_method(name, tiny_model))
    method = checkpoints[name]
    method.configure(CASES[request.param])
    data = mixed_split(method)
    if name == "bert":
        return method, data, 0.0
    if name == "geep":
        spread_exit_labels(method)
        return method, data, 0.5
    return method, data, spread_speed(method, data)


def label_margin(method: Method, data: Encoded, exit_layers: np.ndarray) -> torch.Tensor:
    """How far each sample's answer is from a tie [N]: the top-two logit gap of its exit head."""
    if method.name == "bert":
        with torch.no_grad():
            return top_two_gap(method.model.logits(data.padded()))
    gaps = top_two_gap(layer_logits(method, data))  # [N, L]
    return gaps[torch.arange(len(data)), torch.from_numpy(exit_layers.astype(int) - 1)]


def test_the_server_answers_every_request_once_as_evaluate_would(served) -> None:
    method, data, speed = served
    expected = method.run(data, speed, 32)
    answers: list[tuple[list[int], np.ndarray]] = []
    config = BatcherConfig(max_batch=8, max_wait=0.005, max_dispatch=24)
    answer = lambda requests, labels: answers.append(([r.sample for r in requests], labels))  # noqa: E731
    with BatchingServer(method, data, speed, config, answer) as server:
        for start in range(0, len(data), 37):  # bursts of 37: full and partial batches
            server.submit([(i, i) for i in range(start, min(start + 37, len(data)))])
    samples = [s for batch, _ in answers for s in batch]
    assert sorted(samples) == list(range(len(data))), "a request was lost or answered twice"
    served_ = np.full(len(data), -1)
    for batch, labels in answers:
        served_[batch] = labels
    margin = label_margin(method, data, expected.exit_layers)
    assert_same_where_clear(served_, expected.labels, margin, LOGIT_NOISE, "served label")
    if method.name == "geep":  # the exit-aware batcher: a model batch holds one predicted layer
        predicted = method.predict_layers(data, speed).numpy()
        assert len(set(predicted)) >= 2, "every sample is predicted to exit alike"
        for batch, _ in answers:
            assert len(set(predicted[batch])) == 1, "a batch mixes predicted exit layers"
        assert {d.key for d in server.dispatches} == set(predicted)


def test_a_stopping_server_answers_what_is_still_queued(checkpoints, tiny_model) -> None:
    method = checkpoints.get("bert") or trained_on_toy(new_method("bert", tiny_model))
    data = mixed_split(method)
    answered: list[int] = []
    config = BatcherConfig(max_batch=32, max_wait=60.0, max_dispatch=32)  # nothing is ever due
    answer = lambda requests, labels: answered.extend(r.sample for r in requests)  # noqa: E731
    with BatchingServer(method, data, 0.0, config, answer) as server:
        server.submit([(i, i) for i in range(5)])
    assert sorted(answered) == list(range(5))


@pytest.mark.parametrize("scenario", ["Offline", "Server"])
def test_loadgen_accuracy_mode_serves_what_evaluate_gives(served, scenario, tmp_path) -> None:
    method, data, speed = served
    expected = method.run(data, speed, 32)
    config = BatcherConfig(max_batch=8, max_wait=0.005, max_dispatch=24)
    out = tmp_path / scenario
    run_scenario(
        lambda answer: BatchingServer(method, data, speed, config, answer),
        len(data),
        scenario,
        out,
        LoadSettings(min_duration=0.0, min_queries=1),
        accuracy=True,
        expected_qps=2000.0,
    )
    labels = served_labels(out, len(data))
    assert (labels >= 0).all(), "LoadGen logged no answer for some samples"
    margin = label_margin(method, data, expected.exit_layers)
    assert_same_where_clear(labels, expected.labels, margin, LOGIT_NOISE, f"{scenario} label")


def test_a_server_run_under_load_accounts_for_every_query(checkpoints, tiny_model, tmp_path):
    method = checkpoints.get("fastbert") or trained_on_toy(new_method("fastbert", tiny_model))
    method.configure(["batching=regroup"])
    data = mixed_split(method)
    config = BatcherConfig(max_batch=8, max_wait=0.005, max_dispatch=32)
    result = run_scenario(
        lambda answer: BatchingServer(method, data, 0.3, config, answer),
        len(data),
        "Server",
        tmp_path,
        LoadSettings(min_duration=0.5, min_queries=50, target_latency=0.2),
        expected_qps=300.0,
    )
    assert result["query_count"] >= 50
    assert result["dispatches"]["count"] > 1
    served = result["dispatches"]["mean_requests"] * result["dispatches"]["count"]
    assert served == pytest.approx(result["query_count"]), "dispatched requests != queries"
    assert 0 < result["99.00_percentile_latency_ns"] <= result["max_latency_ns"]
    assert result["effective_scenario"] == "Server"


def test_an_error_in_the_model_ends_the_loadgen_run_and_is_raised(tiny_model, tmp_path) -> None:
    method = new_method("fastbert", tiny_model)
    data = mixed_split(method)
    calls = 0
    run = method.run

    def failing(*args, **kwargs):
        nonlocal calls
        calls += 1
        if calls == 2:
            raise RuntimeError("the model broke")
        return run(*args, **kwargs)

    method.run = failing
    config = BatcherConfig(max_batch=8, max_wait=0.005, max_dispatch=8)
    with pytest.raises(RuntimeError, match="the model broke"):
        run_scenario(
            lambda answer: BatchingServer(method, data, 0.3, config, answer),
            len(data),
            "Offline",
            tmp_path,
            LoadSettings(min_duration=0.0, min_queries=1),
            accuracy=True,  # every sample once: several dispatches
        )
    assert calls >= 2


# --- settings and rates ---------------------------------------------------------------------------


def test_settings_are_chosen_on_dev_by_matched_flops_and_by_accuracy() -> None:
    plan = ServingPlan(datasets=(), matched_speedup=2.0, accuracy_drop=0.01)
    speedups = [1.1, 1.5, 1.9, 2.6, 4.0]
    accuracies = [0.80, 0.80, 0.79, 0.785, 0.70]
    assert choose_settings(speedups, accuracies, 0.80, plan) == {"matched": 2, "within": 2}
    assert choose_settings(speedups, accuracies, 0.795, plan) == {"matched": 2, "within": 3}
    assert choose_settings(speedups, accuracies, 0.95, plan)["within"] == 0  # none is close
    with pytest.raises(GeepError, match="one dev accuracy per dev setting"):
        choose_settings(speedups, accuracies[:2], 0.8, plan)


def test_the_rate_search_finds_the_highest_rate_that_meets_the_target() -> None:
    best, tried = highest_rate(lambda rate: rate <= 70.0, ceiling=100.0, steps=6)
    assert best is not None and 70.0 - 100 / 2**6 <= best <= 70.0
    assert all(held == (rate <= 70.0) for rate, held in tried) and len(tried) == 6
    never = highest_rate(lambda rate: False, 100.0, 4)
    assert never == (None, [(50.0, False), (25.0, False), (12.5, False), (6.25, False)])


# --- the report -----------------------------------------------------------------------------------


def serving_row(method: str, batching=None, precision="fp32", runtime="torch", **figures) -> dict:
    row = {
        "unit": f"rt-{method}-{batching}-{runtime}-{precision}",
        "method": method,
        "batching": batching,
        "runtime": runtime,
        "precision": precision,
        "setting": "full" if method == "bert" else "within",
        "accuracy": 0.8,
        "accuracy_low": 0.78,
        "accuracy_high": 0.82,
        "single_stream_p90_ms": 20.0,
        "offline_samples_per_s": 100.0,
        "server_rate": 60.0,
        "server_target_ms": 500.0,
        "server_runs": [{"rate": 50.0, "p99_ms": 120.0}, {"rate": 75.0, "p99_ms": 900.0}],
        "device": "a CPU",
    }
    return row | figures


def test_the_serving_table_gives_ratios_to_float32_bert(tmp_path) -> None:
    rows = [
        serving_row("bert"),
        serving_row("fastbert", "regroup", single_stream_p90_ms=10.0, offline_samples_per_s=150.0),
        serving_row("bert", precision="int8", server_rate=None),
        serving_row("bert", runtime="onnx", fp32_agreement=0.984, offline_samples_per_s=120.0),
        serving_row("fastbert", runtime="onnx-pieces", precision="int8", fp32_agreement=0.9),
    ]
    document = {
        "dataset": "rt",
        "rows": rows,
        "settings": describe(BatcherConfig(), LoadSettings()),
        "provenance": {"seed": 1, "git_commit": "abc"},
    }
    (tmp_path / "serving").mkdir()
    (tmp_path / "serving" / "rt.json").write_text(json.dumps(document))
    section = serving_section(serving_files(tmp_path))
    lines = {line.split(" | ")[0]: line for line in section.splitlines() if line.startswith("| `")}
    assert "| 10.0 (2.00x) | 150 (1.50x) | 60 (1.00x) |" in lines["| `fastbert` regroup"]
    assert "none met it" in lines["| `bert` int8"]
    assert "0.800 ± 0.020 |  | 20.0 (1.00x)" in lines["| `bert`"]  # the ratios' reference
    assert "| 98.4% | 20.0 (1.00x) | 120 (1.20x) |" in lines["| `bert` ONNX Runtime"]
    assert "| 90.0% |" in lines["| `fastbert` ONNX Runtime layer pieces int8"]
    fig = plot_server_latency(document)
    lines = {line.get_label(): line for line in fig.axes[0].lines}
    assert sorted(lines) == [
        "bert ONNX Runtime full",
        "bert full",
        "bert int8 full",
        "fastbert ONNX Runtime layer pieces int8 within",
        "fastbert regroup within",
        "p99 target",
    ]
    assert lines["bert full"].get_color() == lines["bert int8 full"].get_color()  # one method
    assert lines["bert int8 full"].get_linewidth() > lines["bert full"].get_linewidth()
    assert lines["fastbert regroup within"].get_linestyle() == "--"
    (tmp_path / "serving" / "rt.json").write_text('{"dataset": "rt", "rows": []}')
    with pytest.raises(GeepError, match="damaged"):
        serving_files(tmp_path)


# --- overload ------------------------------------------------------------------------------------


class SlowMethod:
    """A stand-in method of known capacity: each dispatch sleeps ``cost`` seconds, then answers
    label 0 for all its samples (``max_dispatch / cost`` requests a second at most)."""

    name = "slow"

    def __init__(self, cost: float) -> None:
        self.cost = cost

    def check_speed(self, speed: float) -> None:
        pass

    def prepare(self, speed: float) -> None:
        pass

    def queue_keys(self, data: Encoded, speed: float) -> None:
        return None

    def run(self, data: Encoded, speed: float, batch_size: int, on_batch) -> None:
        time.sleep(self.cost)
        on_batch(np.arange(len(data)), np.zeros(len(data), dtype=np.int64))


def slow_data(n: int = 64) -> Encoded:
    ids = torch.randint(5, 100, (n, 8))
    return Encoded.from_padded(ids, torch.ones_like(ids), torch.zeros_like(ids), torch.zeros(n))


SLOW = BatcherConfig(max_batch=8, max_wait=0.005, max_dispatch=8, max_queue=16)
SLOW_COST = 0.04  # seconds a dispatch of at most 8: 200 requests a second at most


def serve_slowly(rate: float, out: Path, config: BatcherConfig = SLOW) -> dict:
    """A LoadGen Server run of about 1 s at ``rate`` against :class:`SlowMethod`; its row."""
    data, settings = slow_data(), LoadSettings(min_duration=1.0, min_queries=20, target_latency=0.5)
    result = run_scenario(
        lambda answer: BatchingServer(SlowMethod(SLOW_COST), data, 0.0, config, answer),
        len(data),
        "Server",
        out,
        settings,
        expected_qps=rate,
    )
    return overload_figures(result, rate, config, settings)


def test_a_server_at_five_times_its_capacity_drops_past_its_queue_limit_and_ends_on_time(
    tmp_path,
) -> None:
    row = serve_slowly(1000.0, tmp_path)  # 5x the 200/s it can answer
    assert row["answered"] + row["dropped"] == row["issued"] >= 1000 * 0.8
    assert row["wall_s"] <= row["planned_s"] + 0.5, (
        f"the run lasted {row['wall_s']:.2f} s, planned {row['planned_s']:.2f} s"
    )
    assert row["peak_waiting"] <= SLOW.max_queue, "more requests waited than the queue limit"
    assert row["dropped"] > 0 and 0.5 < row["dropped_share"] < 1.0
    assert row["answered_per_s"] <= 1.1 * SLOW.max_dispatch / SLOW_COST
    assert row["rss_peak_mib"] - row["rss_start_mib"] < 64  # the process did not grow
    assert not row["rate_held"] and row["verdict"].startswith("rate not held (")
    assert f"{row['dropped']} of {row['issued']} queries dropped" in row["verdict"]


def test_a_server_below_its_capacity_answers_everything_and_holds_the_rate(tmp_path) -> None:
    row = serve_slowly(50.0, tmp_path)
    assert row["dropped"] == 0 and row["answered"] == row["issued"] >= 50
    assert row["answered_p99_ms"] <= row["target_ms"]
    assert row["rate_held"] and row["verdict"] == "rate held"
    assert row["wall_s"] <= row["planned_s"] + 0.5


def test_requests_past_the_queue_limit_are_dropped_at_once_not_labelled() -> None:
    answers: list[tuple[list[int], np.ndarray]] = []
    answer = lambda requests, labels: answers.append(([r.id for r in requests], labels))  # noqa: E731
    with BatchingServer(SlowMethod(0.01), slow_data(), 0.0, SLOW, answer) as server:
        server.submit([(i, i % 64) for i in range(40)])  # one burst: 16 wait, 24 are refused
        assert answers[0] == (list(range(16, 40)), pytest.approx([DROPPED] * 24))
    counts = server.accounting
    assert (counts.issued, counts.answered, counts.dropped, counts.peak_waiting) == (40, 16, 24, 16)
    assert sorted(i for ids, labels in answers[1:] for i in ids) == list(range(16))
    assert all((labels == 0).all() for _, labels in answers[1:])
    with pytest.raises(GeepError, match="never fills one"):
        BatcherConfig(max_batch=8, max_dispatch=8, max_queue=4)


def test_accuracy_refuses_a_run_with_dropped_samples_rather_than_count_them_wrong(
    tmp_path,
) -> None:
    data = slow_data()
    with pytest.raises(GeepError, match="was dropped by the queue limit"):
        run_scenario(  # Offline issues all 64 at once: 48 are dropped
            lambda answer: BatchingServer(SlowMethod(0.0), data, 0.0, SLOW, answer),
            len(data),
            "Offline",
            tmp_path,
            LoadSettings(min_duration=0.0, min_queries=1),
            accuracy=True,
        )
        served_labels(tmp_path, len(data))
    plan = ServingPlan(datasets=(), batcher=BatcherConfig(max_queue=64))
    with pytest.raises(GeepError, match="must not limit its queue"):
        measure_serving(SlowMethod(0.0), data, 0.0, plan, tmp_path)


def test_the_report_tables_the_overload_runs_beside_the_serving_rows(tmp_path) -> None:
    document = {
        "dataset": "rt",
        "rows": [serving_row("bert")],
        "settings": describe(BatcherConfig(), LoadSettings()),
        "provenance": {"seed": 1, "git_commit": "abc"},
    }
    runs = [
        {"multiple": m, **serve_slowly(rate, tmp_path / f"{m:g}x")}
        for m, rate in ((0.25, 50.0), (5.0, 1000.0))
    ]
    overload = document | {
        "rows": [
            {
                "unit": "rt-bert-full-overload",
                "method": "bert",
                "setting": "full",
                "device": "a CPU",
                "reference_rate": 200.0,
                "runs": runs,
            }
        ],
        "settings": describe(SLOW, LoadSettings()),
    }
    (tmp_path / "serving" / "overload").mkdir(parents=True)
    (tmp_path / "serving" / "rt.json").write_text(json.dumps(document))
    (tmp_path / "serving" / "overload" / "rt.json").write_text(json.dumps(overload))
    section = serving_section(serving_files(tmp_path))
    assert "queue limit of 16 waiting requests" in section
    held, overloaded = [
        line for line in section.splitlines() if line.startswith("| `bert` | full | ")
    ][1:]
    assert held.endswith(" | rate held |") and "| 0 of " in held
    assert "| 1000 (5x 200) | " in overloaded
    assert f"| rate not held ({runs[1]['dropped']} of {runs[1]['issued']} queries" in overloaded
