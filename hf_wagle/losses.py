"""Loss primitives on labelled tokens: per-example NLL (`sequence_nll`), the KL retain term (`retain_kl`) and the
distance to the uniform distribution (`uniform_kl`).

Labels follow the data module's convention: next-token prediction, `-100` (`IGNORE_INDEX`) where no loss is taken.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from .data import IGNORE_INDEX


@dataclass
class SequenceNLL:
    nll_sum: torch.Tensor   # [batch] summed NLL of the labelled tokens, fp32
    n_tokens: torch.Tensor  # [batch] number of labelled tokens
    argmax_match: torch.Tensor | None = None  # [batch] every labelled token is the argmax (greedy decoding agrees)
    logits: torch.Tensor | None = None  # [batch, seq, vocab] when asked for
    hidden_states: tuple | None = None  # when asked for

    @property
    def token_mean(self) -> torch.Tensor:
        """Token-mean NLL over the whole batch."""
        return self.nll_sum.sum() / self.n_tokens.sum().clamp(min=1)

    @property
    def per_example_mean(self) -> torch.Tensor:
        """[batch] token-mean NLL of each example."""
        return self.nll_sum / self.n_tokens.clamp(min=1)


def sequence_nll(model, batch: dict, with_argmax: bool = False, keep_logits: bool = False,
                 hidden_states: bool = False) -> SequenceNLL:
    """Per-example NLL of the labelled tokens (next-token prediction, labels shifted by one), computed in fp32.

    With `with_argmax`, also whether each labelled token is the model's most likely next token: exactly the
    condition under which greedy decoding from the prompt reproduces the labelled continuation.
    """
    out = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"],
                output_hidden_states=hidden_states)
    logits = out.logits
    labels = batch["labels"][:, 1:].to(logits.device)
    token_nll = F.cross_entropy(
        logits[:, :-1].float().transpose(1, 2), labels, ignore_index=IGNORE_INDEX, reduction="none"
    )
    valid = labels != IGNORE_INDEX
    match = None
    if with_argmax:
        match = ((logits[:, :-1].argmax(-1) == labels) | ~valid).all(1)
    return SequenceNLL(token_nll.sum(1), valid.sum(1), match, logits if keep_logits else None,
                       out.hidden_states if hidden_states else None)


def retain_kl(logits: torch.Tensor, ref_logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Mean over labelled positions of `KL(p_ref || p_theta)` of the next-token distributions."""
    valid = (labels[:, 1:] != IGNORE_INDEX).to(logits.device)
    logp = F.log_softmax(logits[:, :-1].float(), -1)[valid]
    logq = F.log_softmax(ref_logits[:, :-1].float(), -1)[valid]
    return F.kl_div(logp, logq, reduction="batchmean", log_target=True)


def uniform_kl(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Mean over labelled positions of `KL(p_theta || U) = log V + sum_v p_v log p_v` (V: the vocabulary size), i.e.
    `log V` minus the entropy of the next-token distribution; 0 exactly when it is uniform."""
    valid = (labels[:, 1:] != IGNORE_INDEX).to(logits.device)
    logp = F.log_softmax(logits[:, :-1][valid].float(), -1)
    if not len(logp):
        return logits.sum() * 0.0  # no labelled token: a zero that keeps the graph
    return math.log(logp.shape[-1]) + (logp.exp() * logp).sum(-1).mean()
