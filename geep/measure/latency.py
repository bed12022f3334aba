"""A latency model: the time of a run predicted from the calls it issued (:mod:`geep.measure.work`).

A call that dispatches ``o`` operators, executes ``F`` FLOPs and moves ``B`` bytes takes

- on a GPU, ``max(o * launch, F / compute, B / bandwidth)``: the host queues kernel launches
  while earlier kernels run, so a call costs its launches or its work, whichever is longer;
- on a CPU, ``o * dispatch + max(F / compute, B / bandwidth)``: the same cores dispatch each
  operator and then run it, so nothing overlaps.

A run's time is the sum over its calls. The CPU's three parameters are fitted on ``bert`` alone
(:func:`fit_device`, from a calibration run at several batch sizes and lengths) and validated by
predicting every other method's measured wall clock; a GPU's come from its published
specifications (:data:`GPUS`, sources in docs/latency.md), so everything a GPU device predicts is
*modelled*, never measured.
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from geep.measure.work import Call, calls_from_rows

Operators = Mapping[str, float]  # mean operators dispatched per call of each kind


@dataclass(frozen=True)
class Device:
    """The parameters of the model for one device."""

    name: str
    operator_seconds: float  # fixed cost of one dispatched operator (a kernel launch on a GPU)
    flops_per_second: float  # sustained compute
    bytes_per_second: float  # sustained memory bandwidth
    overlap: bool  # True: launches overlap work (GPU, max); False: dispatch, then work (CPU, sum)
    bytes_scale: float = 1.0  # element size over the float32 the calls were counted in
    source: str = ""

    def call_seconds(self, call: Call, operators: float) -> float:
        """The modelled time of one call that dispatches ``operators`` operators."""
        fixed = operators * self.operator_seconds
        work = max(
            call.flops / self.flops_per_second,
            call.bytes * self.bytes_scale / self.bytes_per_second,
        )
        return max(fixed, work) if self.overlap else fixed + work

    def seconds(self, calls: Counter[Call], operators: Operators) -> float:
        """The modelled time of a run that issued ``calls``."""
        return sum(n * self.call_seconds(c, operators.get(c.kind, 0.0)) for c, n in calls.items())


# Published figures (docs/latency.md): dense BF16 tensor-core peak and memory bandwidth of the
# SXM parts, of which a sustained share is assumed; one kernel launch per dispatched operator.
SUSTAINED_COMPUTE = 0.6
SUSTAINED_BANDWIDTH = 0.8
LAUNCH_SECONDS = 5e-6


def published_gpu(
    name: str, peak_flops: float, peak_bandwidth: float, source: str, bytes_scale: float = 0.5
) -> Device:
    """A GPU modelled from its datasheet: the sustained shares of its peaks, BF16 data (or
    another element size, as a share of float32's)."""
    return Device(
        name=f"{name} (modelled)",
        operator_seconds=LAUNCH_SECONDS,
        flops_per_second=SUSTAINED_COMPUTE * peak_flops,
        bytes_per_second=SUSTAINED_BANDWIDTH * peak_bandwidth,
        overlap=True,
        bytes_scale=bytes_scale,
        source=source,
    )


GPUS = {
    "h100": published_gpu(
        "NVIDIA H100 SXM5 80GB",
        989.4e12,
        3.35e12,
        "NVIDIA H100 Tensor Core GPU datasheet: 989.4 TFLOPS dense BF16, 3.35 TB/s HBM3",
    ),
    "a100": published_gpu(
        "NVIDIA A100 SXM4 80GB",
        312e12,
        2.039e12,
        "NVIDIA A100 Tensor Core GPU datasheet: 312 TFLOPS dense BF16, 2,039 GB/s HBM2e",
    ),
}


FLOAT32_PEAK = {  # the same datasheets: plain FP32 (torch keeps TF32 matmuls off by default)
    "h100": 67e12,
    "a100": 19.5e12,
}
"""The float32 peak of each GPU of :data:`GPUS`, in FLOP/s: what the suite's own runs compute in
(no autocast), for :mod:`geep.reproduce.plan`."""


@dataclass(frozen=True)
class Measurement:
    """One calibration point: a run's calls, its operators per call and its measured time."""

    calls: Counter[Call]
    operators: Operators
    seconds: float


def fit_device(points: Sequence[Measurement], name: str, overlap: bool = False) -> Device:
    """The parameters that best predict the measured ``points`` (least squares on log time) of
    a CPU (``overlap`` False) or, where a calibration ran on one, a GPU.

    A search over a logarithmic grid of the three parameters, narrowed around the best point
    three times; deterministic, no optimiser to converge.
    """
    if len(points) < 3:
        raise ValueError("fitting the latency model needs at least 3 calibration points")
    # per point, per call: operators, FLOPs, bytes and how often it ran
    terms = [
        np.array([[p.operators.get(c.kind, 0.0), c.flops, c.bytes, n] for c, n in p.calls.items()])
        for p in points
    ]
    measured = np.log([p.seconds for p in points])
    ranges = [(-8.0, -3.0), (8.0, 13.0), (8.0, 12.0)]  # log10 of dispatch s, FLOP/s, B/s
    best = (0.0, 0.0, 0.0)
    for _ in range(4):
        grids = np.meshgrid(*[np.linspace(lo, hi, 21) for lo, hi in ranges], indexing="ij")
        dispatch, compute, bandwidth = (10.0 ** g.ravel() for g in grids)
        error = np.zeros_like(dispatch)
        for t, y in zip(terms, measured, strict=True):
            ops, flops, moved, count = (t[:, i : i + 1] for i in range(4))
            work = np.maximum(flops / compute, moved / bandwidth)  # [calls, grid]
            fixed = ops * dispatch
            per_call = np.maximum(fixed, work) if overlap else fixed + work
            predicted = (count * per_call).sum(axis=0)
            error += (np.log(predicted) - y) ** 2
        i = int(np.argmin(error))
        best = (np.log10(dispatch[i]), np.log10(compute[i]), np.log10(bandwidth[i]))
        spans = [(hi - lo) / 8 for lo, hi in ranges]
        ranges = [(b - w, b + w) for b, w in zip(best, spans, strict=True)]
    return Device(
        name=name,
        operator_seconds=10.0 ** best[0],
        flops_per_second=10.0 ** best[1],
        bytes_per_second=10.0 ** best[2],
        overlap=overlap,
        source=f"fitted on {len(points)} full-depth bert runs (latency calibration)",
    )


def load_calibration(path: Path) -> tuple[list[Measurement], dict[str, Any]]:
    """The points of a calibration file (benchmarks/test_latency_calibration.py) and its
    header (device, model, profile)."""
    raw = json.loads(path.read_text())
    points = [
        Measurement(calls_from_rows(p["calls"]), p["operators"], float(p["seconds"]))
        for p in raw["points"]
    ]
    return points, {k: v for k, v in raw.items() if k != "points"}
