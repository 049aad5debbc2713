"""Model-facing primitives shared by every benchmark: answer NLLs, text token log-probs, greedy generation.

All three work in batches and give the same per-example values as one example at a time:

* answer NLLs and token log-probs right-pad, and a causal model never attends to positions after a token;
* generation left-pads the prompts with an attention mask, so every prompt ends at the same position and padding is
  never attended to.
"""

from __future__ import annotations

from contextlib import contextmanager

import torch
import torch.nn.functional as F

from ..data import IGNORE_INDEX, collate, pad_id, tokenize_example
from ..losses import sequence_nll


def _device(model) -> torch.device:
    return next(model.parameters()).device


@contextmanager
def eval_mode(model):
    """Run under `model.eval()` and `torch.no_grad()`, restoring the training flag afterwards."""
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            yield model
    finally:
        model.train(was_training)


def answer_nlls(model, tokenizer, pairs: list[tuple[str, str]], prompt_template: str, batch_size: int = 32,
                max_length: int | None = None) -> list[float]:
    """Per pair `(question, answer)`: the token-mean NLL `(1/n) sum_t -log p(y_t | y_<t, prompt)` of the answer tokens
    and EOS, teacher forced, in fp32 (tokenised exactly as for training, see `hf_wagle.data`)."""
    examples = [tokenize_example({"question": q, "answer": a}, tokenizer, prompt_template, max_length, "qa")
                for q, a in pairs]
    out: list[float] = []
    device = _device(model)
    with eval_mode(model):
        for i in range(0, len(examples), batch_size):
            batch = {k: v.to(device) for k, v in collate(examples[i:i + batch_size], pad_id(tokenizer)).items()}
            out += sequence_nll(model, batch).per_example_mean.tolist()
    return out


def continuation_logprob(model, tokenizer, pairs: list[tuple[str, str]], batch_size: int = 32) -> list[float]:
    """Per pair `(context, continuation)`: `sum_t log p(c_t | context, c_<t)` over the continuation's tokens.

    The continuation's tokens are those of `tokenize(context + continuation)` after the first
    `len(tokenize(context))` tokens (as lm-eval-harness splits them)."""
    examples = []
    for context, continuation in pairs:
        n_context = len(tokenizer(context, add_special_tokens=True)["input_ids"])
        ids = tokenizer(context + continuation, add_special_tokens=True)["input_ids"]
        if len(ids) <= n_context:
            raise ValueError("a continuation adds no token after its context; check the choices and the tokenizer")
        labels = [IGNORE_INDEX] * n_context + ids[n_context:]
        examples.append({"input_ids": ids, "attention_mask": [1] * len(ids), "labels": labels})
    out: list[float] = []
    device = _device(model)
    with eval_mode(model):
        for i in range(0, len(examples), batch_size):
            batch = {k: v.to(device) for k, v in collate(examples[i:i + batch_size], pad_id(tokenizer)).items()}
            out += (-sequence_nll(model, batch).nll_sum).tolist()
    return out


def token_logprobs(model, tokenizer, texts: list[str], batch_size: int = 8,
                   max_length: int | None = None) -> list[list[float]]:
    """Per text: `log p(x_t | x_<t)` for every token after the first (BOS included when the tokenizer adds one)."""
    encoded = [tokenizer(t, add_special_tokens=True)["input_ids"][:max_length] for t in texts]
    if any(len(ids) < 2 for ids in encoded):
        raise ValueError("every text needs at least two tokens to score")
    out: list[list[float]] = []
    device = _device(model)
    with eval_mode(model):
        for i in range(0, len(encoded), batch_size):
            chunk = [{"input_ids": ids, "attention_mask": [1] * len(ids), "labels": ids}
                     for ids in encoded[i:i + batch_size]]
            batch = {k: v.to(device) for k, v in collate(chunk, pad_id(tokenizer)).items()}
            logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits[:, :-1].float()
            logp = torch.gather(F.log_softmax(logits, -1), 2, batch["input_ids"][:, 1:, None])[..., 0]
            for row, ids in zip(logp, encoded[i:i + batch_size]):
                out.append(row[:len(ids) - 1].tolist())
    return out


def greedy_generate(model, tokenizer, prompts: list, max_new_tokens: int = 200, batch_size: int = 16,
                    max_prompt_tokens: int | None = None, synced: bool = False) -> list[str]:
    """Greedy continuations of `prompts` (left-padded batches), decoded without special tokens, stripped.

    A prompt is a string (tokenised with the tokenizer's special tokens) or a list of token ids (used as given, e.g.
    `hf_wagle.data.prompt_ids`). Generation stops at EOS; the text is the decoded tokens before it. `synced` keeps
    every rank generating until all are done (a sharded model: every forward is collective)."""
    encoded = [list(p) if not isinstance(p, str) else tokenizer(p, add_special_tokens=True)["input_ids"]
               for p in prompts]
    if max_prompt_tokens is not None:
        encoded = [ids[-max_prompt_tokens:] for ids in encoded]
    eos, pad = tokenizer.eos_token_id, pad_id(tokenizer)
    device = _device(model)
    texts: list[str] = []
    with eval_mode(model):
        for i in range(0, len(encoded), batch_size):
            chunk = encoded[i:i + batch_size]
            width = max(len(ids) for ids in chunk)
            input_ids = torch.tensor([[pad] * (width - len(ids)) + ids for ids in chunk], device=device)
            attention = torch.tensor([[0] * (width - len(ids)) + [1] * len(ids) for ids in chunk], device=device)
            generated = model.generate(input_ids=input_ids, attention_mask=attention, max_new_tokens=max_new_tokens,
                                       do_sample=False, num_beams=1, pad_token_id=pad, eos_token_id=eos,
                                       temperature=None, top_p=None, top_k=None, synced_gpus=synced)
            for row in generated[:, width:].tolist():
                if eos in row:
                    row = row[:row.index(eos)]
                texts.append(tokenizer.decode(row, skip_special_tokens=True).strip())
    return texts
