"""Unlearning objectives, registered by name.

Notation: for an example with labelled answer tokens y (length |y|), `nll_sum = -sum_t log p(y_t | y_<t, x)`,
`logp = -nll_sum`; the token-mean NLL of a batch is `sum(nll_sum) / sum(|y|)`. "ref" is the model before
unlearning. NPO/DPO reference log-probs of the forget set are computed once before training (no second model).

The trainer's loss is `forget_weight * forget_loss + retain_weight * retain_loss`, where the retain loss is the
token-mean NLL on retain data (`retain_loss="nll"`), or the mean over labelled retain tokens of
`KL(p_ref(. | prefix) || p_theta(. | prefix))` (`retain_loss="kl"`). RMU replaces both terms (see `RMU`).

Add an objective by subclassing `Objective` and decorating it with `@register_objective("name")`; then
`WagleConfig(objective="name")` uses it, without touching the trainer.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from .data import IGNORE_INDEX
from .losses import SequenceNLL, retain_kl, sequence_nll
from .modeling import base_named_parameters, decoder_layers

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


def register_objective(name: str):
    """Class decorator: make an `Objective` subclass available as `WagleConfig(objective=name)`."""

    def wrap(cls):
        OBJECTIVES[name] = cls
        cls.name = name
        return cls

    return wrap


class Objective:
    """A forget loss, and the retain loss it pairs with.

    Class attributes tell the trainer what to prepare:
    `needs_reference`: reference logp of each forget answer (and refusal) -> `trainer.reference_logp(...)`;
    `needs_refusal`: each forget question also comes with a refusal answer (`inputs["refusal"]`, QA data only);
    `uses_retain`: whether retain batches are used at all.
    """

    name = "base"
    needs_reference = False
    needs_refusal = False
    uses_retain = True

    def __init__(self, args):
        self.args = args

    @property
    def needs_reference_model(self) -> bool:
        """Whether the losses call `trainer.reference_forward` (the KL retain term does)."""
        return self.uses_retain and self.args.retain_loss == "kl"

    def setup(self, trainer) -> None:
        """Called once when training starts, before the mask is installed."""

    def forget_loss(self, trainer, model, inputs: dict) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        raise NotImplementedError

    def retain_loss(self, trainer, model, inputs: dict) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """Token-mean NLL (`retain_loss="nll"`) or KL to the reference model (`"kl"`) on the retain batch."""
        batch = inputs["retain"]
        kl = self.args.retain_loss == "kl"
        out = sequence_nll(model, batch, keep_logits=kl)
        logs = {"retain_nll": out.token_mean.detach()}
        if not kl:
            return out.token_mean, logs
        ref_logits = trainer.reference_forward(batch).logits
        return retain_kl(out.logits, ref_logits, batch["labels"]), logs

    def _logp(self, out: SequenceNLL) -> torch.Tensor:
        """log p of each answer: summed over tokens, or averaged with `npo_normalization="mean"`."""
        return -out.nll_sum if self.args.npo_normalization == "sum" else -out.per_example_mean


@register_objective("ga")
class GradientAscent(Objective):
    """Gradient ascent: loss = -NLL_f (token mean); no retain term."""

    uses_retain = False

    def forget_loss(self, trainer, model, inputs):
        out = sequence_nll(model, inputs["forget"])
        return -out.token_mean, {"forget_nll": out.token_mean.detach()}


@register_objective("grad_diff")
class GradDiff(GradientAscent):
    """Gradient difference: forget loss = -NLL_f (token mean), plus the retain term."""

    uses_retain = True


@register_objective("npo")
class NPO(Objective):
    """Negative preference optimisation (Zhang et al. 2024):
    `-(2/beta) * mean_i log sigmoid(-beta * (logp_theta(y_i) - logp_ref(y_i)))`, logp summed over answer tokens
    (or token-averaged with `npo_normalization="mean"`)."""

    needs_reference = True

    def forget_loss(self, trainer, model, inputs):
        out = sequence_nll(model, inputs["forget"])
        log_ratio = self._logp(out) - trainer.reference_logp(inputs["forget"], "forget")
        beta = self.args.npo_beta
        loss = -(2.0 / beta) * F.logsigmoid(-beta * log_ratio).mean()
        return loss, {"forget_nll": out.token_mean.detach(), "log_ratio": log_ratio.mean().detach()}


@register_objective("simnpo")
class SimNPO(Objective):
    """SimNPO (Fan et al. 2024), reference-free: `-(2/beta) * mean_i log sigmoid(beta * (NLL_i/|y_i| - delta))`."""

    def forget_loss(self, trainer, model, inputs):
        out = sequence_nll(model, inputs["forget"])
        beta, delta = self.args.simnpo_beta, self.args.simnpo_delta
        loss = -(2.0 / beta) * F.logsigmoid(beta * (out.per_example_mean - delta)).mean()
        return loss, {"forget_nll": out.token_mean.detach()}


@register_objective("po")
class RefusalPO(Objective):
    """Preference optimisation towards refusal: loss = token-mean NLL of a refusal answer to each forget question."""

    needs_refusal = True

    def forget_loss(self, trainer, model, inputs):
        refusal = sequence_nll(model, inputs["refusal"])
        with torch.no_grad():
            forget = sequence_nll(model, inputs["forget"])
        return refusal.token_mean, {"forget_nll": forget.token_mean, "refusal_nll": refusal.token_mean.detach()}


@register_objective("idk_dpo")
class IdkDPO(Objective):
    """DPO with the refusal preferred over the forget answer (open-unlearning's scaling):
    `-(2/beta) * mean_i log sigmoid(beta * ((logp(r_i) - logp_ref(r_i)) - (logp(y_i) - logp_ref(y_i))))`."""

    needs_reference = True
    needs_refusal = True

    def forget_loss(self, trainer, model, inputs):
        win = sequence_nll(model, inputs["refusal"])
        lose = sequence_nll(model, inputs["forget"])
        win_ratio = self._logp(win) - trainer.reference_logp(inputs["refusal"], "refusal")
        lose_ratio = self._logp(lose) - trainer.reference_logp(inputs["forget"], "forget")
        beta = self.args.npo_beta
        loss = -(2.0 / beta) * F.logsigmoid(beta * (win_ratio - lose_ratio)).mean()
        return loss, {"forget_nll": lose.token_mean.detach(), "log_ratio": (win_ratio - lose_ratio).mean().detach()}


@register_objective("rmu")
class RMU(Objective):
    """Representation misdirection (Li et al. 2024, WMDP).

    With h_l the raw output of decoder layer `rmu_layer` (read by a forward hook, so the last layer is taken
    before the model's final norm) and u a fixed seeded random unit vector, pooled as the reference implementations
    do (mean over each example's labelled tokens, then over the batch):
    forget loss = `mean_i mean_{t labelled} ||h_l(x_f)_t - c * u||^2 / d`, retain loss =
    `alpha * mean_i mean_{t labelled} ||h_l(x_r)_t - h_l^ref(x_r)_t||^2 / d` (c = `rmu_steering_coeff`,
    alpha = `rmu_alpha`, d the hidden size). Only parameters whose names match `rmu_param_pattern` inside layers
    `rmu_train_layers` are trained (the rest are frozen before the mask is applied).
    """

    needs_reference_model = True

    def setup(self, trainer) -> None:
        import re

        args = self.args
        layers = set(args.rmu_train_layers)
        pattern = re.compile(args.rmu_param_pattern)
        kept = 0
        for name, p in trainer.model.named_parameters():
            found = re.search(r"layers\.(\d+)\.", name)
            keep = bool(found and int(found.group(1)) in layers and pattern.search(name))
            if not keep:
                p.requires_grad_(False)
            kept += keep and p.requires_grad
        if not kept:
            names = [n for n, _ in base_named_parameters(trainer.model)][:6]
            raise ValueError(f"RMU: no trainable parameter matches layers {sorted(layers)} and "
                             f"{args.rmu_param_pattern!r} (names look like {names})")
        hidden = trainer.model.config.get_text_config().hidden_size
        g = torch.Generator().manual_seed(args.seed)
        u = torch.rand(hidden, generator=g)
        self.control = (args.rmu_steering_coeff * u / u.norm()).to(trainer.args.device)

    def layer_output(self, trainer, model, batch, reference: bool = False) -> torch.Tensor:
        """fp32 output of decoder layer `rmu_layer` on `batch`, of `model` or (with `reference`) of the start
        model."""
        layers = decoder_layers(trainer.model)
        if not 0 <= self.args.rmu_layer < len(layers):
            raise ValueError(f"rmu_layer={self.args.rmu_layer}, but the model has {len(layers)} decoder layers")
        captured = []
        handle = layers[self.args.rmu_layer].register_forward_hook(
            lambda module, args, output: captured.append(output[0] if isinstance(output, tuple) else output))
        try:
            if reference:
                trainer.reference_forward(batch)
            else:
                model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"])
        finally:
            handle.remove()
        return captured[-1].float()

    @staticmethod
    def _pooled(per_token: torch.Tensor, batch) -> torch.Tensor:
        """Mean over each example's labelled tokens, then over the examples."""
        labelled = (batch["labels"] != IGNORE_INDEX).to(per_token.device).float()
        return ((per_token * labelled).sum(1) / labelled.sum(1).clamp(min=1)).mean()

    def forget_loss(self, trainer, model, inputs):
        batch = inputs["forget"]
        h = self.layer_output(trainer, model, batch)
        loss = self._pooled(((h - self.control) ** 2).mean(-1), batch)
        return loss, {"forget_activation_norm": self._pooled(h.norm(dim=-1), batch).detach()}

    def retain_loss(self, trainer, model, inputs):
        batch = inputs["retain"]
        h = self.layer_output(trainer, model, batch)
        ref = self.layer_output(trainer, model, batch, reference=True)
        return self.args.rmu_alpha * self._pooled(((h - ref) ** 2).mean(-1), batch), {}
