"""Answer-level metrics on QA data (teacher forced, batched).

* `probability`: `exp(-(1/n) sum_t nll_t)` over the answer tokens and EOS (TOFU's probability).
* `exact`: 1 if greedy decoding from the prompt reproduces the answer and EOS exactly, else 0. Computed teacher
  forced: greedy decoding reproduces a continuation iff every continuation token is the argmax given its prefix.
"""

from __future__ import annotations

import torch

from ..data import collate, pad_id, tokenize_dataset
from ..losses import sequence_nll
from ..options import DEFAULT_PROMPT_TEMPLATE


@torch.no_grad()
def answer_metrics(model, tokenizer, dataset, prompt_template: str = DEFAULT_PROMPT_TEMPLATE,
                   batch_size: int = 32, max_length: int | None = None,
                   keys: list[str] | None = None) -> dict[str, list[float]]:
    """Per-example `probability` and `exact` for a QA (or any accepted shape) dataset; with `keys` (one per QA row),
    of each answer's key tokens alone (`tokenize_example`), as `forget_tokens="key"` trains on them."""
    examples = tokenize_dataset(dataset, tokenizer, prompt_template, max_length, keys=keys)
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    probability, exact = [], []
    try:
        for i in range(0, len(examples), batch_size):
            batch = {k: v.to(device) for k, v in collate(examples[i:i + batch_size], pad_id(tokenizer)).items()}
            out = sequence_nll(model, batch, with_argmax=True)
            probability += torch.exp(-out.per_example_mean).tolist()
            exact += out.argmax_match.float().tolist()
    finally:
        model.train(was_training)
    return {"probability": probability, "exact": exact}


def summarise(metrics: dict[str, list[float]]) -> dict[str, float]:
    """Mean of each per-example list."""
    return {k: sum(v) / max(1, len(v)) for k, v in metrics.items()}
