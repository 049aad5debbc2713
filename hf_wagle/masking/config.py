"""`MaskConfig`: every option of how a mask is made, with its default, help and bounds, in one place.

`WagleConfig` embeds these fields flat as `mask_<name>` (`mu` keeps its name from the paper), `compute_mask` takes
a `MaskConfig` or the same names as keywords, `hf-wagle attribute` builds its flags from the fields, and a YAML
config of `hf-wagle unlearn` sets them as `mask_<name>` keys. Pure Python: the command line reads it without
importing torch. (No `from __future__ import annotations` here: the field types are read at run time.)
"""

import dataclasses
from dataclasses import dataclass, field

from ..options import finite, one_of, parse_bytes, parse_options, positive_int, prefixed_fields

# grin: in both real-model comparisons the docs show (docs/evidence.md: TOFU forget05 and the element-symbols
# scenario on SmolLM2) it kept the most held-out utility at matched forgetting, separated from dense and from wagle;
# mask_method="wagle" (the paper's attribution) is one key away
DEFAULT_MASK_METHOD = "grin"
DEFAULT_MASK_RATIO = 0.5  # the ratio the docs measured every mask ahead of dense at (docs/evidence.md)
DEFAULT_MU = 1e-6
MASK_REDUCTIONS = ("sum", "mean")
RETAIN_SAMPLINGS = ("all", "paired")
MASK_SCOPES = ("global", "per_layer", "per_tensor")
MASK_GRANULARITIES = ("element", "row", "column")
DENSE_NAMES = ("", "none", "None", "dense")
PREFIX = "mask_"
UNPREFIXED = ("mu",)


@dataclass
class MaskConfig:
    """How a mask is made: `method` scores every weight, and the top `ratio` fraction (the weights that may change)
    is kept, per `scope`, in units of `granularity`, among the parameters `include`/`exclude` leave."""

    method: str | None = field(default=DEFAULT_MASK_METHOD, metadata={
        "help": "Weight attribution for the mask: a registered mask method (wagle, snip, gradient, grin, magnitude, "
                "wanda, random, or your own through register_mask_method), or none for dense unlearning."})
    ratio: float = field(default=DEFAULT_MASK_RATIO, metadata={
        "help": "Fraction of weights that may change, in (0, 1] (0.5: half)."})
    mu: float = field(default=DEFAULT_MU, metadata={
        "help": "WAGLE's diagonal-Hessian constant mu in S = |theta * G_f - G_r * G_f / mu|."})
    options: dict | str | None = field(default=None, metadata={
        "help": "Options of the mask method itself, as a mapping or key=value pairs (e.g. grin's eps=1e-12); "
                "each method declares the ones it takes."})
    reduction: str = field(default="sum", metadata={
        "help": f"G_f and G_r summed over the examples or divided by their count: one of {MASK_REDUCTIONS}."})
    batch_size: int = field(default=8, metadata={"help": "Examples per attribution batch."})
    num_samples: int | None = field(default=None, metadata={
        "help": "Score on a seeded subset of this many forget (and retain) examples; None = all."})
    retain_sampling: str = field(default="all", metadata={
        "help": "G_r over the whole retain set ('all') or, as the WAGLE authors' code, one retain example per forget "
                "example drawn with replacement ('paired')."})
    scope: str = field(default="global", metadata={
        "help": f"Where the ratio applies: one of {MASK_SCOPES}."})
    granularity: str = field(default="element", metadata={
        "help": f"Select single weights or whole rows/columns by their mean score: one of {MASK_GRANULARITIES}."})
    include: list[str] | None = field(default=None, metadata={
        "help": "Only parameters matching one of these name patterns may change."})
    exclude: list[str] | None = field(default=None, metadata={
        "help": "Parameters matching one of these name patterns never change."})
    accumulate_device: str | None = field(default=None, metadata={
        "help": "Where attribution keeps its fp32 gradient sums: 'cpu' for host memory (a big model on one "
                "accelerator); default the model's device."})
    memory_budget: str | None = field(default=None, metadata={
        "help": "Most memory attribution's fp32 gradient sums may take at once (2GB, 512MiB, bytes): the scored "
                "weights are taken in groups that fit, one pass over the data per group, and the scores wait in "
                "host memory; default: all in one pass."})
    noise_std: float = field(default=0.0, metadata={
        "help": "GRIN: before unlearning add N(0, (noise_std * std(theta))^2) to every selected weight "
                "(full-parameter runs only)."})

    def __post_init__(self):
        if self.method in DENSE_NAMES:
            self.method = None
        if self.method is not None and not isinstance(self.method, str):
            raise ValueError(f"{PREFIX}method must be a mask method's name or None, got {self.method!r}")
        ratio = self.ratio
        if isinstance(ratio, bool) or not isinstance(ratio, (int, float)) or not 0.0 < ratio <= 1.0:
            raise ValueError(f"{PREFIX}ratio is the fraction of weights that may change and must lie in (0, 1], got "
                             f"{ratio!r}")
        finite("mu", self.mu, 0, strict=True)
        self.options = parse_options(self.options, f"{PREFIX}options")
        one_of(f"{PREFIX}reduction", self.reduction, MASK_REDUCTIONS)
        positive_int(f"{PREFIX}batch_size", self.batch_size)
        positive_int(f"{PREFIX}num_samples", self.num_samples, allow_none=True)
        one_of(f"{PREFIX}retain_sampling", self.retain_sampling, RETAIN_SAMPLINGS)
        one_of(f"{PREFIX}scope", self.scope, MASK_SCOPES)
        one_of(f"{PREFIX}granularity", self.granularity, MASK_GRANULARITIES)
        for name in ("include", "exclude"):
            patterns = getattr(self, name)
            if isinstance(patterns, str):
                patterns = [patterns]
            if patterns is not None:
                patterns = list(patterns)
                if not patterns or not all(isinstance(p, str) and p for p in patterns):
                    raise ValueError(f"{name} must be a non-empty list of non-empty name patterns, got {patterns!r}")
            setattr(self, name, patterns)
        parse_bytes(f"{PREFIX}memory_budget", self.memory_budget)
        finite(f"{PREFIX}noise_std", self.noise_std, 0)

    def replace(self, **changes) -> "MaskConfig":
        """A copy with `changes` applied (and checked)."""
        return dataclasses.replace(self, **changes)


MASK_FIELDS = tuple(f.name for f in dataclasses.fields(MaskConfig))
# a compare-masks spec's keys (`wagle:mu=1e-4,scope=per_layer`): every field but the method (the spec's head) and its
# options (given by their own names), mapped to the `WagleConfig` field that holds it (`ratio` -> `mask_ratio`)
SPEC_KEYS = {name: name if name in UNPREFIXED else PREFIX + name for name in MASK_FIELDS
             if name not in ("method", "options")}
MaskArguments = dataclasses.make_dataclass("MaskArguments", prefixed_fields(MaskConfig, PREFIX, UNPREFIXED))
MaskArguments.__doc__ = "`MaskConfig`'s fields as `WagleConfig` holds them: `mask_<name>`, and `mu`."
