"""DeeBERT (Xin et al., "DeeBERT: Dynamic Early Exiting for Accelerating BERT Inference",
ACL 2020), ``--method deebert``. docs/methods.md.

- Heads: a "highway" after each of layers 1..L-1 and the final classifier after layer L, each a
  pooler (Linear(H, H) + tanh) + dropout + Linear(H, C)
  (:class:`~geep.model.heads.PoolerClassifier`),
  all starting from the encoder's pretrained pooler where it has one.
- Training, two stages: (1) fine-tune backbone + final classifier with cross-entropy; (2) freeze
  them and train the highways with the sum of their cross-entropies.
- Exit rule: after each layer the running samples' highway gives a distribution; a sample exits
  when its raw entropy (nats, not normalised) is below the threshold. Exited samples leave the
  batch (``batching``: :mod:`geep.core.dynamic_exit`); layer L exits through the final classifier.
  FLOPs count k layers and k heads for an exit at layer k.
- Speed knob: the entropy threshold; 0 runs every sample through all layers, log C (0.693 for
  two classes) or more exits every sample at layer 1. Default sweep: 0, 0.1, ..., 0.9 times
  log C (the paper sweeps about 0 to 0.7 on mostly binary tasks).

Deviation: the heads read the backbone's sentence vector (:meth:`Backbone.sentence_vector`):
[CLS] for BERT checkpoints, as in the paper, but the token mean for the embedded MiniLM, whose
[CLS] state carries little sentence information (README, "A first result").
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from geep.common.config import TrainConfig
from geep.common.errors import GeepError
from geep.core.dynamic_exit import DynamicExitMethod, entropy
from geep.core.interface import FORWARD_ONLY, Method
from geep.core.registry import register
from geep.data.encoding import Batch, Encoded
from geep.measure import flops
from geep.model.backbone import Backbone
from geep.model.heads import PoolerClassifier
from geep.model.training import train_loop


class HighwayModel(nn.Module):
    """Backbone with a highway after each of layers 1..L-1 and the final classifier after L."""

    def __init__(self, backbone: Backbone, num_labels: int) -> None:
        super().__init__()
        self.backbone = backbone
        hidden, layers = backbone.hidden_size, backbone.num_layers
        self.highways = nn.ModuleList(
            PoolerClassifier(hidden, num_labels, backbone.dropout) for _ in range(layers - 1)
        )
        self.classifier = PoolerClassifier(hidden, num_labels, backbone.dropout)
        for head in [*self.highways, self.classifier]:
            head.init_from_pooler(backbone.pretrained_pooler)

    def head(self, layer: int, hidden: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        """Logits [B, C] after ``layer`` from h_layer [B, T, H]."""
        sentence = self.backbone.sentence_vector(hidden, attention_mask)  # [B, H]
        last = layer == self.backbone.num_layers
        return (self.classifier if last else self.highways[layer - 1])(sentence)

    def forward(self, batch: Batch, stage: str = "final") -> torch.Tensor:
        """Training loss: ``final`` (stage 1: the final classifier's cross-entropy) or
        ``highways`` (stage 2: the sum of the highways' cross-entropies; the rest frozen)."""
        num_layers = self.backbone.num_layers
        with torch.set_grad_enabled(torch.is_grad_enabled() and stage == "final"):
            hidden, mask = self.backbone.embed(**batch.inputs())  # [B, T, H]
            states = []  # h_1 .. h_L
            for layer in range(1, num_layers + 1):
                hidden = self.backbone.run_layers(hidden, mask, layer - 1, layer)
                states.append(hidden)
        if stage == "final":
            return F.cross_entropy(
                self.head(num_layers, states[-1], batch.attention_mask), batch.labels
            )
        losses = [
            F.cross_entropy(self.head(layer, state, batch.attention_mask), batch.labels)
            for layer, state in enumerate(states[:-1], start=1)
        ]
        return torch.stack(losses).sum()


@register
class DeeBERT(DynamicExitMethod):
    name = "deebert"
    speed_help = (
        "entropy threshold in nats: a sample exits at the first layer whose highway's entropy "
        "is below it; 0 = full depth"
    )
    speed_bounds = (0.0, 10.0)
    calibrates = True
    speed_reads = "threshold"
    starts_from = "bert"  # stage 1 is bert's fine-tuning (fit_from)

    @classmethod
    def build_model(cls, backbone: Backbone, num_labels: int, options: Any) -> nn.Module:
        return HighwayModel(backbone, num_labels)

    def fit(self, train: Encoded) -> None:
        config = TrainConfig.from_dict(self.info.train)
        model = self.model
        first = [*model.backbone.parameters(), *model.classifier.parameters()]
        train_loop(model, first, train, config, desc="deebert: stage 1", stage="final")
        self.fit_highways(train)

    def fit_from(self, fine_tuned: Method, train: Encoded) -> None:
        """Stage 1 is ordinary fine-tuning: take the backbone and classifier of a trained
        ``bert`` (the same modules, trained with the same loss), then train the highways."""
        if fine_tuned.name != "bert":
            raise GeepError(f"deebert starts from a fine-tuned bert, not {fine_tuned.name}")
        self.model.backbone.load_state_dict(fine_tuned.model.backbone.state_dict())
        self.model.classifier.load_state_dict(fine_tuned.model.classifier.state_dict())
        self.fit_highways(train)

    @classmethod
    def training_passes(cls, num_layers: int, options: Any) -> float:
        """Stage 1 fine-tunes (1 pass); stage 2 trains the highways on the frozen backbone,
        which runs forward only."""
        return 1.0 + FORWARD_ONLY

    def fit_highways(self, train: Encoded) -> None:
        """Stage 2: the highways' summed cross-entropy; backbone and classifier frozen."""
        config = TrainConfig.from_dict(self.info.train)
        highways = self.model.highways.parameters()
        train_loop(self.model, highways, train, config, desc="deebert: stage 2", stage="highways")

    def exit_statistic(self, logits: torch.Tensor) -> torch.Tensor:
        """DeeBERT's rule: exit once the highway's entropy (nats) is below the speed."""
        return entropy(logits)

    def head_flops(self, lengths: np.ndarray, convention: str) -> int:
        return flops.pooler_classifier(self.dims.hidden, self.info.num_labels)  # one vector

    @classmethod
    def speed_grid(cls, num_layers: int, num_labels: int) -> list[float]:
        log_c = math.log(num_labels)
        return [round(f * log_c, 4) for f in (0, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9)]
