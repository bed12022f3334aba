"""Serving under load: a method behind a dynamic batcher, driven by MLPerf Inference's LoadGen.

LoadGen (``mlperf_loadgen``, from the ``mlcommons-loadgen`` package) issues the queries of a
scenario (SingleStream: one at a time; Server: Poisson arrivals at a target rate; Offline: all at
once), times each one from issue to answer, and reports latency percentiles and whether the
latency target held. It does no batching: that is the system under test's job, and it is what
differs between methods here.

The system under test is a :class:`BatchingServer`: requests wait in :class:`BatchQueues` and one
worker thread dispatches them. A dispatch runs through :meth:`geep.core.interface.Method.run`
(length
order, batches of ``max_batch``, the method's own ``batching`` policy of dynamic exits inside
it), and each request is answered as soon as its model batch is done. Two ways to queue:

- first in, first out (every method except GEEP's predicted exits): one queue, dispatched when it
  holds a full batch or its oldest request has waited ``max_wait``;
- exit-aware (GEEP, ``mode=predict``): a request's exit layer is predicted on arrival from the
  exit table and it waits in the queue of that layer, so a batch only holds requests of one
  predicted layer; a queue is dispatched when full or when its oldest request has waited
  ``max_wait``.

A dispatch takes up to ``max_dispatch`` requests of its queue, whole batches unless its oldest
request is due: under load, dynamic exit with ``batching=regroup`` then pools the rows of several
batches layer by layer, as DREX does.

Beyond its capacity a server's queue grows without bound, and so does a LoadGen Server run,
which waits for every query it issued. ``max_queue`` bounds it: a request that arrives while
``max_queue`` requests wait (not yet dispatched) is dropped, completed to LoadGen at once with no
data and counted (:class:`Accounting`), never answered with a label. :func:`measure_overload`
drives a server past the highest rate it held and says whether the offered rate was held.
"""

from __future__ import annotations

import json
import math
import os
import threading
import time
from collections import deque
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any, Literal, NamedTuple

import numpy as np
import torch

from geep.common.errors import GeepError
from geep.core.dynamic_exit import BATCHINGS, Batching
from geep.core.interface import Method
from geep.data.encoding import Encoded
from geep.measure.metrics import bootstrap_interval

Scenario = Literal["SingleStream", "Offline", "Server"]
SCENARIOS: tuple[Scenario, ...] = ("SingleStream", "Offline", "Server")


@dataclass(frozen=True)
class BatcherConfig:
    """How the server forms batches (recorded with every result)."""

    max_batch: int = 32  # rows of one model batch
    max_wait: float = 0.010  # seconds a queue's oldest request may wait for its batch to fill
    max_dispatch: int = 128  # requests one dispatch may take from a queue
    max_queue: int | None = None  # requests that may wait undispatched; more are dropped

    def __post_init__(self) -> None:
        if self.max_batch < 1 or self.max_dispatch < self.max_batch or self.max_wait < 0:
            raise GeepError(
                "the batcher needs max_batch >= 1, max_dispatch >= max_batch and max_wait >= 0, "
                f"got {self.max_batch}, {self.max_dispatch} and {self.max_wait}"
            )
        if self.max_queue is not None and self.max_queue < self.max_batch:
            raise GeepError(
                f"a queue limit below a batch never fills one: max_queue {self.max_queue} < "
                f"max_batch {self.max_batch}"
            )


class Request(NamedTuple):
    """One query sample waiting for an answer."""

    id: int  # LoadGen's response id
    sample: int  # position of the sample in the served data (LoadGen's sample index)
    arrival: float  # the server's clock when it was issued, in seconds


class BatchQueues:
    """Requests waiting for a batch, one first-in-first-out queue per key (a predicted exit
    layer, or one key for all).

    A queue is ready when it holds ``max_batch`` requests or its oldest request has waited
    ``max_wait``; of the ready queues, the one whose oldest request came first goes next.
    """

    def __init__(self, config: BatcherConfig) -> None:
        self.config = config
        self._queues: dict[int, deque[Request]] = {}

    def __len__(self) -> int:
        return sum(len(q) for q in self._queues.values())

    def add(self, request: Request, key: int = 0) -> None:
        self._queues.setdefault(key, deque()).append(request)

    def due(self) -> float | None:
        """When the earliest oldest request will have waited ``max_wait``; None when empty."""
        heads = [q[0].arrival for q in self._queues.values() if q]
        return min(heads) + self.config.max_wait if heads else None

    def take(self, now: float) -> tuple[int, list[Request]] | None:
        """The next dispatch at time ``now``: (key, requests), or None while no queue is ready.

        It takes up to ``max_dispatch`` requests of one queue, in arrival order: all of them
        when its oldest request is due, otherwise whole batches only.
        """
        config = self.config
        ready = [
            (q[0].arrival, key)
            for key, q in self._queues.items()
            if q and (len(q) >= config.max_batch or now >= q[0].arrival + config.max_wait)
        ]
        if not ready:
            return None
        _, key = min(ready)
        queue = self._queues[key]
        count = min(len(queue), config.max_dispatch)
        if now < queue[0].arrival + config.max_wait:
            count -= count % config.max_batch
        return key, [queue.popleft() for _ in range(count)]


class Dispatch(NamedTuple):
    """What one dispatch took: for the tests and the serving statistics."""

    key: int  # the queue: the predicted exit layer (exit-aware), else 0
    requests: int
    queue_full: bool  # the queue held a full batch when it was taken
    longest_wait: float  # seconds its oldest request had waited when it was taken


Answer = Callable[[Sequence[Request], np.ndarray], None]
"""Called with the requests of a finished model batch and their labels [b]; with labels
:data:`DROPPED` for requests the queue limit refused (LoadGen gets no data for them)."""

DROPPED = -2  # the "label" of a refused request: never a class, never sent to LoadGen as one


@dataclass
class Accounting:
    """What became of a server's requests: ``issued == answered + dropped`` once it stops (an
    error's label -1 counts as answered), the most that waited at once, and each answered
    request's latency on the server's clock, from :meth:`BatchingServer.submit` to its answer."""

    issued: int = 0
    answered: int = 0
    dropped: int = 0
    peak_waiting: int = 0
    latencies: list[float] = field(default_factory=list)  # seconds, one per answered request

    def figures(self) -> dict[str, Any]:
        """The counts and the answered requests' p99 latency (None without any), for a row."""
        latencies = self.latencies
        p99 = float(np.percentile(latencies, 99)) * 1000 if latencies else None
        counts = {k: getattr(self, k) for k in ("issued", "answered", "dropped", "peak_waiting")}
        return counts | {"answered_p99_ms": p99}


class BatchingServer:
    """A method serving the samples of ``data`` at ``speed``: requests come in through
    :meth:`submit` (from LoadGen's threads), one worker thread batches and runs them, and
    ``answer`` receives each finished batch (module docstring).

    An error in the worker is kept in :attr:`error` and every request from then on is answered
    with label -1, so a LoadGen run ends; :func:`run_scenario` raises it afterwards. With
    ``config.max_queue``, :meth:`submit` drops what would exceed it (:data:`DROPPED`);
    :attr:`accounting` counts every request.
    """

    def __init__(
        self,
        method: Method,
        data: Encoded,
        speed: float,
        config: BatcherConfig,
        answer: Answer,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        method.check_speed(speed)
        method.prepare(speed)  # GEEP's exit table, before any request is timed
        self.method, self.data, self.speed, self.config = method, data, speed, config
        self.answer, self.clock = answer, clock
        self.queues = BatchQueues(config)
        self.dispatches: list[Dispatch] = []
        self.accounting = Accounting()
        self.error: BaseException | None = None
        self._inbox: list[Request] = []
        self._waiting = 0  # requests admitted and not yet dispatched: the inbox and the queues
        self._stopped = False
        self._wake = threading.Condition()
        self._worker = threading.Thread(target=self._serve, name="geep-batcher", daemon=True)

    def __enter__(self) -> BatchingServer:
        self._worker.start()
        return self

    def __exit__(self, *exc: object) -> None:
        with self._wake:
            self._stopped = True
            self._wake.notify()
        self._worker.join()

    def submit(self, samples: Sequence[tuple[int, int]]) -> None:
        """Queue (response id, sample index) pairs, all arriving now; those that would make
        more than ``max_queue`` wait are dropped: answered at once with :data:`DROPPED`."""
        now = self.clock()
        requests = [Request(id_, sample, now) for id_, sample in samples]
        limit = self.config.max_queue
        with self._wake:
            room = len(requests) if limit is None else max(0, limit - self._waiting)
            admitted, refused = requests[:room], requests[room:]
            self._inbox += admitted
            self._waiting += len(admitted)
            counts = self.accounting
            counts.issued += len(requests)
            counts.dropped += len(refused)
            counts.peak_waiting = max(counts.peak_waiting, self._waiting)
            self._wake.notify()
        if refused:
            self.answer(refused, np.full(len(refused), DROPPED, dtype=np.int64))

    def keys(self, requests: Sequence[Request]) -> list[int]:
        """Each request's queue (:meth:`Method.queue_keys`: GEEP's predicted exit layer), else 0."""
        if not requests:
            return []
        index = torch.tensor([r.sample for r in requests])
        keys = self.method.queue_keys(self.data.select(index), self.speed)
        return [0] * len(requests) if keys is None else keys.tolist()

    def _serve(self) -> None:
        try:
            self._loop()
        except BaseException as err:  # answered, not lost: LoadGen must see every request end
            self.error = err
            self._refuse()

    def _loop(self) -> None:
        while True:
            with self._wake:
                arrived, self._inbox = self._inbox, []
                stopped = self._stopped
            for request, key in zip(arrived, self.keys(arrived), strict=True):
                self.queues.add(request, key)
            taken = self.queues.take(math.inf if stopped else self.clock())  # stopping: drain
            if taken is not None:
                with self._wake:
                    self._waiting -= len(taken[1])
                self._dispatch(*taken)
                continue
            if stopped:
                return
            with self._wake:
                if not self._inbox and not self._stopped:
                    due = self.queues.due()
                    self._wake.wait(None if due is None else max(0.0, due - self.clock()))

    def _dispatch(self, key: int, requests: list[Request]) -> None:
        """Run one dispatch; if it fails, its unanswered requests get label -1 first."""
        now = self.clock()
        full = len(requests) >= self.config.max_batch
        self.dispatches.append(Dispatch(key, len(requests), full, now - requests[0].arrival))
        waiting = set(range(len(requests)))

        def answered(positions: np.ndarray, labels: np.ndarray) -> None:
            waiting.difference_update(positions.tolist())
            done = [requests[p] for p in positions]
            self._count(done)
            self.answer(done, labels)

        index = torch.tensor([r.sample for r in requests])
        try:
            self.method.run(
                self.data.select(index), self.speed, self.config.max_batch, on_batch=answered
            )
        except BaseException:
            if waiting:
                self._label_failed([requests[p] for p in sorted(waiting)])
            raise

    def _count(self, answered: Sequence[Request]) -> None:
        """Count answered requests, with their latency up to now (the worker's thread only)."""
        now = self.clock()
        self.accounting.answered += len(answered)
        self.accounting.latencies += [now - r.arrival for r in answered]

    def _label_failed(self, requests: Sequence[Request]) -> None:
        self._count(requests)
        self.answer(requests, np.full(len(requests), -1, dtype=np.int64))

    def _refuse(self) -> None:
        """After an error: answer every request waiting or still to come with label -1."""
        while True:
            waiting: list[Request] = []
            while (taken := self.queues.take(math.inf)) is not None:
                waiting += taken[1]
            with self._wake:
                waiting += self._inbox
                self._inbox = []
                self._waiting = 0
                if not waiting:
                    if self._stopped:
                        return
                    self._wake.wait()
                    continue
            self._label_failed(waiting)


# --- LoadGen ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class LoadSettings:
    """How LoadGen drives a scenario (recorded with every result). The official rules ask for
    600 s per run; a CPU study uses short runs and says so."""

    min_duration: float = 5.0  # seconds each performance run lasts at least
    min_queries: int = 64  # queries each performance run issues at least
    target_latency: float = 0.5  # seconds: the Server scenario's latency target
    target_percentile: float = 0.99  # of that target
    seed: int = 0  # LoadGen's sample-index and schedule seeds


def run_scenario(
    server: Callable[[Answer], BatchingServer],
    samples: int,
    scenario: Scenario,
    out: Path,
    settings: LoadSettings,
    accuracy: bool = False,
    expected_qps: float | None = None,
) -> dict[str, Any]:
    """Run one LoadGen scenario against ``server(answer)`` over ``samples`` samples, writing
    LoadGen's logs to ``out``; returns its results (:func:`read_results`).

    ``accuracy``: LoadGen's accuracy mode, every sample once, the answers logged (read them
    with :func:`served_labels`). ``expected_qps``: the Server scenario's target rate, or the
    Offline scenario's expected throughput (it sizes the query).
    """
    import mlperf_loadgen as lg  # heavy and optional at import time of the package

    out.mkdir(parents=True, exist_ok=True)
    test = lg.TestSettings()
    test.scenario = getattr(lg.TestScenario, scenario)
    test.mode = lg.TestMode.AccuracyOnly if accuracy else lg.TestMode.PerformanceOnly
    test.min_duration_ms = round(settings.min_duration * 1000)
    test.min_query_count = settings.min_queries
    test.sample_index_rng_seed = test.schedule_rng_seed = test.qsl_rng_seed = settings.seed
    test.server_target_latency_ns = round(settings.target_latency * 1e9)
    test.server_target_latency_percentile = settings.target_percentile
    if expected_qps is not None:
        test.server_target_qps = expected_qps
        test.offline_expected_qps = expected_qps
    logs = lg.LogSettings()
    logs.log_output.outdir = str(out)
    logs.log_output.copy_summary_to_stdout = False

    def answer(requests: Sequence[Request], labels: np.ndarray) -> None:
        data = np.ascontiguousarray(labels, dtype=np.int64)  # alive while LoadGen copies it
        base, size = data.ctypes.data, data.itemsize
        responses = [
            lg.QuerySampleResponse(r.id, 0, 0)  # dropped: completed, with no data
            if data[i] == DROPPED
            else lg.QuerySampleResponse(r.id, base + i * size, size)
            for i, r in enumerate(requests)
        ]
        lg.QuerySamplesComplete(responses)

    with server(answer) as running, peak_rss() as memory:
        sut = lg.ConstructSUT(
            lambda query: running.submit([(q.id, q.index) for q in query]), lambda: None
        )
        qsl = lg.ConstructQSL(samples, samples, lambda _: None, lambda _: None)
        start = time.monotonic()
        try:
            lg.StartTestWithLogSettings(sut, qsl, test, logs)
        finally:
            wall = time.monotonic() - start
            lg.DestroyQSL(qsl)
            lg.DestroySUT(sut)
    if running.error is not None:
        raise running.error
    return read_results(out) | {
        "dispatches": _dispatch_stats(running.dispatches),
        "queries": running.accounting.figures(),
        "wall_s": wall,
        "memory": memory,
    }


RSS_PERIOD = 0.005  # seconds between two readings of the resident set size


@contextmanager
def peak_rss() -> Iterator[dict[str, float | None]]:
    """The process's resident set size while the block runs, read from ``/proc/self/statm``
    every :data:`RSS_PERIOD` by a thread: {"rss_start_mib", "rss_peak_mib"}, filled when the
    block ends (None where there is no ``/proc``). The high-water mark ``ru_maxrss`` would not
    do: it keeps whatever the process reached before."""
    figures: dict[str, float | None] = {"rss_start_mib": None, "rss_peak_mib": None}
    statm = Path("/proc/self/statm")
    if not statm.is_file():
        yield figures
        return
    page = os.sysconf("SC_PAGE_SIZE") / 2**20

    def rss() -> float:
        return int(statm.read_text().split()[1]) * page

    start, done = rss(), threading.Event()
    peak = [start]

    def sample() -> None:
        while not done.wait(RSS_PERIOD):
            peak[0] = max(peak[0], rss())

    sampler = threading.Thread(target=sample, name="geep-rss", daemon=True)
    sampler.start()
    try:
        yield figures
    finally:
        done.set()
        sampler.join()
        figures.update(rss_start_mib=start, rss_peak_mib=max(peak[0], rss()))


def read_results(out: Path) -> dict[str, Any]:
    """LoadGen's verdict and figures from ``out/mlperf_log_detail.txt``: every ``result_*`` and
    ``effective_*`` entry, keys without their prefix for results."""
    found: dict[str, Any] = {}
    for line in (out / "mlperf_log_detail.txt").read_text().splitlines():
        if not line.startswith(":::MLLOG "):
            continue
        entry = json.loads(line[len(":::MLLOG ") :])
        key = entry["key"]
        if key.startswith("result_"):
            found[key[len("result_") :]] = entry["value"]
        elif key.startswith("effective_"):
            found[key] = entry["value"]
    return found


def served_labels(out: Path, samples: int) -> np.ndarray:
    """The label served for each sample [samples] from LoadGen's accuracy log (-1 where none).

    A sample the queue limit dropped has no label to score: rather than count it wrong, this
    refuses the log (an accuracy run serves without a limit, :func:`measure_serving`)."""
    labels = np.full(samples, -1, dtype=np.int64)
    for entry in json.loads((out / "mlperf_log_accuracy.json").read_text()):
        if not entry["data"]:
            raise GeepError(
                f"sample {entry['qsl_idx']} was dropped by the queue limit in {out}: accuracy "
                "needs every sample answered"
            )
        labels[entry["qsl_idx"]] = np.frombuffer(bytes.fromhex(entry["data"]), dtype=np.int64)[0]
    return labels


def _dispatch_stats(dispatches: Sequence[Dispatch]) -> dict[str, float]:
    """How full the dispatches were and how long their oldest requests had waited."""
    if not dispatches:
        return {"count": 0}
    sizes = np.array([d.requests for d in dispatches])
    waits = np.array([d.longest_wait for d in dispatches])
    return {
        "count": len(dispatches),
        "mean_requests": float(sizes.mean()),
        "full_share": float(np.mean([d.queue_full for d in dispatches])),
        "longest_wait_p50": float(np.median(waits)),
        "longest_wait_max": float(waits.max()),
    }


def describe(config: BatcherConfig, settings: LoadSettings) -> dict[str, Any]:
    """The batcher's and LoadGen's settings, for the result files."""
    return {"batcher": asdict(config), "loadgen": asdict(settings)}


# --- what a profile serves, and how its settings and rates are found ----------------------------


@dataclass(frozen=True)
class ServingPlan:
    """A profile's serving benchmark (benchmarks/test_serving.py): the datasets, the batcher,
    LoadGen's settings, and how each method's settings are chosen on the dev split."""

    datasets: tuple[str, ...]
    batcher: BatcherConfig = BatcherConfig()
    load: LoadSettings = LoadSettings()
    max_samples: int | None = 512  # the first N test samples are served, the first N dev choose
    settings: tuple[str, ...] = ("matched", "within")  # which of choose_settings' picks to serve
    batchings: tuple[Batching, ...] = BATCHINGS  # the dynamic-exit methods' policies served
    matched_speedup: float = 2.0  # the dev setting whose FLOPs speedup is closest to this
    accuracy_drop: float = 0.01  # and the fastest dev setting within this of bert's dev accuracy
    rate_steps: int = 5  # Server runs of the search for the highest rate meeting the target
    # overload: Server runs at these multiples of the highest rate that met the target, for
    # these methods (an early-exit one at the first of ``settings``), with this queue limit
    overload: tuple[float, ...] = ()
    overload_methods: tuple[str, ...] = ()  # the profile names them
    overload_queue: int = 64
    # at the last of ``settings``: early-exit methods served in torch's dynamic int8 as well, and
    # the ONNX Runtime units (geep.core.onnx_runtime; the onnx extra): ``bert`` as one graph and
    # ``onnx_pieces`` as layer pieces, in each of ``onnx_precisions``
    int8_methods: tuple[str, ...] = ()
    onnx_precisions: tuple[str, ...] = ()
    onnx_pieces: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        replace(self.batcher, max_queue=self.overload_queue)  # a limit the batcher accepts

    @property
    def overload_batcher(self) -> BatcherConfig:
        """The batcher of the overload runs: the plan's, with ``overload_queue`` as its limit."""
        return replace(self.batcher, max_queue=self.overload_queue)


def choose_settings(
    dev_speedups: Sequence[float],
    dev_accuracies: Sequence[float],
    bert_dev_accuracy: float,
    plan: ServingPlan,
) -> dict[str, int]:
    """Which dev settings (0-based, in the dev sweep's order) a method serves, chosen on dev only:

    - ``matched``: the one whose FLOPs speedup is closest to ``plan.matched_speedup``;
    - ``within``: the fastest whose accuracy is within ``plan.accuracy_drop`` of ``bert``'s (the
      slowest setting when none is).
    """
    if not dev_speedups or len(dev_speedups) != len(dev_accuracies):
        raise GeepError("choosing serving settings needs one dev accuracy per dev setting")
    speedups = np.asarray(dev_speedups, dtype=float)
    matched = int(np.argmin(np.abs(speedups - plan.matched_speedup)))
    close = np.asarray(dev_accuracies) >= bert_dev_accuracy - plan.accuracy_drop
    within = int(np.argmax(np.where(close, speedups, -np.inf))) if close.any() else 0
    return {"matched": matched, "within": within}


def highest_rate(
    meets: Callable[[float], bool], ceiling: float, steps: int
) -> tuple[float | None, list[tuple[float, bool]]]:
    """The highest Poisson rate at which ``meets(rate)`` (a Server run: LoadGen's verdict that
    the latency target held), searched by halving the interval between 0 and ``ceiling`` (the
    Offline throughput: no server sustains more) ``steps`` times. Returns that rate (None when
    even the lowest tried failed) and every (rate, verdict) tried, in order."""
    low, high, best = 0.0, ceiling, None
    tried: list[tuple[float, bool]] = []
    for _ in range(steps):
        rate = (low + high) / 2
        held = meets(rate)
        tried.append((rate, held))
        if held:
            low, best = rate, rate
        else:
            high = rate
    return best, tried


def measure_serving(
    method: Method,
    data: Encoded,
    speed: float,
    plan: ServingPlan,
    out: Path,
    reference: np.ndarray | None = None,
) -> dict[str, Any]:
    """Serve ``data`` (with its labels) at ``speed`` through LoadGen; LoadGen's logs go under
    ``out``. Returns the row of figures:

    - accuracy mode (every sample once, Offline): the served labels' accuracy with its 95%
      bootstrap interval, ``served_agreement``, the share equal to :meth:`Method.run`'s, and
      with ``reference`` (the labels [N] of the same method in torch float32, for a unit in
      another precision or runtime) ``fp32_agreement``, the share equal to those;
    - SingleStream at batch 1 (``max_batch`` 1, no wait): its p90 latency;
    - Offline: samples per second;
    - Server: the highest Poisson rate whose p99 latency met ``plan.load.target_latency``
      (:func:`highest_rate` below the Offline throughput), with every rate tried.
    """
    n = len(data)
    labels = data.labels.numpy()

    def server(config: BatcherConfig) -> Callable[[Answer], BatchingServer]:
        return lambda answer: BatchingServer(method, data, speed, config, answer)

    if plan.batcher.max_queue is not None:  # Offline issues every query at once
        raise GeepError(
            "a serving plan's batcher must not limit its queue (Offline issues every query at "
            "once): overload_queue limits the overload runs'"
        )
    start = time.perf_counter()
    run_scenario(server(plan.batcher), n, "Offline", out / "accuracy", plan.load, accuracy=True)
    rough_qps = n / (time.perf_counter() - start)
    served = served_labels(out / "accuracy", n)
    expected = method.run(data, speed, plan.batcher.max_batch).labels
    correct = (served == labels).astype(np.float64)
    low, high = bootstrap_interval(correct)
    alone = BatcherConfig(max_batch=1, max_wait=0.0, max_dispatch=1)
    single = run_scenario(server(alone), n, "SingleStream", out / "SingleStream", plan.load)
    offline = run_scenario(
        server(plan.batcher), n, "Offline", out / "Offline", plan.load, expected_qps=rough_qps
    )
    runs: list[dict[str, Any]] = []

    def meets(rate: float) -> bool:
        result = run_scenario(
            server(plan.batcher),
            n,
            "Server",
            out / f"Server-{rate:.1f}",
            plan.load,
            expected_qps=rate,
        )
        runs.append({"rate": rate, **_server_figures(result)})
        return bool(result["perf_constraints_met"])

    best, _ = highest_rate(meets, offline["samples_per_second"], plan.rate_steps)
    return {
        "accuracy": float(correct.mean()),
        "accuracy_low": low,
        "accuracy_high": high,
        "served_agreement": float(np.mean(served == expected)),
        "fp32_agreement": None if reference is None else float(np.mean(served == reference)),
        "n": n,
        "single_stream_p90_ms": single["90.00_percentile_latency_ns"] / 1e6,
        "single_stream_validity": single["validity"],
        "offline_samples_per_s": offline["samples_per_second"],
        "offline_dispatches": offline["dispatches"],
        "server_rate": best,
        "server_target_ms": plan.load.target_latency * 1000,
        "server_runs": runs,
    }


def _server_figures(result: dict[str, Any]) -> dict[str, Any]:
    """What a Server run's row keeps: LoadGen's verdicts, its p99 latency, its dispatches."""
    return {
        "met": bool(result["perf_constraints_met"]),
        "validity": result["validity"],
        "p99_ms": result["99.00_percentile_latency_ns"] / 1e6,
        "completed_samples_per_s": result["completed_samples_per_sec"],
        "dispatches": result["dispatches"],
    }


# --- beyond the highest rate --------------------------------------------------------------------


def planned_duration(rate: float, settings: LoadSettings) -> float:
    """Seconds over which a Server run at ``rate`` issues its queries: LoadGen schedules at
    least ``min_queries`` and at least ``min_duration`` of Poisson arrivals, then waits for all
    of them to complete."""
    return max(settings.min_duration, settings.min_queries / rate)


def overload_figures(
    result: dict[str, Any], rate: float, config: BatcherConfig, settings: LoadSettings
) -> dict[str, Any]:
    """An overload run's row from :func:`run_scenario`'s result: the offered rate, what was
    answered and dropped, the answered queries' p99 latency (the server's clock: LoadGen's own
    percentiles count the dropped queries' instant completions), the peak queue and memory,
    the planned and actual length, and the verdicts. The latency bound held when the answered
    p99 met the target; the rate held when, besides, nothing was dropped."""
    queries = result["queries"]
    planned = planned_duration(rate, settings)
    target_ms = settings.target_latency * 1000
    p99 = queries["answered_p99_ms"]
    latency_held = p99 is not None and p99 <= target_ms
    rate_held = latency_held and queries["dropped"] == 0
    dropped_share = queries["dropped"] / queries["issued"] if queries["issued"] else 0.0
    if rate_held:
        verdict = "rate held"
    else:
        reasons = []
        if queries["dropped"]:
            counts = f"{queries['dropped']} of {queries['issued']} queries dropped"
            reasons.append(f"{counts} ({dropped_share:.1%})")
        if not latency_held:
            reasons.append(f"answered p99 over {target_ms:g} ms")
        verdict = f"rate not held ({', '.join(reasons)})"
    return {
        "offered_rate": rate,
        **queries,
        "dropped_share": dropped_share,
        "answered_per_s": queries["answered"] / result["wall_s"],
        "max_queue": config.max_queue,
        **result["memory"],
        "planned_s": planned,
        "wall_s": result["wall_s"],
        "target_ms": target_ms,
        "latency_held": latency_held,
        "rate_held": rate_held,
        "verdict": verdict,
        "loadgen_met": bool(result["perf_constraints_met"]),
        "loadgen_p99_ms": result["99.00_percentile_latency_ns"] / 1e6,
        "dispatches": result["dispatches"],
    }


def measure_overload(
    method: Method, data: Encoded, speed: float, plan: ServingPlan, rate: float, out: Path
) -> list[dict[str, Any]]:
    """Server runs at each of ``plan.overload``'s multiples of ``rate`` (the highest rate that
    met the latency target), behind ``plan.overload_batcher``; LoadGen's logs go under
    ``out/Server-<multiple>x``. One :func:`overload_figures` row per multiple, with it."""
    config = plan.overload_batcher
    rows = []
    for multiple in plan.overload:
        offered = multiple * rate
        result = run_scenario(
            lambda answer: BatchingServer(method, data, speed, config, answer),
            len(data),
            "Server",
            out / f"Server-{multiple:g}x",
            plan.load,
            expected_qps=offered,
        )
        rows.append({"multiple": multiple, **overload_figures(result, offered, config, plan.load)})
    return rows
