"""Confinement: how a training mode keeps its change inside a mask.

A confinement is a `Confinement` subclass registered with `@register_confinement`; adding one is one file. Its parts:

* `kind`: its name (`"full"`, `"lora"`), shown in logs and errors;
* `accepts(model)`: whether it is the one for a model about to be trained; `confinement_for(model)` asks the most
  recently registered first;
* `check(model)`: raise before any work if the model cannot be confined this way;
* `confine(model, mask) -> (enforced_mask, grad_masks)`: turn an element mask (or None: dense) into the mask of
  base weights training can actually change, preparing the model so that nothing else moves, and the
  `{parameter: bool tensor}` gradient masks the trainer multiplies gradients by after each backward pass (and
  applies weight decay through, on-mask only);
* `describe(model, mask, enforced)`: a line for the log on what it could hold of the mask, or None.

Built in: `full` (gradient masks on the parameters themselves) and `lora` (masked LoRA: a row x column projection
of the mask on each targeted linear weight). How a saved result is audited is its format's business
(`hf_wagle.formats`).
"""

from .base import CONFINEMENTS, Confinement, confinement_for, enforced_metadata, register_confinement
from .full import GradientMaskConfinement, confine_parameters
from .lora import LoraConfinement, check_lora_config, confine_lora, lora_modules

__all__ = ["CONFINEMENTS", "Confinement", "GradientMaskConfinement", "LoraConfinement", "check_lora_config",
           "confine_lora", "confine_parameters", "confinement_for", "enforced_metadata", "lora_modules",
           "register_confinement"]
