"""GEEP's exit-layer prediction (docs/methods.md, "geep": exit labels, table and prediction).

The training samples' exit layers (from the students) are counted per token in an
:class:`~geep.exit_table.ExitTable`. A test sample's exit layer is predicted from the exit
distributions of its tokens before any layer runs, so samples can be sorted and batched by it.
"""

from __future__ import annotations

from typing import Literal

import numpy as np
import torch

from geep.exit_table import ExitTable

ExitRule = Literal["quantile", "mean"]


def predict_exit_layers(
    table: ExitTable, keys: torch.Tensor, rule: ExitRule, quantile: float, margin: int
) -> torch.Tensor:
    """keys [N, K] (rows padded with -1) -> predicted exit layer [N] in 1..L.

    Each known token contributes its exit distribution (its counts, normalised); the sample's
    distribution is their mean, so a frequent token weighs no more than a rare one. Tokens absent
    from the table are ignored; a sample with no known token runs all L layers.
    - ``quantile``: the first layer where the sample's cumulative distribution reaches
      ``quantile`` (0.5: the median; higher is more conservative).
    - ``mean``: the expected exit layer, rounded up.
    ``margin`` extra layers are added to either (more conservative), capped at L.
    """
    num_layers = table.num_layers
    n = keys.shape[0]
    present = keys >= 0  # [N, K]
    sample = torch.arange(n, device=keys.device).unsqueeze(1).expand_as(keys)[present]  # [M]
    counts = table.lookup(keys[present]).float()  # [M, L]
    totals = counts.sum(dim=1)  # [M]; 0 for tokens the table does not hold
    known = totals > 0
    distributions = counts[known] / totals[known].unsqueeze(1)  # [M', L]
    summed = torch.zeros(n, num_layers, device=keys.device).index_add_(
        0, sample[known], distributions
    )  # [N, L]
    num_known = torch.bincount(sample[known], minlength=n)  # [N]
    mean = summed / num_known.clamp(min=1).unsqueeze(1)  # [N, L]
    if rule == "quantile":
        below = mean.cumsum(dim=1) < quantile - 1e-6  # [N, L]
        layers = below.sum(dim=1) + 1
    elif rule == "mean":
        depth = torch.arange(1, num_layers + 1, device=keys.device, dtype=mean.dtype)
        layers = torch.ceil((mean * depth).sum(dim=1) - 1e-6).long()
    else:
        raise ValueError(f"unknown exit rule {rule!r}")
    layers = (layers + margin).clamp(1, num_layers)
    return torch.where(num_known > 0, layers, torch.full_like(layers, num_layers))


def exit_quality(predicted: np.ndarray, oracle: np.ndarray) -> dict[str, float]:
    """How predicted exit layers compare with the oracle ones the students would give."""
    predicted, oracle = np.asarray(predicted, float), np.asarray(oracle, float)
    return {
        "exit_mae": float(np.abs(predicted - oracle).mean()),
        "exit_exact": float((predicted == oracle).mean()),
        "exit_too_early": float((predicted < oracle).mean()),
        "exit_too_late": float((predicted > oracle).mean()),
        "oracle_avg_exit_layer": float(oracle.mean()),
    }
