"""`WagleEvalCallback`: forget/retain metrics during training, on every rank, with keep-best.

Every `eval_steps` optimizer steps, each rank scores its shard of the forget and retain sets (rows `rank,
rank + world_size, ...`), the per-split sums and counts are all-reduced, and every rank gets the same means:

* `<split>_probability`  mean of `exp(-nll(answer))` (teacher forced);
* `<split>_truth_ratio`  with `paraphrased_answer` and `perturbed_answer`: forget `mean(min(TR, 1/TR))`, retain
  `mean(max(0, 1 - TR))` (see `hf_wagle.evaluation.tofu`);
* `gap`                  `retain_probability - forget_probability`.

Metrics are logged as `wagle_eval/<name>` (through the trainer's `log`, hence to every reporter, when the callback
was attached with `attach(trainer)`; else into `state.log_history`). The trainable weights of the best evaluation
by `criterion` are kept in CPU memory and, with `restore_best`, put back when training ends.
"""

from __future__ import annotations

import math

import torch
from transformers import TrainerCallback
from transformers.utils import logging

from ..modeling import rank_world, sum_over_ranks_
from ..options import DEFAULT_PROMPT_TEMPLATE
from .scoring import answer_nlls
from .tofu import forget_truth_ratio, kept_truth_ratio, truth_ratio_of

logger = logging.get_logger(__name__)
PREFIX = "wagle_eval/"
_LOWER_IS_BETTER = ("forget_probability",)


class WagleEvalCallback(TrainerCallback):
    """Evaluate forget/retain every `eval_steps` steps and keep the best weights.

    Args:
        forget_dataset, retain_dataset: QA datasets (`question`, `answer`, optionally `paraphrased_answer` and
            `perturbed_answer` for truth ratios).
        eval_steps: evaluate when `global_step % eval_steps == 0` (and at the last step).
        criterion: a metric name above (default `"gap"`) or a function `metrics -> float`.
        greater_is_better: direction of `criterion` (default: lower for `forget_probability`, higher otherwise).
        restore_best: put the best weights back into the model at the end of training.
        tokenizer, prompt_template: default to the trainer's `processing_class` and `args.prompt_template`.
    """

    def __init__(self, forget_dataset, retain_dataset, eval_steps: int = 50, criterion="gap",
                 greater_is_better: bool | None = None, restore_best: bool = True, tokenizer=None,
                 prompt_template: str | None = None, batch_size: int = 32):
        for name, data in (("forget_dataset", forget_dataset), ("retain_dataset", retain_dataset)):
            columns = set(getattr(data, "column_names", None) or [])
            if not {"question", "answer"} <= columns or len(data) == 0:
                raise ValueError(f"{name} must be a non-empty QA dataset with `question` and `answer`; it has "
                                 f"{sorted(columns)}")
        if eval_steps < 1:
            raise ValueError(f"eval_steps must be >= 1, got {eval_steps}")
        names = self.metric_names(forget_dataset, retain_dataset)
        if isinstance(criterion, str) and criterion not in names:
            raise ValueError(f"criterion {criterion!r} is not a computed metric; choose one of {names} or a function")
        if not isinstance(criterion, str) and not callable(criterion):
            raise TypeError("criterion must be a metric name or a function metrics -> float")
        if greater_is_better is None:
            greater_is_better = not (isinstance(criterion, str) and criterion in _LOWER_IS_BETTER)
        self.splits = {"forget": forget_dataset, "retain": retain_dataset}
        self.eval_steps, self.criterion, self.greater_is_better = eval_steps, criterion, greater_is_better
        self.restore_best, self.tokenizer, self.prompt_template = restore_best, tokenizer, prompt_template
        self.batch_size = batch_size
        self.history: list[dict] = []
        self.best_value = self.best_step = self.best_metrics = None
        self._best_state: dict[str, torch.Tensor] | None = None
        self._trainer = None

    @staticmethod
    def metric_names(forget_dataset, retain_dataset) -> list[str]:
        names = ["forget_probability", "retain_probability", "gap"]
        for split, data in (("forget", forget_dataset), ("retain", retain_dataset)):
            if {"paraphrased_answer", "perturbed_answer"} <= set(data.column_names):
                names.append(f"{split}_truth_ratio")
        return names

    def attach(self, trainer):
        """Add this callback to `trainer` and log through `trainer.log`. Returns the callback."""
        trainer.add_callback(self)
        self._trainer = trainer
        return self

    # -- the metrics ------------------------------------------------------------------------------------------

    def _local_sums(self, model, tokenizer, template: str, rank: int, world_size: int) -> list[float]:
        """[sum_prob, sum_tr, n] per split over this rank's shard."""
        sums = []
        for split, data in self.splits.items():
            rows = [data[i] for i in range(rank, len(data), world_size)]
            nll = answer_nlls(model, tokenizer, [(r["question"], r["answer"]) for r in rows], template,
                              self.batch_size) if rows else []
            tr_sum = 0.0
            if f"{split}_truth_ratio" in self.metric_names(*self.splits.values()) and rows:
                pairs, sizes = [], []
                for r in rows:
                    pairs += [(r["question"], r["paraphrased_answer"])] + [(r["question"], p)
                                                                            for p in r["perturbed_answer"]]
                    sizes.append(len(r["perturbed_answer"]))
                tr_nll, pos = answer_nlls(model, tokenizer, pairs, template, self.batch_size), 0
                trs = []
                for k in sizes:
                    trs.append(truth_ratio_of(tr_nll[pos], tr_nll[pos + 1:pos + 1 + k]))
                    pos += 1 + k
                tr_sum = len(trs) * (forget_truth_ratio if split == "forget" else kept_truth_ratio)(trs)
            sums += [sum(math.exp(-x) for x in nll), tr_sum, float(len(rows))]
        return sums

    def evaluate(self, model, tokenizer, args) -> dict[str, float]:
        """The metrics above, identical on every rank (all ranks must call this together)."""
        template = self.prompt_template or getattr(args, "prompt_template", None) or DEFAULT_PROMPT_TEMPLATE
        rank, world_size = rank_world()
        sums = torch.tensor(self._local_sums(model, tokenizer, template, rank, world_size), dtype=torch.float64,
                            device=args.device if world_size > 1 else "cpu")
        sum_over_ranks_([sums])
        sums = sums.cpu().tolist()
        names = self.metric_names(*self.splits.values())
        metrics = {}
        for j, split in enumerate(self.splits):
            prob, tr, n = sums[3 * j:3 * j + 3]
            metrics[f"{split}_probability"] = prob / n
            if f"{split}_truth_ratio" in names:
                metrics[f"{split}_truth_ratio"] = tr / n
        metrics["gap"] = metrics["retain_probability"] - metrics["forget_probability"]
        return metrics

    def _score(self, metrics: dict[str, float]) -> float:
        return float(metrics[self.criterion] if isinstance(self.criterion, str) else self.criterion(metrics))

    # -- trainer events ---------------------------------------------------------------------------------------

    def on_step_end(self, args, state, control, model=None, processing_class=None, **kwargs):
        if state.global_step % self.eval_steps and state.global_step != state.max_steps:
            return control
        if any(h["step"] == state.global_step for h in self.history):
            return control
        tokenizer = self.tokenizer or processing_class
        if tokenizer is None:
            raise ValueError("WagleEvalCallback needs a tokenizer: pass `tokenizer=` or give the trainer one")
        metrics = self.evaluate(model, tokenizer, args)
        value = self._score(metrics)
        self.history.append({"step": state.global_step, **metrics, "criterion": value})
        better = self.best_value is None or (value > self.best_value if self.greater_is_better
                                             else value < self.best_value)
        if better:
            self.best_value, self.best_step, self.best_metrics = value, state.global_step, metrics
            self._best_state = {n: p.detach().to("cpu", copy=True) for n, p in model.named_parameters()
                                if p.requires_grad}
        logs = {PREFIX + k: v for k, v in metrics.items()}
        logs[PREFIX + "best_step"] = self.best_step
        if self._trainer is not None:
            should_log = control.should_log  # Trainer.log clears it: keep this step's regular loss log
            self._trainer.log(logs)
            control.should_log = should_log
        else:
            state.log_history.append({**logs, "step": state.global_step})
        return control

    def on_train_end(self, args, state, control, model=None, **kwargs):
        if self.restore_best and self._best_state is not None:
            with torch.no_grad():
                for n, p in model.named_parameters():
                    if n in self._best_state:
                        p.copy_(self._best_state[n].to(p.device))
            logger.info(f"restored the weights of step {self.best_step} ({self.criterion} = {self.best_value:.4g})")
        return control
