"""BERT's classifier head, which several methods share (docs/methods.md).

- :class:`PoolerClassifier`: BERT's pooler + linear; the `bert` reference classifier and
  DeeBERT's highways.
- :func:`record_pooler_head`: the work count of one pooler + classifier call (PABEE's heads too).

FastBERT's head is in ``baselines/fastbert.py``, PABEE's shared-pooler heads in
``baselines/pabee.py``.
"""

from __future__ import annotations

import torch
from torch import nn

from geep.measure import flops, work


class PoolerClassifier(nn.Module):
    """Pooler (Linear(H, H) + tanh) + dropout + Linear(H, C) on a sentence vector.

    The classifier of BertForSequenceClassification; it reads the backbone's sentence vector
    (``Backbone.sentence_vector``: [CLS], or the token mean for mean-pooling encoders).
    """

    def __init__(self, hidden_size: int, num_labels: int, dropout: float) -> None:
        super().__init__()
        self.pooler = nn.Linear(hidden_size, hidden_size)
        self.dropout = nn.Dropout(dropout)
        self.classifier = nn.Linear(hidden_size, num_labels)

    def forward(self, sentence: torch.Tensor) -> torch.Tensor:
        """sentence [B, H] -> logits [B, C]."""
        record_pooler_head(self.pooler, self.classifier, sentence)
        pooled = torch.tanh(self.pooler(sentence))  # [B, H]
        return self.classifier(self.dropout(pooled))

    def init_from_pooler(self, weights: dict[str, torch.Tensor] | None) -> None:
        """Start from the backbone's pretrained pooler weights (``Backbone.pretrained_pooler``)."""
        if weights is not None:
            self.pooler.load_state_dict(weights)


def record_pooler_head(pooler: nn.Linear, classifier: nn.Linear, sentence: torch.Tensor) -> None:
    """Count one pooler + classifier call on sentence vectors [B, H] (:mod:`geep.measure.work`)."""
    if not work.recording():
        return
    b, h = sentence.shape
    c = classifier.out_features
    shapes = work.pooler_head_shapes(b, h, c)
    moved = work.parameter_bytes(pooler) + work.parameter_bytes(classifier)
    moved += work.matmul_bytes(shapes, sentence.element_size())
    work.record("head", b, 1, b * flops.pooler_classifier(h, c), moved)
