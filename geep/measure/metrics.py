"""Quality and timing statistics computed from predictions."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np


def accuracy(labels: np.ndarray, preds: np.ndarray) -> float:
    """Fraction of samples whose prediction equals the label."""
    return float(np.mean(np.asarray(labels) == np.asarray(preds)))


def macro_f1(labels: np.ndarray, preds: np.ndarray, num_labels: int) -> float:
    """Unweighted mean of per-class F1 over the classes present in labels or predictions."""
    labels, preds = np.asarray(labels), np.asarray(preds)
    scores = []
    for c in range(num_labels):
        tp = np.sum((preds == c) & (labels == c))
        fp = np.sum((preds == c) & (labels != c))
        fn = np.sum((preds != c) & (labels == c))
        if tp + fp + fn:
            scores.append(2 * tp / (2 * tp + fp + fn))
    return float(np.mean(scores)) if scores else 0.0


def bootstrap_interval(
    correct: np.ndarray, level: float = 0.95, resamples: int = 10_000, seed: int = 0
) -> tuple[float, float]:
    """Percentile bootstrap interval of the accuracy of per-sample outcomes ``correct`` (0/1).

    Resampling n outcomes with replacement from k correct ones draws the number correct from
    Binomial(n, k/n), so the resampled accuracies are drawn from that directly: the same
    bootstrap at any n, in constant memory. The interval holds the middle ``level`` of them
    (quantiles that are resampled values). Seeded, so the same outcomes give the same interval.
    """
    correct = np.asarray(correct, dtype=np.float64)
    if not np.isin(correct, (0.0, 1.0)).all():
        raise ValueError("bootstrap_interval takes per-sample outcomes of 0 or 1")
    n = len(correct)
    rng = np.random.default_rng(seed)
    means = rng.binomial(n, correct.mean(), size=resamples) / n
    tail = (1 - level) / 2
    low, high = np.quantile(means, [tail, 1 - tail], method="inverted_cdf")
    return float(low), float(high)


def latency_ms(batch_seconds: Sequence[float], percentile: float) -> float:
    """A percentile of per-batch latency, in milliseconds."""
    return float(np.percentile(np.asarray(batch_seconds) * 1000.0, percentile))
