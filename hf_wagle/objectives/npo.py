"""`npo`: negative preference optimisation (Zhang et al. 2024), against the start model's log-probs."""

from dataclasses import dataclass, field

import torch.nn.functional as F

from ..losses import SequenceNLL, sequence_nll
from ..options import finite, one_of
from .base import Objective, register_objective


@dataclass
class PreferenceArgs:
    """beta and the answer log-prob of NPO and IDK-DPO."""

    beta: float = field(default=0.1, metadata={"config_name": "npo_beta",
                                               "help": "NPO / IDK-DPO inverse temperature beta."})
    normalization: str = field(default="sum", metadata={
        "config_name": "npo_normalization",
        "help": "NPO/DPO log-prob of an answer: 'sum' over tokens or token 'mean'."})

    def __post_init__(self):
        finite("npo_beta", self.beta, 0, strict=True)
        one_of("npo_normalization", self.normalization, ("sum", "mean"))

    def logp(self, out: SequenceNLL):
        """log p of each answer: summed over tokens, or averaged with `normalization="mean"`."""
        return -out.nll_sum if self.normalization == "sum" else -out.per_example_mean


@register_objective("npo", args=PreferenceArgs)
class NPO(Objective):
    """`-(2/beta) * mean_i log sigmoid(-beta * (logp_theta(y_i) - logp_ref(y_i)))`, logp summed over answer tokens
    (or token-averaged with `normalization="mean"`); the reference log-probs are computed once before training."""

    needs_reference = True

    def forget_loss(self, trainer, model, inputs):
        out = sequence_nll(model, inputs["forget"])
        log_ratio = self.args.logp(out) - trainer.reference_logp(inputs["forget"], "forget")
        beta = self.args.beta
        loss = -(2.0 / beta) * F.logsigmoid(-beta * log_ratio).mean()
        return loss, {"forget_nll": out.token_mean.detach(), "log_ratio": log_ratio.mean().detach()}
