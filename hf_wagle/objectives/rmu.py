"""`rmu`: representation misdirection (Li et al. 2024, WMDP)."""

import re
from dataclasses import dataclass, field

import torch

from ..data import IGNORE_INDEX
from ..modeling import base_named_parameters, decoder_layers
from ..options import finite
from .base import Objective, register_objective


@dataclass
class RMUArgs:
    layer: int = field(default=7, metadata={"config_name": "rmu_layer",
                                            "help": "RMU: decoder layer whose output is steered."})
    train_layers: list[int] = field(default_factory=lambda: [5, 6, 7], metadata={
        "config_name": "rmu_train_layers", "help": "RMU: layers trained."})
    param_pattern: str = field(default=r"mlp\.down_proj", metadata={
        "config_name": "rmu_param_pattern", "help": "RMU: regex of trained parameter names inside those layers."})
    steering_coeff: float = field(default=6.5, metadata={"config_name": "rmu_steering_coeff",
                                                         "help": "RMU: steering coefficient c."})
    alpha: float = field(default=1200.0, metadata={"config_name": "rmu_alpha",
                                                   "help": "RMU: retain activation-matching weight alpha."})
    positions: str = field(default="labelled", metadata={
        "config_name": "rmu_positions",
        "help": "RMU: the forget positions steered: 'labelled' (those that predict a labelled token) or 'subject' "
                "(the question's tokens that name each row's `subject` column; the retain term then matches every "
                "token of the retain rows)."})

    def __post_init__(self):
        if self.layer < 0 or any(layer < 0 for layer in self.train_layers):
            raise ValueError(f"RMU layers are decoder-layer indices >= 0, got rmu_layer={self.layer}, "
                             f"rmu_train_layers={self.train_layers}")
        finite("rmu_steering_coeff", self.steering_coeff, 0, strict=True)
        finite("rmu_alpha", self.alpha, 0)
        if self.positions not in ("labelled", "subject"):
            raise ValueError(f"rmu_positions must be 'labelled' or 'subject', got {self.positions!r}")
        try:
            re.compile(self.param_pattern)
        except re.error as e:
            raise ValueError(f"rmu_param_pattern {self.param_pattern!r} is not a regular expression ({e})") from None


@register_objective("rmu", args=RMUArgs)
class RMU(Objective):
    """Representation misdirection (Li et al. 2024, WMDP).

    With h_l the raw output of decoder layer `rmu_layer` (read by a forward hook, so the last layer is taken
    before the model's final norm) and u a fixed seeded random unit vector, pooled over the positions t from which a
    labelled token is predicted (label at t + 1: the token before the answer and every answer token but the last;
    on forget rows with `forget_tokens="key"`, the token before the key and the key's tokens but its last), mean
    over each example, then over the batch:
    forget loss = `mean_i mean_{t in F_i} ||h_l(x_f)_t - c * u||^2 / d`, retain loss =
    `alpha * mean_i mean_{t in R_i} ||h_l(x_r)_t - h_l^ref(x_r)_t||^2 / d` (c = `rmu_steering_coeff`,
    alpha = `rmu_alpha`, d the hidden size), F_i = R_i = {t: y_{t+1} labelled}. With `rmu_positions="subject"`,
    F_i is the question's tokens that name row i's `subject` (the subject's representation, read where the
    question names it) and R_i every token of the retain row (as WMDP's RMU). Only parameters whose names match
    `rmu_param_pattern` inside layers `rmu_train_layers` are trained (the rest are frozen before the mask is
    applied).
    """

    needs_reference_model = True

    @property
    def needs_subjects(self) -> bool:
        return self.args.positions == "subject"

    @classmethod
    def check_args(cls, args) -> None:
        if not args.train_layers or max(args.train_layers) > args.layer:
            raise ValueError("RMU trains layers at or before the steered layer: every rmu_train_layers entry must be "
                             f"<= rmu_layer={args.layer}")

    def setup(self, trainer) -> None:
        args = self.args
        layers = set(args.train_layers)
        pattern = re.compile(args.param_pattern)
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
                             f"{args.param_pattern!r} (names look like {names})")
        hidden = trainer.model.config.get_text_config().hidden_size
        g = torch.Generator().manual_seed(self.config.seed)
        u = torch.rand(hidden, generator=g)
        self.control = (args.steering_coeff * u / u.norm()).to(trainer.args.device)

    def layer_output(self, trainer, model, batch, reference: bool = False) -> torch.Tensor:
        """fp32 output of decoder layer `rmu_layer` on `batch`, of `model` or (with `reference`) of the start
        model."""
        layers = decoder_layers(trainer.model)
        if not 0 <= self.args.layer < len(layers):
            raise ValueError(f"rmu_layer={self.args.layer}, but the model has {len(layers)} decoder layers")
        captured = []
        handle = layers[self.args.layer].register_forward_hook(
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
    def _pooled(per_token: torch.Tensor, batch, where: str = "labelled") -> torch.Tensor:
        """Mean over each example's positions, then over the examples. `where`: "labelled", the positions whose
        next token is labelled (the hidden state that predicts it); "subject", those of `batch["subject_mask"]`;
        "all", every attended token."""
        if where == "subject":
            chosen = batch["subject_mask"].bool()
        elif where == "all":
            chosen = batch["attention_mask"].bool()
        else:
            labels = batch["labels"]
            chosen = torch.zeros_like(labels, dtype=torch.bool)
            chosen[:, :-1] = labels[:, 1:] != IGNORE_INDEX
            if "attention_mask" in batch:  # left-padded rows: the pad before the first token predicts nothing
                chosen &= batch["attention_mask"].bool()
        chosen = chosen.to(per_token.device).float()
        return ((per_token * chosen).sum(1) / chosen.sum(1).clamp(min=1)).mean()

    def forget_loss(self, trainer, model, inputs):
        batch, where = inputs["forget"], self.args.positions
        h = self.layer_output(trainer, model, batch)
        loss = self._pooled(((h - self.control) ** 2).mean(-1), batch, where)
        return loss, {"forget_activation_norm": self._pooled(h.norm(dim=-1), batch, where).detach()}

    def retain_loss(self, trainer, model, inputs):
        batch = inputs["retain"]
        where = "all" if self.args.positions == "subject" else "labelled"
        h = self.layer_output(trainer, model, batch)
        ref = self.layer_output(trainer, model, batch, reference=True)
        return self.args.alpha * self._pooled(((h - ref) ** 2).mean(-1), batch, where), {}
