"""sp: Tung and Mori, "Similarity-Preserving Knowledge Distillation", ICCV 2019.

The batch's pairwise similarity matrix G = F F^T, each row L2-normalised, for the
student and the teacher; the loss is ||G_S - G_T||_F^2 / b^2. Applied here to the
embeddings (the paper uses the last feature maps, which pool to them).
"""

import torch.nn.functional as F

from gkd_lib.methods.base import METHODS, Method, check_weight


def similarity(embedding):
    flat = embedding.flatten(1)
    return F.normalize(flat @ flat.T, dim=1)


@METHODS.register("sp")
class SP(Method):
    """CE + weight * ||G_S - G_T||_F^2 / b^2 (default weight 3000, the paper's CIFAR setting)."""

    def __init__(self, context, weight: float = 3000.0):
        super().__init__()
        self.weight = check_weight("sp weight", weight)

    def terms(self, student, teacher, labels):
        batch = student.embedding.shape[0]
        difference = similarity(student.embedding.float()) - similarity(teacher.embedding.float())
        return {"sp": self.weight * difference.pow(2).sum() / batch**2}
