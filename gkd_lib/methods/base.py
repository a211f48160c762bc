"""What every distillation method shares: the base class, the registry and the checks.

A method is a small `nn.Module`. It receives the student's and the teacher's
outputs for one batch and returns a dict of named loss terms, each already
multiplied by its weight, so that the training loop only sums and logs them.
Cross-entropy on the labels is not a method's term: each method states the
weight it gives it (`ce_weight`), and the distiller adds it once.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import nn

from gkd_lib.registry import Registry

METHODS: Registry = Registry("method")


@dataclass(frozen=True)
class Outputs:
    """One network's outputs for a batch."""

    embedding: torch.Tensor
    logits: torch.Tensor


@dataclass(frozen=True)
class MethodContext:
    """What a method may need to know when it is built."""

    num_classes: int
    student_dim: int
    teacher_dim: int | None = None
    teacher_centroids: torch.Tensor | None = None  # (num_classes, teacher_dim), train set


class Method(nn.Module):
    """Base class: override `terms`, set `ce_weight` and `needs_teacher`."""

    ce_weight: float = 1.0
    needs_teacher: bool = True  # whether `terms` reads the teacher's outputs

    def set_epoch(self, epoch: int) -> None:
        """Called at the start of every epoch (0-based); for warm-up schedules."""

    def terms(
        self, student: Outputs, teacher: Outputs | None, labels: torch.Tensor
    ) -> dict[str, torch.Tensor]:
        raise NotImplementedError

    def forward(self, student, teacher, labels):
        return self.terms(student, teacher, labels)


def check_weight(name: str, value) -> float:
    """A loss weight must be a finite number >= 0."""
    if (
        isinstance(value, bool)
        or not isinstance(value, (int, float))
        or not math.isfinite(value)
        or value < 0
    ):
        raise ValueError(f"loss weight {name} must be a finite number >= 0, got {value!r}")
    return float(value)


def check_positive(name: str, value) -> float:
    if (
        isinstance(value, bool)
        or not isinstance(value, (int, float))
        or not math.isfinite(value)
        or value <= 0
    ):
        raise ValueError(f"{name} must be a finite number > 0, got {value!r}")
    return float(value)


def check_choice(name: str, value, choices) -> str:
    if value not in choices:
        raise ValueError(f"{name} must be one of {', '.join(map(str, choices))}; got {value!r}")
    return value


def check_momentum(name: str, value) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0.0 <= value < 1.0:
        raise ValueError(f"{name} must be in [0, 1), got {value!r}")
    return float(value)
