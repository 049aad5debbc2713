"""Run by torchrun in test_distributed_trainer.py: masked unlearning on two CPU ranks (gloo)."""
import sys

import torch
from datasets import load_from_disk
from transformers import AutoModelForCausalLM, AutoTokenizer

from hf_wagle import WagleConfig, WagleTrainer
from hf_wagle.evaluation import WagleEvalCallback

model_dir, out, objective = sys.argv[1], sys.argv[2], sys.argv[3]
# e.g. "sam", "gnp+disruption"; "folds": layered unlearning, 3 forget folds over the 3 steps
robust = sys.argv[4].split("+") if len(sys.argv) > 4 and sys.argv[4] else []
# "sgd": one plain SGD step (no decay, no clipping), which the test recomputes by hand from every rank's batches
sgd = dict(optim="sgd", learning_rate=0.5, max_steps=1, weight_decay=0.0, max_grad_norm=0.0) \
    if sys.argv[5:] == ["sgd"] else {}
model = AutoModelForCausalLM.from_pretrained(model_dir)
tokenizer = AutoTokenizer.from_pretrained(model_dir)
perturbation = next((r for r in robust if r not in ("disruption", "folds")), None)
args = WagleConfig(output_dir=f"{out}/run", objective=objective, mask_method="wagle", mask_ratio=0.5, mu=1e-3,
                   **{**dict(learning_rate=1e-3, max_steps=3, weight_decay=0.1, max_grad_norm=0.5), **sgd},
                   per_device_train_batch_size=2, gradient_accumulation_steps=2, use_cpu=True, ddp_backend="gloo",
                   report_to="none", save_strategy="no", disable_tqdm=True, seed=0, dataloader_drop_last=True,
                   logging_steps=1, forget_perturbation=perturbation, sam_rho=0.05, gnp_gamma=0.05,
                   disruption_masking="disruption" in robust, forget_folds=3 if "folds" in robust else 1)
forget, retain = load_from_disk(f"{out}/forget"), load_from_disk(f"{out}/retain")


class Recording(WagleTrainer):
    """Keeps every micro-batch it trains on, and per forget pass the step and the forget rows as loaded and as
    staged (`forget_folds`)."""

    seen, staged = [], []

    def training_step(self, model, inputs, num_items_in_batch=None):
        self.seen.append({k: {n: t.clone() for n, t in v.items()} for k, v in inputs.items() if isinstance(v, dict)})
        return super().training_step(model, inputs, num_items_in_batch)

    def _prepare_inputs(self, inputs):
        out = super()._prepare_inputs(inputs)
        if "forget" in inputs:
            self.staged.append((self.state.global_step, inputs["forget"]["index"].tolist(),
                                out["forget"]["index"].tolist()))
        return out


trainer = Recording(model=model, args=args, forget_dataset=forget, retain_dataset=retain, processing_class=tokenizer)
# uneven shards: 5 and 7 rows over 2 ranks
evaluation = WagleEvalCallback(forget.select(range(5)), retain.select(range(7)), eval_steps=1,
                               restore_best=False).attach(trainer)
trainer.train()
rank = args.process_index
torch.save({"params": {n: p.detach().clone() for n, p in trainer.model.named_parameters()},
            "mask": dict(trainer.enforced_mask.items()),
            "retain_draws": [trainer.train_dataset[i]["retain"]["input_ids"] for i in range(6)],
            "eps": {n: trainer._perturbation[p].clone() for n, p in trainer.model.named_parameters()
                    if p in trainer._perturbation},
            "eval_history": evaluation.history, "world": args.world_size, "seen": trainer.seen,
            "staged": trainer.staged,
            "logged": [h for h in trainer.state.log_history if "forget_loss" in h]}, f"{out}/trainer_rank{rank}.pt")
# every rank is done with its collectives before any closes its connections
trainer.accelerator.wait_for_everyone()
trainer.accelerator.end_training()
