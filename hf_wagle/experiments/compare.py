"""Does the mask pay off? Unlearn the same model and data through several masks and compare utility at matched
forgetting.

For every mask spec and seed, a fresh copy of the model is unlearned for `steps` optimizer steps (`WagleTrainer`,
the same objective and learning rate for every spec). Every `eval_every` steps (and at step 0) the run records

- `forget`: mean answer probability on the forget evaluation rows, `exp(-mean token NLL)` of answer and EOS;
- `utility`: the mean, over the utility sets, of each set's mean answer probability (by default one set: the
  retain rows), and each set's own value;
- `forget_quality` when the retain-only model's forget truth ratios are given: TOFU's KS-test p-value.

**Matched forgetting.** The target is `forget_target x forget(step 0)`. A run reaches it at the first recorded point
whose `forget` is at or below the target; its step and utility there are interpolated linearly between that point
and the one before (in `forget`), so the comparison does not depend on the evaluation grid. A run that never
reaches the target counts as not reached and is left out of the averages (the table says how many reached it).

**Intervals.** Over seeds, `mean +- t_{0.975, n-1} * s / sqrt(n)` (Student t, `scipy.stats.t`); none for one seed.
"""

from __future__ import annotations

import copy
import math
import tempfile

from transformers import PrinterCallback, TrainerCallback

from ..evaluation.answers import answer_metrics, summarise
from ..masking.config import SPEC_KEYS, MaskConfig
from ..options import DEFAULT_PROMPT_TEMPLATE

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
    "forget": "mean answer probability exp(-mean token NLL) on the forget set, teacher forced",
    "utility": "mean over the utility sets of the same answer probability (the retain set is trained on)",
    "forget_quality": "TOFU forget quality: KS-test p-value against the retain model's truth ratios",
    "step": "optimizer steps",
    "summary": "each averaged number is {mean, ci95_half_width (Student t over seeds), n}; null where undefined",
}


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


def matched_point(curve: list[dict], forget_target: float) -> dict | None:
    """The point where `forget` first falls to `forget_target x curve[0]["forget"]`, every other number interpolated
    linearly in `forget` between the crossing point and the one before; None when it never does."""
    target = forget_target * curve[0]["forget"]
    for before, point in zip(curve, curve[1:]):
        if point["forget"] <= target:
            span = before["forget"] - point["forget"]
            w = 1.0 if span <= 0 else (before["forget"] - target) / span
            return {k: before[k] + w * (point[k] - before[k]) for k in point
                    if isinstance(point[k], (int, float)) and before.get(k) is not None and point[k] is not None}
    return None


class CurveCallback(TrainerCallback):
    """Records `evaluate(model)` at step 0 and every `eval_every` steps (and the last step) into `curve`."""

    def __init__(self, evaluate, eval_every: int):
        self.evaluate, self.eval_every, self.curve = evaluate, eval_every, []

    def _record(self, step, model):
        self.curve.append({"step": step, **self.evaluate(model)})

    def on_train_begin(self, args, state, control, model=None, **kwargs):
        self._record(0, model)

    def on_step_end(self, args, state, control, model=None, **kwargs):
        if state.global_step % self.eval_every == 0 or state.global_step == state.max_steps:
            self._record(state.global_step, model)


def _head(dataset, n):
    return dataset if n is None or len(dataset) <= n else dataset.select(range(n))


def compare_masks(model, tokenizer, forget, retain, *, methods=(DENSE, "random", "wagle"), ratio: float = 0.5,
                  objective: str = "npo", seeds: int = 2, steps: int = 20, learning_rate: float = 1e-5,
                  batch_size: int = 8, eval_every: int = 2, forget_target: float = 0.5, utility: dict | None = None,
                  eval_limit: int | None = 32, lora_r: int | None = None,
                  prompt_template: str = DEFAULT_PROMPT_TEMPLATE, retain_model_truth_ratios=None,
                  training: dict | None = None, on_run_end=None, progress=print) -> dict:
    """Unlearn `model` through each mask spec of `methods` (see `parse_specs`/`spec_options`; `"dense"` is no mask)
    for `seeds` seeds, record the trade-off curves and summarise utility at matched forgetting (module docstring).

    `model` is a model (copied for each run) or a folder / Hub id (loaded for each run). `utility` maps names to QA
    data sets scored for utility (default `{"retain": retain}`); `eval_limit` rows of each evaluation set are used.
    `lora_r` trains a masked LoRA of that rank instead of full parameters. `training` adds `WagleConfig` keys.
    `on_run_end(model) -> dict` scores each final model further; its numbers go to the run's `final`.
    Returns `{"settings", "runs", "summary"}` (numbers only, no data text)."""
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
    if not 0 < forget_target < 1:
        raise ValueError(f"forget_target is a fraction of the starting forget probability in (0, 1), got "
                         f"{forget_target}")
    utility = {"retain": retain} if utility is None else dict(utility)
    if not utility or {"forget", "utility", "forget_quality", "step"} & set(utility):
        raise ValueError(f"utility sets need names other than forget, utility, forget_quality and step; got "
                         f"{sorted(utility)}")
    evaluation = {"forget": _head(forget, eval_limit), **{k: _head(v, eval_limit) for k, v in utility.items()}}
    if retain_model_truth_ratios is not None and eval_limit is not None:
        retain_model_truth_ratios = list(retain_model_truth_ratios)[:len(evaluation["forget"])]

    def evaluate(m) -> dict:
        point = {}
        for name, data in evaluation.items():
            if name == "forget" and retain_model_truth_ratios is not None:
                metrics = qa_metrics(m, tokenizer, data, prompt_template, generate=False)
                point["forget_quality"] = forget_quality(metrics["truth_ratio"], retain_model_truth_ratios)
            else:
                metrics = answer_metrics(m, tokenizer, data, prompt_template)
            point[name] = summarise(metrics)["probability"]
        point["utility"] = sum(point[name] for name in utility) / len(utility)
        return point

    def fresh_model():
        if isinstance(model, str):
            return AutoModelForCausalLM.from_pretrained(model)
        return copy.deepcopy(model)

    runs = []
    for seed in range(seeds):
        for spec in specs:
            peft_config = None
            if lora_r:
                from peft import LoraConfig

                peft_config = LoraConfig(r=lora_r, lora_alpha=2 * lora_r, target_modules="all-linear",
                                         task_type="CAUSAL_LM")
            with tempfile.TemporaryDirectory(prefix="hf_wagle_compare_") as tmp:
                args = WagleConfig(**{
                    "output_dir": tmp, "objective": objective, "mask_ratio": ratio, "learning_rate": learning_rate,
                    "max_steps": steps, "per_device_train_batch_size": batch_size, "seed": seed,
                    "lr_scheduler_type": "constant", "weight_decay": 0.0, "report_to": "none",
                    "save_strategy": "no", "disable_tqdm": True, "logging_steps": steps + 1,
                    "prompt_template": prompt_template, "use_cpu": not torch.cuda.is_available(),
                    **(training or {}), **options[spec]})
                curve = CurveCallback(evaluate, eval_every)
                trainer = WagleTrainer(model=fresh_model(), args=args, forget_dataset=forget, retain_dataset=retain,
                                       processing_class=tokenizer, peft_config=peft_config, callbacks=[curve])
                trainer.remove_callback(PrinterCallback)  # the curve and the table report the run
                trainer.train()
                final = on_run_end(trainer.model) if on_run_end is not None else None
            changeable = trainer.enforced_mask.num_selected if trainer.enforced_mask is not None else None
            total = trainer.enforced_mask.num_total if trainer.enforced_mask is not None else None
            del trainer
            run = {"method": spec, "seed": seed, "curve": curve.curve, "changeable": changeable, "total": total,
                   "matched": matched_point(curve.curve, forget_target), "final": final}
            runs.append(run)
            if progress:
                m = run["matched"]
                progress(f"{spec} seed {seed}: forget {curve.curve[0]['forget']:.3g} -> {curve.curve[-1]['forget']:.3g}"
                         f", utility {curve.curve[0]['utility']:.3g} -> {curve.curve[-1]['utility']:.3g}; "
                         + (f"target reached at step {m['step']:.1f}, utility {m['utility']:.3g}" if m else
                            "target not reached"))
    settings = {"methods": specs, "ratio": ratio, "objective": objective, "seeds": seeds, "steps": steps,
                "learning_rate": learning_rate, "batch_size": batch_size, "eval_every": eval_every,
                "forget_target": forget_target, "utility_sets": list(utility), "eval_limit": eval_limit,
                "lora_r": lora_r, "training": training or {}}
    return {"settings": settings, "units": UNITS, "runs": runs, "summary": summarize_runs(runs, specs)}


def summarize_runs(runs: list[dict], specs: list[str]) -> dict:
    """Per spec: how many seeds reached the target, and an `estimate` (mean, 95% half-width, n) of the step, utility
    (and forget quality) at the matched point and of the final forget probability and utility."""
    summary = {}
    for spec in specs:
        mine = [r for r in runs if r["method"] == spec]
        matched = [r["matched"] for r in mine if r["matched"]]
        entry = {"seeds": len(mine), "reached": len(matched)}
        for key in ("step", "utility", "forget_quality"):
            values = [m[key] for m in matched if key in m]
            if values:
                entry[f"matched_{key}"] = estimate(values)
        for key in ("forget", "utility"):
            entry[f"final_{key}"] = estimate([r["curve"][-1][key] for r in mine])
        entry["start_utility"] = estimate([r["curve"][0]["utility"] for r in mine])
        summary[spec] = entry
    return summary


def _fmt(value: dict | None, digits=3) -> str:
    if value is None or value["mean"] is None:
        return "n/a"
    half = value["ci95_half_width"]
    return f"{value['mean']:.{digits}g}" + ("" if half is None else f" +- {half:.2g}")


def format_comparison(result: dict) -> str:
    """The summary as a plain-text table, and a one-line reading of it."""
    s = result["settings"]
    lines = [f"objective {s['objective']}, mask ratio {s['ratio']:g}, {s['steps']} steps, lr {s['learning_rate']:g}, "
             f"{s['seeds']} seeds; target: forget probability <= {s['forget_target']:g} x its start",
             f"{'method':<28} {'reached':>7} {'step at target':>16} {'utility at target':>20} "
             f"{'final forget':>20} {'final utility':>18}"]
    for spec, e in result["summary"].items():
        lines.append(f"{spec:<28} {e['reached']:>3}/{e['seeds']:<3} {_fmt(e.get('matched_step')):>16} "
                     f"{_fmt(e.get('matched_utility')):>20} {_fmt(e['final_forget']):>20} "
                     f"{_fmt(e['final_utility']):>18}")
    lines.append(verdict(result))
    return "\n".join(lines)


def verdict(result: dict) -> str:
    """Which spec keeps the most utility at the target, and whether its 95% interval separates it from the others
    (specs that missed the target on some seed are named and left out)."""
    summary = result["summary"]
    scored = {k: (e["matched_utility"]["mean"], e["matched_utility"]["ci95_half_width"])
              for k, e in summary.items() if "matched_utility" in e and e["reached"] == e["seeds"]}
    missed = [k for k in summary if k not in scored]
    left_out = f" (left out, for missing the target on some seed: {', '.join(missed)})" if missed else ""
    if not scored:
        return "no method reached the target on every seed: raise steps or the learning rate, or the target"
    best = max(scored, key=lambda k: scored[k][0])
    if len(scored) == 1:
        return f"only {best} reached the target on every seed{left_out}"
    if any(h is None for _, h in scored.values()):
        return (f"highest utility at the target: {best}; one seed gives no interval, so no winner can be called"
                f"{left_out}")
    lo = scored[best][0] - scored[best][1]
    overlapping = [k for k, (m, h) in scored.items() if k != best and m + h >= lo]
    if overlapping:
        return (f"highest utility at the target: {best}; not separated from {', '.join(overlapping)} "
                f"(95% intervals overlap): more seeds or data are needed to call a winner{left_out}")
    return f"highest utility at the target: {best}, its 95% interval above the others'{left_out}"


def plot_comparison(result: dict, path) -> str:
    """Trade-off curves (forget probability vs utility, mean over seeds at each recorded step), each seed's matched
    point marked, the mean utility at the target with its 95% interval as an error bar, and the target as a
    vertical line; matplotlib Agg."""
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.5, 4.5), layout="constrained")
    starts, specs = [], result["settings"]["methods"]
    for i, spec in enumerate(specs):
        mine = [r["curve"] for r in result["runs"] if r["method"] == spec]
        n = min(len(c) for c in mine)
        forget = [sum(c[i]["forget"] for c in mine) / len(mine) for i in range(n)]
        util = [sum(c[i]["utility"] for c in mine) / len(mine) for i in range(n)]
        starts.append(forget[0])
        line, = ax.plot(forget, util, marker=".", label=spec)
        matched = [r["matched"] for r in result["runs"] if r["method"] == spec and r["matched"]]
        if matched:
            ax.scatter([m["forget"] for m in matched], [m["utility"] for m in matched], color=line.get_color(),
                       marker="x", zorder=3)
        at_target = result["summary"].get(spec, {}).get("matched_utility")
        if at_target and at_target["ci95_half_width"] is not None:  # mean utility at the target, 95% interval
            nudge = (i - (len(specs) - 1) / 2) * 0.015 * forget[0]  # side by side, not on top of each other
            ax.errorbar(sum(m["forget"] for m in matched) / len(matched) + nudge, at_target["mean"],
                        yerr=at_target["ci95_half_width"], color=line.get_color(), capsize=4, zorder=4)
    ax.axvline(result["settings"]["forget_target"] * sum(starts) / len(starts), color="grey", linestyle=":",
               label="target")
    ax.invert_xaxis()
    ax.set_xlabel("forget answer probability (lower = forgets more; runs go right to left)")
    ax.set_ylabel("utility: answer probability on kept data (higher = better)")
    s = result["settings"]
    ax.set_title(f"{s['objective']}, ratio {s['ratio']:g}, {s['seeds']} seeds; x = each seed at the target, "
                 "bar = 95% interval", fontsize="medium")
    ax.legend(fontsize="small")
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return str(path)
