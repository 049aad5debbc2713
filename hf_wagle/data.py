"""Forget/retain data: the three accepted dataset shapes, tokenisation, forget/retain pairing and padding.

Shapes (detected from the columns):

* QA: `question`, `answer`. Text = `prompt_template.format(question=q) + " " + answer` followed by EOS; labels
  cover the answer tokens and EOS only. With `prompt_template="chat"` the prompt is the tokenizer's chat template
  with the question as the user turn (`apply_chat_template(..., add_generation_prompt=True)`) and the answer follows
  it directly as the assistant turn, ended by EOS; the template brings its own special tokens, so none are added.
* text: `text`. Labels cover every token.
* pre-tokenised: `input_ids`, optional `attention_mask` and `labels` (-100 where no loss); used exactly as given
  (`labels` default to `input_ids` where `attention_mask` is 1).
"""

from __future__ import annotations

import re

import numpy as np
import torch
from torch.utils.data import Dataset as TorchDataset

IGNORE_INDEX = -100
CHAT = "chat"  # `prompt_template` value: use the tokenizer's chat template
SHAPES = {"qa": ("question", "answer"), "text": ("text",), "tokenized": ("input_ids",)}


def dataset_shape(dataset, what: str = "dataset") -> str:
    """Return "tokenized", "qa" or "text" for a `datasets.Dataset`, or raise a ValueError naming what is missing."""
    columns = set(getattr(dataset, "column_names", None) or [])
    for shape in ("tokenized", "qa", "text"):
        if set(SHAPES[shape]) <= columns:
            return shape
    raise ValueError(
        f"{what} has columns {sorted(columns)}, which match none of the accepted shapes: "
        "QA (`question`, `answer`), text (`text`) or pre-tokenised (`input_ids`, optional `attention_mask`, "
        "`labels`). Rename the columns (`dataset.rename_column`) or tokenise the data yourself."
    )


def check_prompt_template(prompt_template: str, tokenizer=None) -> None:
    """Raise a ValueError unless `prompt_template` is `"chat"` (with a tokenizer that has a chat template, when
    given) or a `str.format` template whose only field is `{question}`."""
    if prompt_template == CHAT:
        if tokenizer is not None and not getattr(tokenizer, "chat_template", None):
            raise ValueError("prompt_template='chat' needs a tokenizer with a chat template, and this one has none; "
                             "use a plain template such as 'Question: {question}\\nAnswer:'")
        return
    if not isinstance(prompt_template, str) or "{question}" not in prompt_template:
        raise ValueError(f"prompt_template must contain '{{question}}' (or be 'chat'), got {prompt_template!r}")
    try:
        prompt_template.format(question="")
    except (KeyError, IndexError, ValueError) as e:
        raise ValueError(f"prompt_template {prompt_template!r} has a field other than {{question}} ({e!r}); "
                         "write literal braces as {{ and }}") from None


def qa_prompt(tokenizer, prompt_template: str, question: str) -> tuple[str, str, bool]:
    """`(prompt, separator, add_special_tokens)` of a QA example: the text is `prompt + separator + answer`,
    tokenised with `add_special_tokens`."""
    if prompt_template == CHAT:
        prompt = tokenizer.apply_chat_template([{"role": "user", "content": question}], tokenize=False,
                                               add_generation_prompt=True)
        return prompt, "", False
    return prompt_template.format(question=question), " ", True


def prompt_ids(tokenizer, prompt_template: str, question: str) -> list[int]:
    """Token ids of the prompt alone, as generation starts from it."""
    prompt, _, special = qa_prompt(tokenizer, prompt_template, question)
    return tokenizer(prompt, add_special_tokens=special)["input_ids"]


def key_span(answer: str, key: str) -> tuple[int, int] | None:
    """Character span `[start, end)` of the first occurrence of `key` in `answer` as whole words, case and
    punctuation between words ignored (a derived key is normalised: "j k rowling" finds "J. K. Rowling"); None when
    it does not occur."""
    words = re.sub(r"[^\w\s]", " ", key).split()
    if not words:
        return None
    found = re.search(r"(?<!\w)" + r"\W+".join(map(re.escape, words)) + r"(?!\w)", answer, re.IGNORECASE)
    return found.span() if found else None


def tokenize_example(example: dict, tokenizer, prompt_template: str, max_length: int | None, shape: str,
                     key: str | None = None, subject: str | None = None) -> dict:
    """One example -> `{"input_ids", "attention_mask", "labels"}` as lists of ints. With `key` (QA only, a fast
    tokenizer), only the answer tokens that cover `key_span(answer, key)` carry labels (EOS does not). With
    `subject` (QA only, a fast tokenizer) also `subject_mask`: 1 on the prompt tokens that cover
    `key_span(question, subject)` inside the prompt, else 0."""
    if shape == "tokenized":
        ids = list(example["input_ids"])
        attn = list(example.get("attention_mask") or [1] * len(ids))
        labels = example.get("labels")
        labels = list(labels) if labels is not None else [t if a else IGNORE_INDEX for t, a in zip(ids, attn)]
        if not (len(ids) == len(attn) == len(labels)):
            raise ValueError("pre-tokenised example: `input_ids`, `attention_mask` and `labels` differ in length")
        return {"input_ids": ids, "attention_mask": attn, "labels": labels}
    if shape == "text":
        ids = tokenizer(example["text"], add_special_tokens=True)["input_ids"][:max_length]
        return {"input_ids": ids, "attention_mask": [1] * len(ids), "labels": list(ids)}
    prompt, separator, special = qa_prompt(tokenizer, prompt_template, example["question"])
    text = prompt + separator + example["answer"]
    if key is not None:
        if not tokenizer.is_fast:
            raise ValueError("forget_tokens='key' finds the key's tokens by character offsets, which needs a fast "
                             "tokenizer; load it with use_fast=True or set forget_tokens='answer'")
        span = key_span(example["answer"], key)
        if span is None:
            raise ValueError(f"forget_tokens='key': the key {key!r} does not occur in the answer "
                             f"{example['answer']!r}; fix the row's answer_key or set forget_tokens='answer'")
    if subject is not None:
        where = key_span(example["question"], subject)
        if where is None:
            raise ValueError(f"the subject {subject!r} does not occur in the question {example['question']!r} as "
                             "whole words; fix the row's `subject`")
        if not tokenizer.is_fast:
            raise ValueError("finding a subject's tokens reads character offsets, which needs a fast tokenizer; "
                             "load it with use_fast=True")
        at = prompt.rfind(example["question"])
        if at < 0:
            raise ValueError(f"the prompt template does not hold the question as written, so the subject "
                             f"{subject!r} cannot be found in it: {prompt!r}")
        subject_chars = (at + where[0], at + where[1])
    if tokenizer.is_fast:
        enc = tokenizer(text, add_special_tokens=special, return_offsets_mapping=True)
        # A token belongs to the answer when it covers any character after the prompt.
        in_answer = [end > len(prompt) for _, end in enc["offset_mapping"]]
        if key is not None:  # only tokens overlapping the key's characters
            lo, hi = (len(prompt) + len(separator) + i for i in span)
            in_answer = [end > lo and start < hi for start, end in enc["offset_mapping"]]
        ids = enc["input_ids"]
    else:
        n_prompt = len(tokenizer(prompt, add_special_tokens=special)["input_ids"])
        ids = tokenizer(text, add_special_tokens=special)["input_ids"]
        in_answer = [i >= n_prompt for i in range(len(ids))]
    ids = ids + [tokenizer.eos_token_id]
    labels = [t if a else IGNORE_INDEX for t, a in zip(ids, in_answer + [key is None])]
    out = {}
    if subject is not None:
        lo, hi = subject_chars
        out["subject_mask"] = [int(end > lo and start < hi) for start, end in enc["offset_mapping"]] + [0]
    if max_length is not None:
        ids, labels = ids[:max_length], labels[:max_length]
        out = {k: v[:max_length] for k, v in out.items()}
    if subject is not None and not any(out["subject_mask"]):
        raise ValueError(f"max_length={max_length} cuts the prompt before its subject {subject!r}; raise max_length")
    if key is not None and all(label == IGNORE_INDEX for label in labels):
        raise ValueError(f"forget_tokens='key': max_length={max_length} cuts the answer before its key {key!r}; raise "
                         "max_length or shorten the question")
    if all(label == IGNORE_INDEX for label in labels):
        raise ValueError(
            f"the prompt fills all {max_length} tokens of `max_length`, so no answer token is left to learn from; "
            "raise `max_length` or shorten the question."
        )
    return {"input_ids": ids, "attention_mask": [1] * len(ids), "labels": labels, **out}


def tokenize_dataset(dataset, tokenizer, prompt_template: str, max_length: int | None = None, what="dataset",
                     keys: list[str] | None = None, subjects: list[str] | None = None):
    """Tokenise a dataset of any accepted shape; returns a list of example dicts. `keys` (QA only): one per row,
    labels only on each answer's key tokens; `subjects` (QA only): one per row, each example's `subject_mask`
    (`tokenize_example`)."""
    shape = dataset_shape(dataset, what)
    if shape != "tokenized" and tokenizer is None:
        raise ValueError(f"{what} is not pre-tokenised, so a tokenizer (`processing_class`) is required")
    if shape != "tokenized" and tokenizer.eos_token_id is None:
        raise ValueError("the tokenizer has no EOS token; set `tokenizer.eos_token` before unlearning")
    if shape == "qa":
        check_prompt_template(prompt_template, tokenizer)
    out = []
    for i, ex in enumerate(dataset):
        for column in {"qa": ("question", "answer"), "text": ("text",)}.get(shape, ()):
            if not isinstance(ex[column], str):
                raise ValueError(f"{what}, row {i}: `{column}` is {type(ex[column]).__name__}, not a string")
        qa = shape == "qa"
        tokenized = tokenize_example(ex, tokenizer, prompt_template, max_length, shape,
                                     keys[i] if keys is not None and qa else None,
                                     subjects[i] if subjects is not None and qa else None)
        if all(label == IGNORE_INDEX for label in tokenized["labels"][1:]):  # the first token is never predicted
            raise ValueError(f"{what}, row {i}: no token carries a label (empty text, or labels all -100), so it "
                             "gives no loss and no gradient; remove the row or fix its labels")
        out.append(tokenized)
    return out


def check_fits_model(examples: list[dict], model, what: str = "dataset") -> None:
    """Raise a ValueError naming the row when a token id lies outside the model's vocabulary or a sequence is
    longer than the model's positions (`max_position_embeddings`)."""
    embeddings = model.get_input_embeddings() if hasattr(model, "get_input_embeddings") else None
    vocab = getattr(embeddings, "num_embeddings", None)
    config = getattr(model, "config", None)
    text_config = config.get_text_config() if hasattr(config, "get_text_config") else config
    positions = getattr(text_config, "max_position_embeddings", None)
    for i, ex in enumerate(examples):
        ids = ex["input_ids"]
        if vocab is not None and ids and (min(ids) < 0 or max(ids) >= vocab):
            raise ValueError(f"{what}, row {i}: token id {max(ids) if max(ids) >= vocab else min(ids)} is outside "
                             f"the model's vocabulary (0..{vocab - 1}); tokenise with the model's own tokenizer")
        if positions is not None and len(ids) > positions:
            raise ValueError(f"{what}, row {i}: {len(ids)} tokens, more than the model's {positions} positions; "
                             "set max_length or shorten the example")


def pad_id(tokenizer) -> int:
    """The id batches are padded with: the tokenizer's pad token, else its EOS, else 0 (never attended to, never
    labelled)."""
    for value in (getattr(tokenizer, "pad_token_id", None), getattr(tokenizer, "eos_token_id", None)):
        if value is not None:
            return value
    return 0


def collate(examples: list[dict], pad_token_id: int | None) -> dict[str, torch.Tensor]:
    """Right-pad `input_ids` (with `pad_token_id`, or 0), `attention_mask` (0) and `labels` (-100), and
    `subject_mask` (0) when every example has one.

    Labels come from tokenisation, never from comparing ids with the pad token, so a real EOS keeps its label
    when pad == EOS.
    """
    width = max(len(e["input_ids"]) for e in examples)
    pad = 0 if pad_token_id is None else pad_token_id

    def padded(key, value):
        return torch.tensor([e[key] + [value] * (width - len(e[key])) for e in examples], dtype=torch.long)

    batch = {"input_ids": padded("input_ids", pad), "attention_mask": padded("attention_mask", 0),
             "labels": padded("labels", IGNORE_INDEX)}
    with_subject = sum("subject_mask" in e for e in examples)
    if with_subject == len(examples):
        batch["subject_mask"] = padded("subject_mask", 0)
    elif with_subject:
        raise ValueError("a batch mixes rows with and without a subject mask: tokenise every row with its subject")
    if "index" in examples[0]:
        batch["index"] = torch.tensor([e["index"] for e in examples], dtype=torch.long)
    return batch


class ForgetRetainPairs(TorchDataset):
    """Item i = forget example i (with `index` i), paired with a retain example drawn at random, and with
    `refusal[i]` when refusal examples are given.

    The retain index comes from `numpy.random.default_rng([seed, rank, i, epoch])`: pairs differ between ranks and
    between epochs, do not depend on the order in which the sampler visits items, and depend on nothing held in
    memory, so a run resumed from a checkpoint draws exactly the pairs of an uninterrupted one. `WagleTrainer` sets
    `epoch` when each epoch begins (before its data loader starts; with `dataloader_persistent_workers=True` the
    workers keep the first epoch's value).
    """

    def __init__(self, forget: list[dict], retain: list[dict], seed: int, rank: int,
                 refusal: list[dict] | None = None):
        if not forget or not retain:
            raise ValueError("both the forget and the retain dataset need at least one example")
        self.forget, self.retain, self.refusal, self.seed, self.rank = forget, retain, refusal, seed, rank
        self.epoch = 0

    def __len__(self) -> int:
        return len(self.forget)

    def __getitem__(self, i: int) -> dict:
        rng = np.random.default_rng([self.seed, self.rank, i, self.epoch])
        item = {"forget": {**self.forget[i], "index": i}, "retain": self.retain[int(rng.integers(len(self.retain)))]}
        if self.refusal is not None:
            item["refusal"] = {**self.refusal[i], "index": i}
        return item


def refusal_examples(forget, tokenizer, answers: list[str], prompt_template: str, max_length: int | None):
    """Each forget question with `answers[i]` as its answer (a refusal, or another answer the objective trains
    towards), tokenised as QA."""
    if dataset_shape(forget, "forget dataset") != "qa":
        raise ValueError("objectives with their own answers ('po', 'idk_dpo', 'alt') need QA forget data "
                         "(`question`, `answer` columns)")
    return [tokenize_example({"question": question, "answer": answer}, tokenizer, prompt_template, max_length, "qa")
            for question, answer in zip(forget["question"], answers)]


class PairCollator:
    """Pads each part of a batch (`forget`, `retain`, `refusal`) separately: `{"forget": {...}, ...}`."""

    def __init__(self, pad_token_id: int | None):
        self.pad_token_id = pad_token_id

    def __call__(self, items: list[dict]) -> dict:
        return {part: collate([it[part] for it in items], self.pad_token_id) for part in items[0]}
