"""Unlearning objectives, registered by name.

Notation: for an example with answer tokens y, `nll_sum = -sum_t log p(y_t | y_<t, x)` and `n` its number of
labelled tokens; the token-mean NLL of a batch is `sum(nll_sum) / sum(n)`; `logp = -nll_sum`.

The trainer's loss is `forget_weight * objective.forget_loss(...) + retain_weight * NLL_retain`.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from .data import IGNORE_INDEX


@dataclass
class SequenceNLL:
    nll_sum: torch.Tensor   # [batch] summed NLL of the labelled tokens, fp32
    n_tokens: torch.Tensor  # [batch] number of labelled tokens
    argmax_match: torch.Tensor | None = None  # [batch] every labelled token is the argmax (greedy decoding agrees)

    @property
    def token_mean(self) -> torch.Tensor:
        """Token-mean NLL over the whole batch."""
        return self.nll_sum.sum() / self.n_tokens.sum().clamp(min=1)

    @property
    def per_example_mean(self) -> torch.Tensor:
        """[batch] token-mean NLL of each example."""
        return self.nll_sum / self.n_tokens.clamp(min=1)


def sequence_nll(model, batch: dict, with_argmax: bool = False) -> SequenceNLL:
    """Per-example NLL of the labelled tokens (next-token prediction, labels shifted by one), computed in fp32.

    With `with_argmax`, also whether each labelled token is the model's most likely next token: exactly the
    condition under which greedy decoding from the prompt reproduces the labelled continuation.
    """
    logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
    labels = batch["labels"][:, 1:].to(logits.device)
    token_nll = F.cross_entropy(
        logits[:, :-1].float().transpose(1, 2), labels, ignore_index=IGNORE_INDEX, reduction="none"
    )
    valid = labels != IGNORE_INDEX
    match = None
    if with_argmax:
        match = ((logits[:, :-1].argmax(-1) == labels) | ~valid).all(1)
    return SequenceNLL(token_nll.sum(1), valid.sum(1), match)


OBJECTIVES: dict[str, type["Objective"]] = {}


def register_objective(name: str):
    """Class decorator: make an `Objective` subclass available as `WagleConfig(objective=name)`."""

    def wrap(cls):
        OBJECTIVES[name] = cls
        cls.name = name
        return cls

    return wrap


class Objective:
    """A forget loss. `needs_reference` objectives get `ref_logp`, the starting model's logp of each forget answer."""

    name = "base"
    needs_reference = False

    def __init__(self, args):
        self.args = args

    def forget_loss(self, forget: SequenceNLL, ref_logp: torch.Tensor | None) -> torch.Tensor:
        raise NotImplementedError


@register_objective("grad_diff")
class GradDiff(Objective):
    """Gradient difference: forget loss = -NLL_f (token mean), i.e. gradient ascent on the forget answers."""

    def forget_loss(self, forget, ref_logp):
        return -forget.token_mean


@register_objective("npo")
class NPO(Objective):
    """Negative preference optimisation (Zhang et al. 2024):
    `-(2/beta) * mean_i log sigmoid(-beta * (logp_theta(y_i) - logp_ref(y_i)))`, logp summed over answer tokens."""

    needs_reference = True

    def forget_loss(self, forget, ref_logp):
        beta = self.args.npo_beta
        log_ratio = -forget.nll_sum - ref_logp.to(forget.nll_sum.device)
        return -(2.0 / beta) * F.logsigmoid(-beta * log_ratio).mean()
