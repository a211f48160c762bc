"""dkd: Zhao, Cui, Song, Qiu and Liang, "Decoupled Knowledge Distillation", CVPR 2022.

Classic KD split into target-class KD (TCKD: the binary probability of the true
class against all others) and non-target-class KD (NCKD: the distribution over the
other classes), weighted separately; the distillation terms ramp up linearly over
the first `warmup` epochs, as in the authors' code (mdistiller).
"""

import torch
import torch.nn.functional as F

from gkd_lib.methods.base import METHODS, Method, check_positive, check_weight


def _kl(log_p_student, p_teacher):
    return (p_teacher * (torch.log(p_teacher.clamp(min=1e-12)) - log_p_student)).sum(1).mean()


@METHODS.register("dkd")
class DKD(Method):
    """CE + ramp * T^2 (alpha TCKD + beta NCKD); defaults alpha 1, beta 8, T 4, warm-up 20 epochs."""

    def __init__(
        self, context, alpha: float = 1.0, beta: float = 8.0, temperature: float = 4.0, warmup: int = 20
    ):
        super().__init__()
        self.alpha = check_weight("dkd alpha", alpha)
        self.beta = check_weight("dkd beta", beta)
        self.temperature = check_positive("dkd temperature", temperature)
        if isinstance(warmup, bool) or not isinstance(warmup, int) or warmup < 0:
            raise ValueError(f"dkd warmup must be a whole number of epochs >= 0, got {warmup!r}")
        self.warmup = warmup
        self.ramp = 1.0

    def set_epoch(self, epoch: int) -> None:
        self.ramp = 1.0 if self.warmup == 0 else min((epoch + 1) / self.warmup, 1.0)

    def terms(self, student, teacher, labels):
        t = self.temperature
        z_s, z_t = student.logits.float() / t, teacher.logits.float() / t
        target = F.one_hot(labels, z_s.shape[1]).bool()

        p_s, p_t = F.softmax(z_s, dim=1), F.softmax(z_t, dim=1)
        binary_s = torch.stack([p_s[target], 1 - p_s[target]], dim=1)
        binary_t = torch.stack([p_t[target], 1 - p_t[target]], dim=1)
        tckd = _kl(torch.log(binary_s.clamp(min=1e-12)), binary_t)

        # The non-target distribution: the target logit pushed out of the softmax.
        hidden = torch.where(target, torch.full_like(z_s, -1e4), torch.zeros_like(z_s))
        nckd = _kl(F.log_softmax(z_s + hidden, dim=1), F.softmax(z_t + hidden, dim=1))

        scale = self.ramp * t * t
        return {"dkd_tckd": scale * self.alpha * tckd, "dkd_nckd": scale * self.beta * nckd}
