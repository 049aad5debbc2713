"""`idk_dpo`: DPO with a refusal preferred over the forget answer (open-unlearning's scaling)."""

from dataclasses import dataclass

import torch.nn.functional as F

from ..losses import sequence_nll
from .base import Objective, register_objective
from .npo import PreferenceArgs
from .po import RefusalArgs


@dataclass
class IdkDPOArgs(PreferenceArgs, RefusalArgs):
    def __post_init__(self):
        PreferenceArgs.__post_init__(self)
        RefusalArgs.__post_init__(self)


@register_objective("idk_dpo", args=IdkDPOArgs)
class IdkDPO(Objective):
    """`-(2/beta) * mean_i log sigmoid(beta * ((logp(r_i) - logp_ref(r_i)) - (logp(y_i) - logp_ref(y_i))))`."""

    needs_reference = True
    needs_refusal = True

    def forget_loss(self, trainer, model, inputs):
        win = sequence_nll(model, inputs["refusal"])
        lose = sequence_nll(model, inputs["forget"])
        win_ratio = self.args.logp(win) - trainer.reference_logp(inputs["refusal"], "refusal")
        lose_ratio = self.args.logp(lose) - trainer.reference_logp(inputs["forget"], "forget")
        beta = self.args.beta
        loss = -(2.0 / beta) * F.logsigmoid(beta * (win_ratio - lose_ratio)).mean()
        return loss, {"forget_nll": lose.token_mean.detach(), "log_ratio": (win_ratio - lose_ratio).mean().detach()}
