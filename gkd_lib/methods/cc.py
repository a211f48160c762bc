"""cc: Peng et al., "Correlation Congruence for Knowledge Distillation", ICCV 2019.

The correlation between the instances of a batch, measured with a Gaussian RBF
kernel k(x, y) = exp(-gamma ||x - y||^2) on L2-normalised embeddings and
approximated, as in the paper, by its Taylor expansion of order P:
k(x, y) = sum_p exp(-2 gamma) (2 gamma)^p / p! (x . y)^p. The loss is
||C_S - C_T||_F^2 / b^2.
"""

import math

import torch.nn.functional as F

from gkd_lib.methods.base import METHODS, Method, check_positive, check_weight


def correlation(embedding, gamma: float, order: int):
    unit = F.normalize(embedding, dim=1)
    dots = unit @ unit.T
    scale = math.exp(-2 * gamma)
    return sum(scale * (2 * gamma) ** p / math.factorial(p) * dots.pow(p) for p in range(order + 1))


@METHODS.register("cc")
class CC(Method):
    """CE + weight * ||C_S - C_T||_F^2 / b^2 (defaults: weight 0.02, gamma 0.4, order 2)."""

    def __init__(self, context, weight: float = 0.02, gamma: float = 0.4, order: int = 2):
        super().__init__()
        self.weight = check_weight("cc weight", weight)
        self.gamma = check_positive("cc gamma", gamma)
        if isinstance(order, bool) or not isinstance(order, int) or order < 0:
            raise ValueError(f"cc order must be a whole number >= 0, got {order!r}")
        self.order = order

    def terms(self, student, teacher, labels):
        batch = student.embedding.shape[0]
        c_s = correlation(student.embedding.float(), self.gamma, self.order)
        c_t = correlation(teacher.embedding.float(), self.gamma, self.order)
        return {"cc": self.weight * (c_s - c_t).pow(2).sum() / batch**2}
