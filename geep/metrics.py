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


def majority_accuracy(train_labels: Sequence[int], labels: np.ndarray) -> float:
    """Accuracy of always predicting the training split's most frequent class."""
    majority = int(np.bincount(np.asarray(train_labels)).argmax())
    return float(np.mean(np.asarray(labels) == majority))


def latency_ms(batch_seconds: Sequence[float], percentile: float) -> float:
    """A percentile of per-batch latency, in milliseconds."""
    return float(np.percentile(np.asarray(batch_seconds) * 1000.0, percentile))
