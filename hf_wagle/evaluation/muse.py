"""MUSE metrics (Shi et al. 2024): verbatim memorisation, knowledge memorisation, privacy leakage.

* VerbMem  ROUGE-L F1 between the greedy continuation (128 new tokens) of a forget-text prompt and the text's true
           continuation `gt`. Lower after unlearning.
* KnowMem  ROUGE-L of greedy answers to QA pairs about the data (recall and F1 both returned). Forget: lower;
           retain: should stay.
* PrivLeak Min-K% Prob (k = 40%) membership attack, in MUSE's conventions. A text's Min-K% score is the mean of
           its lowest `max(1, int(k n))` token log-probs `log p(x_t | x_<t)` over every token after the first (BOS
           included as context when the tokenizer adds one; higher = more likely seen in training). MUSE ranks by
           `-score` with forget texts labelled 0 and holdout texts 1, so
           `AUC = P(score(holdout) > score(forget)) + 1/2 P(tie)`: about 0.5 for a model that never saw the forget
           texts, near 0 for one that memorised them. `PrivLeak = (AUC_unlearned - AUC_retrained) / AUC_retrained *
           100` (percent): 0 is ideal, near -100 still memorised (under-unlearned), positive over-unlearned.
"""

from __future__ import annotations

from ..data import check_prompt_template, prompt_ids
from ..options import DEFAULT_PROMPT_TEMPLATE
from .rouge import rouge_l
from .scoring import greedy_generate, token_logprobs


def _columns(dataset, needed: tuple[str, ...], what: str) -> None:
    columns = set(getattr(dataset, "column_names", None) or [])
    missing = set(needed) - columns
    if missing:
        raise ValueError(f"{what} lacks the column(s) {sorted(missing)}; it has {sorted(columns)}")
    if len(dataset) == 0:
        raise ValueError(f"{what} is empty")


def verbmem(model, tokenizer, dataset, max_new_tokens: int = 128, batch_size: int = 8,
            use_stemmer: bool = True) -> dict[str, list[float]]:
    """Per row of (`prompt`, `gt`): ROUGE-L `f1` and `recall` of the greedy continuation against `gt`."""
    _columns(dataset, ("prompt", "gt"), "VerbMem data")
    generations = greedy_generate(model, tokenizer, list(dataset["prompt"]), max_new_tokens, batch_size)
    scores = rouge_l(list(dataset["gt"]), generations, use_stemmer)
    return {"rougeL_f1": scores["f1"], "rougeL_recall": scores["recall"]}


def knowmem(model, tokenizer, dataset, prompt_template: str = DEFAULT_PROMPT_TEMPLATE, max_new_tokens: int = 32,
            batch_size: int = 16, use_stemmer: bool = True) -> dict[str, list[float]]:
    """Per row of (`question`, `answer`): ROUGE-L `f1` and `recall` of the greedy answer to
    `prompt_template.format(question=...)` (or the chat template, `prompt_template="chat"`)."""
    _columns(dataset, ("question", "answer"), "KnowMem data")
    check_prompt_template(prompt_template, tokenizer)
    prompts = [prompt_ids(tokenizer, prompt_template, q) for q in dataset["question"]]
    generations = greedy_generate(model, tokenizer, prompts, max_new_tokens, batch_size)
    scores = rouge_l(list(dataset["answer"]), generations, use_stemmer)
    return {"rougeL_f1": scores["f1"], "rougeL_recall": scores["recall"]}


def min_k_score(logprobs: list[float], k: float = 0.4) -> float:
    """Min-K% Prob: mean of the `max(1, int(k * n))` smallest token log-probs."""
    if not 0 < k <= 1:
        raise ValueError(f"k must be in (0, 1], got {k}")
    if not logprobs:
        raise ValueError("no token log-probs to score")
    lowest = sorted(logprobs)[:max(1, int(k * len(logprobs)))]
    return sum(lowest) / len(lowest)


def min_k_scores(model, tokenizer, texts: list[str], k: float = 0.4, batch_size: int = 8,
                 max_length: int | None = 512) -> list[float]:
    """Min-K% Prob score of every text under `model` (higher = more likely seen in training)."""
    return [min_k_score(lp, k) for lp in token_logprobs(model, tokenizer, texts, batch_size, max_length)]


def auc(member_scores: list[float], nonmember_scores: list[float]) -> float:
    """ROC AUC of separating members (higher score) from non-members: the Mann-Whitney form
    `(1 / (m n)) sum_i sum_j ([s_i > t_j] + 1/2 [s_i = t_j])`."""
    if not member_scores or not nonmember_scores:
        raise ValueError("AUC needs at least one member and one non-member score")
    wins = sum((s > t) + 0.5 * (s == t) for s in member_scores for t in nonmember_scores)
    return wins / (len(member_scores) * len(nonmember_scores))


def mia_auc(model, tokenizer, forget_texts: list[str], holdout_texts: list[str], k: float = 0.4,
            batch_size: int = 8, max_length: int | None = 512) -> float:
    """MUSE's Min-K% AUC: `P(score(holdout) > score(forget)) + 1/2 P(tie)` (near 0 when the forget texts are
    memorised, about 0.5 when they are not)."""
    if not forget_texts or not holdout_texts:
        raise ValueError("privleak needs forget and holdout texts")
    return auc(min_k_scores(model, tokenizer, holdout_texts, k, batch_size, max_length),
               min_k_scores(model, tokenizer, forget_texts, k, batch_size, max_length))


def privleak(auc_unlearned: float, auc_retrained: float) -> float:
    """`(AUC_unlearned - AUC_retrained) / AUC_retrained * 100`, MUSE's PrivLeak in percent, with `mia_auc`'s
    orientation: 0 = leaks like a retrained model, near -100 = still memorised, > 0 = over-unlearned."""
    if not 0 < auc_retrained <= 1 or not 0 <= auc_unlearned <= 1:
        raise ValueError("AUCs must lie in [0, 1] (the retrained one > 0)")
    return (auc_unlearned - auc_retrained) / auc_retrained * 100
