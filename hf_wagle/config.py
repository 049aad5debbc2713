"""`WagleConfig`: `TrainingArguments` plus every unlearning option, validated before any work starts."""

from __future__ import annotations

import math
import os
from dataclasses import dataclass, field

from transformers import TrainingArguments

from .attribution import MASK_METHODS
from .data import check_prompt_template
from .objectives import OBJECTIVES
from .options import (DEFAULT_MASK_METHOD, DEFAULT_MASK_RATIO, DEFAULT_MAX_LENGTH, DEFAULT_MU,
                      DEFAULT_PROMPT_TEMPLATE, MASK_GRANULARITIES, MASK_REDUCTIONS, MASK_SCOPES, check_mask_options)


@dataclass
class WagleConfig(TrainingArguments):
    """Arguments for `WagleTrainer`. Loss = `forget_weight * forget_loss + retain_weight * retain_loss`, both from
    `objective` (the retain loss is the NLL, or with `retain_loss="kl"` the KL to the start model; RMU brings its own).

    The mask keeps the `mask_ratio` fraction of weights (the ones allowed to change), ranked by `mask_method`;
    `mask_method=None` trains every weight (dense).
    """

    objective: str = field(
        default="npo",
        metadata={"help": "Forget objective: ga, grad_diff, npo, simnpo, po, idk_dpo, rmu (or a registered name)."},
    )
    retain_loss: str = field(default="nll", metadata={"help": "Retain term: 'nll' or 'kl' (KL to the start model)."})
    forget_weight: float = field(default=1.0, metadata={"help": "Weight of the forget objective."})
    retain_weight: float = field(default=1.0, metadata={"help": "gamma: weight of the retain NLL."})
    npo_beta: float = field(default=0.1, metadata={"help": "NPO / IDK-DPO inverse temperature beta."})
    npo_normalization: str = field(
        default="sum", metadata={"help": "NPO/DPO log-prob of an answer: 'sum' over tokens or token 'mean'."}
    )
    simnpo_beta: float = field(default=4.5, metadata={"help": "SimNPO beta."})
    simnpo_delta: float = field(default=0.0, metadata={"help": "SimNPO margin delta."})
    refusals: list[str] | None = field(
        default=None, metadata={"help": "Refusal answers for 'po' / 'idk_dpo' (default: a built-in list)."}
    )
    rmu_layer: int = field(default=7, metadata={"help": "RMU: decoder layer whose output is steered."})
    rmu_train_layers: list[int] = field(default_factory=lambda: [5, 6, 7], metadata={"help": "RMU: layers trained."})
    rmu_param_pattern: str = field(
        default=r"mlp\.down_proj", metadata={"help": "RMU: regex of trained parameter names inside those layers."}
    )
    rmu_steering_coeff: float = field(default=6.5, metadata={"help": "RMU: steering coefficient c."})
    rmu_alpha: float = field(default=1200.0, metadata={"help": "RMU: retain activation-matching weight alpha."})
    collapse_threshold: float | None = field(
        default=3.0,
        metadata={"help": "Warn when the logged retain NLL exceeds this multiple of its starting value (None: off)."},
    )
    stop_on_collapse: bool = field(default=False, metadata={"help": "Stop training when collapse is detected."})
    mask_method: str | None = field(
        default=DEFAULT_MASK_METHOD,
        metadata={"help": f"Weight attribution for the mask: a registered mask method ({', '.join(MASK_METHODS)}, or "
                          "your own through register_mask_method), or None for dense unlearning."},
    )
    mask_ratio: float = field(default=DEFAULT_MASK_RATIO,
                              metadata={"help": "Fraction of weights that may change, in (0, 1] (0.8: eight in ten)."})
    mu: float = field(default=DEFAULT_MU, metadata={"help": "WAGLE diagonal-Hessian constant mu."})
    mask_reduction: str = field(default="sum", metadata={"help": f"Per-example gradients: one of {MASK_REDUCTIONS}."})
    mask_batch_size: int = field(default=8, metadata={"help": "Batch size of the attribution pass."})
    mask_num_samples: int | None = field(
        default=None, metadata={"help": "Score on a seeded subset of this many forget (and retain) examples; None = all."}
    )
    mask_retain_sampling: str = field(
        default="all",
        metadata={"help": "G_r over the whole retain set ('all') or, as the WAGLE authors' code, one retain example "
                          "per forget example drawn with replacement ('paired')."},
    )
    mask_scope: str = field(
        default="global", metadata={"help": f"Where the ratio applies: one of {MASK_SCOPES}."}
    )
    mask_granularity: str = field(
        default="element", metadata={"help": f"Select single weights or whole rows/columns: one of {MASK_GRANULARITIES}."}
    )
    mask_include: list[str] | None = field(
        default=None, metadata={"help": "Only parameters matching one of these name patterns may change."}
    )
    mask_exclude: list[str] | None = field(
        default=None, metadata={"help": "Parameters matching one of these name patterns never change."}
    )
    mask_accumulate_device: str | None = field(
        default=None, metadata={"help": "Where attribution keeps its fp32 gradient sums: 'cpu' for host memory "
                                        "(a big model on one accelerator); default the model's device."}
    )
    mask_noise_std: float = field(
        default=0.0,
        metadata={"help": "GRIN: before unlearning add N(0, (mask_noise_std * std(theta))^2) to every selected weight."},
    )
    prompt_template: str = field(
        default=DEFAULT_PROMPT_TEMPLATE,
        metadata={"help": "Prompt for QA data: a template containing '{question}', or 'chat' for the tokenizer's chat "
                          "template (question = user turn, answer = assistant turn)."}
    )
    max_length: int | None = field(default=DEFAULT_MAX_LENGTH, metadata={"help": "Truncate tokenised QA/text examples."})

    def __post_init__(self):
        if self.deepspeed or os.environ.get("ACCELERATE_USE_DEEPSPEED", "").lower() in ("1", "true", "yes"):
            raise NotImplementedError(
                "DeepSpeed ZeRO is not supported: it partitions and reduces gradients inside its engine and steps its "
                "own fused optimizer, so hf_wagle cannot mask a gradient between the backward pass and the step, and "
                "off-mask weights would move. For sharded full-parameter unlearning use FSDP2 (accelerate launch "
                "--config_file examples/accelerate/fsdp2.yaml, or fsdp='full_shard'); otherwise DDP")
        super().__post_init__()
        if self.objective not in OBJECTIVES:
            raise ValueError(f"unknown objective {self.objective!r}; choose one of {', '.join(sorted(OBJECTIVES))}")
        if self.retain_loss not in ("nll", "kl"):
            raise ValueError(f"retain_loss must be 'nll' or 'kl', got {self.retain_loss!r}")
        if self.npo_normalization not in ("sum", "mean"):
            raise ValueError(f"npo_normalization must be 'sum' or 'mean', got {self.npo_normalization!r}")
        if self.refusals is not None and (not self.refusals or not all(isinstance(r, str) and r.strip()
                                                                          for r in self.refusals)):
            raise ValueError("refusals must be a non-empty list of non-empty strings")
        if self.rmu_layer < 0 or any(layer < 0 for layer in self.rmu_train_layers):
            raise ValueError(f"RMU layers are decoder-layer indices >= 0, got rmu_layer={self.rmu_layer}, "
                             f"rmu_train_layers={self.rmu_train_layers}")
        if self.objective == "rmu" and (not self.rmu_train_layers or max(self.rmu_train_layers) > self.rmu_layer):
            raise ValueError("RMU trains layers at or before the steered layer: every rmu_train_layers entry must be "
                             f"<= rmu_layer={self.rmu_layer}")
        if self.collapse_threshold is not None and not self.collapse_threshold > 1:
            raise ValueError("collapse_threshold is a multiple of the starting retain NLL and must be > 1 or None")
        if self.mask_method in ("", "none", "None", "dense"):
            self.mask_method = None
        if self.mask_method is not None and self.mask_method not in MASK_METHODS:
            raise ValueError(f"unknown mask_method {self.mask_method!r}; choose one of {', '.join(MASK_METHODS)} "
                             "(or register one with hf_wagle.register_mask_method), or None (dense)")
        check_mask_options(ratio=self.mask_ratio, mu=self.mu, reduction=self.mask_reduction,
                           batch_size=self.mask_batch_size, num_samples=self.mask_num_samples, scope=self.mask_scope,
                           granularity=self.mask_granularity, retain_sampling=self.mask_retain_sampling,
                           prefix="mask_")
        if isinstance(self.mask_include, str):
            self.mask_include = [self.mask_include]
        if isinstance(self.mask_exclude, str):
            self.mask_exclude = [self.mask_exclude]
        if not self.mask_noise_std >= 0:
            raise ValueError(f"mask_noise_std must be >= 0, got {self.mask_noise_std}")
        for name in ("npo_beta", "simnpo_beta", "rmu_steering_coeff"):
            if not (math.isfinite(getattr(self, name)) and getattr(self, name) > 0):
                raise ValueError(f"{name} must be a finite number > 0, got {getattr(self, name)}")
        for name in ("forget_weight", "retain_weight", "simnpo_delta", "rmu_alpha"):
            value = getattr(self, name)
            if not math.isfinite(value) or (name != "simnpo_delta" and value < 0):
                raise ValueError(f"{name} must be a finite number{' >= 0' if name != 'simnpo_delta' else ''}, "
                                 f"got {value}")
        check_prompt_template(self.prompt_template)
        if self.max_length is not None and self.max_length < 2:
            raise ValueError(f"max_length must be >= 2 or None, got {self.max_length}")
