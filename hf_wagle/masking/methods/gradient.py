"""`gradient`: S = | G_f |   (SalUn-style saliency)."""

from ..registry import register_mask_method


@register_mask_method("gradient", needs="forget")
def gradient_score(param, grad_forget, grad_retain=None, **_):
    """S = | G_f |."""
    return grad_forget.abs_()
