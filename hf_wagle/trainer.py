"""`WagleTrainer`: unlearning with the Hugging Face `Trainer`, confined to a weight mask.

Loss per micro-batch (a forget batch paired with a retain batch):
`L = forget_weight * forget_loss + retain_weight * retain_loss`, both from the objective (`hf_wagle.objectives`):
the retain loss is the token-mean NLL, or the KL to the start model (`retain_loss="kl"`); RMU has its own pair of
activation losses; `ga` has no retain term.

How the mask is enforced, exactly:

* the gradient of every partly-masked parameter is multiplied by its mask in place after each backward pass
  (`training_step`), once DDP has all-reduced it or FSDP2 reduce-scattered it (each rank then holds its shard of the
  mask), and before clipping and the optimizer step (so the clipping norm is the masked gradient's norm; masking the
  accumulated sum again after every micro-batch is exact, as mask entries are 0 or 1); parameters with nothing
  selected are frozen (under FSDP2, masked by zeros);
* decoupled weight decay is taken out of the optimizer's parameter groups and applied on-mask only, right
  before each optimizer step, as `p *= where(mask, 1 - lr * wd, 1)` (the same rounding as AdamW's own decay);
* off-mask gradients are zero from the first step, so the moments of Adam-family optimizers stay zero there and
  their update is exactly 0: off-mask weights stay bit-identical.

With `forget_perturbation` (`hf_wagle.perturbation`) or `disruption_masking` (`hf_wagle.disruption`) each
micro-batch takes two backward passes, the forget term (at `theta + eps`, reduced with the retain term's; with
disruption masking into gradients of its own, reduced apart: under DDP at the step's end, under FSDP2 as each pass
ends) and then the retain term at `theta`; `eps` is zero off the mask and is undone by copy
before the retain pass, and the forget gradient that disruption masking keeps joins `.grad` at the step's last
micro-batch, before the mask is applied, so the guarantees above hold unchanged.
"""

from __future__ import annotations

import contextlib
import os
import time
from collections import defaultdict
from pathlib import Path

import torch
from transformers import AutoModelForCausalLM, Trainer, TrainerCallback, set_seed
from transformers.trainer_utils import enable_full_determinism
from transformers.utils import logging

from .averaging import WeightAveraging
from .config import WagleConfig
from .confinement import check_lora_config, confinement_for
from .data import (
    ForgetRetainPairs,
    PairCollator,
    check_fits_model,
    collate,
    dataset_shape,
    key_span,
    pad_id,
    refusal_examples,
    tokenize_dataset,
)
from .disruption import disruption_masked, gradients_into
from .evaluation.measure import answer_keys, neighbourhood_share, split_holdout
from .evaluation.targets import durability_row, recovery_limit, run_targets
from .export import check_export_options, export_adapter
from .hub import write_export_card, write_model_card
from .io import check_destination, check_output_folder, output_lock, staged_directory
from .layered import stage_at, staged_batch
from .losses import SequenceNLL, sequence_nll
from .mask import WeightMask
from .masking.compute import compute_mask
from .masking.noise import add_mask_noise
from .masking.selection import check_selects_something
from .modeling import (
    adapter_disabled,
    as_shard,
    base_named_parameters,
    is_sharded,
    keep_4bit_differentiable,
    local_tensor,
    norm_over_shards,
    peft_wrapping,
    quantization_of,
    reshard,
)
from .objectives import get_objective
from .options import MASK_SAFE_OPTIMIZERS
from .perturbation import gnp_scales, gradient_norm, perturbed, sam_perturbation, smooth_perturbation
from .record import data_entry, examples_digest, run_record, tensors_digest, write_record

logger = logging.get_logger(__name__)
REFERENCE_FILE = "wagle_reference.safetensors"
_MASK_SAFE_OPTIMIZER_TYPES = (torch.optim.AdamW, torch.optim.Adam, torch.optim.SGD, torch.optim.Adagrad,
                              torch.optim.RMSprop)


class WagleTrainer(Trainer):
    """Trainer for masked unlearning. See `WagleConfig` for the options.

    Args:
        model: a causal LM (or a Hub id / local path, loaded with `trust_remote_code=False`).
        args: a `WagleConfig`.
        forget_dataset, retain_dataset: `datasets.Dataset`s of a shape `hf_wagle.data` accepts.
        processing_class: the tokenizer (needed unless both datasets are pre-tokenised).
        mask: a precomputed `WeightMask`; if None and `args.mask_method` is set, it is computed when `train()` starts.
        peft_config: a `peft.LoraConfig`; the model is wrapped and the adapter confined to the mask.
        eval_datasets: named QA sets never trained on (`{"heldout": ..., "neighbour": ..., "entity": ..., "topic":
            ...}`, see `hf_wagle.evaluation.targets`), scored with the forget and retain data when the run evaluates
            (`args.targets`, `args.forget_kind` or `args.do_eval`). Without a `heldout` set,
            `args.retain_holdout` of the retain rows are held out of training (attribution included) as one.
        mask_retain_dataset: retain data for the attribution alone (the retain term of `mask_method`'s scores),
            in place of `retain_dataset`: e.g. the forget set's neighbourhood (the same relation about other
            subjects, other facts about the same subjects), so the mask leaves out the weights those need, while
            training keeps its own retain data. Never trained on; must share no row with the evaluation sets.
    """

    _tag_names = ["unlearning", "wagle"]
    loss_is_scaled_for_ga = False  # compute_loss returns a per-micro-batch mean

    def __init__(self, model=None, args: WagleConfig | None = None, forget_dataset=None, retain_dataset=None,
                 processing_class=None, mask: WeightMask | None = None, peft_config=None,
                 eval_datasets: dict | None = None, mask_retain_dataset=None, **kwargs):
        if args is None:
            args = WagleConfig(output_dir="wagle_output")
        if not isinstance(args, WagleConfig):
            raise TypeError(f"args must be a WagleConfig, got {type(args).__name__}")
        if args.should_save:  # a save replaces its folder: never the base's, never beside someone's model
            check_destination(args.output_dir, {"the base model": getattr(getattr(model, "config", None),
                                                                          "_name_or_path", None)})
            check_output_folder(args.output_dir, args.overwrite_output_dir)
        self._output_lock = None
        if "train_dataset" in kwargs:
            raise TypeError("WagleTrainer takes `forget_dataset` and `retain_dataset` instead of `train_dataset`")
        if kwargs.get("eval_dataset") is not None:
            raise TypeError("WagleTrainer does not take `eval_dataset`; pass never-trained sets as "
                            "`eval_datasets={'heldout': ..., 'neighbour': ...}` and set `do_eval=True` or `targets` "
                            "(or add `hf_wagle.evaluation.WagleEvalCallback` to `callbacks`)")
        if forget_dataset is None or retain_dataset is None:
            raise ValueError("WagleTrainer needs both `forget_dataset` and `retain_dataset`")
        objective = get_objective(args.objective)(args, args.objective_arguments)
        check_engine(args, peft_config, objective.needs_reference_model)
        if args.disruption_masking and objective.needs_reference_model:
            logger.warning("disruption_masking compares signs with the retain term's gradient, and this retain term "
                           "(the KL to the start model, or RMU's) has a zero gradient while the model is still the "
                           "start model: in the first steps the signs are rounding noise. Use retain_loss='nll' with "
                           "it, or expect it to hold the forget term back at first.")
        if mask is not None and not isinstance(mask, WeightMask):
            raise TypeError(f"mask must be a hf_wagle.WeightMask, got {type(mask).__name__}")
        masked = mask is not None or args.mask_method is not None
        if masked and kwargs.get("optimizers", (None, None))[0] is None and args.optim not in MASK_SAFE_OPTIMIZERS:
            raise ValueError(
                f"optim={args.optim!r} may move weights whose gradient is zero, which would break the mask; use one "
                f"of {', '.join(MASK_SAFE_OPTIMIZERS)}"
            )
        if isinstance(model, str):
            model = AutoModelForCausalLM.from_pretrained(model, trust_remote_code=False)
        eval_sets, heldout_source, held_out = dict(eval_datasets or {}), None, None
        if {"forget", "retain"} & set(eval_sets):
            raise ValueError(f"eval_datasets names {sorted({'forget', 'retain'} & set(eval_sets))}: those are the "
                             "forget and retain data themselves; give the evaluation sets other names")
        evaluating = bool(args.targets or args.forget_kind) or args.do_eval
        if evaluating and "heldout" not in eval_sets and args.retain_holdout > 0:
            n, held_out = len(retain_dataset), {"fraction": args.retain_holdout, "seed": args.seed}
            retain_dataset, eval_sets["heldout"] = split_holdout(retain_dataset, args.retain_holdout, args.seed)
            heldout_source = (f"{len(eval_sets['heldout'])} of the {n} retain rows, held out of training "
                              f"(retain_holdout={args.retain_holdout:g}, seed {args.seed})")
        targets = run_targets(args.targets, args.forget_kind, ["forget", *eval_sets]) or None
        self.recovery_limit = recovery_limit(args.targets)
        if self.recovery_limit is not None and quantization_of(model) is not None:
            raise ValueError("a relearn_recovery target relearns a full-precision copy of the model, which a "
                             "bitsandbytes-quantised base is not; save the run and audit it (hf-wagle audit "
                             "--max-recovery relearn=...) against the unquantised base")
        keep_4bit_differentiable(model)
        # seeded as the Trainer seeds before it creates a model, so the LoRA initialisation is reproducible
        (enable_full_determinism if args.full_determinism else set_seed)(args.seed)
        if peft_config is not None:
            from peft import get_peft_model

            check_lora_config(peft_config, masked)
            if args.mask_noise_std > 0:
                raise ValueError("mask_noise_std > 0 adds noise to base weights, which an adapter cannot carry; "
                                 "train full parameters (no peft_config) or set mask_noise_std=0")
            with peft_wrapping():
                model = get_peft_model(model, peft_config)
        self.confinement = confinement_for(model)
        self.confinement.check(model)  # refuses what a mask cannot confine, before any work
        if args.forget_perturbation == "gnp" and _has_dropout(model):
            logger.warning("forget_perturbation='gnp' takes a finite difference of two forget passes, and this model "
                           "drops out at random in training, differently in each: the difference then holds dropout "
                           "noise times gnp_scale. Set the dropout to 0 (e.g. lora_dropout=0) for it.")
        if mask is not None:
            mask.check_model(model)
            if args.forget_tokens == "key":
                logger.warning("forget_tokens='key': the given mask was attributed on whatever tokens it was computed "
                               "from; only a mask the trainer computes, or `hf-wagle attribute --forget_tokens key`, "
                               "reads the key tokens the objective unlearns")
        elif args.mask_method is not None:
            check_selects_something(model, args.mask_ratio, args.mask_scope, args.mask_include, args.mask_exclude)
        self.forget_dataset, self.retain_dataset = forget_dataset, retain_dataset
        self.mask_retain_dataset = mask_retain_dataset
        tok_args = (processing_class, args.prompt_template, args.max_length)
        keys = None
        if args.forget_tokens == "key":
            if dataset_shape(forget_dataset, "forget dataset") != "qa":
                raise ValueError("forget_tokens='key' unlearns the tokens of each answer's fact, which needs QA rows "
                                 "(question, answer, optionally answer_key); set forget_tokens='answer'")
            keys = answer_keys(forget_dataset)
        subjects = None
        if objective.needs_subjects:
            if dataset_shape(forget_dataset, "forget dataset") != "qa" or "subject" not in forget_dataset.column_names:
                raise ValueError(f"objective {args.objective!r} as configured (e.g. rmu_positions='subject') reads "
                                 "each forget row's subject: give QA forget rows a `subject` column (the words of "
                                 "the question that name it)")
            subjects = forget_dataset["subject"]
            for i, (subject, question) in enumerate(zip(subjects, forget_dataset["question"])):
                if not isinstance(subject, str) or key_span(question, subject) is None:
                    raise ValueError(f"forget dataset, row {i}: the subject {subject!r} is not words of its question "
                                     f"{question!r}; every row's `subject` names it as the question does")
        forget_ex = tokenize_dataset(forget_dataset, *tok_args, what="forget dataset", keys=keys, subjects=subjects)
        retain_ex = tokenize_dataset(retain_dataset, *tok_args, what="retain dataset")
        check_fits_model(forget_ex, model, "forget dataset")
        check_fits_model(retain_ex, model, "retain dataset")
        refusal_ex = refusal_examples(forget_dataset, processing_class, objective.target_answers(forget_dataset),
                                      *tok_args[1:]) if objective.needs_refusal else None
        check_disjoint(forget_ex, retain_ex)
        if args.forget_folds > len(forget_ex):
            raise ValueError(f"forget_folds={args.forget_folds} needs at least as many forget rows, and there are "
                             f"{len(forget_ex)}; lower forget_folds")
        if mask_retain_dataset is not None:
            if mask is not None or args.mask_method is None:
                raise ValueError("mask_retain_dataset is the attribution's retain data, and this run computes no "
                                 "mask (a mask was given, or mask_method is None); drop it, or set mask_method")
            mask_retain_ex = tokenize_dataset(mask_retain_dataset, *tok_args, what="mask retain dataset")
            check_fits_model(mask_retain_ex, model, "mask retain dataset")
            check_disjoint(forget_ex, mask_retain_ex, "attribution retain")
            for name, data in eval_sets.items():
                shared = _shared_rows(mask_retain_ex, tokenize_dataset(data, *tok_args))
                if shared:
                    raise ValueError(f"{shared} rows of mask_retain_dataset are also in the {name} evaluation set: "
                                     f"a mask attributed to keep them would make {name} a measure of itself; give "
                                     "attribution retain data disjoint from every evaluation set")
        qa = all(dataset_shape(d) == "qa" for d in (forget_dataset, retain_dataset))
        if qa and neighbourhood_share(forget_dataset["question"], retain_dataset["question"]) == 0:
            logger.warning("the retain questions share no word with the forget questions (no subject, no relation): "
                           "they keep general ability but nothing next to what is forgotten, and NPO-style "
                           "objectives then forget the relation for every subject; add retain rows from the forget "
                           "set's neighbourhood (docs/how-to/targets.md)")
        pad = pad_id(processing_class)
        kwargs.setdefault("data_collator", PairCollator(pad))
        pairs = ForgetRetainPairs(forget_ex, retain_ex, args.seed, args.process_index, refusal_ex)
        super().__init__(model=model, args=args, train_dataset=pairs, processing_class=processing_class, **kwargs)
        self.objective = objective
        self.mask = mask                 # element mask (given or computed)
        self.enforced_mask = None        # what training can actually change, base-model names
        self._grad_masks: dict[torch.Tensor, torch.Tensor] = {}
        self._masked = masked
        self._prepared = False
        self._resuming = False
        self._reference: dict[str, torch.Tensor] | None = None  # "<part>.nll_sum" / "<part>.n_tokens"
        self._frozen: dict[str, torch.Tensor] | None = None     # start values of trainable params (no PEFT)
        self._start_weights: dict[str, torch.Tensor] | None = None  # the same on the CPU, for relearn_recovery
        self._pad_id = pad
        self._perturbation: dict[torch.Tensor, torch.Tensor] = {}  # eps of this step (`forget_perturbation`)
        self._loss_part: str | None = None  # "forget" or "retain" while a step takes them apart
        self._forget_grads: dict[torch.Tensor, torch.Tensor] = {}  # g_f of this step (`disruption_masking`)
        self._forget_scale, self._gnp_base = 1.0, 0.0  # "gnp": c and (1 - c) * ||g|| / h of this step
        self._metrics = defaultdict(list)
        self.results: dict | None = None  # {"before": {...}, "after": {...}} numbers the model card shows
        self.provenance = {"base_name": getattr(getattr(model, "config", None), "_name_or_path", None),
                           "base_source": getattr(getattr(model, "config", None), "hf_wagle_source", None),
                           "data": {"forget": data_entry(forget_dataset, *tok_args, subjects=subjects is not None),
                                    "retain": {"rows": len(retain_ex), "sha256": examples_digest(retain_ex),
                                               "held_out": held_out},
                                    **{name: data_entry(data, *tok_args) for name, data in eval_sets.items()},
                                    **({"mask_retain": data_entry(mask_retain_dataset, *tok_args)}
                                       if mask_retain_dataset is not None else {})}}
        self.verification: dict | None = None  # a `hf_wagle.verify` report of the saved folder, for the card
        self.add_callback(_PairingEpoch(pairs))
        self.add_callback(_InstallMaskOnShards(self))
        self.collapse_monitor = RetainCollapseCallback(args.collapse_threshold, args.stop_on_collapse)
        if args.collapse_threshold is not None and objective.uses_retain:
            self.add_callback(self.collapse_monitor)
        if hasattr(self.model, "add_model_tags"):
            self.model.add_model_tags(self._tag_names)
        self.averaging = None  # the WeightAveraging callback (`weight_averaging_start`), before the evaluation's
        if args.weight_averaging_start is not None:
            self.averaging = WeightAveraging(args.weight_averaging_start)
            self.add_callback(self.averaging)
        self.evaluation = None  # the WagleEvalCallback of a run that evaluates
        if evaluating:
            from .evaluation.callback import WagleEvalCallback

            self.evaluation = WagleEvalCallback(
                forget_dataset, retain_dataset, eval_steps=args.target_eval_steps if targets else 10 ** 9,
                eval_datasets=eval_sets, targets=targets, stop_at_targets=args.stop_at_targets,
                answers=True if args.do_eval else None, truth_ratio=False, restore_best=bool(targets),
                batch_size=args.per_device_eval_batch_size, at_start=True, heldout_source=heldout_source,
                collapse_threshold=args.collapse_threshold if objective.uses_retain else None,
                utility_floor=args.utility_floor, kind=args.forget_kind).attach(self)

    # -- set-up when training starts ------------------------------------------------------------------------

    def prepare_unlearning(self, resume_from_checkpoint=None) -> None:
        """Everything unlearning needs before its first step, done once (`train()` calls it; later calls do nothing).

        In order: the objective's own setup; the reference log-probs of the forget answers (and refusals) under the
        start model, read from `resume_from_checkpoint` when it holds them; the start values of trainable
        parameters when the KL retain term or RMU needs a reference model and there is no adapter to disable; the
        collapse monitor's baseline retain NLL; then the mask (`self.mask`, computed when none was given) and its
        enforcement (`self.enforced_mask`, gradient masks). References and baselines come first because GRIN noise
        changes the weights when the mask is installed (not when resuming: the checkpoint's weights carry it). Call
        it yourself to inspect the mask before training.

        Under FSDP2 the mask waits for the model to be sharded (inside `Trainer.train`): it is computed on the shards
        when training begins (`compute_mask` on an FSDP2 model), or read from `resume_from_checkpoint`, whose weights
        are no longer the start model's.
        """
        if self._prepared:
            return
        self._prepared, self._resuming = True, resume_from_checkpoint is not None
        self.provenance["started"] = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
        quantized = quantization_of(self.model)
        self.provenance["base_quantization"] = quantized
        if not self.is_fsdp_enabled and not self._resuming and quantized is None:  # the base before any change
            self.provenance["base_weights_sha256"] = tensors_digest(base_named_parameters(self.model))
        self.objective.setup(self)
        if self.objective.needs_reference:
            self._reference = self._load_reference(resume_from_checkpoint) or self._reference_logps()
        if self._needs_frozen_copy():
            self._frozen = {n: p.detach().clone() for n, p in self.model.named_parameters() if p.requires_grad}
        if self.recovery_limit is not None and not self._is_peft():  # the start, for the relearning check
            self._start_weights = {n: p.detach().to("cpu", copy=True) for n, p in self.model.named_parameters()
                                   if p.requires_grad}
        if self.collapse_monitor in self.callback_handler.callbacks:
            self.collapse_monitor.baseline = self._retain_nll_now()
        if self.is_fsdp_enabled:
            if self.mask is None and self._masked and self._resuming:
                self.mask = WeightMask.load(resume_from_checkpoint)
            return  # installed on the shards by `_InstallMaskOnShards`
        self._install_mask()
        if self._frozen is not None:  # parameters the mask froze never change: no copy needed
            trainable = {n for n, p in self.model.named_parameters() if p.requires_grad}
            self._frozen = {n: t for n, t in self._frozen.items() if n in trainable}

    def train(self, resume_from_checkpoint=None, *args, **kwargs):
        """`Trainer.train` after `prepare_unlearning`. The process that saves (rank 0) takes `output_dir`'s save lock
        (`hf_wagle.io.output_lock`) and holds it until `save_model` has written `output_dir` (or the process ends):
        a second run into the same folder is refused before it trains."""
        if self.args.should_save and self._output_lock is None:
            self._output_lock = contextlib.ExitStack()
            self._output_lock.enter_context(output_lock(self.args.output_dir))
        if resume_from_checkpoint is True:
            resume_from_checkpoint = last_complete_checkpoint(self.args.output_dir)
        self.prepare_unlearning(resume_from_checkpoint)
        output = super().train(resume_from_checkpoint, *args, **kwargs)
        if self.evaluation is not None and self.evaluation.history:
            self.results = self.evaluation.results()
        if self.recovery_limit is not None:
            self._check_durability()
        return output

    def _is_peft(self) -> bool:
        from peft import PeftModel

        return isinstance(self.model, PeftModel)

    def _check_durability(self) -> None:
        """The `relearn_recovery` target (`hf_wagle.evaluation.targets`): the audit's relearning attack on copies of
        the start model and of the model kept, added to the targets' report. Every rank computes it (the same
        numbers), so no rank waits on another."""
        import copy

        from .experiments.robustness import audit

        if self._is_peft():
            original = copy.deepcopy(self.model).unload()
            unlearned = copy.deepcopy(self.model).merge_and_unload()
        else:
            unlearned = self.model
            original = copy.deepcopy(self.model)
            with torch.no_grad():
                for name, p in original.named_parameters():
                    if name in self._start_weights:
                        p.copy_(self._start_weights[name])
        was_training = self.model.training
        try:
            report = audit(original.eval(), unlearned.eval(), self.processing_class, self.forget_dataset, schemes=(),
                           batch_size=self.args.per_device_eval_batch_size, prompt_template=self.args.prompt_template,
                           seed=self.args.seed, answers=False, relearn_only=True, tokens=self.args.forget_tokens)
        finally:
            self.model.train(was_training)
        row = durability_row(self.recovery_limit, report)
        self.results = dict(self.results or {})
        targets = self.results.get("targets") or {"targets": [], "met": True, "step": self.state.global_step,
                                                  "evaluations": 0, "per_target": [], "vacuous": []}
        self.results["targets"] = {**targets, "targets": [*targets["targets"], row["target"]],
                                   "met": targets["met"] and row["holds"],
                                   "per_target": [*targets["per_target"], row]}
        logger.warning(f"relearning check: {row['target']}: recovery "
                       f"{'not measured' if row['value'] is None else format(row['value'], '.4g')}, "
                       f"{'holds' if row['holds'] else 'BROKEN'}")

    def _prepare_inputs(self, inputs):
        """The Trainer's, then with `forget_folds > 1` the batch as this step's stage trains it
        (`hf_wagle.layered`)."""
        inputs = super()._prepare_inputs(inputs)
        folds = self.args.forget_folds
        if folds > 1 and "forget" in inputs:
            data = self.train_dataset
            inputs = staged_batch(inputs, stage_at(self.state.global_step, self.state.max_steps, folds), folds,
                                  data.forget, self._pad_id, data.refusal)
        return inputs

    def get_batch_samples(self, epoch_iterator, num_batches, device):
        """The Trainer's micro-batches of one optimizer step; with weight averaging, the trained weights back in the
        model first; with `forget_perturbation`, this step's perturbation, from all of them
        (`hf_wagle.perturbation`). Under FSDP2, the unsharded parameters a forward pass without backward (an
        evaluation) left are freed first, so that `model.parameters()` are the sharded ones this step's gradients,
        perturbations and averages are kept for."""
        batches, num_items = super().get_batch_samples(epoch_iterator, num_batches, device)
        if self.is_fsdp_enabled:
            reshard(self.model)
        if self.averaging is not None:  # a perturbation is taken at the weights the step trains, not the average
            self.averaging.restore_weights()
        if self.args.forget_perturbation is not None and batches:
            self._forget_scale, self._gnp_base = 1.0, 0.0
            self._perturbation = self._step_perturbation(batches)
        return batches, num_items

    def _step_perturbation(self, batches: list[dict]) -> dict[torch.Tensor, torch.Tensor]:
        masks = {p: self._grad_masks.get(p) for p in self._trainable()}
        a = self.args
        if a.forget_perturbation == "smooth":
            step = a.seed * 1_000_003 + self.state.global_step
            place = {p: i for i, p in enumerate(self.model.parameters())}  # frozen ones too: the same in any engine
            return smooth_perturbation(masks, a.smooth_sigma,
                                       {p: (step * 1_000_003 + place[p]) % 2 ** 62 for p in masks})
        # sam, gnp: the forget term's gradient over every micro-batch of the step, each weighted as the step weights
        # it, into a store of its own, averaged over the ranks (`_forget_gradient`)
        store: dict[torch.Tensor, torch.Tensor] = {}
        self.model.train()
        with self._forget_gradient(self.model_wrapped, apart=True), gradients_into(list(masks), store):
            for inputs in batches:
                with self.compute_loss_context_manager():
                    loss, _ = self.objective.forget_loss(self, self.model, self._prepare_inputs(inputs))
                (loss / len(batches)).backward()
        grads = {p: local_tensor(g) if masks[p] is None else local_tensor(g) * masks[p]
                 for p, g in self._mean_over_ranks(store).items()}
        norm = gradient_norm(grads)
        if self.is_fsdp_enabled and grads:  # each rank holds a shard of g
            norm = norm_over_shards(norm, next(iter(grads)))
        eps = sam_perturbation(grads, a.sam_rho, norm)
        if a.forget_perturbation == "gnp" and eps:
            self._forget_scale, self._gnp_base = gnp_scales(norm, a.gnp_gamma, a.sam_rho)
            self._metrics["gnp_scale"].append(self._forget_scale)
        return eps

    def _forget_gradient(self, model, apart: bool):
        """Backward passes inside take the forget gradient: `apart` from the step's (under DDP unreduced, averaged by
        `_mean_over_ranks` once the step's micro-batches are done; under FSDP2 reduce-scattered as each pass ends,
        every rank's `.grad` then its shard of the average, which keeps gradient memory sharded), or else joined to
        the gradient of the step's next pass and reduced with it."""
        if self.is_fsdp_enabled:
            return self._fsdp_sync(model, reduce=apart)
        return self.accelerator.no_sync(model)

    def _retain_gradient(self, model):
        """The retain pass: as the Trainer reduces it, except under FSDP2 with disruption masking, where it is reduced
        as it ends: a retain gradient left unsharded would be reduced with the next forget pass, into the forget
        gradient."""
        if self.is_fsdp_enabled and self.args.disruption_masking:
            return self._fsdp_sync(model, reduce=True)
        return contextlib.nullcontext()

    @contextlib.contextmanager
    def _fsdp_sync(self, model, reduce: bool):
        """Under FSDP2, backward passes inside reduce-scatter their gradients (`reduce`) or accumulate them
        unsharded for the next reducing pass; after the block, FSDP2 reduces as the Trainer set it for this
        micro-batch (Accelerate's `no_sync` would turn reduction on whatever the Trainer had set)."""
        model.set_requires_gradient_sync(reduce)
        try:
            yield
        finally:
            model.set_requires_gradient_sync(self._trainer_syncs())

    def _trainer_syncs(self) -> bool:
        """Whether the Trainer reduces gradients after this micro-batch (its last of the step, or every one with
        Accelerate's `sync_each_batch`)."""
        return bool(self.accelerator.sync_gradients
                    or self.accelerator.gradient_state.plugin_kwargs.get("sync_each_batch", False))

    def _mean_over_ranks(self, grads: dict[torch.Tensor, torch.Tensor]) -> dict[torch.Tensor, torch.Tensor]:
        """`grads` averaged over the ranks (as DDP averages `.grad`), in place; under DDP every trainable parameter
        takes part, in the model's order, a zero gradient where a rank has none, so the collectives match. Under
        FSDP2 they are averaged already (`_forget_gradient`)."""
        if self.args.world_size == 1 or self.is_fsdp_enabled:
            return grads
        import torch.distributed as dist

        out = {}
        for p in self._trainable():
            g = grads[p] if p in grads else torch.zeros_like(p)
            dist.all_reduce(g)
            out[p] = g.div_(self.args.world_size)
        return out

    def training_step(self, model, inputs, num_items_in_batch=None):
        a = self.args
        if self._perturbation or a.disruption_masking:
            # the forget term (at theta + eps; its own backward, reduced with the retain pass's, or under disruption
            # masking into gradients of its own, reduced apart: `_forget_gradient`), then the retain term at theta
            self._loss_part = "forget"
            try:
                if a.disruption_masking:
                    sync, into = (self._forget_gradient(model, apart=True),
                                  gradients_into(self._trainable(), self._forget_grads))
                else:
                    sync = (self._forget_gradient(model, apart=False) if self.objective.uses_retain
                            else contextlib.nullcontext())
                    into = contextlib.nullcontext()
                with sync, perturbed(self._perturbation), into:
                    loss = super().training_step(model, inputs, num_items_in_batch)
                if self.objective.uses_retain:
                    self._loss_part = "retain"
                    with self._retain_gradient(model):
                        loss = loss + super().training_step(model, inputs, num_items_in_batch)
            finally:
                self._loss_part = None
            if self.accelerator.sync_gradients:  # the step's last micro-batch
                self._finish_forget_gradient()
        else:
            loss = super().training_step(model, inputs, num_items_in_batch)
        with torch.no_grad():  # g *= mask, in place (this rank's shard of g and of the mask under FSDP2)
            for p, m in self._grad_masks.items():
                if p.grad is not None:
                    local_tensor(p.grad).mul_(m)
        return loss

    def _trainable(self) -> list[torch.Tensor]:
        return [p for p in self.model.parameters() if p.requires_grad]

    @torch.no_grad()
    def _finish_forget_gradient(self) -> None:
        """At the step's last micro-batch: "gnp"'s `forget_weight * (1 - c) * g` (`g = eps * ||g|| / h`, the same on
        every rank, so it may join before or after the ranks' average) added to the forget gradient; then with
        `disruption_masking`, `.grad = g_r + g_f * [sign(g_f) * sign(g_r) > 0]` (`hf_wagle.disruption`), `g_f`
        averaged over ranks as DDP averages `g_r`."""
        a = self.args
        if self._gnp_base:
            forget = self._forget_grads if a.disruption_masking else None
            for p, e in self._perturbation.items():  # e: this rank's shard under FSDP2, as the gradients are
                term = e.float().mul_(a.forget_weight * self._gnp_base).to(p.dtype)
                g = p.grad if forget is None else forget.get(p)
                if g is None:
                    g = as_shard(term, p) if is_sharded(p) else term
                else:
                    local_tensor(g).add_(term)
                if forget is None:
                    p.grad = g
                else:
                    forget[p] = g
        if a.disruption_masking:
            forget, self._forget_grads = self._mean_over_ranks(self._forget_grads), {}
            for p, g_f in forget.items():
                p.grad = disruption_masked(g_f, p.grad)

    def _install_mask(self) -> None:
        a = self.args
        if self.mask is None and a.mask_method is not None:
            forget = self.forget_dataset
            if a.forget_tokens == "key":  # attribution's forget gradient from the same tokens the objective unlearns
                from datasets import Dataset

                forget = Dataset.from_list(self.train_dataset.forget).select_columns(
                    ["input_ids", "attention_mask", "labels"])
            retain = self.retain_dataset if self.mask_retain_dataset is None else self.mask_retain_dataset
            self.mask = compute_mask(self.model, forget, retain, self.processing_class,
                                     a.mask_config, seed=a.seed, prompt_template=a.prompt_template,
                                     max_length=a.max_length, progress=not a.disable_tqdm)
        enforced, grad_masks = self.confinement.confine(self.model, self.mask)
        if enforced.num_selected == 0:
            raise ValueError(
                f"nothing can change: of the {self.mask.num_selected if self.mask else 0} weights the mask selects, "
                f"{self.confinement.kind} training can hold none (LoRA holds only targeted linear layers; a frozen "
                "parameter holds nothing). Raise mask_ratio, target other modules, or train full parameters."
            )
        self.enforced_mask = enforced
        self._grad_masks.clear()  # the dict the optimizer's weight-decay hook reads
        self._grad_masks.update(grad_masks)
        message = self.confinement.describe(self.model, self.mask, self.enforced_mask)
        if message:
            logger.warning(message)
        if a.mask_noise_std > 0:  # GRIN: perturb the weights that may change, the same on every rank
            if not self._resuming:
                add_mask_noise(self.model, self.enforced_mask, a.mask_noise_std, seed=a.seed)
            self.enforced_mask.metadata["noise_std"] = a.mask_noise_std

    def _parts(self) -> dict[str, list[dict]]:
        data = self.train_dataset
        return {"forget": data.forget, **({"refusal": data.refusal} if data.refusal is not None else {})}

    @torch.no_grad()
    def _start_nll(self, examples: list[dict]) -> SequenceNLL:
        """Per-example NLL of `examples` under the model before unlearning: eval mode, adapters disabled, in the
        training autocast context, in batches of `per_device_eval_batch_size`."""
        model, was_training, bs = self.model, self.model.training, self.args.per_device_eval_batch_size
        model.eval()
        try:
            with adapter_disabled(model), self.compute_loss_context_manager():
                outs = [sequence_nll(model, self._to_device(collate(examples[i:i + bs], self._pad_id)))
                        for i in range(0, len(examples), bs)]
        finally:
            model.train(was_training)
        return SequenceNLL(torch.cat([o.nll_sum for o in outs]).float(), torch.cat([o.n_tokens for o in outs]).float())

    def _reference_logps(self) -> dict[str, torch.Tensor]:
        """NLL sums and token counts of every forget answer (and refusal) under the starting model, computed once."""
        ref = {}
        for part, examples in self._parts().items():
            out = self._start_nll(examples)
            ref[f"{part}.nll_sum"], ref[f"{part}.n_tokens"] = out.nll_sum, out.n_tokens
        return ref

    def _to_device(self, batch: dict) -> dict:
        return {k: v.to(self.args.device) for k, v in batch.items()}

    def _load_reference(self, checkpoint) -> dict | None:
        path = os.path.join(checkpoint, REFERENCE_FILE) if isinstance(checkpoint, str) else None
        if path is None or not os.path.exists(path):
            return None
        from safetensors.torch import load_file

        return {k: v.to(self.args.device) for k, v in load_file(path).items()}

    def reference_logp(self, batch: dict, part: str = "forget") -> torch.Tensor:
        """`logp_ref` of the examples in `batch` (by their `index`), summed or token-averaged as the objective's
        arguments say (`normalization`, NPO's and IDK-DPO's `npo_normalization`)."""
        index = batch["index"]
        logp = -self._reference[f"{part}.nll_sum"][index]
        if getattr(self.objective.args, "normalization", self.args.npo_normalization) == "mean":
            logp = logp / self._reference[f"{part}.n_tokens"][index].clamp(min=1)
        return logp

    def _needs_frozen_copy(self) -> bool:
        return self.objective.needs_reference_model and not self._is_peft()

    @torch.no_grad()
    def reference_forward(self, batch: dict, **kwargs):
        """Outputs of the model as it was before unlearning: the base model with adapters disabled (PEFT), or a
        `functional_call` with the saved start values of the trainable parameters (full-parameter mode, costs one
        copy of the trainable parameters)."""
        from peft import PeftModel

        inputs = {"input_ids": batch["input_ids"], "attention_mask": batch["attention_mask"], **kwargs}
        if isinstance(self.model, PeftModel):
            with adapter_disabled(self.model):
                return self.model(**inputs)
        return torch.func.functional_call(self.model, self._frozen, args=(), kwargs=inputs, strict=False)

    def _retain_nll_now(self, n: int = 64) -> float:
        """Token-mean NLL of the first `n` retain examples before unlearning: the collapse monitor's baseline."""
        return float(self._start_nll(self.train_dataset.retain[:n]).token_mean)

    def create_optimizer(self, model=None):
        optimizer = super().create_optimizer(model)
        if self._masked:  # under FSDP2 the masks are installed later, into the same dict
            _move_weight_decay_on_mask(optimizer, self._grad_masks)
        return optimizer

    # -- the loss ---------------------------------------------------------------------------------------------

    def _set_signature_columns_if_needed(self):
        if self._signature_columns is None:
            self._signature_columns = ["forget", "retain", "refusal"]

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        loss, logs = 0.0, {}
        if self._loss_part != "retain":
            forget_loss, logs = self.objective.forget_loss(self, model, inputs)
            scale = self._forget_scale if self._loss_part == "forget" else 1.0  # "gnp"'s c, in its forget pass
            loss = self.args.forget_weight * scale * forget_loss
            logs["forget_loss"] = forget_loss.detach()
        if self.objective.uses_retain and self._loss_part != "forget":
            retain_loss, retain_logs = self.objective.retain_loss(self, model, inputs)
            loss = loss + self.args.retain_weight * retain_loss
            logs.update(retain_logs, retain_loss=retain_loss.detach())
        values = {k: float(v) for k, v in logs.items()}
        if not torch.isfinite(loss.detach()):
            raise FloatingPointError(
                f"non-finite unlearning loss at step {self.state.global_step} ({values}); training stopped before "
                "any non-finite weight was written. Lower the learning rate or the forget weight."
            )
        if model.training:
            for k, v in values.items():
                self._metrics[k].append(v)
        return (loss, logs) if return_outputs else loss

    def log(self, logs: dict[str, float], start_time: float | None = None) -> None:
        """Adds the mean of each loss term since the last log, averaged over ranks (every rank logs together)."""
        if "loss" in logs and self._metrics:
            names = sorted(k for k, v in self._metrics.items() if v)
            means = torch.tensor([sum(self._metrics[k]) / len(self._metrics[k]) for k in names],
                                 dtype=torch.float64, device=self.args.device)
            if self.args.world_size > 1:
                means = self.accelerator.reduce(means, reduction="mean")
            logs.update(zip(names, means.tolist()))
            self._metrics.clear()
        super().log(logs, start_time)

    # -- saving -----------------------------------------------------------------------------------------------

    def save_model(self, output_dir: str | None = None, _internal_call: bool = False) -> None:
        """Save the adapter (or model), `wagle_mask.safetensors`, the record and the card. Everything is written to
        a temporary folder beside `output_dir` first, which takes `output_dir`'s place in one rename once every file
        is written (`hf_wagle.io.staged_directory`): a failed write (a full disk, a crash while writing) leaves
        `output_dir` as it was, and no file of an earlier save is left beside this one's. Checkpoints keep the
        Trainer's own handling."""
        if _internal_call or not self.args.should_save:
            super().save_model(output_dir, _internal_call)
        else:
            target = output_dir or self.args.output_dir
            check_destination(target, {"the base model": self.provenance.get("base_name")})
            with staged_directory(target) as staging:
                super().save_model(str(staging), _internal_call)
            if self._output_lock is not None and os.path.abspath(target) == os.path.abspath(self.args.output_dir):
                self._output_lock.close()
                self._output_lock = None
        if _internal_call and self._reference is not None and self.args.should_save:
            from safetensors.torch import save_file

            save_file({k: v.cpu() for k, v in self._reference.items()},
                      os.path.join(output_dir or self.args.output_dir, REFERENCE_FILE))

    def export_adapter(self, output_dir: str, format: str = "shira", rank: int | None = None, scales=None,
                       base=None, strict: bool = False) -> dict:
        """Write this full-parameter run's change as a stock-PEFT adapter (`hf_wagle.export.export_adapter`):
        `format="shira"` is exact wherever float32 allows, `format="lora", rank=k` a truncated SVD with its
        fidelity report. `base` is the base model (folder, Hub id or model; default: the one this model was loaded
        from). One process only: after a distributed run, `save_model` and then `hf-wagle export` the folder."""
        from peft import PeftModel

        scales = check_export_options(format, rank, scales)
        if isinstance(self.model, PeftModel):
            raise ValueError("this run trained a LoRA adapter, which save_model already writes; export_adapter turns "
                             "a full-parameter run into an adapter")
        if self.enforced_mask is None:
            raise ValueError("nothing to export yet: call train() first")
        if self.args.world_size > 1:
            raise ValueError("export_adapter runs in one process: save_model(dir), then `hf-wagle export dir --base "
                             "MODEL --out OUT`")
        base = base if base is not None else self.model.name_or_path
        check_destination(output_dir, {"this run's output folder": self.args.output_dir,
                                       "the base model": base if isinstance(base, (str, os.PathLike)) else None})
        if not base:
            raise ValueError("the model was not loaded from a folder or Hub id; pass base= (the model before training)")
        dtype = next(self.model.parameters()).dtype
        base_model = AutoModelForCausalLM.from_pretrained(base, dtype=dtype) if isinstance(base, (str, os.PathLike)) \
            else base
        return export_adapter(self.model, base_model, self.enforced_mask, output_dir, format=format, rank=rank,
                              scales=scales, base_name=base if isinstance(base, str) else None,
                              write_card=write_export_card, record=run_record(self), strict=strict)

    def create_model_card(self, *args, **kwargs) -> None:
        """Used by `Trainer.push_to_hub`: write hf_wagle's card (not the Trainer's generic one)."""
        if self.is_world_process_zero() and self.enforced_mask is not None:
            write_model_card(self.args.output_dir, self)

    def _save(self, output_dir: str | None = None, state_dict=None) -> None:
        output_dir = output_dir if output_dir is not None else self.args.output_dir
        bad = [n for n, p in self.model.named_parameters() if p.requires_grad and not torch.isfinite(p).all()]
        if bad:
            raise FloatingPointError(
                f"refusing to save: {len(bad)} trained parameters hold NaN/inf (first: {bad[:3]}); lower the learning "
                "rate or enable gradient clipping (max_grad_norm)"
            )
        super()._save(output_dir, state_dict)
        if self.args.should_save and self.enforced_mask is not None:
            if self._masked:  # a dense run has no mask: nothing to confine to
                self.enforced_mask.save(output_dir)
            write_record(output_dir, self)
            write_model_card(output_dir, self)


_DECAY_CHUNK = 1 << 24  # elements of the on-mask decay factor buffer (64 MiB in fp32)


def _move_weight_decay_on_mask(optimizer, grad_masks: dict[torch.Tensor, torch.Tensor]) -> None:
    """Apply decoupled weight decay only where the mask allows change.

    Each parameter group's `weight_decay` moves to `wagle_weight_decay` (the optimizer then sees 0), and a step
    pre-hook does what AdamW would, `p *= f` with `f = 1 - lr * wd` in the parameter's compute precision, only
    on-mask: `p *= 1 + mask * (f - 1)`, whose factor is exactly f on-mask and exactly 1 off-mask (f - 1 and
    (f - 1) + 1 are exact for f in [0.5, 1]). The factor is built in a reused buffer of at most `_DECAY_CHUNK`
    elements, so masking costs no allocation per step.
    """
    inner = getattr(optimizer, "optimizer", optimizer)
    if not isinstance(inner, _MASK_SAFE_OPTIMIZER_TYPES):
        raise TypeError(f"{type(inner).__name__} may move weights whose gradient is zero; masked unlearning supports "
                        f"{', '.join(t.__name__ for t in _MASK_SAFE_OPTIMIZER_TYPES)}")
    decoupled = isinstance(inner, torch.optim.AdamW)
    for group in inner.param_groups:
        if group.get("weight_decay", 0.0):
            if not decoupled:
                raise ValueError(f"{type(inner).__name__} adds weight decay to the gradient, which would move "
                                 "masked weights; set weight_decay=0 or use AdamW")
            group["wagle_weight_decay"], group["weight_decay"] = group["weight_decay"], 0.0

    buffers: dict = {}

    @torch.no_grad()
    def decay_on_mask(opt, args, kwargs):
        for group in opt.param_groups:
            wd = group.get("wagle_weight_decay", 0.0)
            if not wd:
                continue
            for p in group["params"]:
                if p.grad is None:
                    continue
                local, m = local_tensor(p), grad_masks.get(p)
                dtype = torch.promote_types(local.dtype, torch.float32)  # where AdamW computes p * f
                f = torch.tensor(1.0 - group["lr"] * wd, dtype=dtype).item()
                if m is None:
                    local.mul_(f)
                elif not 0.5 <= f <= 1.0:
                    local.mul_(torch.where(m, f, 1.0))
                else:
                    key = (local.device, dtype)
                    if key not in buffers:
                        buffers[key] = torch.empty(_DECAY_CHUNK, dtype=dtype, device=local.device)
                    flat_p, flat_m = local.view(-1), m.reshape(-1)
                    for a in range(0, flat_p.numel(), _DECAY_CHUNK):
                        factor = buffers[key][:min(_DECAY_CHUNK, flat_p.numel() - a)]
                        factor.copy_(flat_m[a:a + factor.numel()]).mul_(f - 1.0).add_(1.0)
                        flat_p[a:a + factor.numel()].mul_(factor)

    inner.register_step_pre_hook(decay_on_mask)


class _InstallMaskOnShards(TrainerCallback):
    """Under FSDP2, makes and enforces the mask once the model is sharded (`fully_shard` runs inside
    `Trainer.train`, before `on_train_begin`)."""

    def __init__(self, trainer):
        self.trainer = trainer

    def on_train_begin(self, args, state, control, **kwargs):
        if self.trainer.enforced_mask is None and self.trainer.is_fsdp_enabled:
            self.trainer._install_mask()


def _has_dropout(model) -> bool:
    """Whether a training step of `model` drops out anything (a dropout module or attention dropout above 0)."""
    if not isinstance(model, torch.nn.Module):
        return False
    config = getattr(model, "config", None)
    return (any(isinstance(m, torch.nn.Dropout) and m.p > 0 for m in model.modules())
            or float(getattr(config, "attention_dropout", 0) or 0) > 0)


def _shared_rows(examples: list[dict], others: list[dict]) -> int:
    """How many of the tokenised `examples` are also in `others` (the same token ids)."""
    other = {tuple(ex["input_ids"]) for ex in others}
    return sum(tuple(ex["input_ids"]) in other for ex in examples)


_OVERLAP = {"retain": ("the forget and retain terms would pull the same answers both ways", "the retain term trains "
                       "them back"),
            "attribution retain": ("the mask's retain term would keep out the very weights the forget data needs",
                                   "the mask's retain term protects the weights they need")}


def check_disjoint(forget_ex: list[dict], retain_ex: list[dict], what: str = "retain") -> None:
    """Forget data that is all in the `what` data is refused (the two would cancel); a partial overlap is warned
    about, with its size."""
    shared, (cancel, harm) = _shared_rows(forget_ex, retain_ex), _OVERLAP[what]
    if shared and shared == len(forget_ex):
        raise ValueError(f"every forget example is also in the {what} data: {cancel}; give {what} data without the "
                         "forget examples")
    if shared:
        logger.warning(f"{shared} of the {len(forget_ex)} forget examples are also in the {what} data: {harm}; "
                       f"remove them from the {what} data")


def check_engine(args, peft_config, needs_reference_model: bool) -> None:
    """Refuse, before any work, the FSDP versions and combinations a mask cannot be enforced under (DeepSpeed is
    refused by `WagleConfig` itself)."""
    if not (args.fsdp or os.environ.get("ACCELERATE_USE_FSDP", "").lower() in ("1", "true")):
        return
    if recovery_limit(args.targets) is not None:
        raise NotImplementedError("a relearn_recovery target under FSDP is not supported (it relearns a whole copy "
                                  "of the model); save the run and audit it: hf-wagle audit --max-recovery")
    # TrainingArguments default to FSDP2; Accelerate's environment (accelerate launch) to FSDP1
    version = int((args.fsdp_config or {}).get("version", 2) if args.fsdp else os.environ.get("FSDP_VERSION", 1))
    if version != 2:
        raise NotImplementedError(f"FSDP version {version} flattens parameters, which a per-weight mask cannot follow; "
                                  "use FSDP2 (fsdp_config={'fsdp_version': 2})")
    if peft_config is not None:
        raise NotImplementedError("masked LoRA under FSDP is not supported: the adapter is small, use DDP for it; "
                                  "FSDP2 is for full-parameter unlearning")
    if needs_reference_model:
        raise NotImplementedError("under FSDP2, the KL retain term and RMU (which need a frozen copy of the start "
                                  "model) are not supported; use retain_loss='nll' with npo/grad_diff/simnpo, or DDP")


def last_complete_checkpoint(output_dir) -> str:
    """The newest `checkpoint-N` folder of `output_dir` that was written to the end (the Trainer writes
    `trainer_state.json` last), so a checkpoint interrupted mid-write never blocks `resume_from_checkpoint=True`."""
    from transformers.trainer import TRAINER_STATE_NAME
    from transformers.trainer_utils import PREFIX_CHECKPOINT_DIR

    folder = Path(output_dir)
    found = sorted((int(p.name.split("-")[-1]), p) for p in folder.glob(f"{PREFIX_CHECKPOINT_DIR}-*")
                   if p.is_dir() and p.name.split("-")[-1].isdigit())
    for _, path in reversed(found):
        if (path / TRAINER_STATE_NAME).exists():
            return str(path)
    raise ValueError(f"resume_from_checkpoint=True but {folder} holds no complete checkpoint "
                     f"({len(found)} incomplete); start without resuming or pass a checkpoint folder")


class _PairingEpoch(TrainerCallback):
    """Tells the forget/retain pairing which epoch begins, so pairs are a function of (seed, rank, item, epoch)."""

    def __init__(self, pairs: ForgetRetainPairs):
        self.pairs = pairs

    def on_epoch_begin(self, args, state, control, **kwargs):
        self.pairs.epoch = int(state.epoch + 1e-6)


class RetainCollapseCallback(TrainerCallback):
    """Warns (and with `stop=True` stops training) when the logged retain NLL exceeds `threshold` times its value
    before unlearning (`baseline`, measured on the first 64 retain examples when training starts)."""

    def __init__(self, threshold: float | None, stop: bool = False):
        self.threshold, self.stop, self.baseline, self.collapsed_at = threshold, stop, None, None

    def on_log(self, args, state, control, logs=None, **kwargs):
        value = (logs or {}).get("retain_nll")
        if self.threshold is None or self.baseline is None or value is None:
            return control
        if value > self.threshold * max(self.baseline, 1e-8):
            self.collapsed_at = self.collapsed_at or state.global_step
            logger.warning(
                f"\n{'!' * 80}\nRETAIN COLLAPSE: retain NLL {value:.4f} at step {state.global_step} is more than "
                f"{self.threshold:g}x its starting value {self.baseline:.4f}. The model is losing what it should "
                f"keep: lower the learning rate, raise retain_weight, or use a smaller mask_ratio."
                f"{' Stopping (stop_on_collapse=True).' if self.stop else ''}\n{'!' * 80}"
            )
            if self.stop:
                control.should_training_stop = True
        return control
