"""Does the mask pay off? Unlearn the same model and data through several masks and compare what each keeps at
matched forgetting.

For every mask spec and seed, a fresh copy of the model is unlearned (`WagleTrainer`, the same recipe for every
spec: the `WagleConfig` defaults `hf-wagle unlearn` uses, plus `training`). The measurement is
`hf_wagle.evaluation.measure`'s, on named sets:

- `forget`: the forget rows; the target is on `target_metric` (default `forget_probability`);
- utility sets never trained on: `heldout` (a seeded `retain_holdout` share of the retain rows, kept out of training
  and attribution, or a set given) and `neighbour` (facts near the forget topic, when given), and any other given
  set; `utility` is the mean of their answer probabilities;
- `retain`: the rows the run trains on, reported apart and labelled as trained-on.

Every `eval_every` steps (default every step) the target metric and the utility probabilities are recorded.

**Real matched points.** The target is `forget_target x (its value before unlearning)`. When a run first crosses it
between two recorded steps `a < b`, the trainable parameters are set to `theta_a + t (theta_b - theta_a)` and `t` is
searched (bisection with false position) until the target metric is within `tolerance x target` of the target. Over
one optimizer step (`eval_every=1`) this model is exactly the step taken with its learning rate scaled by `t`
(Adam-family and SGD updates are linear in the learning rate; on-mask weight decay too), so the matched point is a
real model, fully evaluated there (answers included), not an interpolated number; over several steps it is a model
on the straight line between two trained states, and labelled so. A run stops at its matched point. A search that
ends outside the tolerance leaves the point unresolved and the verdict refuses to call a winner. A share of answered
rows moves in steps of one row (`1 / rows`), which may hold no value within the tolerance of the target (0.2 and
0.3 around 0.25 with 10 rows): on `forget_answered` the matched point is the first value at or below the target,
within one row of it. A crossing inside the first interval is warned about: the learning rate forgets in under
`eval_every` steps; `calibrate_learning_rate` picks one that reaches the target in a chosen number of steps.

**Intervals.** Over seeds, `mean +- t_{0.975, n-1} * s / sqrt(n)` (Student t, `scipy.stats.t`); none for one seed.
"""

from __future__ import annotations

import copy
import math
import tempfile
from functools import partial
from pathlib import Path

from transformers import PrinterCallback, TrainerCallback

from ..evaluation.measure import describe_sets, measure, split_holdout
from ..evaluation.targets import check
from ..masking.config import SPEC_KEYS, MaskConfig
from ..options import DEFAULT_PROMPT_TEMPLATE
from . import Progress

DENSE = "dense"


def parse_specs(text: str | list[str]) -> list[str]:
    """Mask specs from `"dense,random,wagle:mu=1e-4,scope=per_layer"`: a comma starts a new spec unless the piece
    is a `key=value` option of the spec before it."""
    pieces = [p.strip() for item in ([text] if isinstance(text, str) else text) for p in item.split(",") if p.strip()]
    specs: list[str] = []
    for piece in pieces:
        if "=" in piece and ":" not in piece:
            if not specs:
                raise ValueError(f"mask spec option {piece!r} has no method before it")
            specs[-1] += "," + piece
        else:
            specs.append(piece)
    return specs


def spec_options(spec: str) -> dict:
    """`WagleConfig` keys of one spec: `"wagle:mu=1e-4,scope=per_layer"` -> `{"mask_method": "wagle", "mu": 1e-4,
    "mask_scope": "per_layer"}`; a key that is one of the method's own options goes to `mask_options`
    (`"grin:eps=1e-10"` -> `{"mask_method": "grin", "mask_options": {"eps": 1e-10}}`); `"dense"` ->
    `{"mask_method": None}`. Values are read as JSON where they parse (numbers), else kept as text; all are checked
    by `MaskConfig` and the method before any run."""
    import json
    import typing

    from ..masking.methods import get_mask_method

    method, _, rest = spec.partition(":")
    registered = None if method == DENSE else get_mask_method(method)  # a clear error for an unknown method
    types = typing.get_type_hints(MaskConfig)
    values, own = {}, {}
    for item in filter(None, rest.split(",")):
        key, sep, raw = item.partition("=")
        if not sep or (key not in SPEC_KEYS and (registered is None or key not in registered.option_names())):
            own_keys = f" or {method}'s own options {list(registered.option_names())}" if registered and \
                registered.option_names() else ""
            raise ValueError(f"mask spec {spec!r}: options are key=value with key in {sorted(SPEC_KEYS)}{own_keys}, "
                             f"got {item!r}")
        try:
            value = json.loads(raw)
        except json.JSONDecodeError:
            value = raw
        if key in SPEC_KEYS and types[key] in (int, float, int | None, float | None) and (
                isinstance(value, bool) or not isinstance(value, (int, float))):
            raise ValueError(f"mask spec {spec!r}: {key} must be a number, got {raw!r}")
        (values if key in SPEC_KEYS else own)[key] = value
    if registered is None:
        if values:
            raise ValueError(f"mask spec {spec!r}: dense takes no options")
        return {"mask_method": None}
    try:  # the values too, before any run
        MaskConfig(method=method, **values)
        registered.resolve_options(own)
    except ValueError as e:
        raise ValueError(f"mask spec {spec!r}: {e}") from None
    return {"mask_method": method, **{SPEC_KEYS[k]: v for k, v in values.items()},
            **({"mask_options": own} if own else {})}


UNITS = {
    "probability": "mean answer probability exp(-mean token NLL) of answer and EOS, teacher forced",
    "answered": "share of questions whose greedy answer contains the answer (answer_key, else answer)",
    "rouge": "mean ROUGE-L recall of the greedy answer against the answer",
    "utility": "mean answer probability over the utility sets never trained on (heldout, neighbour, ...)",
    "retain": "the retain rows the run trains on: not held-out utility",
    "forget_quality": "TOFU forget quality: KS-test p-value against the retain model's truth ratios",
    "step": "optimizer steps; a matched point's step is fractional (a partial last step)",
    "survival": "share of the changed weights whose NF4 / INT8 value still differs from the base's (--survival)",
    "summary": "each averaged number is {mean, ci95_half_width (Student t over seeds), n}; null where undefined",
}
DEFAULT_SPECS = f"{DENSE},random,magnitude,wagle"


def ci95(values: list[float]) -> tuple[float, float]:
    """`(mean, half-width)` of the 95% Student-t interval of the mean; half-width NaN for fewer than two values."""
    from scipy import stats

    n = len(values)
    if n == 0:
        return math.nan, math.nan
    mean = sum(values) / n
    if n < 2:
        return mean, math.nan
    sd = math.sqrt(sum((v - mean) ** 2 for v in values) / (n - 1))
    return mean, float(stats.t.ppf(0.975, n - 1)) * sd / math.sqrt(n)


def estimate(values: list[float]) -> dict:
    """`{"mean", "ci95_half_width", "n"}` of `values` (`ci95`), as the JSON results hold every averaged number; a
    number that does not exist (no values, one value's interval) is None."""
    mean, half = ci95(values)
    return {"mean": None if math.isnan(mean) else mean, "ci95_half_width": None if math.isnan(half) else half,
            "n": len(values)}


def _trainable(model) -> dict:
    from ..modeling import local_tensor

    return {n: local_tensor(p).detach().clone() for n, p in model.named_parameters() if p.requires_grad}


def _set_between(model, before: dict, after: dict, t: float) -> None:
    """Trainable parameters to `before + t (after - before)` (exactly `before` where they are equal)."""
    import torch

    from ..modeling import local_tensor

    with torch.no_grad():
        for n, p in model.named_parameters():
            if n in before:
                local_tensor(p).copy_(before[n] + t * (after[n] - before[n]))


class MatchedPointCallback(TrainerCallback):
    """Records `cheap(model)` every `eval_every` steps into `curve` (which starts with `start`); at the first
    crossing of `target` on `metric` finds the matched point (module docstring), evaluates it with `full(model)`
    and stops training, leaving the model at the matched point. With `hold` (`full(model)`'s point -> whether every
    target holds), the matched point is instead the first evaluation at or after the crossing where `hold` is true,
    a whole step, as `hf-wagle unlearn` stops at its targets; none when no evaluation within the steps holds."""

    def __init__(self, cheap, full, metric: str, target: float, start: dict, eval_every: int, tolerance: float,
                 max_search: int = 12, grid: float = 0.0, hold=None):
        self.cheap, self.full, self.metric, self.target = cheap, full, metric, target
        self.eval_every, self.tolerance, self.max_search, self.grid = eval_every, tolerance, max_search, grid
        self.hold = hold
        self.curve, self.matched, self.warnings = [start], None, []
        self._before = None

    def on_train_begin(self, args, state, control, model=None, **kwargs):
        self._before = _trainable(model)

    def on_step_end(self, args, state, control, model=None, **kwargs):
        if self.matched is not None or (state.global_step % self.eval_every and state.global_step != state.max_steps):
            return control
        point = {"step": state.global_step, **self.cheap(model)}
        self.curve.append(point)
        if point[self.metric] > self.target:
            self._before = _trainable(model)
        elif self.hold is None:
            self.matched = self._search(model, self.curve[-2], point)
        elif self.hold(scored := self.full(model)):
            self.matched = {"step": state.global_step, "t": 1.0, "search_evaluations": 0,
                            "how": "the first evaluation at which every target holds", "within_tolerance": True,
                            **scored}
        if self.matched is not None:
            control.should_training_stop = True
        return control

    def _search(self, model, before: dict, after: dict) -> dict:
        start, end = self._before, _trainable(model)
        span = after["step"] - before["step"]
        if before["step"] == 0:
            self.warnings.append(
                f"the target was crossed within the first {span} step(s) ({self.metric} {before[self.metric]:.4g} -> "
                f"{after[self.metric]:.4g}, target {self.target:.4g}): the learning rate forgets faster than the "
                "evaluation grid; the matched point is a partial step. Calibrate the learning rate "
                "(calibrate_steps) for a comparison over several steps.")
        tol = max(self.tolerance * self.target, self.grid)
        lo, hi, v_lo, v_hi = 0.0, 1.0, before[self.metric], after[self.metric]
        best_t, best_v, searched = 1.0, v_hi, 0
        while self._miss(best_v) > tol and searched < self.max_search:
            t = lo + (v_lo - self.target) / max(v_lo - v_hi, 1e-30) * (hi - lo)  # false position, kept inside
            t = min(max(t, lo + 0.05 * (hi - lo)), hi - 0.05 * (hi - lo))
            _set_between(model, start, end, t)
            v = self.cheap(model, only=self.metric)[self.metric]
            searched += 1
            if self._miss(v) < self._miss(best_v):
                best_t, best_v = t, v
            if v > self.target:
                lo, v_lo = t, v
            else:
                hi, v_hi = t, v
        _set_between(model, start, end, best_t)
        how = ("exact partial step: the last step with its learning rate scaled by t" if span == 1 else
               f"parameters interpolated between steps {before['step']} and {after['step']}")
        return {"step": before["step"] + best_t * span, "t": best_t, "how": how, "search_evaluations": searched,
                "within_tolerance": self._miss(best_v) <= tol, **self.full(model)}

    def _miss(self, value: float) -> float:
        """How far `value` is from the matched point: `|value - target|`; on a grid of whole rows (`grid` > 0, a
        share of answered rows), `target - value` for a value at or below the target and infinite above it, as the
        grid may hold no value near the target but the first one at or below it is where the target is met."""
        if not self.grid:
            return abs(value - self.target)
        return self.target - value if value <= self.target else math.inf


def targets_hold(targets: list, start: dict, point: dict) -> bool:
    """Whether every target holds at `point` (an evaluation) against `start`; false when one's set was not scored."""
    return all(t.metric in point for t in targets) and all(r["holds"] for r in check(targets, point, start))


def _survival(base, trained) -> dict:
    """`{"nf4_survival", "int8_survival"}` of a run's model against its base (an adapter merged into a copy)."""
    from peft import PeftModel

    from .robustness import update_survival

    merged = copy.deepcopy(trained).merge_and_unload() if isinstance(trained, PeftModel) else trained
    return {f"{scheme}_survival": entry["fraction"] for scheme, entry in update_survival(base, merged).items()}


def _head(dataset, n):
    return dataset if n is None or len(dataset) <= n else dataset.select(range(n))


def run_folder(spec: str, seed: int) -> str:
    """The folder, under `keep`, of one run's model kept at its matched point: `wagle_ratio=0.5-seed0`."""
    return f"{spec.replace(':', '_').replace(',', '_')}-seed{seed}"


def compare_masks(model, tokenizer, forget, retain, *, methods=DEFAULT_SPECS, seeds: int = 3, steps: int = 20,
                  forget_target: float = 0.5, target_metric: str = "forget_probability", tolerance: float = 0.1,
                  heldout=None, neighbour=None, utility: dict | None = None, retain_holdout: float | None = None,
                  eval_every: int = 1, eval_limit: int | None = None, answers: bool = True, peft_config=None,
                  training: dict | None = None, keep: str | None = None, prompt_template: str | None = None,
                  retain_model_truth_ratios=None, on_run_end=None, survival: bool = False,
                  forget_bound: float | None = None, forgotten: dict | None = None, targets: list | None = None,
                  progress=print) -> dict:
    """Unlearn `model` through each mask spec of `methods` (see `parse_specs`/`spec_options`; `"dense"` is no mask)
    for `seeds` seeds (each seed sets the data order, pairing, random masks and the LoRA initialisation), find each
    run's matched point and summarise (module docstring).

    `model` is a model (copied for each run) or a folder / Hub id (loaded for each run). `heldout` and `neighbour`
    are QA sets never trained on; without `heldout`, `retain_holdout` (default: `WagleConfig`'s) of the retain rows
    are held out. `utility` adds more named sets. `eval_limit` rows of each evaluation set are scored (None: all;
    the settings say how many). `peft_config` (a `LoraConfig`, copied per run) trains a masked LoRA instead of full
    parameters. `training` holds `WagleConfig` keys (learning_rate, mask_ratio, objective, max_length, ...); the
    defaults are `WagleConfig`'s, as for `hf-wagle unlearn`. `keep` saves each run's model at its matched point (or
    at the end) under `keep/<spec>-seed<k>/` with its record. `on_run_end(model) -> dict` scores each kept model
    further (into the run's `final`). `survival` adds, at each matched point, the share of the changed weights whose
    NF4 and INT8 values still differ from the base's (`hf_wagle.experiments.robustness.update_survival`; needs
    bitsandbytes): how much of the forgetting a quantised deployment could keep. `forget_bound` matches at that
    absolute value of `target_metric` instead of `forget_target` times its start. `forgotten` holds named sets to be
    forgotten with the forget data (a topic's held-out facts): scored with the others, never counted as utility.
    `targets` (parsed `Target`s) matches each run where they first all hold instead (`MatchedPointCallback`'s
    `hold`): at an evaluation, after the crossing. Returns `{"settings", "units",
    "sets", "base", "runs", "summary"}` (numbers and set descriptions only, no data text)."""
    import torch
    from transformers import AutoModelForCausalLM

    from ..config import WagleConfig
    from ..evaluation.tofu import forget_quality, qa_metrics
    from ..trainer import WagleTrainer

    specs = parse_specs(methods)
    options = {spec: spec_options(spec) for spec in specs}  # every spec checked before any work
    if len(set(specs)) != len(specs):
        raise ValueError(f"methods lists a spec twice: {specs}")
    if seeds < 1 or steps < 1 or eval_every < 1:
        raise ValueError(f"seeds, steps and eval_every must be >= 1, got {seeds}, {steps}, {eval_every}")
    if forget_bound is None and not 0 < forget_target < 1:
        raise ValueError(f"forget_target is a fraction of the target metric's start in (0, 1), got {forget_target}")
    if not 0 < tolerance < 1:
        raise ValueError(f"tolerance is a fraction of the target in (0, 1), got {tolerance}")
    if not target_metric.startswith("forget_"):
        raise ValueError(f"target_metric is a forget metric (forget_probability, forget_answered, forget_rouge), "
                         f"got {target_metric!r}")
    training = dict(training or {})
    recipe = {"output_dir": "unused", "report_to": "none", "save_strategy": "no", "disable_tqdm": True,
              "logging_steps": steps + 1, "lr_scheduler_type": "constant", "use_cpu": not torch.cuda.is_available(),
              **training, "max_steps": steps}
    if prompt_template is not None:
        recipe["prompt_template"] = prompt_template
    WagleConfig(**recipe)  # the recipe checked before any work
    template = recipe.get("prompt_template", DEFAULT_PROMPT_TEMPLATE)
    holdout = WagleConfig.retain_holdout if retain_holdout is None else retain_holdout
    sets, heldout_source = {}, None
    if heldout is None and holdout > 0:
        n = len(retain)
        retain, heldout = split_holdout(retain, holdout, 0)  # one split for every run: the same utility rows
        heldout_source = f"{len(heldout)} of the {n} retain rows, held out of training (retain_holdout={holdout:g})"
    for name, data in (("heldout", heldout), ("neighbour", neighbour), *(utility or {}).items()):
        if data is not None:
            sets[name] = data
    if not sets:
        raise ValueError("compare-masks needs a utility set never trained on: give heldout or neighbour data, or "
                         "keep retain_holdout > 0")
    forget_eval = _head(forget, eval_limit)
    utility_sets = {k: _head(v, eval_limit) for k, v in sets.items()}
    forgotten_sets = {k: _head(v, eval_limit) for k, v in (forgotten or {}).items()}
    full_sets = {"forget": forget_eval, **forgotten_sets, **utility_sets, "retain": _head(retain, eval_limit)}
    cheap_sets = {"forget": forget_eval, **forgotten_sets, **utility_sets}
    metric_set = target_metric.split("_", 1)[1]
    answer_target = metric_set != "probability"

    def cheap(m, only=None):
        chosen = {"forget": forget_eval} if only else cheap_sets
        point = measure(m, tokenizer, chosen, template, answers=answer_target)
        if not only:
            point["utility"] = sum(point[f"{k}_probability"] for k in utility_sets) / len(utility_sets)
        return point

    def full(m):
        point = measure(m, tokenizer, full_sets, template, answers=answers)
        point["utility"] = sum(point[f"{k}_probability"] for k in utility_sets) / len(utility_sets)
        if retain_model_truth_ratios is not None:
            tr = qa_metrics(m, tokenizer, forget_eval, template, generate=False)["truth_ratio"]
            point["forget_quality"] = forget_quality(tr, list(retain_model_truth_ratios)[:len(forget_eval)])
        return point

    def fresh_model():
        if isinstance(model, str):
            return AutoModelForCausalLM.from_pretrained(model)
        return copy.deepcopy(model)

    base_model = fresh_model()
    base = full(base_model)  # scored once: every run starts from this model
    del base_model
    target = forget_target * base[target_metric] if forget_bound is None else forget_bound
    if forget_bound is not None:
        if not base[target_metric] > forget_bound:
            raise ValueError(f"{target_metric} starts at {base[target_metric]:.4g}, already at or below "
                             f"{forget_bound:g}: a target that holds before training cannot be matched")
        forget_target = forget_bound / base[target_metric]
    runs = []
    planned = Progress(seeds * len(specs), progress)
    for seed in range(seeds):
        for spec in specs:
            args = WagleConfig(**{**recipe, "seed": seed, "retain_holdout": 0.0, **options[spec]})
            start = {"step": 0, **base}
            tracker = MatchedPointCallback(cheap, full, target_metric, target, start, eval_every, tolerance,
                                           grid=1 / len(forget_eval) if metric_set == "answered" else 0.0,
                                           hold=None if targets is None else partial(targets_hold, targets, base))
            with tempfile.TemporaryDirectory(prefix="hf_wagle_compare_") as tmp:
                args.output_dir = tmp
                trainer = WagleTrainer(model=fresh_model(), args=args, forget_dataset=forget, retain_dataset=retain,
                                       processing_class=tokenizer, peft_config=copy.deepcopy(peft_config),
                                       callbacks=[tracker])
                trainer.remove_callback(PrinterCallback)  # the curve and the table report the run
                trainer.train()
                final = on_run_end(trainer.model) if on_run_end is not None else None
                if survival and tracker.matched is not None:
                    tracker.matched.update(_survival(fresh_model(), trainer.model))
                if keep:
                    trainer.results = {"before": base, "after": tracker.matched or tracker.curve[-1],
                                       "sets": describe_sets(full_sets, heldout_source), "targets": None}
                    trainer.save_model(str(Path(keep) / run_folder(spec, seed)))
            masked = trainer._masked
            changeable = trainer.enforced_mask.num_selected if masked else None
            total = trainer.enforced_mask.num_total
            del trainer
            run = {"method": spec, "seed": seed, "curve": tracker.curve, "changeable": changeable, "total": total,
                   "matched": tracker.matched, "warnings": tracker.warnings, "final": final}
            runs.append(run)
            if progress:
                m = run["matched"]
                if m:
                    outcome = (f"matched at step {m['step']:.2f} ({target_metric} {m[target_metric]:.3g}), utility "
                               f"{m['utility']:.3g}")
                elif targets is None:
                    outcome = f"target {target:.3g} not reached in {steps} steps"
                else:
                    outcome = f"no evaluation in {steps} steps where every target holds"
                planned.step(f"{spec} seed {seed}: {target_metric} {base[target_metric]:.3g} -> "
                             f"{tracker.curve[-1][target_metric]:.3g}; {outcome}")
                for w in tracker.warnings:
                    progress(f"  warning: {w}")
    settings = {"methods": specs, "seeds": seeds, "steps": steps, "eval_every": eval_every,
                "matched_where": "crossing" if targets is None else "targets",
                "forget_target": forget_target, "forget_bound": forget_bound, "target_metric": target_metric,
                "target": target,
                "tolerance": tolerance, "utility_sets": list(utility_sets), "eval_limit": eval_limit,
                "rows_scored": {k: len(v) for k, v in full_sets.items()},
                "rows_available": {"forget": len(forget), **{k: len(v) for k, v in (forgotten or {}).items()},
                                   **{k: len(v) for k, v in sets.items()}, "retain": len(retain)},
                "lora": None if peft_config is None else {"r": peft_config.r, "alpha": peft_config.lora_alpha},
                "training": {k: v for k, v in recipe.items() if k not in ("output_dir", "disable_tqdm")}}
    return {"settings": settings, "units": UNITS, "sets": describe_sets(full_sets, heldout_source), "base": base,
            "runs": runs, "summary": summarize_runs(runs, specs)}


def calibrate_learning_rate(model, tokenizer, forget, retain, *, steps: int, learning_rate: float | None = None,
                            spec: str = DENSE, max_probes: int = 4, **kwargs) -> dict:
    """A learning rate with which `spec` reaches the compare-masks target in about `steps` steps.

    Probes `spec` (seed 0) for up to `2 * steps` steps and reads the (fractional) step `s` of its matched point;
    steps to a target scale about as `1 / learning_rate`, so the next probe uses `lr * s / steps` (4 x lr when the
    target was not reached), until `s` lies in `[steps / 2, 3 steps / 2]` or `max_probes` probes ran. `kwargs` go to
    `compare_masks`. Returns `{"learning_rate", "steps", "probes": [{"learning_rate", "matched_step"}], "ok"}`."""
    training = dict(kwargs.pop("training", None) or {})
    from ..config import WagleConfig

    lr = learning_rate or training.get("learning_rate") or WagleConfig.learning_rate
    probes = []
    for _ in range(max_probes):
        result = compare_masks(model, tokenizer, forget, retain, methods=spec, seeds=1, steps=2 * steps,
                               training={**training, "learning_rate": lr}, answers=False, progress=None, **kwargs)
        matched = result["runs"][0]["matched"]
        s = matched["step"] if matched else None
        probes.append({"learning_rate": lr, "matched_step": s})
        if s is not None and steps / 2 <= s <= 1.5 * steps:
            return {"learning_rate": lr, "steps": steps, "probes": probes, "ok": True}
        lr = lr * 4 if s is None else lr * max(s, 1e-3) / steps
    return {"learning_rate": lr, "steps": steps, "probes": probes, "ok": False}


def summarize_runs(runs: list[dict], specs: list[str]) -> dict:
    """Per spec: how many seeds reached the target and how many of those points lie within the tolerance, and an
    `estimate` (mean, 95% half-width, n) of every number at the matched point (step, utility, each set's metrics)."""
    summary = {}
    for spec in specs:
        mine = [r for r in runs if r["method"] == spec]
        matched = [r["matched"] for r in mine if r["matched"]]
        entry = {"seeds": len(mine), "reached": len(matched),
                 "resolved": sum(bool(m["within_tolerance"]) for m in matched),
                 "first_step_crossings": sum(bool(r["warnings"]) for r in mine)}
        keys = sorted({k for m in matched for k, v in m.items() if isinstance(v, (int, float))
                       and not isinstance(v, bool) and k not in ("t", "search_evaluations")})
        for key in keys:
            entry[f"matched_{key}"] = estimate([m[key] for m in matched if key in m])
        changeable = [r["changeable"] for r in mine if r["changeable"] is not None]
        entry["changeable_fraction"] = changeable[0] / mine[0]["total"] if changeable else 1.0
        summary[spec] = entry
    return summary


def _fmt(value: dict | None, digits=3) -> str:
    if value is None or value["mean"] is None:
        return "n/a"
    half = value["ci95_half_width"]
    return f"{value['mean']:.{digits}g}" + ("" if half is None else f" +- {half:.2g}")


def format_comparison(result: dict) -> str:
    """The summary as a plain-text table (every number at the matched point), what each set is, and the verdict."""
    s = result["settings"]
    t = s["training"]
    columns = [("step", "step"), ("utility", "utility")] + [(f"{k}_probability", k) for k in s["utility_sets"]] + [
        ("forget_answered", "forget answered"), ("retain_probability", "retain (trained on)"),
        ("nf4_survival", "NF4 survival"), ("int8_survival", "INT8 survival")]
    columns = [(k, label) for k, label in columns if any(f"matched_{k}" in e for e in result["summary"].values())]
    crossing = (f"{s['target_metric']} = {s['forget_target']:g} x its start ({s['target']:.4g}) within "
                f"{s['tolerance']:g} of it")
    matched = (f"the first evaluation, every {s['eval_every']} steps, where every target holds, once "
               f"{s['target_metric']} <= {s['target']:.4g}" if s.get("matched_where") == "targets" else crossing)
    lines = [f"objective {t.get('objective', 'npo')}, lr {t.get('learning_rate', 'default')}, up to {s['steps']} "
             f"steps, {s['seeds']} seeds; matched point: {matched}",
             *(f"  {name}: {what}" for name, what in result["sets"].items()),
             *(f"  {name}: scored the first {n} of {s['rows_available'][name]} rows (eval_limit)"
               for name, n in s["rows_scored"].items() if n < s["rows_available"][name]),
             f"{'method':<24} {'reached':>8} " + " ".join(f"{label:>22}" for _, label in columns)]
    for spec, e in result["summary"].items():
        lines.append(f"{spec:<24} {e['reached']:>3}/{e['seeds']:<4} "
                     + " ".join(f"{_fmt(e.get(f'matched_{k}')):>22}" for k, _ in columns))
    base = result["base"]
    lines.append(f"{'before unlearning':<24} {'':>8} " + " ".join(
        f"{(f'{base[k]:.3g}' if k in base else ''):>22}" for k, _ in columns))
    crossings = sum(e["first_step_crossings"] for e in result["summary"].values())
    if crossings:
        lines.append(f"warning: {crossings} run(s) crossed the target inside the first recorded interval; their "
                     "matched points are partial first steps (see each run's warnings); calibrate the learning rate "
                     "for a comparison over several steps")
    lines.append(verdict(result))
    return "\n".join(lines)


def verdict(result: dict) -> str:
    """Which spec keeps the most held-out utility at the matched point, and whether its 95% interval separates it
    from the others; no verdict when a spec missed the target or its matched point on some seed."""
    summary = result["summary"]
    unresolved = [k for k, e in summary.items() if e["resolved"] < e["seeds"]]
    if unresolved:
        missed = ("had no evaluation where every target holds on every seed (raise steps, change the recipe, or "
                  "loosen the targets)" if result.get("settings", {}).get("matched_where") == "targets" else
                  "did not reach a matched point within the tolerance on every seed (raise steps or the learning "
                  "rate, or loosen the target)")
        return f"no verdict: {', '.join(unresolved)} {missed}"
    scored = {k: (e["matched_utility"]["mean"], e["matched_utility"]["ci95_half_width"]) for k, e in summary.items()}
    best = max(scored, key=lambda k: scored[k][0])
    if len(scored) == 1:
        return f"only one spec: {best}"
    if any(h is None for _, h in scored.values()):
        return f"highest held-out utility at the target: {best}; one seed gives no interval, so no winner is called"
    lo = scored[best][0] - scored[best][1]
    overlapping = [k for k, (m, h) in scored.items() if k != best and m + h >= lo]
    if overlapping:
        return (f"highest held-out utility at the target: {best}; not separated from {', '.join(overlapping)} "
                "(95% intervals overlap): no winner can be called from these seeds")
    return f"highest held-out utility at the target: {best}, its 95% interval above the others'"


def plot_comparison(result: dict, path) -> str:
    """Trade-off curves (target metric vs held-out utility, mean over seeds at each recorded step), each seed's
    matched point marked, the mean utility there with its 95% interval as an error bar, and the target as a vertical
    line; matplotlib Agg."""
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    s = result["settings"]
    metric = s["target_metric"]
    fig, ax = plt.subplots(figsize=(6.5, 4.5), layout="constrained")
    specs = s["methods"]
    for i, spec in enumerate(specs):
        mine = [r["curve"] for r in result["runs"] if r["method"] == spec]
        n = min(len(c) for c in mine)
        forget = [sum(c[j][metric] for c in mine) / len(mine) for j in range(n)]
        util = [sum(c[j]["utility"] for c in mine) / len(mine) for j in range(n)]
        line, = ax.plot(forget, util, marker=".", label=spec)
        matched = [r["matched"] for r in result["runs"] if r["method"] == spec and r["matched"]]
        if matched:
            ax.scatter([m[metric] for m in matched], [m["utility"] for m in matched], color=line.get_color(),
                       marker="x", zorder=3)
        at_target = result["summary"].get(spec, {}).get("matched_utility")
        if matched and at_target and at_target["ci95_half_width"] is not None:
            nudge = (i - (len(specs) - 1) / 2) * 0.015 * forget[0]  # side by side, not on top of each other
            ax.errorbar(sum(m[metric] for m in matched) / len(matched) + nudge, at_target["mean"],
                        yerr=at_target["ci95_half_width"], color=line.get_color(), capsize=4, zorder=4)
    ax.axvline(s["target"], color="grey", linestyle=":", label="target")
    ax.invert_xaxis()
    ax.set_xlabel(f"{metric} (lower = forgets more; runs go right to left)")
    ax.set_ylabel(f"utility: probability on {', '.join(s['utility_sets'])} (never trained on)")
    ax.set_title(f"{s['seeds']} seeds; x = each seed's matched point, bar = 95% interval", fontsize="medium")
    ax.legend(fontsize="small")
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return str(path)
