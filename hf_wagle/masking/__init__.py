"""Masks: which weights unlearning may change.

Contract of a mask method (one file, like each of `methods/`):

    from hf_wagle.masking import register_mask_method

    @register_mask_method("fisher", needs="forget")   # "none", "forget", "forget_retain" or "forget_inputs"
    def fisher(param, grad_forget=None, grad_retain=None, **options):
        return grad_forget.pow(2)                      # param's shape, finite, >= 0; larger = more worth changing

`needs` says which signals attribution computes (G_f, G_r: fp32 sums of per-example token-mean NLL gradients;
or Wanda's input norms), and only those. A method with options of its own declares them as a dataclass
(`options=MyOptions`); they are set as `MaskConfig(options={...})`, `WagleConfig(mask_options={...})`, a YAML
`mask_options:` mapping, or `hf-wagle attribute --options key=value`, and arrive at `score` as keywords with `name`,
`mu`, `seed` (and on FSDP2 shards `offset`, `full_shape`).

Every option of how a mask is made lives in `MaskConfig` (`config.py`). `compute_mask` (`compute.py`) runs the
pipeline: signals (`signals.py`) -> the method's scores (`scores.py` for chunked ones) -> exact top-k selection
(`selection.py`) -> a `WeightMask` identical on every rank; `noise.py` holds GRIN's noise step.

The names below load on first use, so the command line can read `MaskConfig` without importing torch.
"""

from importlib import import_module

_PUBLIC = {
    "MaskConfig": ".config", "MaskArguments": ".config", "MASK_FIELDS": ".config",
    "MaskMethod": ".registry", "register_mask_method": ".registry", "MASK_METHODS": ".registry",
    "get_mask_method": ".methods", "mask_methods": ".methods",
    "compute_mask": ".compute", "mask_config": ".compute", "subset_indices": ".compute",
    "data_fingerprint": ".compute",
    "accumulate_gradients": ".signals", "input_feature_norms": ".signals",
    "select": ".selection", "select_top_k": ".selection", "select_top_k_packed": ".selection",
    "check_selects_something": ".selection", "included_parameters": ".selection", "name_matches": ".selection",
    "Scores": ".scores", "StoredScores": ".scores",
    "add_mask_noise": ".noise",
}
__all__ = list(_PUBLIC)


def __getattr__(name: str):
    if name in _PUBLIC:
        return getattr(import_module(_PUBLIC[name], __name__), name)
    raise AttributeError(f"module 'hf_wagle.masking' has no attribute {name!r}")


def __dir__():
    return sorted(__all__)
