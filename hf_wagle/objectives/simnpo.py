"""`simnpo`: SimNPO (Fan et al. 2024), reference-free."""

from dataclasses import dataclass, field

import torch.nn.functional as F

from ..losses import sequence_nll
from ..options import finite
from .base import Objective, register_objective


@dataclass
class SimNPOArgs:
    beta: float = field(default=4.5, metadata={"config_name": "simnpo_beta", "help": "SimNPO beta."})
    delta: float = field(default=0.0, metadata={"config_name": "simnpo_delta", "help": "SimNPO margin delta."})

    def __post_init__(self):
        finite("simnpo_beta", self.beta, 0, strict=True)
        finite("simnpo_delta", self.delta)


@register_objective("simnpo", args=SimNPOArgs)
class SimNPO(Objective):
    """`-(2/beta) * mean_i log sigmoid(beta * (NLL_i/|y_i| - delta))`."""

    def forget_loss(self, trainer, model, inputs):
        out = sequence_nll(model, inputs["forget"])
        beta, delta = self.args.beta, self.args.delta
        loss = -(2.0 / beta) * F.logsigmoid(beta * (out.per_example_mean - delta)).mean()
        return loss, {"forget_nll": out.token_mean.detach()}
