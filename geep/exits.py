"""Exit rules shared by the early-exit methods, and dynamic exit with a shrinking batch.

- :func:`normalized_entropy`: FastBERT's "uncertainty", H(p) / log(C), in [0, 1].
- :func:`first_exit_layer`: the first layer whose uncertainty is below the speed, L if none
  (FastBERT's exit rule; GEEP's exit labels, METHODS.md "GEEP" step 4).
- :func:`dynamic_exit`: run a batch layer by layer, evaluate a head after every layer and drop
  the samples that exit, as FastBERT does at inference (the batch shrinks).
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
import torch.nn.functional as F

from geep.backbone import Backbone
from geep.encoding import Batch


def normalized_entropy(logits: torch.Tensor) -> torch.Tensor:
    """logits [..., C] -> H(softmax) / log(C) [...], in [0, 1] (FastBERT's uncertainty)."""
    log_p = F.log_softmax(logits.float(), dim=-1)
    entropy = -(log_p.exp() * log_p).sum(dim=-1)
    return entropy / math.log(logits.shape[-1])


def first_exit_layer(uncertainty: torch.Tensor, speed: float) -> torch.Tensor:
    """uncertainty [N, L-1] of the students at layers 1..L-1 -> exit layer [N] in 1..L.

    A sample exits at the first layer whose uncertainty is below ``speed``; L if there is none,
    so speed 0 sends every sample through all layers.
    """
    confident = torch.cat(
        [uncertainty < speed, torch.ones_like(uncertainty[:, :1], dtype=torch.bool)], dim=1
    )  # [N, L]: layer L always accepts
    return confident.int().argmax(dim=1) + 1  # argmax returns the first maximum


def dynamic_exit(
    backbone: Backbone,
    batch: Batch,
    head: Callable[[int, torch.Tensor, torch.Tensor], torch.Tensor],
    exits: Callable[[int, torch.Tensor], torch.Tensor],
) -> tuple[torch.Tensor, torch.Tensor]:
    """Run ``batch`` layer by layer, exiting samples as soon as ``exits`` says so.

    After layer k, ``head(k, hidden [b, T, H], attention_mask [b, T])`` gives logits [b, C] for
    the b samples still running and ``exits(k, logits)`` a bool [b]; those samples leave the
    batch. Every sample still running at layer L exits there. Returns logits [B, C] and the exit
    layer [B] of every sample; a sample exiting at k had a head evaluated at each of layers 1..k.
    """
    num_layers = backbone.num_layers
    hidden, mask = backbone.embed(**batch.inputs())  # [B, T, H], [B, 1, T, T] or None
    attention_mask = batch.attention_mask  # [b, T] of the running samples
    running = torch.arange(hidden.shape[0], device=hidden.device)  # [b] positions in the batch
    out_logits: torch.Tensor | None = None
    out_layers = torch.full_like(running, num_layers)
    for layer in range(1, num_layers + 1):
        hidden = backbone.run_layers(hidden, mask, layer - 1, layer)
        logits = head(layer, hidden, attention_mask)  # [b, C]
        if out_logits is None:
            out_logits = logits.new_empty(len(running), logits.shape[1])
        done = exits(layer, logits) if layer < num_layers else torch.ones_like(running, dtype=bool)
        out_logits[running[done]] = logits[done]
        out_layers[running[done]] = layer
        keep = ~done
        if not keep.any():
            break
        running, hidden, attention_mask = running[keep], hidden[keep], attention_mask[keep]
        mask = mask[keep] if mask is not None else None
    assert out_logits is not None
    return out_logits, out_layers
