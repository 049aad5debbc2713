"""Membership-attack AUC in MUSE's orientation (PrivLeak's building block, the same as
`hf_wagle.evaluation.mia_auc`): `(1 / (m n)) sum_i sum_j ([t_j > s_i] + 1/2 [t_j = s_i])` over member (forget) scores
s and non-member (holdout) scores t, e.g. Min-K% Prob (k = 40%; higher = more likely a member). Near 0 when the
members are memorised, about 0.5 when they look like non-members; an offline `evaluate` module."""

import datasets
import evaluate

from hf_wagle.evaluation.muse import auc

_DESCRIPTION = ("MUSE-oriented AUC: the probability that a non-member's attack score exceeds a member's (higher "
                "score = member; near 0 = memorised).")
_INPUTS = """
Args:
    scores: attack scores. labels: 1 for members (forget texts), 0 for non-members (holdout texts).
Returns:
    {"auc": AUC}
"""
_CITATION = "Shi et al., MUSE: Machine Unlearning Six-Way Evaluation for Language Models, 2024."


@evaluate.utils.file_utils.add_start_docstrings(_DESCRIPTION, _INPUTS)
class MiaAuc(evaluate.Metric):
    def _info(self):
        return evaluate.MetricInfo(
            description=_DESCRIPTION, citation=_CITATION, inputs_description=_INPUTS,
            features=datasets.Features({"scores": datasets.Value("float64"), "labels": datasets.Value("int64")}),
        )

    def _compute(self, scores, labels):
        if set(labels) - {0, 1}:
            raise ValueError("labels must be 0 (non-member) or 1 (member)")
        members = [s for s, y in zip(scores, labels) if y == 1]
        return {"auc": auc([s for s, y in zip(scores, labels) if y == 0], members)}
