"""`Confinement`, the base of every training mode's confinement, and the registry that picks one for a model."""

from __future__ import annotations

import torch

from ..mask import WeightMask
from ..modeling import tied_aliases

CONFINEMENTS: dict[str, Confinement] = {}


class Confinement:
    """One way of keeping training inside a mask (see `hf_wagle.confinement`)."""

    kind = ""

    def accepts(self, model) -> bool:
        """Whether this confinement is the one for `model` (a model about to be trained)."""
        raise NotImplementedError

    def check(self, model) -> None:
        """Raise before any work if `model` cannot be confined this way."""

    def confine(self, model, mask: WeightMask | None) -> tuple[WeightMask, dict[torch.Tensor, torch.Tensor]]:
        """`(enforced mask, {parameter: bool gradient mask})`; prepares `model` so that only the enforced mask moves."""
        raise NotImplementedError

    def describe(self, model, mask: WeightMask | None, enforced: WeightMask) -> str | None:
        """A line for the log on what the mode could hold of `mask`, or None."""
        return None


def register_confinement(cls=None, *, override: bool = False):
    """Class decorator: register a `Confinement` subclass (one instance) under its `kind`. `confinement_for` asks
    the most recently registered first, so a new confinement can take over models a built-in would accept."""

    def wrap(cls):
        c = cls()
        if not isinstance(c, Confinement) or not isinstance(c.kind, str) or not c.kind:
            raise ValueError(f"{cls.__name__}: a confinement is a Confinement subclass with a non-empty `kind`")
        if c.kind in CONFINEMENTS and not override:
            raise ValueError(f"a confinement {c.kind!r} is already registered; pick another kind or pass override=True")
        CONFINEMENTS.pop(c.kind, None)
        CONFINEMENTS[c.kind] = c
        return cls

    return wrap if cls is None else wrap(cls)


def confinement_for(model) -> Confinement:
    """The confinement of a model about to be trained: masked LoRA for a `PeftModel`, gradient masks otherwise
    (the most recently registered confinement that accepts it)."""
    found = next((c for c in reversed(CONFINEMENTS.values()) if c.accepts(model)), None)
    if found is None:
        raise ValueError(f"no registered confinement accepts a {type(model).__name__}")
    return found


def enforced_metadata(model, mask: WeightMask | None, enforced_by: str) -> dict:
    """The enforced mask's metadata: the given mask's, with how it is enforced and the model's tied parameters."""
    meta = dict(mask.metadata) if mask is not None else {"method": None}
    meta["enforced_by"] = enforced_by
    tied = tied_aliases(model)
    if tied:
        meta["tied"] = tied
    return meta
