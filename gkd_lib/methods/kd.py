"""kd: Hinton, Vinyals and Dean, "Distilling the Knowledge in a Neural Network", 2015."""

import torch.nn.functional as F

from gkd_lib.methods.base import METHODS, Method, check_positive, check_weight


@METHODS.register("kd")
class KD(Method):
    """(1 - alpha) CE + alpha T^2 KL(softmax(z_t / T) || softmax(z_s / T))."""

    def __init__(self, context, temperature: float = 4.0, alpha: float = 0.9):
        super().__init__()
        self.temperature = check_positive("kd temperature", temperature)
        self.alpha = check_weight("kd alpha", alpha)
        if self.alpha > 1:
            raise ValueError(f"kd alpha must be in [0, 1], got {alpha!r}")
        self.ce_weight = 1.0 - self.alpha

    def terms(self, student, teacher, labels):
        t = self.temperature
        log_p_student = F.log_softmax(student.logits.float() / t, dim=1)
        log_p_teacher = F.log_softmax(teacher.logits.float() / t, dim=1)
        kl = F.kl_div(log_p_student, log_p_teacher, reduction="batchmean", log_target=True)
        return {"kd": self.alpha * t * t * kl}
