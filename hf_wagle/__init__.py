"""hf_wagle: weight-attribution-guided unlearning (WAGLE) for Hugging Face Transformers."""

__version__ = "0.1.0"

from .attribution import compute_mask
from .config import WagleConfig
from .mask import WeightMask
from .trainer import WagleTrainer

__all__ = ["WagleConfig", "WagleTrainer", "WeightMask", "compute_mask", "__version__"]
