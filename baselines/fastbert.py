"""FastBERT (Liu et al., "FastBERT: a Self-distilling BERT with Adaptive Inference Time",
ACL 2020), ``--method fastbert``. docs/methods.md.

- Heads (:class:`FastBERTHead`): FastBERT's classifier as a student after each of layers
  1..L-1 and as the teacher after layer L (:class:`FastBERTModel`).
- Training, two steps (:meth:`FastBERT.fit_two_steps`): (1) fine-tune backbone + teacher with
  cross-entropy; (2) freeze them and train the students by self-distillation,
  ``sum_i KL(teacher || student_i)`` at temperature 1 and 10x the learning rate
  (:meth:`FastBERTModel.forward`).
- Exit rule (:func:`normalized_entropy`): after each layer the running samples' student gives a
  distribution; a sample exits when its normalized entropy ("uncertainty") is below the speed.
  The exit loop and its batching policies are the shared dynamic-exit machinery
  (:class:`~geep.core.dynamic_exit.DynamicExitMethod`, ``batching``); the rest go on, and layer
  L exits through the teacher. Every layer a sample runs also costs a head: FLOPs count k layers
  and k heads for an exit at layer k.
- Speed knob: the uncertainty threshold in [0, 1]; 0 runs every sample through all layers.
  Default sweep 0, 0.1, ..., 0.9.

GEEP (:mod:`geep.methods.geep`) builds on this file: its model and method extend
:class:`FastBERTModel` and :class:`FastBERT`.

Deviation from the reference code (autoliuweijie/FastBERT), following the paper: the step-2
learning rate decays linearly to 0 at the last step (the reference schedule reaches 0 early).
The head's self-attention masks padding, as the reference's does.
"""

from __future__ import annotations

import math
from typing import Any, ClassVar

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from geep.common.config import TrainConfig
from geep.common.errors import GeepError
from geep.core.dynamic_exit import DynamicExitMethod, entropy
from geep.core.interface import FORWARD_ONLY
from geep.core.registry import register
from geep.data.encoding import Batch, Encoded
from geep.measure import flops, work
from geep.measure.flops import FASTBERT_HEAD_HEADS, FASTBERT_HEAD_WIDTH
from geep.model.backbone import Backbone
from geep.model.training import train_loop


def normalized_entropy(logits: torch.Tensor) -> torch.Tensor:
    """logits [..., C] -> H(softmax) / log(C) [...], in [0, 1] (FastBERT's uncertainty)."""
    return entropy(logits) / math.log(logits.shape[-1])


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
        """Count this call on hidden [B, T, H] (:mod:`geep.measure.work`)."""
        if not work.recording():
            return
        b, t, h = hidden.shape
        w, c = self.narrow.out_features, self.final.out_features
        shapes = work.fastbert_head_shapes(b, t, h, w, self.num_heads, c)
        itemsize = hidden.element_size()
        moved = work.parameter_bytes(self) + work.matmul_bytes(shapes, itemsize)
        work.record("head", b, t, b * flops.fastbert_head(h, t, c, "full"), moved)


class FastBERTModel(nn.Module):
    """Backbone with FastBERT's students after layers 1..E and its teacher after layer L.

    ``students`` is E (default L-1: a student after every layer below L); GEEP's ``exit_num``
    places fewer (:class:`~geep.methods.geep.GeepModel`), and samples then exit at one of them
    or at L.
    """

    def __init__(self, backbone: Backbone, num_labels: int, students: int = 0) -> None:
        super().__init__()
        self.backbone = backbone
        self.students = nn.ModuleList(
            FastBERTHead(backbone.hidden_size, num_labels, backbone.dropout)
            for _ in range(students or backbone.num_layers - 1)
        )
        self.teacher = FastBERTHead(backbone.hidden_size, num_labels, backbone.dropout)

    def exit_logits(
        self, layer: int, hidden: torch.Tensor, attention_mask: torch.Tensor
    ) -> torch.Tensor:
        """Logits [B, C] of the exit at ``layer`` from h_layer [B, T, H]: the student at
        ``layer`` (GeepError above layer E), the teacher at L."""
        if layer == self.backbone.num_layers:
            return self.teacher(hidden, attention_mask)
        if layer > len(self.students):
            raise GeepError(f"no student after layer {layer}: exit_num is {len(self.students)}")
        return self.students[layer - 1](hidden, attention_mask)

    def forward(self, batch: Batch, terms: str = "all") -> torch.Tensor:
        """Training loss; ``terms``: ``teacher`` (the cross-entropy terms: backbone and teacher;
        FastBERT's step 1), ``students`` (the KL terms, backbone and teacher frozen; FastBERT's
        step 2) or ``all`` (both, in one step: GEEP's). Students are distilled after layers
        1..E; every prefix of layers is computed once."""
        num_layers = self.backbone.num_layers
        attention_mask, labels = batch.attention_mask, batch.labels  # [B, T], [B]
        with torch.set_grad_enabled(torch.is_grad_enabled() and terms != "students"):
            hidden, mask = self.backbone.embed(**batch.inputs())  # [B, T, H], [B, 1, T, T]
            states = []  # h_1 .. h_L, each [B, T, H]
            for layer in range(1, num_layers + 1):
                hidden = self.backbone.run_layers(hidden, mask, layer - 1, layer)
                states.append(hidden)
            teacher_full = self.teacher(states[-1], attention_mask)  # [B, C]
        loss = teacher_full.new_zeros(())
        if terms != "students":
            loss = loss + F.cross_entropy(teacher_full, labels)
            loss = self.add_teacher_terms(loss, states, mask, batch)
        if terms != "teacher":
            target = F.log_softmax(teacher_full.detach(), dim=-1)  # [B, C]
            for student, state in zip(self.students, states, strict=False):  # layers 1..E
                log_p = F.log_softmax(student(state, attention_mask), dim=-1)
                loss = loss + F.kl_div(log_p, target, log_target=True, reduction="batchmean")
        return loss

    def add_teacher_terms(
        self,
        loss: torch.Tensor,
        states: list[torch.Tensor],
        mask: torch.Tensor | None,
        batch: Batch,
    ) -> torch.Tensor:
        """``loss`` plus the teacher's terms beyond its cross-entropy on the full stack: none in
        FastBERT (GEEP's teacher also reads diverse sub-networks)."""
        return loss


@register
class FastBERT(DynamicExitMethod):
    """FastBERT on the runner interface: two training steps, the entropy rule, FastBERT heads."""

    name = "fastbert"
    speed_help = (
        "uncertainty threshold: a sample exits at the first layer whose student has normalized "
        "entropy below it; 0 = full depth"
    )
    speed_bounds: ClassVar[tuple[float, float]] = (0.0, 1.0)
    calibrates: ClassVar[bool] = True
    head_kind = "fastbert"
    speed_reads = "threshold"

    @classmethod
    def build_model(cls, backbone: Backbone, num_labels: int, options: Any) -> nn.Module:
        return FastBERTModel(backbone, num_labels)

    def fit(self, train: Encoded) -> None:
        self.fit_two_steps(train, self.name)

    def fit_two_steps(self, train: Encoded, name: str) -> None:
        """FastBERT's recipe: fine-tune backbone + teacher with cross-entropy, then freeze them
        and train the students by self-distillation at 10x the learning rate."""
        config = TrainConfig.from_dict(self.info.train)
        model = self.model
        first = [*model.backbone.parameters(), *model.teacher.parameters()]
        train_loop(model, first, train, config, desc=f"{name}: step 1", terms="teacher")
        train_loop(
            model,
            model.students.parameters(),
            train,
            config,
            lr=10 * config.lr,
            desc=f"{name}: step 2 (self-distillation)",
            terms="students",
        )

    @classmethod
    def training_passes(cls, num_layers: int, options: Any) -> float:
        """:meth:`fit_two_steps`: step 1 fine-tunes backbone and teacher (1 pass); step 2,
        self-distillation, trains the students on the frozen backbone, forward only."""
        return 1.0 + FORWARD_ONLY

    def exit_head(
        self, layer: int, hidden: torch.Tensor, attention_mask: torch.Tensor
    ) -> torch.Tensor | None:
        """The student at ``layer`` (the teacher at L); None between E and L, where none is."""
        if len(self.model.students) < layer < self.num_layers:
            return None
        return self.model.exit_logits(layer, hidden, attention_mask)

    def heads_through(self, layers: np.ndarray) -> np.ndarray:
        """Heads a sample evaluates on its way to ``layers``: the students up to E, and the
        teacher at L."""
        return np.minimum(layers, len(self.model.students)) + (layers == self.num_layers)

    def exit_statistic(self, logits: torch.Tensor) -> torch.Tensor:
        """FastBERT's rule: exit once the student's normalized entropy is below the speed."""
        return normalized_entropy(logits)

    def head_flops(self, lengths: np.ndarray, convention: str) -> np.ndarray:
        return flops.fastbert_head(self.dims.hidden, lengths, self.info.num_labels, convention)

    @classmethod
    def speed_grid(cls, num_layers: int, num_labels: int) -> list[float]:
        """FastBERT's sweep: thresholds 0 (full depth) to 0.9 (nearly every sample exits early)."""
        return [0.0, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9]
