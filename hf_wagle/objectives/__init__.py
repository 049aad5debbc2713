"""Unlearning objectives, registered by name.

Notation: for an example with labelled answer tokens y (length |y|), `nll_sum = -sum_t log p(y_t | y_<t, x)`,
`logp = -nll_sum`; the token-mean NLL of a batch is `sum(nll_sum) / sum(|y|)`. "ref" is the model before
unlearning. NPO/DPO reference log-probs of the forget set are computed once before training (no second model).

Contract of an objective (one file, like each built-in here): a subclass of `Objective` registered by name, with
`forget_loss(trainer, model, inputs) -> (loss, logs)` (and `retain_loss` if it brings its own), its data needs
declared as class attributes (`uses_retain`, `needs_reference`, `needs_refusal`, `needs_subjects`) and its
hyperparameters as a dataclass (`args=`), read as `self.args`:

    from dataclasses import dataclass
    from hf_wagle.objectives import Objective, register_objective, sequence_nll

    @dataclass
    class CappedArgs:
        cap: float = 5.0

    @register_objective("capped_ascent", args=CappedArgs)
    class CappedAscent(Objective):
        def forget_loss(self, trainer, model, inputs):
            out = sequence_nll(model, inputs["forget"])
            return -out.token_mean.clamp(max=self.args.cap), {"forget_nll": out.token_mean.detach()}

`WagleConfig(objective="capped_ascent", objective_args={"cap": 3.0})` (or the same keys in YAML) uses it; the
trainer needs no change.
"""

from ..losses import sequence_nll
from . import alt, ga, idk_dpo, me, npo, po, rmu, simnpo  # noqa: F401  (the built-ins register themselves)
from .alt import AlternativeAnswer
from .base import OBJECTIVES, Objective, get_objective, objective_arguments, register_objective
from .ga import GradDiff, GradientAscent
from .idk_dpo import IdkDPO, IdkDPOArgs
from .me import MaxEntropy
from .npo import NPO, PreferenceArgs
from .po import DEFAULT_REFUSALS, RefusalArgs, RefusalPO
from .rmu import RMU, RMUArgs
from .simnpo import SimNPO, SimNPOArgs

BUILTIN_ARGS = (PreferenceArgs, SimNPOArgs, RefusalArgs, RMUArgs)  # their fields are flat WagleConfig fields

__all__ = ["OBJECTIVES", "Objective", "register_objective", "get_objective", "objective_arguments",
           "sequence_nll", "DEFAULT_REFUSALS", "BUILTIN_ARGS", "GradientAscent", "GradDiff", "NPO", "SimNPO",
           "RefusalPO", "IdkDPO", "MaxEntropy", "AlternativeAnswer", "RMU", "PreferenceArgs", "SimNPOArgs",
           "RefusalArgs", "IdkDPOArgs", "RMUArgs"]
