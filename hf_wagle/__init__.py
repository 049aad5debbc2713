"""hf_wagle: weight-attribution-guided unlearning (WAGLE) for Hugging Face Transformers."""

from .attribution import compute_mask, register_mask_method
from .config import WagleConfig
from .mask import WeightMask
from .trainer import WagleTrainer
from .version import __version__

__all__ = ["WagleConfig", "WagleTrainer", "WeightMask", "compute_mask", "register_mask_method", "__version__"]
