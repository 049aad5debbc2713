"""`WagleTrainer`: unlearning with the Hugging Face `Trainer`, confined to a weight mask.

Loss per micro-batch (a forget batch paired with a retain batch):
`L = forget_weight * objective(forget) + retain_weight * NLL_retain` (token-mean NLL).

How the mask is enforced, exactly:

* the gradient of every partly-masked parameter is multiplied by its mask in a tensor hook, i.e. during backward,
  before gradient accumulation, all-reduce and clipping (so the clipping norm is the masked gradient's norm);
  parameters with nothing selected are frozen;
* decoupled weight decay is taken out of the optimizer's parameter groups and applied on-mask only, right
  before each optimizer step, as `p *= where(mask, 1 - lr * wd, 1)`;
* off-mask gradients are zero from the first step, so the moments of Adam-family optimizers stay zero there and
  their update is exactly 0: off-mask weights stay bit-identical.
"""

from __future__ import annotations

import math
import os
from collections import defaultdict

import torch
from transformers import AutoModelForCausalLM, Trainer
from transformers.utils import logging

from .adapters import check_lora_config, confine_lora
from .attribution import base_named_parameters, compute_mask
from .config import MASK_SAFE_OPTIMIZERS, WagleConfig
from .data import ForgetRetainPairs, PairCollator, collate, tokenize_dataset
from .hub import write_model_card
from .mask import WeightMask
from .objectives import OBJECTIVES, sequence_nll

logger = logging.get_logger(__name__)
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
    """

    _tag_names = ["unlearning", "wagle"]
    _paper = {"title": "WAGLE: Strategic Weight Attribution for Effective and Modular Unlearning in Large Language "
                       "Models", "id": "2410.17509"}
    loss_is_scaled_for_ga = False  # compute_loss returns a per-micro-batch mean

    def __init__(self, model=None, args: WagleConfig | None = None, forget_dataset=None, retain_dataset=None,
                 processing_class=None, mask: WeightMask | None = None, peft_config=None, **kwargs):
        if args is None:
            args = WagleConfig(output_dir="wagle_output")
        if not isinstance(args, WagleConfig):
            raise TypeError(f"args must be a WagleConfig, got {type(args).__name__}")
        if "train_dataset" in kwargs:
            raise TypeError("WagleTrainer takes `forget_dataset` and `retain_dataset` instead of `train_dataset`")
        if forget_dataset is None or retain_dataset is None:
            raise ValueError("WagleTrainer needs both `forget_dataset` and `retain_dataset`")
        if args.deepspeed or args.fsdp:
            raise NotImplementedError("WagleTrainer supports single-device and DDP training; DeepSpeed and FSDP are "
                                      "not supported yet (use LoRA with DDP for large models)")
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
        if peft_config is not None:
            from peft import get_peft_model

            check_lora_config(peft_config, masked)
            model = get_peft_model(model, peft_config)
        if mask is not None:
            mask.check_fits({n: tuple(p.shape) for n, p in base_named_parameters(model)})
        self.forget_dataset, self.retain_dataset = forget_dataset, retain_dataset
        tok_args = (processing_class, args.prompt_template, args.max_length)
        forget_ex = tokenize_dataset(forget_dataset, *tok_args, what="forget dataset")
        retain_ex = tokenize_dataset(retain_dataset, *tok_args, what="retain dataset")
        pad_id = getattr(processing_class, "pad_token_id", None)
        if pad_id is None:
            pad_id = getattr(processing_class, "eos_token_id", None)
        kwargs.setdefault("data_collator", PairCollator(pad_id))
        super().__init__(model=model, args=args, train_dataset=ForgetRetainPairs(forget_ex, retain_ex, args.seed,
                         args.process_index), processing_class=processing_class, **kwargs)
        self.objective = OBJECTIVES[args.objective](args)
        self.mask = mask                 # element mask (given or computed)
        self.enforced_mask = None        # what training can actually change, base-model names
        self._grad_masks: dict[torch.Tensor, torch.Tensor] = {}
        self._hooks = []
        self._ref_logp = None
        self._forget_examples, self._pad_id = forget_ex, pad_id
        self._metrics = defaultdict(list)
        if hasattr(self.model, "add_model_tags"):
            self.model.add_model_tags(self._tag_names)

    # -- set-up when training starts ------------------------------------------------------------------------

    def train(self, *args, **kwargs):
        if self.enforced_mask is None:
            self._install_mask()
        if self.objective.needs_reference and self._ref_logp is None:
            self._ref_logp = self._reference_logps()
        return super().train(*args, **kwargs)

    def _install_mask(self) -> None:
        a = self.args
        from peft import PeftModel

        if a.mask_noise_std > 0 and isinstance(self.model, PeftModel):
            raise ValueError("mask_noise_std > 0 adds noise to base weights, which an adapter cannot carry; train "
                             "full parameters (no peft_config) or set mask_noise_std=0")
        if self.mask is None and a.mask_method is not None:
            self.mask = compute_mask(
                self.model, self.forget_dataset, self.retain_dataset, self.processing_class, method=a.mask_method,
                ratio=a.mask_ratio, mu=a.mu, reduction=a.mask_reduction, batch_size=a.mask_batch_size, seed=a.seed,
                prompt_template=a.prompt_template, max_length=a.max_length, num_samples=a.mask_num_samples,
                scope=a.mask_scope, granularity=a.mask_granularity, include=a.mask_include, exclude=a.mask_exclude,
                progress=not a.disable_tqdm,
            )
        elif self.mask is not None:
            self.mask.check_model(self.model)

        if isinstance(self.model, PeftModel):
            self.enforced_mask, self._grad_masks = confine_lora(self.model, self.mask)
            if self.mask is not None:
                logger.warning(
                    f"LoRA holds {self.enforced_mask.num_selected} of the {self.mask.num_selected} weights the "
                    f"{a.mask_method or 'given'} mask selects (row x column projection on the targeted linear layers)."
                )
        else:
            self.enforced_mask, self._grad_masks = _confine_parameters(self.model, self.mask)
        if a.mask_noise_std > 0:  # GRIN: perturb the weights that may change, the same on every rank
            from .attribution import add_mask_noise

            add_mask_noise(self.model, self.enforced_mask, a.mask_noise_std, seed=a.seed)
            self.enforced_mask.metadata["noise_std"] = a.mask_noise_std
        for p, m in self._grad_masks.items():
            self._hooks.append(p.register_hook(lambda g, m=m: g * m))

    @torch.no_grad()
    def _reference_logps(self) -> torch.Tensor:
        """`logp_ref(y_i)` of every forget example under the starting model (adapters disabled), computed once."""
        from .attribution import _adapter_disabled

        model, was_training = self.model, self.model.training
        model.eval()
        out, bs = [], self.args.per_device_eval_batch_size
        try:
            with _adapter_disabled(model), self.compute_loss_context_manager():
                for i in range(0, len(self._forget_examples), bs):
                    batch = collate(self._forget_examples[i:i + bs], self._pad_id)
                    batch = {k: v.to(self.args.device) for k, v in batch.items()}
                    out.append(-sequence_nll(model, batch).nll_sum)
        finally:
            model.train(was_training)
        return torch.cat(out).float()

    def create_optimizer(self, model=None):
        optimizer = super().create_optimizer(model)
        if self._grad_masks:
            _move_weight_decay_on_mask(optimizer, self._grad_masks)
        return optimizer

    # -- the loss ---------------------------------------------------------------------------------------------

    def _set_signature_columns_if_needed(self):
        if self._signature_columns is None:
            self._signature_columns = ["forget", "retain"]

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        forget = sequence_nll(model, inputs["forget"])
        retain = sequence_nll(model, inputs["retain"])
        ref = self._ref_logp[inputs["forget"]["index"]] if self.objective.needs_reference else None
        forget_loss = self.objective.forget_loss(forget, ref)
        retain_loss = retain.token_mean
        loss = self.args.forget_weight * forget_loss + self.args.retain_weight * retain_loss
        if model.training:
            self._metrics["forget_loss"].append(forget_loss.detach().item())
            self._metrics["retain_loss"].append(retain_loss.detach().item())
            self._metrics["forget_nll"].append(forget.token_mean.detach().item())
        return (loss, {"forget": forget, "retain": retain}) if return_outputs else loss

    def log(self, logs: dict[str, float], start_time: float | None = None) -> None:
        if "loss" in logs and self._metrics:
            logs.update({k: sum(v) / len(v) for k, v in self._metrics.items() if v})
            self._metrics.clear()
        super().log(logs, start_time)

    # -- saving -----------------------------------------------------------------------------------------------

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
            self.enforced_mask.save(output_dir)
            write_model_card(output_dir, self)


def _confine_parameters(model, mask: WeightMask | None) -> tuple[WeightMask, dict[torch.Tensor, torch.Tensor]]:
    """Full-parameter training: freeze parameters with nothing selected, gradient-mask the partly selected ones.

    Returns the enforced mask (the given mask, restricted to trainable parameters) and the gradient masks.
    """
    enforced, grad_masks = {}, {}
    for name, p in base_named_parameters(model):
        m = mask[name] if mask is not None else torch.ones(p.shape, dtype=torch.bool)
        if not p.requires_grad:
            m = torch.zeros_like(m)
        elif not m.any():
            p.requires_grad_(False)
        elif not m.all():
            grad_masks[p] = m.to(p.device)
        enforced[name] = m
    meta = dict(mask.metadata) if mask is not None else {"method": None}
    meta["enforced_by"] = "gradient_mask"
    return WeightMask(enforced, meta), grad_masks


def _move_weight_decay_on_mask(optimizer, grad_masks: dict[torch.Tensor, torch.Tensor]) -> None:
    """Apply decoupled weight decay only where the mask allows change.

    Each parameter group's `weight_decay` moves to `wagle_weight_decay` (the optimizer then sees 0), and a step
    pre-hook does what AdamW would, `p *= 1 - lr * wd`, only on-mask (off-mask the factor is exactly 1).
    """
    inner = getattr(optimizer, "optimizer", optimizer)
    if not isinstance(inner, _MASK_SAFE_OPTIMIZER_TYPES):
        raise TypeError(f"{type(inner).__name__} may move weights whose gradient is zero; masked unlearning supports "
                        f"{', '.join(t.__name__ for t in _MASK_SAFE_OPTIMIZER_TYPES)}")
    decoupled = isinstance(inner, torch.optim.AdamW)
    for group in inner.param_groups:
        if group.get("weight_decay", 0.0) and any(p in grad_masks for p in group["params"]):
            if not decoupled:
                raise ValueError(f"{type(inner).__name__} adds weight decay to the gradient, which would move "
                                 "masked weights; set weight_decay=0 or use AdamW")
            group["wagle_weight_decay"], group["weight_decay"] = group["weight_decay"], 0.0

    @torch.no_grad()
    def decay_on_mask(opt, args, kwargs):
        for group in opt.param_groups:
            wd = group.get("wagle_weight_decay", 0.0)
            if not wd:
                continue
            factor = 1.0 - group["lr"] * wd
            for p in group["params"]:
                if p.grad is None:
                    continue
                m = grad_masks.get(p)
                p.mul_(factor if m is None else torch.where(m, factor, 1.0))

    inner.register_step_pre_hook(decay_on_mask)
