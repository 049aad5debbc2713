"""TOFU forget quality: the two-sided KS-test p-value (`scipy.stats.ks_2samp`) between the forget truth ratios of
the unlearned model and those of a model trained on the retain set only, as an offline `evaluate` module."""

import datasets
import evaluate

from hf_wagle.evaluation.tofu import forget_quality

_DESCRIPTION = "Forget quality = ks_2samp(truth_ratios, retain_model_truth_ratios).pvalue."
_INPUTS = """
Args:
    truth_ratios: per-example forget truth ratios of the unlearned model.
    retain_model_truth_ratios: the same for the retain-only model (same forget rows).
Returns:
    {"forget_quality": p-value}
"""
_CITATION = "Maini et al., TOFU: A Task of Fictitious Unlearning for LLMs, 2024."


@evaluate.utils.file_utils.add_start_docstrings(_DESCRIPTION, _INPUTS)
class TofuForgetQuality(evaluate.Metric):
    def _info(self):
        return evaluate.MetricInfo(
            description=_DESCRIPTION, citation=_CITATION, inputs_description=_INPUTS,
            features=datasets.Features({"truth_ratios": datasets.Value("float64"),
                                        "retain_model_truth_ratios": datasets.Value("float64")}),
        )

    def _compute(self, truth_ratios, retain_model_truth_ratios):
        return {"forget_quality": forget_quality(list(truth_ratios), list(retain_model_truth_ratios))}
