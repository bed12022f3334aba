"""Sweep settings chosen on the dev split: from full depth to a method's fastest setting in even
steps of FLOPs.

The papers' fixed grids (FastBERT's thresholds 0.1 .. 0.9, DeeBERT's fractions of log C) assume
well-calibrated exits; on a model whose students are rarely confident, the whole grid can sit at
full depth. A threshold method therefore also gets settings chosen from the trained model's own
statistics on the dev split (never the test split): :meth:`~geep.core.interface.Method.calibrate`
says how the mean FLOPs per dev sample depend on the speed, and :func:`even_flops_speeds` picks the
speeds whose dev FLOPs fall in even steps from full depth to the fastest setting.

A threshold rule exits a sample when a statistic is below the speed, so the dev FLOPs change only
where the speed crosses a value of that statistic. The candidate speeds are the midpoints between
neighbouring values (:func:`gap_midpoints`) at least :data:`MIN_GAP` apart: no chosen speed sits
on or near a value, so no dev sample's exit hangs on float rounding (docs/reproducibility.md).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

if TYPE_CHECKING:
    from geep.core.interface import Method
    from geep.data.encoding import Encoded

DEV_SETTINGS = 6
"""How many settings are chosen on dev per threshold method, unless a profile says otherwise."""


@dataclass
class Calibration:
    """How a threshold method's cost on the dev split depends on its speed.

    ``candidates``: increasing speeds between which the dev FLOPs are constant, the last being
    the fastest setting (every dev sample exits as early as the method allows).
    ``flops_at``: the mean FLOPs per dev sample (``full`` convention) at a speed; it does not
    increase with the speed.
    """

    candidates: np.ndarray
    flops_at: Callable[[float], float]


MIN_GAP = 2e-5
"""The narrowest gap between neighbouring values that a chosen speed may sit in. Values closer
than this count as one: which of them is larger can depend on float rounding. A chosen speed is
then at least 1e-5 from every value, over 30 times the difference measured between CPU kernels,
thread counts and batch shapes (docs/reproducibility.md)."""


def gap_midpoints(values: torch.Tensor, ceiling: float) -> np.ndarray:
    """Increasing midpoints of the gaps wider than :data:`MIN_GAP` between neighbouring distinct
    ``values``, then the midpoint between the largest value and ``ceiling`` (the statistic's
    maximum) when that gap is wide enough too. Infinite values (no head after that layer) are
    no threshold."""
    distinct = np.unique(values.double().flatten().numpy())
    distinct = distinct[np.isfinite(distinct)]
    wide = np.diff(distinct) > MIN_GAP
    mids = ((distinct[:-1] + distinct[1:]) / 2)[wide]
    if ceiling - distinct[-1] > MIN_GAP:
        mids = np.append(mids, (distinct[-1] + ceiling) / 2)
    return mids


class _DevFlops:
    """A calibration's dev FLOPs at its candidate speeds, each computed once when first asked."""

    def __init__(self, calibration: Calibration) -> None:
        self.calibration, self._cache = calibration, {}

    def __call__(self, i: int) -> float:
        if i not in self._cache:
            self._cache[i] = self.calibration.flops_at(float(self.calibration.candidates[i]))
        return self._cache[i]

    def reaches(self, i: int, target: float) -> bool:
        """Whether candidate ``i``'s dev FLOPs are at most ``target`` (up to float rounding)."""
        return self(i) <= target * (1 + 1e-12)

    def first_reaching(self, target: float) -> int:
        """The smallest candidate index whose dev FLOPs are at most ``target`` (bisection: the
        FLOPs do not increase with the speed); the last index when none is."""
        low, high = 0, len(self.calibration.candidates) - 1
        while low < high:
            mid = (low + high) // 2
            if self.reaches(mid, target):
                high = mid
            else:
                low = mid + 1
        return high


def even_flops_speeds(calibration: Calibration, count: int) -> list[tuple[float, float]]:
    """Speeds whose dev FLOPs step evenly from full depth to the fastest candidate.

    With F0 the dev FLOPs at speed 0 (full depth) and Fn those at the last candidate, step k of
    ``count`` targets F0 - k (F0 - Fn) / count and takes the smallest candidate whose dev FLOPs
    reach it. Returns (speed, dev FLOPs) pairs, each speed once: a step the next one already
    reaches adds nothing.
    """
    candidates = calibration.candidates
    if len(candidates) == 0:  # every value in one cluster at the ceiling: nothing to choose
        return []
    flops = _DevFlops(calibration)
    full = calibration.flops_at(0.0)
    fastest = flops(len(candidates) - 1)
    chosen: list[tuple[float, float]] = []
    for k in range(1, count + 1):
        i = flops.first_reaching(full - k * (full - fastest) / count)
        speed = float(candidates[i])
        if not chosen or speed != chosen[-1][0]:
            chosen.append((speed, flops(i)))
    return chosen


def matched_speed(calibration: Calibration, target: float) -> tuple[float, float] | None:
    """The smallest candidate speed whose mean dev FLOPs are at most ``target``, with those
    FLOPs; None when even the fastest candidate does not reach it."""
    if len(calibration.candidates) == 0:
        return None
    flops = _DevFlops(calibration)
    i = flops.first_reaching(target)
    if not flops.reaches(i, target):
        return None
    return float(calibration.candidates[i]), flops(i)


def dev_sweep(
    method: Method, dev: Encoded, count: int, speedups: tuple[float, ...] = ()
) -> dict[str, Any]:
    """Speeds chosen on the dev split and how: the record that run files and `geep evaluate
    --json` keep. ``count`` speeds in even steps (:func:`even_flops_speeds`), or, with
    ``speedups``, one per FLOPs speedup: the slowest speed whose dev speedup reaches it
    (:func:`matched_speed`; null where none does). Empty for methods without a threshold rule
    (or when ``count`` is 0)."""
    calibration = method.calibrate(dev) if count else None
    if calibration is None:
        return {}
    full = float(method.full_depth_flops(dev.lengths.numpy(), "full").mean())
    if speedups:
        chosen = [matched_speed(calibration, full / target) for target in speedups]
        rule = "per target FLOPs speedup, the slowest speed whose mean FLOPs per dev sample "
        rule += "(full convention) reach it"
    else:
        chosen = even_flops_speeds(calibration, count)
        rule = "even steps of mean FLOPs per dev sample (full convention) from full depth to "
        rule += "the fastest setting"
    record = {
        "split": "dev",
        "samples": len(dev),
        "settings": len(speedups) or count,
        "rule": rule + "; speeds at midpoints between neighbouring values of the exit "
        "statistic (geep.core.sweeps)",
        "speeds": [None if pick is None else pick[0] for pick in chosen],
        "dev_speedup_full": [None if pick is None else full / pick[1] for pick in chosen],
    }
    if speedups:
        record["target_speedups"] = list(speedups)
    return record
