"""The distiller: a student, an optional frozen teacher and the methods' loss terms.

The training loop calls `distiller(images, labels)` and gets the student's logits
and a dict of named, already weighted loss terms; it sums them and logs each one.
It never needs to know which method it is running.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from gkd_lib.methods import Method, Outputs


class Distiller(nn.Module):
    def __init__(self, student: nn.Module, methods: list[Method], teacher: nn.Module | None = None):
        super().__init__()
        needs_teacher = any(method.needs_teacher for method in methods)
        if needs_teacher and teacher is None:
            raise ValueError("these methods read the teacher's outputs, but no teacher was given")
        self.student = student
        self.methods = nn.ModuleList(methods)
        # Only hold the teacher when a term reads it: the baseline then costs no teacher forward.
        self.teacher = teacher if needs_teacher else None
        if self.teacher is not None:
            self.teacher.eval().requires_grad_(False)
        self.ce_weight = math.prod(method.ce_weight for method in methods)

    def train(self, mode: bool = True):
        super().train(mode)
        if self.teacher is not None:
            self.teacher.eval()  # the teacher is never trained, and its BatchNorm stays frozen
        return self

    def trainable_parameters(self) -> list[nn.Parameter]:
        """The student's parameters and those of the methods (such as a feature regressor)."""
        return [p for p in (*self.student.parameters(), *self.methods.parameters()) if p.requires_grad]

    def set_epoch(self, epoch: int) -> None:
        for method in self.methods:
            method.set_epoch(epoch)

    def forward(self, images: torch.Tensor, labels: torch.Tensor):
        student = Outputs(*self.student(images))
        teacher = None
        if self.teacher is not None:
            with torch.no_grad():
                teacher = Outputs(*self.teacher(images))
        terms = {"ce": self.ce_weight * F.cross_entropy(student.logits.float(), labels)}
        for method in self.methods:
            for name, value in method(student, teacher, labels).items():
                if name in terms:
                    raise ValueError(f"two methods both return a loss term named {name!r}")
                terms[name] = value
        return student.logits, terms

    def state_for_checkpoint(self) -> dict:
        return {"student": self.student.state_dict(), "methods": self.methods.state_dict()}

    def load_checkpoint_state(self, state: dict) -> None:
        self.student.load_state_dict(state["student"])
        self.methods.load_state_dict(state["methods"])
