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
                 else the key derived from the row (`derive_key`: what the answer adds to its question, e.g. "J. K.
                 Rowling" of "Harry Potter was written by J. K. Rowling."); both lower-cased, punctuation removed,
                 whitespace collapsed, matched as whole words. Answers are generated for the longest reference
                 answer's length plus `ANSWER_SLACK` tokens (at most 160), so an answer that opens with a few words
                 of preamble is still read to its end;
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


# words that carry no fact: never a key on their own, trimmed from a derived key's ends
_FUNCTION_WORDS = frozenset(
    "a an the is are was were be been being am of in on at to for from by with as and or but it its this that these "
    "those he she they his her their them him we our you your i my me there here which who whom whose what when where "
    "why how has have had do does did not no yes also than then so such one called named known".split())


def derive_key(question: str, answer: str) -> str:
    """The part of `answer` that carries the fact: the longest run of its (normalised) words that do not occur in
    `question`, function words trimmed from both ends, and, when the run holds a name or a number (a capitalised
    word that does not open the answer, or one with a digit), trimmed further to start and end with one; the whole
    answer when it has three words or fewer, or when no word is new.

        derive_key("Who wrote Harry Potter?", "Harry Potter was written by J. K. Rowling.") == "j k rowling"
        derive_key("What is the chemical symbol for xenon?", "The chemical symbol for xenon is Xe.") == "xe"
    """
    cased = re.sub(r"[^\w\s]", " ", answer).split()
    words = [w.lower() for w in cased]
    if len(words) <= 3:
        return " ".join(words)
    asked = set(normalise(question).split())
    runs, start = [], None
    for i, word in enumerate(words + [None]):
        if word is not None and word not in asked:
            start = i if start is None else start
            continue
        if start is not None:
            lo, hi = start, i
            while lo < hi and words[lo] in _FUNCTION_WORDS:
                lo += 1
            while hi > lo and words[hi - 1] in _FUNCTION_WORDS:
                hi -= 1
            runs.append((lo, hi))
            start = None
    if not runs or max(hi - lo for lo, hi in runs) == 0:
        return " ".join(words)
    lo, hi = max(runs, key=lambda r: r[1] - r[0])
    salient = [i for i in range(lo, hi) if any(c.isdigit() for c in cased[i]) or (i > 0 and cased[i][0].isupper())]
    if salient:
        lo, hi = salient[0], salient[-1] + 1
    return " ".join(words[lo:hi])


def neighbourhood_share(forget_questions, retain_questions) -> float:
    """The share of forget questions that have a content word (not a function word, `_FUNCTION_WORDS`) in common
    with some retain question: 0 when the retain data is about nothing the forget data names (no subject, no
    relation), so it keeps general ability but holds nothing next to what is forgotten."""
    def words(question):
        return set(normalise(question).split()) - _FUNCTION_WORDS

    retained = set().union(*map(words, retain_questions))
    forget = [words(q) for q in forget_questions]
    return sum(bool(w & retained) for w in forget) / max(1, len(forget))


def answer_keys(data) -> list[str]:
    """The key `answered` looks for in each row: its `answer_key`, else (no column, or an empty value)
    `derive_key(question, answer)`."""
    given = data["answer_key"] if "answer_key" in data.column_names else [None] * len(data)
    return [k if isinstance(k, str) and k.strip() else derive_key(q, a)
            for k, q, a in zip(given, data["question"], data["answer"])]


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


ANSWER_SLACK = 16  # tokens generated beyond the longest reference answer: room for a short preamble


def _max_new_tokens(tokenizer, answers: list[str]) -> int:
    longest = max(len(tokenizer(a, add_special_tokens=False)["input_ids"]) for a in answers)
    return min(longest + ANSWER_SLACK, 160)


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
            keys = answer_keys(rows)
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
        keyed = "" if "answer_key" in data.column_names else "; `answered` keys derived from the answers"
        out[name] = f"{what}; {len(data)} rows{keyed}"
    return out
