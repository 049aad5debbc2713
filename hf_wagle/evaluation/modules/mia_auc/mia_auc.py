"""Membership-attack AUC (MUSE PrivLeak's building block): `(1 / (m n)) sum_i sum_j ([s_i > t_j] + 1/2 [s_i = t_j])`
over member scores s and non-member scores t (e.g. Min-K% Prob, k = 40%), as an offline `evaluate` module."""

import datasets
import evaluate

from hf_wagle.evaluation.muse import auc

_DESCRIPTION = "ROC AUC of attack scores (higher = member) against membership labels (1 = member)."
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
        return {"auc": auc([s for s, y in zip(scores, labels) if y == 1], [s for s, y in zip(scores, labels) if y == 0])}
