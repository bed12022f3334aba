"""The full-depth reference method, ``bert``: the plain fine-tuned encoder with one classifier.

BertForSequenceClassification's recipe (Devlin et al., 2019): all L layers, the pooler on the
sentence vector and a linear classifier, fine-tuned with cross-entropy. The sentence vector is
[CLS] for BERT checkpoints and the token mean for mean-pooling sentence encoders such as the
embedded all-MiniLM-L6-v2, whose [CLS] state carries little sentence information. It has no
exit and no speed knob (the only valid speed is 0); every other method's speedup is measured
against full depth.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from geep.common.config import TrainConfig
from geep.core.interface import BatchResult, Method
from geep.core.registry import register
from geep.data.encoding import Batch, Encoded
from geep.measure import flops
from geep.model.backbone import Backbone
from geep.model.heads import PoolerClassifier
from geep.model.training import train_loop


class FullDepthClassifier(nn.Module):
    """Backbone -> h_L -> pooler + linear."""

    def __init__(self, backbone: Backbone, num_labels: int) -> None:
        super().__init__()
        self.backbone = backbone
        self.classifier = PoolerClassifier(backbone.hidden_size, num_labels, backbone.dropout)
        self.classifier.init_from_pooler(backbone.pretrained_pooler)

    def logits(self, batch: Batch) -> torch.Tensor:
        """[B, T] inputs -> [B, C] logits after all layers."""
        return self.forward_logits(batch.input_ids, batch.attention_mask, batch.token_type_ids)

    def forward_logits(
        self, input_ids: torch.Tensor, attention_mask: torch.Tensor, token_type_ids: torch.Tensor
    ) -> torch.Tensor:
        """:meth:`logits` from the [B, T] tensors themselves (one call: one CUDA graph)."""
        hidden, mask = self.backbone.embed(input_ids, attention_mask, token_type_ids)
        hidden = self.backbone.run_layers(hidden, mask, 0, self.backbone.num_layers)
        return self.classifier(self.backbone.sentence_vector(hidden, attention_mask))

    def forward(self, batch: Batch) -> torch.Tensor:
        """Training loss: cross-entropy of the final classifier."""
        return F.cross_entropy(self.logits(batch), batch.labels)


@register
class Bert(Method):
    name = "bert"
    reference = True
    speed_help = "no exit: full depth always; the only speed is 0"
    speed_bounds = (0.0, 0.0)

    @classmethod
    def build_model(cls, backbone: Backbone, num_labels: int, options: Any) -> nn.Module:
        return FullDepthClassifier(backbone, num_labels)

    def fit(self, train: Encoded) -> None:
        config = TrainConfig.from_dict(self.info.train)
        train_loop(
            self.model, self.model.parameters(), train, config, desc=f"{self.name}: fine-tune"
        )

    def predict_batches(
        self, data: Encoded, speed: float, batch_size: int
    ) -> Iterator[BatchResult]:
        layers = self.num_layers
        for batch in data.batches(batch_size):
            lengths = data.lengths[batch.index].numpy()
            inputs = batch.to(self.device).inputs().values()
            (logits,) = self.call(("forward",), self.model.forward_logits, *inputs)
            yield BatchResult(
                index=batch.index,
                labels=logits.argmax(dim=-1).cpu(),
                exit_layers=torch.full((len(batch.index),), float(layers)),
                flops_fastbert=torch.from_numpy(self.full_depth_flops(lengths, "fastbert")),
                flops_full=torch.from_numpy(self.full_depth_flops(lengths, "full")),
            )

    def full_depth_flops(self, lengths: np.ndarray, convention: str) -> np.ndarray:
        layer = flops.encoder_layer(self.dims, lengths.astype(np.int64), convention)
        return self.num_layers * layer + flops.pooler_classifier(
            self.dims.hidden, self.info.num_labels
        )

    @classmethod
    def speed_grid(cls, num_layers: int, num_labels: int) -> list[float]:
        return [0.0]
