"""FastBERT (Liu et al., "FastBERT: a Self-distilling BERT with Adaptive Inference Time",
ACL 2020), ``--method fastbert``. docs/methods.md.

- Heads: FastBERT's classifier (:class:`~geep.heads.FastBERTHead`) as a student after each of
  layers 1..L-1 and as the teacher after layer L (:class:`~geep.student_teacher.StudentTeacherModel`
  with the teacher reading the last layer only).
- Training, two steps: (1) fine-tune backbone + teacher with cross-entropy; (2) freeze them and
  train the students by self-distillation, ``sum_i KL(teacher || student_i)`` at temperature 1
  and 10x the learning rate.
- Exit rule: after each layer the running samples' student gives a distribution; a sample exits
  when its normalized entropy ("uncertainty") is below the speed. Exited samples leave the batch
  (``batching``: :mod:`geep.exits`); the rest go on, and layer L exits through the teacher. Every
  layer a sample runs also costs a head: FLOPs count k layers and k heads for an exit at layer k.
- Speed knob: the uncertainty threshold in [0, 1]; 0 runs every sample through all layers.
  Default sweep 0, 0.1, ..., 0.9.

Deviation from the reference code (autoliuweijie/FastBERT), following the paper: the step-2
learning rate decays linearly to 0 at the last step (the reference schedule reaches 0 early).
The head's self-attention masks padding, as the reference's does.
"""

from __future__ import annotations

from typing import Any

from torch import nn

from geep.backbone import Backbone
from geep.encoding import Encoded
from geep.runner import register
from geep.student_teacher import StudentTeacherMethod, StudentTeacherModel


@register
class FastBERT(StudentTeacherMethod):
    name = "fastbert"
    speed_help = (
        "uncertainty threshold: a sample exits at the first layer whose student has normalized "
        "entropy below it; 0 = full depth"
    )

    @classmethod
    def build_model(cls, backbone: Backbone, num_labels: int, options: Any) -> nn.Module:
        return StudentTeacherModel(backbone, num_labels, teacher_inputs="last")

    def fit(self, train: Encoded) -> None:
        self.fit_two_steps(train, "fastbert")
