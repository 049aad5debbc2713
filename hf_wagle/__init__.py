"""hf_wagle: weight-attribution-guided unlearning (WAGLE) for Hugging Face Transformers.

The public names load on first use (PEP 562), so `import hf_wagle` and the `hf-wagle` command line start without
importing torch or transformers.
"""

import logging
from importlib import import_module

from .version import __version__


class _OptionalKernelLookup(logging.Filter):
    """bitsandbytes, which PEFT imports when it is installed, looks up an optional CPU kernel on the Hub as it loads;
    without it (offline, or not installed) it falls back to its own code and logs warnings that read like errors.
    Those two records are dropped; every other record passes."""

    _NOISE = ("Failed to load CPU gemm_4bit_forward", "Skipping publisher trust check")

    def filter(self, record: logging.LogRecord) -> bool:
        return not str(record.msg).startswith(self._NOISE)


for _name in ("bitsandbytes.backends.cpu.ops", "kernels._internals.hf_hub"):
    logging.getLogger(_name).addFilter(_OptionalKernelLookup())

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
