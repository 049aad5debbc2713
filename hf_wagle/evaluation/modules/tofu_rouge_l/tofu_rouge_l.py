"""ROUGE-L as TOFU and MUSE score it (`rouge-score`, Porter stemming), as an `evaluate` module that loads offline."""

import datasets
import evaluate

from hf_wagle.evaluation.rouge import rouge_l

_DESCRIPTION = "ROUGE-L recall, precision and F1 per pair (recall = LCS / |reference|), and their means."
_INPUTS = """
Args:
    predictions: generated texts. references: the true texts. use_stemmer: Porter stemming (default True).
Returns:
    {"rougeL_recall", "rougeL_precision", "rougeL_f1"}: means; the same keys with "_per_example": lists.
"""
_CITATION = "Lin, ROUGE: A Package for Automatic Evaluation of Summaries, 2004; Maini et al., TOFU, 2024."


@evaluate.utils.file_utils.add_start_docstrings(_DESCRIPTION, _INPUTS)
class TofuRougeL(evaluate.Metric):
    def _info(self):
        return evaluate.MetricInfo(
            description=_DESCRIPTION, citation=_CITATION, inputs_description=_INPUTS,
            features=datasets.Features({"predictions": datasets.Value("string"),
                                        "references": datasets.Value("string")}),
        )

    def _compute(self, predictions, references, use_stemmer=True):
        scores = rouge_l(list(references), list(predictions), use_stemmer)
        out = {}
        for key in ("recall", "precision", "f1"):
            out[f"rougeL_{key}"] = sum(scores[key]) / max(1, len(scores[key]))
            out[f"rougeL_{key}_per_example"] = scores[key]
        return out
