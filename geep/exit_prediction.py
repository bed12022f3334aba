"""GEEP's exit-layer prediction (docs/methods.md, "geep": exit labels, table and prediction).

The training samples' exit layers (from the students) are counted per token in an
:class:`~geep.exit_table.ExitTable`. A test sample's exit layer is predicted from the exit
distributions of its tokens before any layer runs, so samples can be sorted and batched by it.
"""

from __future__ import annotations

from typing import Literal, get_args

import numpy as np
import torch

from geep.errors import GeepError
from geep.exit_table import ExitTable

ExitRule = Literal["quantile", "mean", "loglik", "idf", "deepest"]
EXIT_RULES: tuple[ExitRule, ...] = get_args(ExitRule)
SMOOTHING = 1.0
"""``loglik``'s additive (Laplace) smoothing: a token never seen exiting at a layer keeps
probability 1 / (n + L) there, so one token cannot veto a layer."""


def predict_exit_layers(
    table: ExitTable, keys: torch.Tensor, rule: ExitRule, quantile: float, margin: int
) -> torch.Tensor:
    """keys [N, K] (rows padded with -1) -> predicted exit layer [N] in 1..L (docs/methods.md,
    "geep", prediction).

    Token t's counts c_t [L] (training samples holding t that exit at each layer, n_t = sum c_t)
    give its exit distribution p_t = c_t / n_t. Tokens absent from the table are ignored; a
    sample with no known token runs all L layers. The rules combine a sample's tokens T:

    - ``quantile``: q = the mean of p_t over T; the first layer where q's cumulative sum
      reaches ``quantile`` (0.5: the median; higher is more conservative);
    - ``mean``: the expected layer under that q, rounded up;
    - ``loglik``: q proportional to exp(mean over T of log p'_t), p'_t = (c_t + a) / (n_t + a L)
      smoothed (:data:`SMOOTHING`): the tokens' per-token log-likelihood of each layer, a
      geometric mean of their distributions; then its ``quantile``;
    - ``idf``: q = the mean of p_t weighted by log((N + 1) / n_t), N the training samples of
      the table, so a token in most samples (a stop word) weighs little; then its ``quantile``;
    - ``deepest``: each token's own ``quantile`` layer of p_t, and the deepest of them (a
      conservative rule: no token of the sample asks for more layers).

    ``margin`` extra layers are added to any of them (more conservative), capped at L.
    """
    num_layers = table.num_layers
    n = keys.shape[0]
    present = keys >= 0  # [N, K]
    sample = torch.arange(n, device=keys.device).unsqueeze(1).expand_as(keys)[present]  # [M]
    counts = table.lookup(keys[present]).float()  # [M, L]
    totals = counts.sum(dim=1)  # [M]; 0 for tokens the table does not hold
    known = totals > 0
    sample, counts, totals = sample[known], counts[known], totals[known]  # [M'], ...
    distributions = counts / totals.unsqueeze(1)  # [M', L]
    num_known = torch.bincount(sample, minlength=n)  # [N]
    if rule == "deepest":
        token_layers = _quantile_layer(distributions, quantile)  # [M']
        layers = torch.zeros(n, dtype=torch.long, device=keys.device)
        layers.scatter_reduce_(0, sample, token_layers, reduce="amax")  # [N]
    else:
        if rule == "loglik":
            smoothed = (counts + SMOOTHING) / (totals + SMOOTHING * num_layers).unsqueeze(1)
            terms, weights = smoothed.log(), torch.ones_like(totals)  # [M', L], [M']
        elif rule == "idf":
            if table.samples < 1:
                raise GeepError(
                    "exit_rule=idf needs the table's sample count: build it with "
                    "ExitTable.from_samples"
                )
            terms, weights = distributions, torch.log((table.samples + 1) / totals)
        elif rule in ("quantile", "mean"):
            terms, weights = distributions, torch.ones_like(totals)
        else:
            raise GeepError(f"unknown exit rule {rule!r}: choose one of {', '.join(EXIT_RULES)}")
        summed = torch.zeros(n, num_layers, device=keys.device).index_add_(
            0, sample, terms * weights.unsqueeze(1)
        )  # [N, L]
        weight = torch.zeros(n, device=keys.device).index_add_(0, sample, weights)  # [N]
        combined = summed / weight.clamp(min=1e-12).unsqueeze(1)  # [N, L]
        if rule == "loglik":
            combined = torch.softmax(combined, dim=1)  # the geometric mean, normalised
        if rule == "mean":
            depth = torch.arange(1, num_layers + 1, device=keys.device, dtype=combined.dtype)
            layers = torch.ceil((combined * depth).sum(dim=1) - 1e-6).long()
        else:
            layers = _quantile_layer(combined, quantile)
    layers = (layers + margin).clamp(1, num_layers)
    return torch.where(num_known > 0, layers, torch.full_like(layers, num_layers))


def _quantile_layer(distributions: torch.Tensor, quantile: float) -> torch.Tensor:
    """[R, L] distributions -> [R]: the first layer (1..L) where the cumulative sum reaches
    ``quantile``."""
    below = distributions.cumsum(dim=1) < quantile - 1e-6  # [R, L]
    return below.sum(dim=1) + 1


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
