"""`WagleEvalCallback`: the unlearning measurement during training, on every rank, with targets and keep-best.

Every `eval_steps` optimizer steps (and at the last step; with targets also at step 0, their reference) the named
sets are scored with `hf_wagle.evaluation.measure.measure` (each rank scores its share, sums are all-reduced, every
rank gets the same numbers): `<set>_probability` for every set, `<set>_truth_ratio` where the set has the columns,
`<set>_answered` and `<set>_rouge` when answers are asked for (or a target names them), and
`gap = retain_probability - forget_probability`.

Metrics are logged as `wagle_eval/<name>` (through the trainer's `log`, hence to every reporter, when the callback
was attached with `attach(trainer)`; else into `state.log_history`). The trainable weights of the best evaluation are
kept in CPU memory (each rank its own shards) and, with `restore_best`, put back when training ends.

**Without targets** the best evaluation is the one with the best `criterion`.

**With targets** (`hf_wagle.evaluation.targets`) training stops at the first evaluation where every target holds
(`stop_at_targets`), and the evaluation kept is the best that meets them, or, when none does, the closest one;
`report` then says which, and for a missed target by how much and at which step it came closest.

**Retain collapse.** With `collapse_threshold` t, an evaluation whose `retain_probability` is below `1/t` of its
start is inside a retain collapse: it is never kept as the best, training does not stop there, and a report whose
kept step is one is not met (`report["collapsed_steps"]`).

**Utility floor.** With targets and `utility_floor`, the first evaluation adds the floor targets of
`hf_wagle.evaluation.targets.floor_targets` (kept sets answered at the start, named by no answered floor of the
user's), listed in `report["utility_floor"]`.
"""

from __future__ import annotations

import torch
from transformers import TrainerCallback
from transformers.utils import logging

from ..modeling import local_tensor, reshard
from ..options import DEFAULT_PROMPT_TEMPLATE
from . import targets as target_rules
from .measure import (
    ANSWER_MEASURES,
    ANSWERED,
    PROBABILITY,
    TRUTH_RATIO,
    check_sets,
    describe_sets,
    has_truth_ratio,
    measure,
)

logger = logging.get_logger(__name__)
PREFIX = "wagle_eval/"
_LOWER_IS_BETTER = ("forget_probability",)


class WagleEvalCallback(TrainerCallback):
    """Evaluate named QA sets every `eval_steps` steps, stop at targets, keep the best weights.

    Args:
        forget_dataset, retain_dataset: QA datasets (`question`, `answer`, optionally `answer_key`, and
            `paraphrased_answer` with `perturbed_answer` for truth ratios).
        eval_steps: evaluate when `global_step % eval_steps == 0` (and at the last step).
        criterion: without targets, a metric name (default `"gap"`) or a function `metrics -> float`.
        greater_is_better: direction of `criterion` (default: lower for `forget_probability`, higher otherwise).
        restore_best: put the best weights back into the model at the end of training.
        tokenizer, prompt_template: default to the trainer's `processing_class` and `args.prompt_template`.
        eval_datasets: more named sets (`{"heldout": ..., "neighbour": ...}`).
        targets: target texts or `Target`s; `stop_at_targets`: stop training once every target holds.
        answers: also score `answered` and `rouge` (greedy generation) on every set at the first evaluation and once
            more when training ends (`final`); default: when a target names them. In between, generation runs only
            on the sets a target names an answer measure of.
        truth_ratio: score truth ratios where a set has the columns.
        at_start: also evaluate when training begins (default: with targets, their reference).
        heldout_source: what the `heldout` set is, for `results()` (default: a set never trained on).
        collapse_threshold: see "Retain collapse" in the module docstring (None: off).
        utility_floor: see "Utility floor" in the module docstring (None: off).
        kind: the run's `forget_kind` (`"fact"`, `"topic"` or None), stated in the report.
    """

    def __init__(self, forget_dataset, retain_dataset, eval_steps: int = 50, criterion="gap",
                 greater_is_better: bool | None = None, restore_best: bool = True, tokenizer=None,
                 prompt_template: str | None = None, batch_size: int = 32, eval_datasets: dict | None = None,
                 targets=None, stop_at_targets: bool = True, answers: bool | None = None, truth_ratio: bool = True,
                 at_start: bool | None = None, heldout_source: str | None = None,
                 collapse_threshold: float | None = None, utility_floor: float | None = None,
                 kind: str | None = None):
        self.splits = {"forget": forget_dataset, "retain": retain_dataset, **(eval_datasets or {})}
        check_sets(self.splits)
        if eval_steps < 1:
            raise ValueError(f"eval_steps must be >= 1, got {eval_steps}")
        self.targets = target_rules.parse_targets(targets)
        self.utility_floor = utility_floor if self.targets else None
        target_rules.check_kind(kind, self.splits)
        self.kind, self.floor_added = kind, []
        if answers is None:  # the floor reads `answered` on the kept sets at the start
            answers = target_rules.needs_answers(self.targets) or self.utility_floor is not None
        self.answers = answers
        self.truth_ratio = truth_ratio
        names = self.metric_names()
        unknown = [str(t) for t in self.targets if t.metric not in names]
        if unknown:
            raise ValueError(f"targets {unknown} name metrics this evaluation does not compute; it computes "
                             f"{names} (a set named in a target must be given: heldout, neighbour, ...)")
        if isinstance(criterion, str) and criterion not in names:
            raise ValueError(f"criterion {criterion!r} is not a computed metric; choose one of {names} or a function")
        if not isinstance(criterion, str) and not callable(criterion):
            raise TypeError("criterion must be a metric name or a function metrics -> float")
        if greater_is_better is None:
            greater_is_better = not (isinstance(criterion, str) and criterion in _LOWER_IS_BETTER)
        self.eval_steps, self.criterion, self.greater_is_better = eval_steps, criterion, greater_is_better
        self.restore_best, self.tokenizer, self.prompt_template = restore_best, tokenizer, prompt_template
        self.stop_at_targets, self.batch_size = stop_at_targets, batch_size
        self.at_start, self.heldout_source = bool(self.targets) if at_start is None else at_start, heldout_source
        self.history: list[dict] = []
        self.final: dict | None = None  # the full evaluation of the model training ended with (after any restore)
        self._answer_sets = {t.set for t in self.targets if t.measure in ANSWER_MEASURES}
        self.best_value = self.best_step = self.best_metrics = None
        self.report: dict | None = None  # with targets: `hf_wagle.evaluation.targets.report`, once training ended
        self._best_state: dict[str, torch.Tensor] | None = None
        self._trainer = None
        self.collapse_threshold, self.collapsed_steps = collapse_threshold, []

    def metric_names(self) -> list[str]:
        names = []
        for name, data in self.splits.items():
            names.append(f"{name}_{PROBABILITY}")  # in `measure`'s order
            if self.answers:
                names += [f"{name}_{m}" for m in ANSWER_MEASURES]
            if self.truth_ratio and has_truth_ratio(data):
                names.append(f"{name}_{TRUTH_RATIO}")
        return names + ["gap"]

    def attach(self, trainer):
        """Add this callback to `trainer` and log through `trainer.log`. Returns the callback."""
        trainer.add_callback(self)
        self._trainer = trainer
        return self

    def evaluate(self, model, tokenizer, args, full: bool = True, sets: dict | None = None) -> dict[str, float]:
        """The metrics above, identical on every rank (all ranks must call this together); with `full=False`
        answers only on the sets a target needs them for; `sets`: only these of the splits (`gap` needs `forget`
        and `retain` among them)."""
        template = self.prompt_template or getattr(args, "prompt_template", None) or DEFAULT_PROMPT_TEMPLATE
        answers = self.answers if full else (self._answer_sets or False)
        metrics = measure(model, tokenizer, self.splits if sets is None else sets, template, answers, self.batch_size,
                          getattr(args, "max_length", None), args.device, self.truth_ratio)
        if {"retain_probability", "forget_probability"} <= metrics.keys():
            metrics["gap"] = metrics["retain_probability"] - metrics["forget_probability"]
        return metrics

    def _collapsed(self, metrics: dict) -> bool:
        """Whether `retain_probability` is below `1 / collapse_threshold` of its value at the first evaluation."""
        if self.collapse_threshold is None or len(self.history) < 2:
            return False
        return metrics["retain_probability"] < self.history[0]["retain_probability"] / self.collapse_threshold

    def _rank(self, metrics: dict) -> tuple:
        """Larger is better."""
        if self.targets:
            return target_rules.rank_key(self.targets, metrics, self.history[0])
        value = float(metrics[self.criterion] if isinstance(self.criterion, str) else self.criterion(metrics))
        return (value if self.greater_is_better else -value,)

    # -- trainer events ---------------------------------------------------------------------------------------

    def _record(self, args, state, control, model, tokenizer) -> None:
        tokenizer = self.tokenizer or tokenizer
        if tokenizer is None:
            raise ValueError("WagleEvalCallback needs a tokenizer: pass `tokenizer=` or give the trainer one")
        metrics = self.evaluate(model, tokenizer, args, full=not self.history)
        reshard(model)  # FSDP2: the parameters are the shards again (the best state keeps this rank's)
        self.history.append({"step": state.global_step, **metrics})
        if self.targets and len(self.history) == 1:
            self.floor_added = target_rules.floor_targets(self.targets, metrics, self.utility_floor)
            self.targets += self.floor_added
            self._answer_sets |= {t.set for t in self.floor_added}
            if self.floor_added and state.is_world_process_zero:
                logger.info(f"utility floor: {', '.join(map(str, self.floor_added))} (utility_floor)")
            for why in target_rules.vacuous(self.targets, metrics) if state.is_world_process_zero else ():
                logger.warning(f"target {why}")
        rank = self._rank(metrics)
        collapsed = self._collapsed(metrics)
        if collapsed:
            self.collapsed_steps.append(state.global_step)
            logger.warning(f"step {state.global_step}: retain_probability {metrics['retain_probability']:.4g} is "
                           f"below 1/{self.collapse_threshold:g} of its start: inside a retain collapse, this "
                           "evaluation is not kept and training does not stop here")
        if (self.at_start and len(self.history) == 1) or collapsed:
            rank = None  # the start is the reference, never the model kept; a collapsed model never either
        if rank is not None and (self.best_value is None or rank > self.best_value):
            self.best_value, self.best_step, self.best_metrics = rank, state.global_step, metrics
            self._best_state = {n: local_tensor(p).detach().to("cpu", copy=True) for n, p in model.named_parameters()
                                if p.requires_grad}
        logs = {PREFIX + k: v for k, v in metrics.items()}
        if self.best_step is not None:
            logs[PREFIX + "best_step"] = self.best_step
        if self.targets and state.global_step > 0:
            held = target_rules.check(self.targets, metrics, self.history[0])
            logs[PREFIX + "targets_met"] = float(all(r["holds"] for r in held))
            if all(r["holds"] for r in held) and self.stop_at_targets and not collapsed:
                control.should_training_stop = True
        if self._trainer is not None:
            should_log = control.should_log  # Trainer.log clears it: keep this step's regular loss log
            self._trainer.log(logs)
            control.should_log = should_log
        else:
            state.log_history.append({**logs, "step": state.global_step})

    def on_train_begin(self, args, state, control, model=None, processing_class=None, **kwargs):
        if self.at_start and not any(h["step"] == state.global_step for h in self.history):
            self._record(args, state, control, model, processing_class)  # the targets' reference
        return control

    def on_step_end(self, args, state, control, model=None, processing_class=None, **kwargs):
        if state.global_step % self.eval_steps and state.global_step != state.max_steps:
            return control
        if any(h["step"] == state.global_step for h in self.history):
            return control
        self._record(args, state, control, model, processing_class)
        return control

    def on_train_end(self, args, state, control, model=None, **kwargs):
        if self.targets and self.history:
            self.report = target_rules.report(self.targets, self.history, self.best_step)
            self.report.update(collapsed_steps=list(self.collapsed_steps), kind=self.kind,
                               utility_floor=[str(t) for t in self.floor_added])
            if self.report["step"] in self.collapsed_steps:
                self.report["met"] = False
            (logger.warning if not self.report["met"] else logger.info)(target_rules.explain(self.report))
        restore = self.restore_best and self._best_state is not None and self.best_step != state.global_step
        if restore:
            reshard(model)
            with torch.no_grad():
                for n, p in model.named_parameters():
                    if n in self._best_state:
                        local_tensor(p).copy_(self._best_state[n].to(p.device))
            logger.info(f"restored the weights of step {self.best_step}")
        if self.report is not None:
            self.report["restored"] = bool(restore)
        if self.answers and self.history:  # the model as it ends, scored in full (answers on every set)
            tokenizer = self.tokenizer or kwargs.get("processing_class")
            ended_at = self.best_step if restore else state.global_step
            scored = next((h for h in self.history if h["step"] == ended_at), None)
            if scored is None:
                self.final = self.evaluate(model, tokenizer, args)
            else:  # these weights were scored at that step: add only the answers that evaluation left out
                missing = {n: d for n, d in self.splits.items() if f"{n}_{ANSWERED}" not in scored}
                scored = {**scored, **(self.evaluate(model, tokenizer, args, sets=missing) if missing else {})}
                self.final = {k: scored[k] for k in self.metric_names() if k in scored}
        return control

    def results(self) -> dict:
        """`{"before", "after", "sets", "targets"}`: the metrics at the first evaluation and at the kept one (the
        last when nothing was restored), what each set is, and the targets' report (None without targets)."""
        after = self.final or (self.best_metrics if self.report is not None and self.report.get("restored")
                               else self.history[-1])
        return {"before": {k: v for k, v in self.history[0].items() if k != "step"},
                "after": {k: v for k, v in after.items() if k != "step"},
                "sets": describe_sets(self.splits, self.heldout_source), "targets": self.report}
