"""`po`: preference optimisation towards a refusal ("I don't know"-style answers)."""

from dataclasses import dataclass, field

import torch

from ..losses import sequence_nll
from .base import DEFAULT_REFUSALS, Objective, register_objective


@dataclass
class RefusalArgs:
    refusals: list[str] | None = field(default=None, metadata={
        "config_name": "refusals",
        "help": "Refusal answers for 'po' / 'idk_dpo', one drawn per forget question, seeded (default: a built-in "
                "list)."})

    def __post_init__(self):
        if self.refusals is not None and (not self.refusals or not all(isinstance(r, str) and r.strip()
                                                                          for r in self.refusals)):
            raise ValueError("refusals must be a non-empty list of non-empty strings")
        self.refusals = list(self.refusals or DEFAULT_REFUSALS)


@register_objective("po", args=RefusalArgs)
class RefusalPO(Objective):
    """Loss = token-mean NLL of a refusal answer to each forget question."""

    needs_refusal = True

    def forget_loss(self, trainer, model, inputs):
        refusal = sequence_nll(model, inputs["refusal"])
        with torch.no_grad():
            forget = sequence_nll(model, inputs["forget"])
        return refusal.token_mean, {"forget_nll": forget.token_mean, "refusal_nll": refusal.token_mean.detach()}
