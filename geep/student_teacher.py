"""FastBERT-style students and teacher on one backbone: the model FastBERT and GEEP share.

- :class:`StudentTeacherModel`: FastBERT's classifier (:class:`~geep.heads.FastBERTHead`) as a
  student after each of layers 1..E (E = L-1 unless GEEP's ``exit_num`` says fewer) and as the
  teacher after layer L, with the loss terms of both methods (docs/methods.md).
- :class:`StudentTeacherMethod`: what the two methods share on the runner interface: FastBERT's
  two training steps (and their cost for ``geep plan``), its exit rule and heads for dynamic
  exit, and the speed grid.
"""

from __future__ import annotations

from typing import Any, ClassVar, Literal

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from geep import flops
from geep.backbone import Backbone
from geep.config import TrainConfig
from geep.encoding import Batch, Encoded
from geep.errors import GeepError
from geep.exits import DynamicExitMethod, normalized_entropy
from geep.heads import FastBERTHead
from geep.runner import FORWARD_ONLY
from geep.training import train_loop

ExitHead = Literal["student", "shared"]


class StudentTeacherModel(nn.Module):
    """Backbone with FastBERT-style students after layers 1..E and a teacher after layer L.

    ``exit_num`` is E, 1..L-1 (0: L-1, a student after every layer below L). EasyNLP's GEEP
    places students after layers 1..E only; samples then exit at one of them or at L.
    """

    def __init__(
        self, backbone: Backbone, num_labels: int, teacher_inputs: str, exit_num: int = 0
    ) -> None:
        super().__init__()
        num_layers = backbone.num_layers
        if not 0 <= exit_num < num_layers:
            raise GeepError(
                f"option exit_num must lie in 1..{num_layers - 1} for this {num_layers}-layer "
                f"encoder (0: {num_layers - 1}), got {exit_num}"
            )
        self.backbone = backbone
        self.students = nn.ModuleList(
            FastBERTHead(backbone.hidden_size, num_labels, backbone.dropout)
            for _ in range(exit_num or num_layers - 1)
        )
        self.teacher = FastBERTHead(backbone.hidden_size, num_labels, backbone.dropout)
        self.teacher_inputs = teacher_inputs

    def exit_logits(
        self,
        layer: int,
        hidden: torch.Tensor,
        mask: torch.Tensor | None,
        attention_mask: torch.Tensor,
        head: ExitHead,
    ) -> torch.Tensor:
        """Logits [B, C] of the exit at ``layer`` from h_layer [B, T, H].

        Layer L exits through the teacher. Below it, ``student`` is the student at ``layer``
        (GeepError above layer E); ``shared`` applies layer L to h_layer, then the teacher
        (GEEP's shared exit).
        """
        num_layers = self.backbone.num_layers
        if layer == num_layers:
            return self.teacher(hidden, attention_mask)
        if head == "student":
            if layer > len(self.students):
                raise GeepError(f"no student after layer {layer}: exit_num is {len(self.students)}")
            return self.students[layer - 1](hidden, attention_mask)
        top = self.backbone.run_layers(hidden, mask, num_layers - 1, num_layers)
        return self.teacher(top, attention_mask)

    def forward(self, batch: Batch, terms: str = "all") -> torch.Tensor:
        """Training loss; ``terms``: ``all`` (GEEP's one step), ``teacher`` (the cross-entropy
        terms: backbone and teacher; FastBERT's step 1) or ``students`` (the KL terms, backbone
        and teacher frozen; FastBERT's step 2). With ``teacher_inputs="diverse"`` the teacher
        also reads the sub-networks k = 1..min(E, L-2) (layers 1..k, then L); with ``"last"``,
        the full stack only. Students are distilled after layers 1..E.
        """
        num_layers = self.backbone.num_layers
        attention_mask, labels = batch.attention_mask, batch.labels  # [B, T], [B]
        with torch.set_grad_enabled(torch.is_grad_enabled() and terms != "students"):
            hidden, mask = self.backbone.embed(**batch.inputs())  # [B, T, H], [B, 1, T, T]
            states = []  # h_1 .. h_L, each [B, T, H]: every prefix computed once
            for layer in range(1, num_layers + 1):
                hidden = self.backbone.run_layers(hidden, mask, layer - 1, layer)
                states.append(hidden)
            teacher_full = self.teacher(states[-1], attention_mask)  # [B, C]
        loss = teacher_full.new_zeros(())
        if terms != "students":
            loss = loss + F.cross_entropy(teacher_full, labels)
            diverse = min(len(self.students), num_layers - 2)  # sub-networks 1..k + L, k <= D
            if self.teacher_inputs == "diverse" and diverse > 0:
                prefixes = torch.cat(states[:diverse])  # [DB, T, H]: h_1 .. h_D
                repeated = mask.repeat(diverse, 1, 1, 1) if mask is not None else None
                tops = self.backbone.run_layers(prefixes, repeated, num_layers - 1, num_layers)
                logits = self.teacher(tops, attention_mask.repeat(diverse, 1))  # [DB, C]
                # mean over DB samples times D = the sum over k of each batch-mean CE
                loss = loss + diverse * F.cross_entropy(logits, labels.repeat(diverse))
        if terms != "teacher":
            target = F.log_softmax(teacher_full.detach(), dim=-1)  # [B, C]
            for student, state in zip(self.students, states, strict=False):  # layers 1..E
                log_p = F.log_softmax(student(state, attention_mask), dim=-1)
                loss = loss + F.kl_div(log_p, target, log_target=True, reduction="batchmean")
        return loss


class StudentTeacherMethod(DynamicExitMethod):
    """Shared runner pieces of the methods built on :class:`StudentTeacherModel`."""

    speed_bounds: ClassVar[tuple[float, float]] = (0.0, 1.0)
    dev_sweep: ClassVar[bool] = True

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
        return self.model.exit_logits(layer, hidden, None, attention_mask, "student")

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
