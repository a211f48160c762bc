"""feature: FitNets-style hint at the embedding (Romero et al., "FitNets: Hints for
Thin Deep Nets", 2015), with a learnable linear regressor from the student's width
to the teacher's."""

import torch.nn.functional as F
from torch import nn

from gkd_lib.methods.base import METHODS, Method, check_weight


@METHODS.register("feature")
class Feature(Method):
    """CE + beta MSE(W s(x), t(x)); W is trained with the student."""

    def __init__(self, context, beta: float = 1.0):
        super().__init__()
        if context.teacher_dim is None:
            raise ValueError("the feature method needs a teacher (its embedding width is unknown)")
        self.beta = check_weight("feature beta", beta)
        self.regressor = nn.Linear(context.student_dim, context.teacher_dim, bias=False)

    def terms(self, student, teacher, labels):
        mapped = self.regressor(student.embedding.float())
        return {"feature": self.beta * F.mse_loss(mapped, teacher.embedding.float())}
