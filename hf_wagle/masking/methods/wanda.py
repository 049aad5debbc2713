"""`wanda`: S_ij = | W_ij | * || X_j ||_2 for the weight W (out x in) of every linear layer, X_j the j-th input
feature over all non-padding tokens of the forget examples (Sun et al. 2023, calibrated on forget inputs). Other
parameters (embeddings, norms, biases) score 0."""

from ..registry import register_mask_method
from ..scores import WandaScores, ZeroScores


@register_mask_method("wanda", needs="forget_inputs")
def wanda_score(param, grad_forget=None, grad_retain=None, input_norm=None, **_):
    """S_ij = | W_ij | * || X_j ||_2 for linear weights; 0 for every other parameter."""
    return ZeroScores(param) if input_norm is None else WandaScores(param, *input_norm)
