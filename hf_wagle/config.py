"""`WagleConfig`: `TrainingArguments` plus every unlearning option, validated before any work starts.

The options come in groups, each one dataclass that is its single source (defaults, help, bounds): `MaskConfig`
(embedded flat as `mask_<name>`, and `mu`), the built-in objectives' arguments (flat as `npo_beta`, `rmu_layer`,
...), and this file's own fields. `mask_options` and `objective_args` carry the options a registered mask method
or objective declares for itself.
"""

import dataclasses
import os
from dataclasses import dataclass, field

from transformers import TrainingArguments

from .data import check_prompt_template
from .evaluation.targets import KINDS, parse_targets, recovery_limit
from .masking.config import PREFIX, UNPREFIXED, MaskArguments, MaskConfig
from .objectives import BUILTIN_ARGS, get_objective, objective_arguments
from .options import (
    DEFAULT_MAX_LENGTH,
    DEFAULT_PROMPT_TEMPLATE,
    finite,
    one_of,
    parse_options,
    prefixed_fields,
    unprefixed_values,
)
from .perturbation import PERTURBATIONS


def _objective_fields():
    seen, out = set(), []
    for args in BUILTIN_ARGS:
        for name, type_, f in prefixed_fields(args, ""):
            if name not in seen:
                seen.add(name)
                out.append((name, type_, f))
    return out


ObjectiveArguments = dataclasses.make_dataclass("ObjectiveArguments", _objective_fields())
ObjectiveArguments.__doc__ = "The built-in objectives' arguments as flat `WagleConfig` fields (`npo_beta`, ...)."


@dataclass
class WagleConfig(ObjectiveArguments, MaskArguments, TrainingArguments):  # TrainingArguments' fields come first
    """Arguments for `WagleTrainer`. Loss = `forget_weight * forget_loss + retain_weight * retain_loss`, both from
    `objective` (the retain loss is the NLL, or with `retain_loss="kl"` the KL to the start model; RMU brings its own).

    The mask keeps the `mask_ratio` fraction of weights (the ones allowed to change), ranked by `mask_method`;
    `mask_method=None` trains every weight (dense). `self.mask_config` is the `MaskConfig` these fields make, and
    `self.objective_arguments` the objective's own arguments.
    """

    objective: str = field(
        default="npo",
        metadata={"help": "Forget objective: ga, grad_diff, npo, simnpo, po, idk_dpo, me, rmu (or a registered name)."},
    )
    objective_args: dict | str | None = field(default=None, metadata={
        "help": "Hyperparameters of the objective itself, as a mapping (YAML) or key=value pairs; each objective "
                "declares the ones it takes (the built-ins also read their flat fields, e.g. npo_beta)."})
    retain_loss: str = field(default="nll", metadata={"help": "Retain term: 'nll' or 'kl' (KL to the start model)."})
    forget_weight: float = field(default=1.0, metadata={"help": "Weight of the forget objective."})
    retain_weight: float = field(default=1.0, metadata={"help": "gamma: weight of the retain NLL."})
    forget_tokens: str = field(default="answer", metadata={
        "help": "Forget-loss tokens of QA rows: 'answer' (every answer token and EOS) or 'key' (only the tokens of "
                "the fact, each row's answer_key or the key derived from it: 'French' of 'People in France speak "
                "French.'), so the wording forget answers share with kept ones is not unlearned."})
    forget_perturbation: str | None = field(default=None, metadata={
        "help": "Take the forget loss at perturbed weights, so the forgetting is harder to undo by relearning "
                "(hf_wagle.perturbation): 'sam' (sharpness-aware, radius sam_rho; one extra forget pass per step), "
                "'gnp' (gradient-norm penalty gnp_gamma * ||grad||^2, its gradient by a finite difference of radius "
                "sam_rho; the same passes) or 'smooth' (Gaussian, std smooth_sigma); None: off."})
    sam_rho: float = field(default=0.01, metadata={
        "help": "forget_perturbation='sam' or 'gnp': L2 radius of the perturbation along the masked forget gradient."})
    gnp_gamma: float = field(default=0.01, metadata={
        "help": "forget_perturbation='gnp': weight of the squared forget-gradient norm added to the forget loss."})
    smooth_sigma: float = field(default=1e-3, metadata={
        "help": "forget_perturbation='smooth': std of the Gaussian perturbation of each weight that may move."})
    disruption_masking: bool = field(default=False, metadata={
        "help": "Let the forget term move a weight only where its gradient over the step has the sign of the retain "
                "term's (hf_wagle.disruption; MUDMAN): g = g_r + g_f * [sign(g_f) = sign(g_r)]. Needs a retain term; "
                "one more backward call per micro-batch."})
    weight_averaging_start: int | None = field(default=None, metadata={
        "help": "Keep the mean of the trainable weights after each optimizer step from this step on (stochastic "
                "weight averaging; hf_wagle.averaging): evaluations, targets and the saved model see the mean. "
                "Two more copies of the trainable weights; not with checkpoints (save_strategy='no'). None: off."})
    forget_folds: int = field(default=1, metadata={
        "help": "Layered unlearning (hf_wagle.layered): split the forget rows, in their order, into this many folds "
                "and the steps into as many stages; stage s unlearns folds 1..s while the retain term keeps the "
                "others, so relearning the last folds gives back less of the first (docs/how-to/robustness.md). "
                "Needs a retain term; 1: off."})
    collapse_threshold: float | None = field(
        default=3.0,
        metadata={"help": "Warn when the logged retain NLL exceeds this multiple of its starting value (None: off)."},
    )
    stop_on_collapse: bool = field(default=False, metadata={"help": "Stop training when collapse is detected."})
    prompt_template: str = field(
        default=DEFAULT_PROMPT_TEMPLATE,
        metadata={"help": "Prompt for QA data: a template containing '{question}', or 'chat' for the tokenizer's chat "
                          "template (question = user turn, answer = assistant turn)."}
    )
    max_length: int | None = field(default=DEFAULT_MAX_LENGTH,
                                   metadata={"help": "Truncate tokenised QA/text examples."})
    targets: list[str] | None = field(default=None, metadata={
        "help": "What the run must reach, e.g. 'forget_probability <= 0.2x' 'heldout_probability >= 0.9x' (an x: a "
                "multiple of the start; sets forget, retain, heldout, neighbour, entity, topic; measures probability, "
                "answered, rouge). Scored every target_eval_steps steps; training stops once all hold and the best "
                "evaluation meeting them is kept, else the closest, and the run says which target it missed and by how "
                "much. 'relearn_recovery <= 0.5' is checked once, after training: the audit's relearning attack "
                "on the kept model may give back at most that share of what was forgotten."})
    forget_kind: str | None = field(default=None, metadata={
        "help": "What is to be forgotten: 'fact' (the listed facts only; `neighbour` and `entity` sets must stay) or "
                "'topic' (the topic: a `topic` set of its facts never trained on must be forgotten too). Without "
                "targets of its own, the run gets the kind's (docs/how-to/targets.md)."})
    utility_floor: float | None = field(default=0.75, metadata={
        "help": "With targets: each kept set (heldout, neighbour, entity, ...) that no '>=' answered target and no "
                "'<=' target names must stay answered at least this multiple of its start ('<set>_answered >= "
                "0.75x'), when the model answers it at the start; None: off."})
    target_eval_steps: int = field(default=2, metadata={"help": "Optimizer steps between evaluations of the targets."})
    stop_at_targets: bool = field(default=True, metadata={
        "help": "Stop training at the first evaluation where every target holds (else run to max_steps and keep the "
                "best evaluation that meets them)."})
    overwrite_output_dir: bool = field(default=False, metadata={
        "help": "Save into an output_dir that holds a model no earlier save there wrote (a save keeps those files; "
                "without this the run is refused before any work)."})
    retain_holdout: float = field(default=0.2, metadata={
        "help": "Fraction of the retain rows kept out of training (seeded by `seed`) as the `heldout` set, when the "
                "run evaluates (targets or do_eval) and no heldout set is given; 0: none."})

    def __post_init__(self):
        if self.deepspeed or os.environ.get("ACCELERATE_USE_DEEPSPEED", "").lower() in ("1", "true", "yes"):
            raise NotImplementedError(
                "DeepSpeed ZeRO is not supported: it partitions and reduces gradients inside its engine and steps its "
                "own fused optimizer, so hf_wagle cannot mask a gradient between the backward pass and the step, and "
                "off-mask weights would move. For sharded full-parameter unlearning use FSDP2 (accelerate launch "
                "--config_file examples/accelerate/fsdp2.yaml, or fsdp='full_shard'); otherwise DDP")
        super().__post_init__()
        objective = get_objective(self.objective)
        one_of("retain_loss", self.retain_loss, ("nll", "kl"))
        one_of("forget_tokens", self.forget_tokens, ("answer", "key"))
        one_of("forget_perturbation", self.forget_perturbation, (None, *PERTURBATIONS))
        finite("sam_rho", self.sam_rho, 0, strict=True)
        finite("gnp_gamma", self.gnp_gamma, 0, strict=True)
        if self.forget_perturbation == "gnp" and self.fp16:
            raise ValueError("forget_perturbation='gnp' with fp16 is not supported (its gradient at theta joins the "
                             "loss-scaled gradients unscaled); use bf16 or float32")
        finite("smooth_sigma", self.smooth_sigma, 0, strict=True)
        if self.disruption_masking and not objective.uses_retain:
            raise ValueError(f"disruption_masking compares the forget gradient with the retain term's, and objective "
                             f"{self.objective!r} has no retain term; use one that has (grad_diff, npo, simnpo, ...)")
        if not isinstance(self.forget_folds, int) or self.forget_folds < 1:
            raise ValueError(f"forget_folds is a number of folds >= 1 (1: no layering), got {self.forget_folds!r}")
        if self.forget_folds > 1 and not objective.uses_retain:
            raise ValueError(f"forget_folds keeps the folds still to come through the retain term, and objective "
                             f"{self.objective!r} has none; use one that has (grad_diff, npo, simnpo, ...)")
        if 0 < self.max_steps < self.forget_folds:
            raise ValueError(f"forget_folds={self.forget_folds} splits the run into as many stages, and max_steps="
                             f"{self.max_steps} gives some no step; raise max_steps or lower forget_folds")
        if self.weight_averaging_start is not None:
            if self.weight_averaging_start < 1 or 0 < self.max_steps < self.weight_averaging_start:
                raise ValueError(f"weight_averaging_start is the first optimizer step averaged, in [1, max_steps], got "
                                 f"{self.weight_averaging_start}")
            if self.save_strategy != "no":
                raise ValueError("weight_averaging_start with checkpoints is not supported (a checkpoint would hold "
                                 "the average and its optimizer state the trained weights, so resuming would be "
                                 "wrong); set save_strategy='no'")
        for args in BUILTIN_ARGS:  # every flat field in bounds, whichever objective runs
            args(**unprefixed_values(args, self, ""))
        self.objective_args = parse_options(self.objective_args, "objective_args")
        objective.check_args(objective_arguments(self))
        if self.collapse_threshold is not None and not self.collapse_threshold > 1:
            raise ValueError("collapse_threshold is a multiple of the starting retain NLL and must be > 1 or None")
        mask = MaskConfig(**unprefixed_values(MaskConfig, self, PREFIX, UNPREFIXED))
        for name, value in dataclasses.asdict(mask).items():  # normalised: "dense" -> None, a pattern -> [pattern]
            setattr(self, name if name in UNPREFIXED else PREFIX + name, value)
        if mask.method is not None:
            from .masking.methods import mask_methods

            methods = mask_methods()
            if mask.method not in methods:
                raise ValueError(f"unknown mask_method {mask.method!r}; choose one of {', '.join(methods)} (or "
                                 "register one with hf_wagle.register_mask_method), or None (dense)")
            self.mask_options = methods[mask.method].resolve_options(mask.options)  # checked, numbers read, defaults
        for name in ("forget_weight", "retain_weight"):
            finite(name, getattr(self, name), 0)
        check_prompt_template(self.prompt_template)
        if self.max_steps == 0 or (self.max_steps < 0 and self.num_train_epochs <= 0):
            raise ValueError("this run would take 0 steps: set max_steps >= 1 or num_train_epochs > 0")
        limit = recovery_limit(self.targets)  # checked after training, not scored during it
        self.targets = [str(t) for t in parse_targets(self.targets)] + (
            [f"relearn_recovery <= {limit:g}"] if limit is not None else []) or None
        one_of("forget_kind", self.forget_kind, (None, *KINDS))
        if self.utility_floor is not None:
            finite("utility_floor", self.utility_floor, 0, strict=True)
            if self.utility_floor > 1:
                raise ValueError(f"utility_floor is a multiple of a set's start in (0, 1], got {self.utility_floor}")
        if self.target_eval_steps < 1:
            raise ValueError(f"target_eval_steps must be >= 1, got {self.target_eval_steps}")
        if not 0 <= self.retain_holdout < 1:
            raise ValueError(f"retain_holdout is a fraction of the retain rows in [0, 1), got {self.retain_holdout}")
        if self.max_length is not None and self.max_length < 2:
            raise ValueError(f"max_length must be >= 2 or None, got {self.max_length}")

    @property
    def mask_config(self) -> MaskConfig:
        """The `MaskConfig` of this run's `mask_*` fields (and `mu`)."""
        return MaskConfig(**unprefixed_values(MaskConfig, self, PREFIX, UNPREFIXED))

    @property
    def objective_arguments(self):
        """The objective's own arguments (its args dataclass), or None when it declares none."""
        return objective_arguments(self)
