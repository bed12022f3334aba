"""Exit heads shared by the methods (docs/methods.md).

- :class:`FastBERTHead`: FastBERT's classifier, used for FastBERT's and GEEP's students/teacher.
- :class:`PoolerClassifier`: BERT's pooler + linear; the `bert` reference classifier and
  DeeBERT's highways.
- :class:`SharedPoolerClassifiers`: PABEE's exits, one pooler shared by a linear per layer.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from geep import flops, work
from geep.flops import FASTBERT_HEAD_HEADS, FASTBERT_HEAD_WIDTH


class FastBERTHead(nn.Module):
    """Linear(H -> 128) + tanh, 2-head self-attention at width 128 over all tokens, take [CLS],
    Linear(128 -> 128) + tanh, Linear(128 -> C). Dropout 0.1 (the encoder's).

    Padding is masked in the attention, as in FastBERT's reference code (autoliuweijie/FastBERT);
    EasyNLP's GEEP head (alibaba/EasyNLP) attends to padding, which the suite does not copy.
    """

    def __init__(self, hidden_size: int, num_labels: int, dropout: float) -> None:
        super().__init__()
        width = FASTBERT_HEAD_WIDTH
        self.num_heads = FASTBERT_HEAD_HEADS
        self.narrow = nn.Linear(hidden_size, width)
        self.query = nn.Linear(width, width)
        self.key = nn.Linear(width, width)
        self.value = nn.Linear(width, width)
        self.attn_out = nn.Linear(width, width)
        self.prelim = nn.Linear(width, width)
        self.final = nn.Linear(width, num_labels)
        self.dropout = nn.Dropout(dropout)

    def forward(self, hidden: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        """hidden [B, T, H], attention_mask [B, T] (1 = token) -> logits [B, C]."""
        b, t, _ = hidden.shape
        self.record(hidden)
        x = torch.tanh(self.narrow(hidden))  # [B, T, W]

        def heads(proj: nn.Linear) -> torch.Tensor:  # [B, T, W] -> [B, heads, T, W / heads]
            return proj(x).view(b, t, self.num_heads, -1).transpose(1, 2)

        keep = attention_mask[:, None, None, :].bool()  # [B, 1, 1, T]
        dropout = self.dropout.p if self.training else 0.0
        ctx = F.scaled_dot_product_attention(
            heads(self.query), heads(self.key), heads(self.value), attn_mask=keep, dropout_p=dropout
        )  # [B, heads, T, W / heads]
        x = self.attn_out(ctx.transpose(1, 2).reshape(b, t, -1))  # [B, T, W]
        cls = torch.tanh(self.prelim(self.dropout(x[:, 0])))  # [B, W]
        return self.final(self.dropout(cls))  # [B, C]

    def record(self, hidden: torch.Tensor) -> None:
        """Count this call on hidden [B, T, H] (:mod:`geep.work`)."""
        if not work.recording():
            return
        b, t, h = hidden.shape
        w, c = self.narrow.out_features, self.final.out_features
        shapes = work.fastbert_head_shapes(b, t, h, w, self.num_heads, c)
        itemsize = hidden.element_size()
        moved = work.parameter_bytes(self) + work.matmul_bytes(shapes, itemsize)
        work.record("head", b, t, b * flops.fastbert_head(h, t, c, "full"), moved)


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


def record_pooler_head(pooler: nn.Linear, classifier: nn.Linear, sentence: torch.Tensor) -> None:
    """Count one pooler + classifier call on sentence vectors [B, H] (:mod:`geep.work`)."""
    if not work.recording():
        return
    b, h = sentence.shape
    c = classifier.out_features
    shapes = work.pooler_head_shapes(b, h, c)
    moved = work.parameter_bytes(pooler) + work.parameter_bytes(classifier)
    moved += work.matmul_bytes(shapes, sentence.element_size())
    work.record("head", b, 1, b * flops.pooler_classifier(h, c), moved)
