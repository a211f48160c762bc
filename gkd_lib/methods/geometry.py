"""geometry: the proposed criterion of paper-ru.txt (the study reproduced here):
match the student's relation matrix of class centroids to the teacher's.

With `centroids="running"` (the default, DESIGN.md section 3) the teacher's
centroids are the means over the whole training set, computed once after the
teacher was trained, and the student's come from a bank of running means: for a
class present in the batch the centroid is m * bank + (1 - m) * batch mean, the
batch mean carrying the gradient; an absent class uses its bank entry. The loss is
the mean of (G^S_ij - G^T_ij)^2 over the pairs i != j that touch a class in the batch.

With `centroids="batch"` both sides use the batch means alone, as a literal reading
of the paper would; it exists for the ablation. With batch 64 and 100 classes most
such "centroids" are single samples.
"""

import torch
import torch.nn.functional as F

from gkd_lib.geometry import SIMILARITIES, relation_matrix
from gkd_lib.methods.base import METHODS, Method, check_choice, check_momentum, check_weight

CENTROID_MODES = ("running", "batch")


@METHODS.register("geometry")
class Geometry(Method):
    """CE + weight * mean over pairs of (G^S_ij - G^T_ij)^2."""

    def __init__(
        self,
        context,
        weight: float = 10.0,
        momentum: float = 0.9,
        similarity: str = "cosine",
        centroids: str = "running",
    ):
        super().__init__()
        self.weight = check_weight("geometry weight", weight)
        self.momentum = check_momentum("geometry momentum", momentum)
        self.similarity = check_choice("geometry similarity", similarity, SIMILARITIES)
        self.centroids = check_choice("geometry centroids", centroids, CENTROID_MODES)
        self.num_classes = context.num_classes
        self.needs_teacher = self.centroids == "batch"

        if self.centroids == "running":
            teacher_centroids = context.teacher_centroids
            if teacher_centroids is None:
                raise ValueError(
                    "the geometry method needs the teacher's class centroids (centroids.pt beside the "
                    "teacher checkpoint, written by notebook 01 / train_teacher)"
                )
            if teacher_centroids.shape[0] != context.num_classes:
                raise ValueError(
                    f"the teacher's centroids cover {teacher_centroids.shape[0]} classes, "
                    f"but the dataset has {context.num_classes}"
                )
            self.register_buffer(
                "teacher_relation", relation_matrix(teacher_centroids.float(), self.similarity)
            )
        self.register_buffer("bank", torch.zeros(context.num_classes, context.student_dim))
        self.register_buffer("seen", torch.zeros(context.num_classes, dtype=torch.bool))

    def terms(self, student, teacher, labels):
        embedding = student.embedding.float()
        one_hot = F.one_hot(labels, self.num_classes).to(embedding.dtype)
        counts = one_hot.sum(0)
        present = counts > 0
        batch_means = (one_hot.T @ embedding) / counts.clamp(min=1)[:, None]
        not_diagonal = ~torch.eye(self.num_classes, dtype=torch.bool, device=labels.device)

        if self.centroids == "batch":
            teacher_means = (one_hot.T @ teacher.embedding.float()) / counts.clamp(min=1)[:, None]
            target = relation_matrix(teacher_means, self.similarity)
            student_relation = relation_matrix(batch_means, self.similarity)
            pairs = present[:, None] & present[None, :] & not_diagonal
        else:
            # A class seen for the first time starts its bank entry at its batch mean.
            bank = torch.where(self.seen[:, None], self.bank, batch_means.detach())
            mixed = self.momentum * bank + (1 - self.momentum) * batch_means
            centroids = torch.where(present[:, None], mixed, bank)
            target = self.teacher_relation
            student_relation = relation_matrix(centroids, self.similarity)
            known = self.seen | present
            pairs = (present[:, None] | present[None, :]) & known[:, None] & known[None, :] & not_diagonal
            if self.training:
                self._update_bank(bank, batch_means.detach(), present)

        squared = (student_relation - target).pow(2) * pairs
        loss = squared.sum() / pairs.sum().clamp(min=1)
        return {"geometry": self.weight * loss}

    @torch.no_grad()
    def _update_bank(self, bank, batch_means, present):
        updated = self.momentum * bank + (1 - self.momentum) * batch_means
        self.bank.copy_(torch.where(present[:, None], updated, self.bank))
        self.seen |= present
