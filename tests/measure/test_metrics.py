"""Accuracy intervals: the percentile bootstrap against hand-computed cases."""

from __future__ import annotations

import math

import numpy as np
import pytest

from geep.measure.metrics import bootstrap_interval


def test_bootstrap_interval_of_hand_computed_cases() -> None:
    # n = 2, one correct: resampled accuracies 0, 1/2, 1 with chances 1/4, 1/2, 1/4, so the
    # 2.5% and 97.5% quantiles are 0 and 1
    assert bootstrap_interval(np.array([1, 0])) == (0.0, 1.0)
    # n = 4, three correct: P(0 correct) = 1/256 < 2.5% <= P(<= 1) = 13/256 and
    # P(<= 3) = 175/256 < 97.5%, so the interval is [1/4, 4/4]
    assert bootstrap_interval(np.array([1, 1, 1, 0])) == (0.25, 1.0)
    assert bootstrap_interval(np.ones(50)) == (1.0, 1.0)  # nothing to resample differently


def test_bootstrap_interval_follows_the_normal_approximation_at_large_n() -> None:
    correct = np.array([1] * 800 + [0] * 200)  # 0.8 on 1000 samples
    low, high = bootstrap_interval(correct)
    half = 1.96 * math.sqrt(0.8 * 0.2 / 1000)  # 0.0248
    assert low == pytest.approx(0.8 - half, abs=0.003) and high == pytest.approx(
        0.8 + half, abs=0.003
    )
    assert bootstrap_interval(correct) == (low, high)  # seeded: the same every time
    with pytest.raises(ValueError, match="0 or 1"):
        bootstrap_interval(np.array([0.5, 1.0]))
