"""hf_wagle: weight-attribution-guided unlearning (WAGLE) for Hugging Face Transformers.

The public names load on first use (PEP 562), so `import hf_wagle` and the `hf-wagle` command line start without
importing torch or transformers.
"""

from importlib import import_module

from .version import __version__

_PUBLIC = {"WagleConfig": ".config", "WagleTrainer": ".trainer", "WeightMask": ".mask",
           "MaskConfig": ".masking", "compute_mask": ".masking", "register_mask_method": ".masking",
           "register_objective": ".objectives", "register_format": ".formats", "push_to_hub": ".hub"}
__all__ = [*_PUBLIC, "__version__"]


def __getattr__(name: str):
    if name in _PUBLIC:
        return getattr(import_module(_PUBLIC[name], __name__), name)
    raise AttributeError(f"module 'hf_wagle' has no attribute {name!r}")


def __dir__():
    return sorted(__all__)
