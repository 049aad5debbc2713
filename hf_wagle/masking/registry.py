"""The mask-method registry: a name -> `MaskMethod` (its score function, the data it needs, its own options).

Pure Python: registering a method does not import torch. The built-in methods (`methods/`) register when that
package is imported; look methods up through it (`hf_wagle.masking.get_mask_method`), so the built-ins are there.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Callable

from ..options import build_options

NEEDS = ("none", "forget", "forget_retain", "forget_inputs")
MASK_METHODS: dict[str, "MaskMethod"] = {}


@dataclass(frozen=True)
class MaskMethod:
    """A registered mask method: `score(param, grad_forget=None, grad_retain=None, **options)` and what it needs.

    `needs`: `"none"` (no data), `"forget"` (`grad_forget` = G_f), `"forget_retain"` (G_f and G_r) or
    `"forget_inputs"` (no gradients; `input_norm=(norms, transposed)` of the parameter's linear layer over the forget
    tokens, or None for parameters that are not a linear weight). Every score gets `name` (the parameter's base
    name), `mu` and `seed`, for an FSDP2 model, where `param` and the gradients are this rank's shard, `offset` (the
    shard's first flat index in the full tensor) and `full_shape`, and the method's own `options` (a dataclass
    whose fields, defaults and `__post_init__` checks are the method's options; `MaskConfig.options` sets them).
    """

    name: str
    score: Callable
    needs: str
    options: type | None = None

    @property
    def uses_forget(self) -> bool:
        return self.needs != "none"

    @property
    def uses_retain(self) -> bool:
        return self.needs == "forget_retain"

    @property
    def uses_gradients(self) -> bool:
        return self.needs in ("forget", "forget_retain")

    def option_names(self) -> tuple[str, ...]:
        return tuple(f.name for f in dataclasses.fields(self.options)) if self.options else ()

    def resolve_options(self, given: dict | None) -> dict:
        """The method's options: its defaults updated by `given`, checked by the options dataclass. An unknown name
        is an error that lists the known ones."""
        given = dict(given or {})
        unknown = sorted(set(given) - set(self.option_names()))
        if unknown:
            known = ", ".join(self.option_names()) or "none"
            raise ValueError(f"mask method {self.name!r} has no option {', '.join(map(repr, unknown))} "
                             f"(its options: {known})")
        if self.options is None:
            return {}
        return dataclasses.asdict(build_options(self.options, given, f"mask method {self.name!r}"))


def register_mask_method(name: str, needs: str = "forget", options: type | None = None, override: bool = False):
    """Decorator: make `score(param, grad_forget=None, grad_retain=None, **options)` a mask method called `name`, in
    `compute_mask(method=name)`, `WagleConfig(mask_method=name)` and `hf-wagle attribute --method name`.

    `score` returns the elementwise score of `param` (a tensor of its shape, non-negative and finite; larger = more
    worth changing), or a `hf_wagle.masking.scores.Scores` made chunk by chunk. Gradients are fp32 buffers owned by
    attribution and may be overwritten in place. `needs` says which data the method uses (see `MaskMethod`), so
    attribution computes only that. `options` is a dataclass of the method's own options (set through
    `mask_options`, `--options key=value`), passed to `score` as keywords.

        @register_mask_method("fisher", needs="forget")
        def fisher(param, grad_forget=None, grad_retain=None, **options):
            return grad_forget.pow(2)
    """
    if not isinstance(name, str) or not name or name in ("none", "None", "dense"):
        raise ValueError(f"a mask method needs a non-empty name other than none/dense, got {name!r}")
    if needs not in NEEDS:
        raise ValueError(f"needs must be one of {', '.join(NEEDS)}, got {needs!r}")
    if options is not None and not dataclasses.is_dataclass(options):
        raise TypeError(f"options of mask method {name!r} must be a dataclass (its fields are the options)")
    if name in MASK_METHODS and not override:
        raise ValueError(f"a mask method {name!r} is already registered; pick another name or pass override=True")

    def wrap(score):
        MASK_METHODS[name] = MaskMethod(name, score, needs, options)
        return score

    return wrap
