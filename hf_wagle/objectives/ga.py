"""`ga` (gradient ascent) and `grad_diff` (gradient difference): forget loss = -NLL_f (token mean)."""

from ..losses import sequence_nll
from .base import Objective, register_objective


@register_objective("ga")
class GradientAscent(Objective):
    """Gradient ascent: loss = -NLL_f (token mean); no retain term."""

    uses_retain = False

    def forget_loss(self, trainer, model, inputs):
        out = sequence_nll(model, inputs["forget"])
        return -out.token_mean, {"forget_nll": out.token_mean.detach()}


@register_objective("grad_diff")
class GradDiff(GradientAscent):
    """Gradient difference: forget loss = -NLL_f (token mean), plus the retain term."""

    uses_retain = True
