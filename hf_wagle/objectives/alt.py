"""`alt`: each forget question answered with another forget row's fact in place of its own.

For row i with answer `a_i` and key `k_i` (its `answer_key`, else `derive_key`; `hf_wagle.evaluation.measure`), the
target is `a_i` with `k_i` replaced by `k_j`, the key of row `j = sigma(i)`:

    "People in France speak French."  ->  "People in France speak Thai."

and the loss is its token-mean NLL. Row `j` is drawn (by `numpy.random.default_rng([seed, i])`) among the rows
with another key whose questions ask most alike: the largest Jaccard overlap of the questions' words, names left
out, so a birthplace is swapped for a birthplace, a language for a language.

Only the fact changes: the wording an answer shares with the others (and with the neighbours' answers) is trained
towards itself, so the update concentrates on the answer's key where gradient ascent and NPO push every token of it
down. Its answers are wrong on purpose: use it where a wrong answer is acceptable.
"""

from __future__ import annotations

import re

import numpy as np
import torch

from ..evaluation.measure import answer_keys, normalise
from ..losses import sequence_nll
from .base import Objective, register_objective


def _template(question: str) -> set[str]:
    """A question's words but its names (capitalised words after the first): what it asks, not about whom."""
    words = re.findall(r"\w+", question)
    return {w.lower() for i, w in enumerate(words) if i == 0 or not w[0].isupper()}


def alternative_keys(questions: list[str], keys: list[str], seed: int) -> list[int]:
    """`sigma`: for each row, the row whose key it takes (module docstring); keys compared normalised."""
    norm = [normalise(k) for k in keys]
    if len(set(norm)) < 2:
        raise ValueError("objective 'alt' gives each forget row another row's fact, and every forget row here has "
                         "the same one; add forget rows with other answers, or use another objective")
    templates = [_template(q) for q in questions]
    sigma = []
    for i, mine in enumerate(templates):
        others = [j for j in range(len(keys)) if norm[j] != norm[i]]
        alike = [len(mine & templates[j]) / max(1, len(mine | templates[j])) for j in others]
        best = [j for j, a in zip(others, alike) if a == max(alike)]
        sigma.append(best[int(np.random.default_rng([seed, i]).integers(len(best)))])
    return sigma


def _key_span(answer: str, key: str) -> tuple[int, int] | None:
    """Where `key`'s words stand in `answer` (case and punctuation between words ignored), or None."""
    words = re.findall(r"\w+", key)
    if not words:
        return None
    found = re.search(r"\b" + r"\W+".join(map(re.escape, words)) + r"\b", answer, flags=re.IGNORECASE)
    return found.span() if found else None


def alternative_answers(questions: list[str], answers: list[str], keys: list[str], seed: int) -> list[str]:
    """Each answer with its key replaced by the key `alternative_keys` gives it, as that row's answer writes it (the
    key itself where it cannot be found in an answer)."""
    sigma = alternative_keys(questions, keys, seed)
    out = []
    for i, j in enumerate(sigma):
        own, theirs = _key_span(answers[i], keys[i]), _key_span(answers[j], keys[j])
        new_key = answers[j][theirs[0]:theirs[1]] if theirs else keys[j]
        out.append(answers[i][:own[0]] + new_key + answers[i][own[1]:] if own else new_key)
    return out


@register_objective("alt")
class AlternativeAnswer(Objective):
    """Loss = token-mean NLL of each forget question's alternative answer (module docstring)."""

    needs_refusal = True

    def target_answers(self, forget) -> list[str]:
        return alternative_answers(forget["question"], forget["answer"], answer_keys(forget), self.config.seed)

    def forget_loss(self, trainer, model, inputs):
        alternative = sequence_nll(model, inputs["refusal"])
        with torch.no_grad():
            forget = sequence_nll(model, inputs["forget"])
        return alternative.token_mean, {"forget_nll": forget.token_mean,
                                        "alternative_nll": alternative.token_mean.detach()}
