"""rkd: Park, Kim, Lu and Cho, "Relational Knowledge Distillation", CVPR 2019.

Distance-wise and angle-wise relations between the embeddings of a batch, each
matched with a smooth-L1 loss, as in the authors' code (github.com/lenscloth/RKD):
distances are divided by their mean over the batch, and every (i, j, k) triplet's
angle at j enters the angle loss.
"""

import torch
import torch.nn.functional as F

from gkd_lib.methods.base import METHODS, Method, check_weight


def normalised_distances(embedding: torch.Tensor) -> torch.Tensor:
    distances = torch.cdist(embedding, embedding)
    return distances / distances[distances > 0].mean().clamp(min=1e-12)


def angles(embedding: torch.Tensor) -> torch.Tensor:
    """cos of the angle at j between i - j and k - j, for every (j, i, k); 0 where i or k is j."""
    directions = F.normalize(embedding[None, :, :] - embedding[:, None, :], dim=2)
    return torch.bmm(directions, directions.transpose(1, 2))


@METHODS.register("rkd")
class RKD(Method):
    """CE + distance_weight * L_distance + angle_weight * L_angle (defaults 25 and 50, as in the paper)."""

    def __init__(self, context, distance_weight: float = 25.0, angle_weight: float = 50.0):
        super().__init__()
        self.distance_weight = check_weight("rkd distance_weight", distance_weight)
        self.angle_weight = check_weight("rkd angle_weight", angle_weight)

    def terms(self, student, teacher, labels):
        s, t = student.embedding.float(), teacher.embedding.float()
        distance = F.smooth_l1_loss(normalised_distances(s), normalised_distances(t))
        angle = F.smooth_l1_loss(angles(s), angles(t))
        return {"rkd_distance": self.distance_weight * distance, "rkd_angle": self.angle_weight * angle}
