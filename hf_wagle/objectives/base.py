"""The objective registry and the `Objective` base class.

An objective is a forget loss and the retain loss it pairs with; the trainer's loss is
`forget_weight * forget_loss + retain_weight * retain_loss`. The retain loss is the token-mean NLL on retain data
(`retain_loss="nll"`), or the mean over labelled retain tokens of `KL(p_ref(. | prefix) || p_theta(. | prefix))`
(`retain_loss="kl"`), unless the objective brings its own.
"""

from __future__ import annotations

import dataclasses

import numpy as np
import torch

from ..losses import retain_kl, sequence_nll
from ..options import build_options, parse_options

DEFAULT_REFUSALS = (
    "I don't know .",
    "I'm not able to answer that .",
    "I have no information about that .",
    "I can't help with that question .",
    "That is not something I can answer .",
    "I'm afraid I don't know the answer .",
    "Sorry , I can't answer that .",
    "I have no knowledge of that .",
)


OBJECTIVES: dict[str, type["Objective"]] = {}


def register_objective(name: str, args: type | None = None, override: bool = False):
    """Class decorator: make an `Objective` subclass available as `WagleConfig(objective=name)`.

    `args` is a dataclass of the objective's own hyperparameters (its fields, defaults and `__post_init__` checks);
    they are set with `WagleConfig(objective_args={...})` or an `objective_args:` mapping in YAML, and the objective
    reads them as `self.args`. A field whose metadata has `config_name` is also a flat `WagleConfig` field of that
    name when the dataclass is one of the built-ins' (`BUILTIN_ARGS`: how they keep `npo_beta`, `rmu_layer`, ...)."""
    if not isinstance(name, str) or not name:
        raise ValueError(f"an objective needs a non-empty name, got {name!r}")
    if args is not None and not dataclasses.is_dataclass(args):
        raise TypeError(f"args of objective {name!r} must be a dataclass (its fields are the hyperparameters)")
    if name in OBJECTIVES and not override:
        raise ValueError(f"an objective {name!r} is already registered; pick another name or pass override=True")

    def wrap(cls):
        if not (isinstance(cls, type) and issubclass(cls, Objective)):
            raise TypeError(f"register_objective({name!r}) decorates a subclass of hf_wagle.objectives.Objective")
        OBJECTIVES[name] = cls
        cls.name, cls.args_class = name, args
        return cls

    return wrap


def get_objective(name: str) -> type["Objective"]:
    if name not in OBJECTIVES:
        raise ValueError(f"unknown objective {name!r}; choose one of {', '.join(sorted(OBJECTIVES))} (or register "
                         "one with hf_wagle.objectives.register_objective)")
    return OBJECTIVES[name]


def objective_arguments(config):
    """The objective's own arguments for a `WagleConfig`: the args dataclass's defaults, then the flat config fields
    it names (`config_name`), then `config.objective_args`; None when the objective declares no arguments."""
    cls = get_objective(config.objective)
    given = parse_options(config.objective_args, "objective_args")
    if cls.args_class is None:
        if given:
            raise ValueError(f"objective {config.objective!r} takes no objective_args, got {sorted(given)}")
        return None
    fields = dataclasses.fields(cls.args_class)
    known = {f.name for f in fields}
    unknown = sorted(set(given) - known)
    if unknown:
        raise ValueError(f"objective {config.objective!r} has no argument {', '.join(map(repr, unknown))} "
                         f"(its arguments: {', '.join(sorted(known))})")
    values = {f.name: getattr(config, f.metadata["config_name"]) for f in fields
              if f.metadata.get("config_name") and hasattr(config, f.metadata["config_name"])}
    return build_options(cls.args_class, {**values, **given}, f"objective {config.objective!r}")


class Objective:
    """A forget loss, and the retain loss it pairs with.

    `self.config` is the `WagleConfig`, `self.args` the objective's own arguments (see `register_objective`).
    Class attributes declare what the trainer prepares:
    `needs_reference`: reference logp of each forget answer (and refusal) -> `trainer.reference_logp(...)`;
    `needs_refusal`: each forget question also comes with another answer, a refusal unless `target_answers` says
    otherwise (`inputs["refusal"]`, QA data only);
    `uses_retain`: whether retain batches are used at all;
    `needs_subjects`: each forget row's `subject` column, found in its question -> `inputs["forget"]["subject_mask"]`.
    """

    name = "base"
    args_class: type | None = None
    needs_reference = False
    needs_refusal = False
    uses_retain = True
    needs_subjects = False

    def __init__(self, config, args=None):
        self.config, self.args = config, args

    @property
    def needs_reference_model(self) -> bool:
        """Whether the losses call `trainer.reference_forward` (the KL retain term does)."""
        return self.uses_retain and self.config.retain_loss == "kl"

    @property
    def refusals(self) -> list[str]:
        """The refusal answers of an objective with `needs_refusal`: its `refusals` argument, else the config's
        `refusals`, else `DEFAULT_REFUSALS`."""
        return list(getattr(self.args, "refusals", None) or getattr(self.config, "refusals", None) or DEFAULT_REFUSALS)

    def target_answers(self, forget) -> list[str]:
        """The answer each forget question is trained towards, for an objective with `needs_refusal`
        (`inputs["refusal"]`): a refusal drawn for row i by `numpy.random.default_rng([seed, i])`."""
        refusals, seed = self.refusals, self.config.seed
        return [refusals[int(np.random.default_rng([seed, i]).integers(len(refusals)))] for i in range(len(forget))]

    @classmethod
    def check_args(cls, args) -> None:
        """Checks of the arguments that hold only when this objective runs (raise ValueError); called by
        `WagleConfig` before any work."""

    def setup(self, trainer) -> None:
        """Called once when training starts, before the mask is installed."""

    def forget_loss(self, trainer, model, inputs: dict) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        raise NotImplementedError

    def retain_loss(self, trainer, model, inputs: dict) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """Token-mean NLL (`retain_loss="nll"`) or KL to the reference model (`"kl"`) on the retain batch."""
        batch = inputs["retain"]
        kl = self.config.retain_loss == "kl"
        out = sequence_nll(model, batch, keep_logits=kl)
        logs = {"retain_nll": out.token_mean.detach()}
        if not kl:
            return out.token_mean, logs
        ref_logits = trainer.reference_forward(batch).logits
        return retain_kl(out.logits, ref_logits, batch["labels"]), logs
