"""PABEE (Zhou et al., "BERT Loses Patience: Fast and Robust Inference with Early Exit",
NeurIPS 2020), ``--method pabee``. docs/methods.md.

- Heads: one pooler shared by all layers and a Linear(H, C) per layer 1..L
  (:class:`~geep.baselines.pabee.SharedPoolerClassifiers`).
- Training, one step: the weighted average of the per-layer cross-entropies,
  ``sum_j j * CE_j / sum_j j`` (deeper layers weigh more).
- Exit rule (:class:`~geep.baselines.pabee.PatienceRule`): after each layer a sample's counter
  grows when
  its prediction equals the previous layer's and resets otherwise; it exits when the counter
  reaches the patience, with the current layer's prediction. Exited samples leave the batch
  (``batching``: :mod:`geep.core.dynamic_exit`); layer L always exits. FLOPs count k layers and k
  heads for an exit at layer k.
- Speed knob: the patience, a whole number; smaller exits earlier. 0 means no early exit (full
  depth). Default sweep: 0, then L-2 down to 1 (the paper sweeps about 3..8 on 12 layers; a
  patience of L-1 or more cannot exit before layer L).

Deviation: the heads read the backbone's sentence vector (:meth:`Backbone.sentence_vector`):
[CLS] for BERT checkpoints, the token mean for the embedded MiniLM (README, "A first result").
Classification only: the paper's regression rule (|delta| < threshold) is not implemented.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from geep.common.config import TrainConfig
from geep.core.dynamic_exit import DynamicExitMethod, ExitDecision
from geep.core.registry import register
from geep.data.encoding import Batch, Encoded
from geep.measure import flops
from geep.model.backbone import Backbone
from geep.model.heads import record_pooler_head
from geep.model.training import train_loop


class PatienceRule:
    """PABEE's exit rule for ``samples`` samples (a batch, or all the data).

    After each layer a sample's counter grows by one when its prediction (argmax; the first
    class on ties) equals the previous layer's, and resets to 0 otherwise; it exits when the
    counter reaches ``patience``. State is kept per sample, at its position ``running``.
    """

    def __init__(self, patience: int, samples: int, device: torch.device | str) -> None:
        self.patience = patience
        self.previous = torch.full((samples,), -1, dtype=torch.long, device=device)
        self.count = torch.zeros(samples, dtype=torch.long, device=device)

    def __call__(self, layer: int, logits: torch.Tensor, running: torch.Tensor) -> torch.Tensor:
        prediction = logits.argmax(dim=-1)  # [b]
        same = prediction == self.previous[running]
        self.count[running] = torch.where(same, self.count[running] + 1, 0)
        self.previous[running] = prediction
        return self.count[running] >= self.patience


class SharedPoolerClassifiers(nn.Module):
    """PABEE's exits: one pooler (Linear(H, H) + tanh) shared by all layers, then dropout and a
    Linear(H, C) per layer, on the backbone's sentence vector."""

    def __init__(self, hidden_size: int, num_labels: int, num_layers: int, dropout: float):
        super().__init__()
        self.pooler = nn.Linear(hidden_size, hidden_size)
        self.dropout = nn.Dropout(dropout)
        self.classifiers = nn.ModuleList(
            nn.Linear(hidden_size, num_labels) for _ in range(num_layers)
        )

    def forward(self, layer: int, sentence: torch.Tensor) -> torch.Tensor:
        """sentence [B, H] after ``layer`` (1-based) -> logits [B, C]."""
        record_pooler_head(self.pooler, self.classifiers[layer - 1], sentence)
        pooled = torch.tanh(self.pooler(sentence))  # [B, H]
        return self.classifiers[layer - 1](self.dropout(pooled))


class PatienceModel(nn.Module):
    """Backbone with PABEE's exits after every layer."""

    def __init__(self, backbone: Backbone, num_labels: int) -> None:
        super().__init__()
        self.backbone = backbone
        self.exits = SharedPoolerClassifiers(
            backbone.hidden_size, num_labels, backbone.num_layers, backbone.dropout
        )
        if backbone.pretrained_pooler is not None:
            self.exits.pooler.load_state_dict(backbone.pretrained_pooler)

    def head(self, layer: int, hidden: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        """Logits [B, C] after ``layer`` from h_layer [B, T, H]."""
        return self.exits(layer, self.backbone.sentence_vector(hidden, attention_mask))

    def forward(self, batch: Batch) -> torch.Tensor:
        """Training loss: sum_j j * CE_j / sum_j j over layers j = 1..L."""
        num_layers = self.backbone.num_layers
        hidden, mask = self.backbone.embed(**batch.inputs())  # [B, T, H]
        total = hidden.new_zeros(())
        for layer in range(1, num_layers + 1):
            hidden = self.backbone.run_layers(hidden, mask, layer - 1, layer)
            logits = self.head(layer, hidden, batch.attention_mask)
            total = total + layer * F.cross_entropy(logits, batch.labels)
        return total / (num_layers * (num_layers + 1) / 2)


@register
class PABEE(DynamicExitMethod):
    name = "pabee"
    speed_help = (
        "patience: a sample exits once its prediction has stayed the same for this many "
        "consecutive layers; whole numbers, smaller is faster; 0 = full depth"
    )
    speed_bounds = (0.0, math.inf)
    whole_speeds = True
    speed_reads = "patience"

    @classmethod
    def build_model(cls, backbone: Backbone, num_labels: int, options: Any) -> nn.Module:
        return PatienceModel(backbone, num_labels)

    def fit(self, train: Encoded) -> None:
        config = TrainConfig.from_dict(self.info.train)
        train_loop(self.model, self.model.parameters(), train, config, desc="pabee: train")

    def exit_rule(self, speed: float, samples: int) -> ExitDecision:
        # speed 0: a patience of L, which no counter reaches before layer L (no early exit)
        return PatienceRule(int(speed) or self.num_layers, samples, self.device)

    def head_flops(self, lengths: np.ndarray, convention: str) -> int:
        return flops.pooler_classifier(self.dims.hidden, self.info.num_labels)  # one vector

    @classmethod
    def speed_grid(cls, num_layers: int, num_labels: int) -> list[float]:
        return [0.0, *(float(p) for p in range(num_layers - 2, 0, -1))]
