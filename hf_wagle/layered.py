"""Layered unlearning (Qian et al. 2025, "Layered Unlearning for Adversarial Relearning"): forgetting in stages, so
that relearning some of the forgotten facts gives back less of the others.

With `forget_folds = k > 1`, the `n` forget rows are split into `k` folds `F_1 .. F_k`, contiguous in the order the
rows are given (row `i`, from 0, is in fold `floor(i * k / n) + 1`), and the run's `T` optimizer steps into `k`
equal stages (step `t`, from 0, is in stage `s = min(k, floor(t * k / T) + 1)`). Stage `s` unlearns the first `s`
folds and keeps the others through the retain term:

    theta_s = U(theta_{s-1}, forget = F_1 + ... + F_s, retain = R + F_{s+1} + ... + F_k)

Each stage adds a suppression trained to spare the folds still to come. Relearning the last fold can undo the last
stage's, while the earlier stages still hold the first folds; relearning the first fold undoes a suppression every
later stage shares. On SmolLM2 both showed (docs/how-to/robustness.md, "What it did on SmolLM2").

Per micro-batch: a forget row of a later fold joins the retain batch, and its place in the forget batch goes to row
`i mod n_s` (`n_s = ceil(s * n / k)` rows make up the first `s` folds), so the forget batch keeps its size and never
comes up empty. The stage is read from the Trainer's step when the batch is used, not when it is loaded, so it
switches at its exact step whatever the data loader prefetches, and a resumed run takes the stage of its step.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from .data import IGNORE_INDEX, collate


def stage_at(step: int, max_steps: int, folds: int) -> int:
    """`min(k, floor(t * k / T) + 1)`: the stage, from 1, of optimizer step `t` (from 0) of `T`."""
    return min(folds, step * folds // max(max_steps, 1) + 1)


def rows_through(stage: int, rows: int, folds: int) -> int:
    """`ceil(s * n / k)`: how many of the `n` forget rows folds 1 to `s` hold (they are rows 0 to that minus 1)."""
    return -(-stage * rows // folds)


def _padded_to(batch: dict, width: int, pad_token_id: int) -> dict:
    fill = {"input_ids": pad_token_id, "attention_mask": 0, "labels": IGNORE_INDEX}
    return {k: F.pad(v, (0, width - v.shape[1]), value=fill[k]) for k, v in batch.items() if k in fill}


def staged_batch(inputs: dict, stage: int, folds: int, forget: list[dict], pad_token_id: int,
                 refusal: list[dict] | None = None) -> dict:
    """A pair batch (`WagleTrainer`'s `{"forget", "retain", ...}`, forget rows by their `index` into `forget`) as stage
    `stage` of `folds` trains it: forget rows of later folds moved to the end of the retain batch, each replaced in
    the forget batch (and the refusal batch, if any) by row `index mod rows_through(stage)`."""
    index = inputs["forget"]["index"]
    current = rows_through(stage, len(forget), folds)
    rows = index.tolist()
    later = [i for i in rows if i >= current]
    if not later:
        return inputs
    device = index.device
    kept = [i if i < current else i % current for i in rows]

    def batch_of(examples: list[dict], i: list[int]) -> dict:
        return {k: v.to(device) for k, v in collate([{**examples[j], "index": j} for j in i], pad_token_id).items()}

    out = {**inputs, "forget": batch_of(forget, kept)}
    if refusal is not None and "refusal" in inputs:
        out["refusal"] = batch_of(refusal, kept)
    moved = batch_of(forget, later)
    width = max(inputs["retain"]["input_ids"].shape[1], moved["input_ids"].shape[1])
    retain, moved = _padded_to(inputs["retain"], width, pad_token_id), _padded_to(moved, width, pad_token_id)
    out["retain"] = {k: torch.cat([retain[k], moved[k]]) for k in retain}
    return out
