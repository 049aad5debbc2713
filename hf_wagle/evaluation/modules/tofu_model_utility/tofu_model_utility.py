"""TOFU model utility: the harmonic mean `k / sum_i (1 / x_i)` of the utility numbers (TOFU: probability, ROUGE-L
recall and truth ratio on retain, real authors and world facts), as an offline `evaluate` module."""

import datasets
import evaluate

from hf_wagle.evaluation.tofu import model_utility

_DESCRIPTION = "Model utility = harmonic mean of the given numbers (0 if any is 0)."
_INPUTS = """
Args:
    values: the utility numbers (TOFU: 9 of them).
Returns:
    {"model_utility": harmonic mean}
"""
_CITATION = "Maini et al., TOFU: A Task of Fictitious Unlearning for LLMs, 2024."


@evaluate.utils.file_utils.add_start_docstrings(_DESCRIPTION, _INPUTS)
class TofuModelUtility(evaluate.Metric):
    def _info(self):
        return evaluate.MetricInfo(
            description=_DESCRIPTION, citation=_CITATION, inputs_description=_INPUTS,
            features=datasets.Features({"values": datasets.Value("float64")}),
        )

    def _compute(self, values):
        return {"model_utility": model_utility(list(values))}
