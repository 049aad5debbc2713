"""`snip`: S = | theta * G_f |."""

from ..registry import register_mask_method


@register_mask_method("snip", needs="forget")
def snip_score(param, grad_forget, grad_retain=None, **_):
    """S = | theta * G_f |."""
    return grad_forget.mul_(param.float()).abs_()
