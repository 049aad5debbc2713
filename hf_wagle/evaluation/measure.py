"""The unlearning measurement: named QA sets scored the same way during training, in `unlearn`, in compare-masks and
in `plan`.

A set is a QA dataset (`question`, `answer`, optionally `answer_key`). The sets a run knows by name:

* `forget`     the forget data;
* `retain`     the retain rows the run trains on (labelled as trained-on wherever they are shown);
* `heldout`    retain rows kept out of training (`split_holdout`), or a set given by the user: utility the run
               cannot have memorised;
* `neighbour`  facts close to the forget topic that should be kept (given by the user);
* any other name a user passes.

Per set `s`, the metrics `s_<measure>`:

* `probability`  mean over rows of `exp(-(1/n) sum_t nll_t)` over the answer tokens and EOS, teacher forced;
* `answered`     fraction of rows whose greedy answer contains the key: `answer_key` where the set has that column,
                 else the whole `answer`; both lower-cased, punctuation removed, whitespace collapsed, matched as
                 whole words;
* `rouge`        mean ROUGE-L recall of the greedy answer against `answer` (TOFU's generation metric).

and, with `truth_ratio=True`, for sets with `paraphrased_answer` and `perturbed_answer`:

* `truth_ratio`  TOFU's: `mean(min(TR, 1/TR))` on `forget`, `mean(max(0, 1 - TR))` on the others
                 (`hf_wagle.evaluation.tofu`).

`answered` and `rouge` need generation and are computed only when asked for (`answers=True`, or a set of the names
of the sets to generate on). Under several
processes each rank scores rows `rank, rank + world_size, ...` and the sums are all-reduced, so every rank gets the
same numbers (all ranks must call together).
"""

from __future__ import annotations

import re

PROBABILITY, ANSWERED, ROUGE, TRUTH_RATIO = "probability", "answered", "rouge", "truth_ratio"
MEASURES = (PROBABILITY, ANSWERED, ROUGE)
ANSWER_MEASURES = (ANSWERED, ROUGE)


def normalise(text: str) -> str:
    """Lower case, punctuation to spaces, whitespace collapsed: the form `answered` compares."""
    return " ".join(re.sub(r"[^\w\s]", " ", text.lower()).split())


def contains_answer(generated: str, key: str) -> bool:
    """Whether the normalised `key` occurs in the normalised `generated` as whole words."""
    key = normalise(key)
    return bool(key) and f" {key} " in f" {normalise(generated)} "


def split_holdout(dataset, fraction: float, seed: int):
    """`(kept, heldout)`: a seeded random `fraction` of the rows (at least one) held out, the rest kept, each in its
    original order. Raises when either part would be empty."""
    import random

    if not 0 < fraction < 1:
        raise ValueError(f"the held-out fraction must be in (0, 1), got {fraction}")
    n = len(dataset)
    k = max(1, round(fraction * n))
    if n - k < 1:
        raise ValueError(f"cannot hold out {fraction:g} of {n} retain rows and still train on some; give more "
                         "retain rows, a heldout set of your own, or retain_holdout=0")
    held = sorted(random.Random(seed).sample(range(n), k))
    chosen = set(held)
    return dataset.select([i for i in range(n) if i not in chosen]), dataset.select(held)


def check_sets(sets: dict) -> None:
    """Every set a non-empty QA dataset; names made of lower-case letters, digits and `_`."""
    for name, data in sets.items():
        if not re.fullmatch(r"[a-z][a-z0-9]*", name):
            raise ValueError(f"evaluation set name {name!r}: use lower-case letters and digits (no '_')")
        columns = set(getattr(data, "column_names", None) or [])
        if not {"question", "answer"} <= columns or len(data) == 0:
            raise ValueError(f"evaluation set {name!r} must be a non-empty QA dataset with `question` and `answer`; "
                             f"it has {sorted(columns)}")


def _max_new_tokens(tokenizer, answers: list[str]) -> int:
    longest = max(len(tokenizer(a, add_special_tokens=False)["input_ids"]) for a in answers)
    return min(longest + 8, 128)


def has_truth_ratio(data) -> bool:
    return {"paraphrased_answer", "perturbed_answer"} <= set(data.column_names)


def _truth_ratio_sum(model, tokenizer, rows, forget: bool, prompt_template: str, batch_size: int) -> float:
    from .scoring import answer_nlls
    from .tofu import forget_truth_ratio, kept_truth_ratio, truth_ratio_of

    pairs, sizes = [], []
    for r in rows:
        pairs += [(r["question"], r["paraphrased_answer"])] + [(r["question"], p) for p in r["perturbed_answer"]]
        sizes.append(len(r["perturbed_answer"]))
    nll, pos, ratios = answer_nlls(model, tokenizer, pairs, prompt_template, batch_size), 0, []
    for k in sizes:
        ratios.append(truth_ratio_of(nll[pos], nll[pos + 1:pos + 1 + k]))
        pos += 1 + k
    return len(ratios) * (forget_truth_ratio if forget else kept_truth_ratio)(ratios)


def local_sums(model, tokenizer, sets: dict, prompt_template: str, answers: bool = False, batch_size: int = 32,
               max_length: int | None = None, rank: int = 0, world_size: int = 1,
               truth_ratio: bool = False) -> dict[str, float]:
    """Per set: the sums behind each metric over this rank's rows, and the row count `<set>_n`."""
    from ..data import prompt_ids
    from ..modeling import is_sharded
    from .answers import answer_metrics
    from .rouge import rouge_l
    from .scoring import greedy_generate

    sums: dict[str, float] = {}
    synced = any(is_sharded(p) for p in model.parameters())
    for name, data in sets.items():
        rows = data.select(range(rank, len(data), world_size)) if world_size > 1 else data
        sums[f"{name}_n"] = float(len(rows))
        sums[f"{name}_{PROBABILITY}"] = sum(answer_metrics(model, tokenizer, rows, prompt_template, batch_size,
                                                           max_length)[PROBABILITY]) if len(rows) else 0.0
        if truth_ratio and has_truth_ratio(data):
            sums[f"{name}_{TRUTH_RATIO}"] = _truth_ratio_sum(model, tokenizer, rows, name == "forget", prompt_template,
                                                             batch_size) if len(rows) else 0.0
        if answers is True or (answers and name in answers):
            texts = []
            if len(rows):
                prompts = [prompt_ids(tokenizer, prompt_template, q) for q in rows["question"]]
                texts = greedy_generate(model, tokenizer, prompts, _max_new_tokens(tokenizer, data["answer"]),
                                        batch_size, synced=synced)
            keys = rows["answer_key"] if "answer_key" in rows.column_names else rows["answer"]
            sums[f"{name}_{ANSWERED}"] = float(sum(contains_answer(t, k) for t, k in zip(texts, keys)))
            sums[f"{name}_{ROUGE}"] = sum(rouge_l(rows["answer"], texts)["recall"]) if texts else 0.0
    return sums


def measure(model, tokenizer, sets: dict, prompt_template: str, answers: bool = False, batch_size: int = 32,
            max_length: int | None = None, device=None, truth_ratio: bool = False) -> dict[str, float]:
    """The metrics of the module docstring for every set, identical on every rank (all ranks call together)."""
    import torch

    from ..modeling import rank_world, sum_over_ranks_

    rank, world_size = rank_world()
    sums = local_sums(model, tokenizer, sets, prompt_template, answers, batch_size, max_length, rank, world_size,
                      truth_ratio)
    names = sorted(sums)
    if world_size > 1:
        values = torch.tensor([sums[k] for k in names], dtype=torch.float64, device=device or "cpu")
        sum_over_ranks_([values])
        sums = dict(zip(names, values.cpu().tolist()))
    out = {}
    for name in sets:
        n = sums[f"{name}_n"]
        for m in (*MEASURES, TRUTH_RATIO):
            if f"{name}_{m}" in sums:
                out[f"{name}_{m}"] = sums[f"{name}_{m}"] / n
    return out


def describe_sets(sets: dict, heldout_source: str | None = None) -> dict[str, str]:
    """One line per set saying what it is (trained on or not), for results files and printed tables."""
    out = {}
    for name, data in sets.items():
        what = {"forget": "the forget data", "retain": "retain rows the run TRAINS ON (not held-out utility)",
                "heldout": heldout_source or "held-out rows, never trained on",
                "neighbour": "neighbour facts near the forget topic, never trained on"}.get(name, "never trained on")
        out[name] = f"{what}; {len(data)} rows"
    return out
