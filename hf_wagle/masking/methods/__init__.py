"""The built-in mask methods, one file each; importing this package registers them (in this order), and lookups go
through it. A method of your own is one file like these (see `hf_wagle.masking`)."""

from . import wagle, snip, gradient, grin, magnitude, uniform, wanda  # noqa: F401, I001
from ..registry import MASK_METHODS, MaskMethod


def mask_methods() -> dict[str, MaskMethod]:
    """Every registered mask method, the built-ins first."""
    return MASK_METHODS


def get_mask_method(name: str) -> MaskMethod:
    if name not in MASK_METHODS:
        raise ValueError(f"unknown mask method {name!r}; registered: {', '.join(MASK_METHODS)} "
                         "(add one with hf_wagle.register_mask_method)")
    return MASK_METHODS[name]
