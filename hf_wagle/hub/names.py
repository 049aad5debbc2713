"""What a model reference may be published as: a Hub id, never a local path (`public_name`, kept with the other
reference helpers in `hf_wagle.options`)."""

from ..options import public_name

__all__ = ["public_name"]
