"""`hf-wagle compare-masks --config run.yaml`: the keys of `hf-wagle unlearn` (model, data, every `WagleConfig`
option: one set of defaults) plus `CompareArguments`."""

from __future__ import annotations

from dataclasses import dataclass, field

from ..masking.config import SPEC_KEYS
from .common import Command, check_model, load_data, read_eval_sets
from .plugins import register_command

DEFAULT_SPECS = "dense,random,magnitude,wagle"


@dataclass
class CompareArguments:
    """What compare-masks adds to the keys of `hf-wagle unlearn`: the mask specs, the seeds and the matched point."""

    out: str = field(metadata={"help": "folder for compare_masks.json and compare_masks.png"})
    methods: str = field(default=DEFAULT_SPECS, metadata={
        "help": "comma-separated mask specs: dense (no mask) or a mask method, with options after a colon, e.g. "
                f"wagle:mu=1e-4,scope=per_layer,ratio=0.2 (keys: {', '.join(SPEC_KEYS)}, or the method's own "
                "options)"})
    seeds: int = field(default=3, metadata={"help": "runs per spec (seeds 0..N-1: data order, pairing, random masks, "
                                                    "LoRA init)"})
    forget_target: float = field(default=0.5, metadata={
        "help": "matched point: target_metric at this fraction of its value before unlearning"})
    forget_bound: float | None = field(default=None, metadata={
        "help": "matched point at this absolute value of target_metric instead (e.g. 0.25 of forget_answered)"})
    target_metric: str = field(default="forget_probability", metadata={
        "help": "forget_probability, forget_answered or forget_rouge"})
    tolerance: float = field(default=0.1, metadata={
        "help": "a matched point is within this fraction of the target (else the verdict refuses)"})
    eval_every: int = field(default=1, metadata={"help": "record the curve every N steps (1: matched points are "
                                                         "exact partial steps)"})
    eval_limit: int | None = field(default=None, metadata={
        "help": "score only the first N rows of each evaluation set (default: all; the output says how many)"})
    utility: list[str] | None = field(default=None, metadata={
        "action": "extend", "metavar": "NAME=FILE", "help": "another QA set never trained on that counts as utility"})
    keep: bool = field(default=False, metadata={"help": "save each run's model at its matched point, with its "
                                                        "record, under OUT/runs/"})
    survival: bool = field(default=False, metadata={
        "help": "also report, at each matched point, the share of changed weights whose NF4 / INT8 value still "
                "differs from the base's (a predictor of forgetting that survives quantisation; needs bitsandbytes)"})
    calibrate_steps: int | None = field(default=None, metadata={
        "help": "first pick the learning rate with which the first spec reaches the target in about N steps (short "
                "probes), then compare with it over up to 2N steps"})


def read_sets(script, compare) -> tuple[dict, dict]:
    """`(kept, forgotten)`: the never-trained sets a run names (`read_eval_sets`) split into those to keep, with
    `--utility NAME=FILE`, and those to forget with the forget data (`topic`)."""
    from ..evaluation.targets import kept_sets

    named = read_eval_sets(script)
    sets = {name: named[name] for name in kept_sets(named)}
    forgotten = {name: data for name, data in named.items() if name not in sets}
    for item in compare.utility or []:
        name, sep, path = item.partition("=")
        if not sep or not name:
            raise ValueError(f"--utility {item}: expected NAME=FILE")
        sets[name] = load_data(path, f"utility {name}")
    return sets, forgotten


_DERIVED = ("output_dir", "max_steps", "seed", "report_to", "accelerator_config", "debug", "disable_tqdm",
            "activation_checkpointing", "gradient_checkpointing", "logging_dir")


def given_values(instance, skip=_DERIVED) -> dict:
    """The fields of a parsed dataclass that differ from their defaults, as plain values (what a YAML would hold);
    values the dataclass derives itself and empty containers are left out."""
    import dataclasses
    import enum

    out = {}
    for f in dataclasses.fields(instance):
        value = getattr(instance, f.name)
        value = value.value if isinstance(value, enum.Enum) else value
        default = f.default if f.default is not dataclasses.MISSING else (
            f.default_factory() if f.default_factory is not dataclasses.MISSING else None)
        if (not f.init or f.name in skip or value == default or value in ({}, [])
                or not isinstance(value, (str, int, float, bool, list, dict))):
            continue
        out[f.name] = value
    return out


def run_comparison(args, methods=None, progress=print, targets=None) -> dict:
    """compare-masks (with its calibration) from parsed arguments; shared with `hf-wagle plan` (`targets`: match
    each run where they all hold, `compare_masks`)."""
    from transformers import AutoTokenizer

    from ..experiments.compare import calibrate_learning_rate, compare_masks, parse_specs, spec_options
    from .unlearn import lora_config

    script, training, compare = args.script, args.training, args.compare
    check_model(script.model_name_or_path, "model_name_or_path")
    specs = parse_specs(methods or compare.methods)
    for spec in specs:
        spec_options(spec)
    forget = load_data(script.forget_file, "forget_file", script.forget_config, script.forget_split)
    retain = load_data(script.retain_file, "retain_file", script.retain_config, script.retain_split)
    sets, forgotten = read_sets(script, compare)
    tokenizer = AutoTokenizer.from_pretrained(script.model_name_or_path)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    recipe = given_values(training)
    # compare-masks' own business, and what each spec sets for itself (its method and that method's options)
    for key in ("targets", "target_eval_steps", "stop_at_targets", "retain_holdout", "mask_method", "mask_options",
                "forget_kind", "utility_floor"):
        recipe.pop(key, None)
    steps = training.max_steps if training.max_steps > 0 else 20
    common = dict(forget_target=compare.forget_target, forget_bound=compare.forget_bound,
                  target_metric=compare.target_metric,
                  tolerance=compare.tolerance, heldout=sets.pop("heldout", None), neighbour=sets.pop("neighbour", None),
                  utility=sets or None, forgotten=forgotten or None, retain_holdout=training.retain_holdout,
                  eval_every=compare.eval_every,
                  eval_limit=compare.eval_limit, peft_config=lora_config(script))
    calibration = None
    if compare.calibrate_steps:
        calibration = calibrate_learning_rate(script.model_name_or_path, tokenizer, forget, retain,
                                              steps=compare.calibrate_steps, spec=specs[0], training=recipe,
                                              learning_rate=training.learning_rate, **common)
        recipe["learning_rate"], steps = calibration["learning_rate"], 2 * compare.calibrate_steps
        if progress:
            progress(f"calibrated learning rate {calibration['learning_rate']:.3g} ("
                     + ", ".join(f"lr {p['learning_rate']:.3g}: matched at "
                                 + (f"step {p['matched_step']:.2f}" if p["matched_step"] is not None else "no step")
                                 for p in calibration["probes"])
                     + ("" if calibration["ok"] else "; not within [N/2, 3N/2] after the last probe") + ")")
    from pathlib import Path

    result = compare_masks(script.model_name_or_path, tokenizer, forget, retain, methods=specs, seeds=compare.seeds,
                           steps=steps, training=recipe, keep=str(Path(compare.out) / "runs") if compare.keep else None,
                           survival=compare.survival, targets=targets, progress=progress, **common)
    result["calibration"] = calibration
    result["model"] = Path(script.model_name_or_path.rstrip("/")).name
    return result


def write_comparison(result: dict, out) -> str:
    import json
    import shlex
    import sys
    from pathlib import Path

    from ..experiments.compare import plot_comparison

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    result["command"] = shlex.join(["hf-wagle", *sys.argv[1:]]) if Path(sys.argv[0]).name == "hf-wagle" else None
    (out / "compare_masks.json").write_text(json.dumps(result, indent=2))
    return plot_comparison(result, out / "compare_masks.png")


def comparison_arguments() -> dict[str, type]:
    from ..config import WagleConfig
    from .unlearn import UnlearnArguments

    return {"script": UnlearnArguments, "training": WagleConfig, "compare": CompareArguments}


def check_out(out) -> None:
    from pathlib import Path

    if Path(out).exists() and not Path(out).is_dir():
        raise ValueError(f"--out {out} is a file; give a folder")


@register_command("compare-masks")
class CompareMasks(Command):
    """Unlearn a model through several masks and seeds with the recipe of `hf-wagle unlearn` (the same YAML), and
    compare the held-out utility each keeps at a real matched point, with 95% intervals
    (`hf_wagle.experiments.compare`)."""

    help = ("unlearn through several masks and seeds with an unlearn config; compare held-out utility at real "
            "matched points, with 95%% intervals")

    def arguments(self) -> dict[str, type]:
        return comparison_arguments()

    def run(self, args) -> int:
        from ..experiments.compare import format_comparison

        check_out(args.compare.out)
        result = run_comparison(args)
        png = write_comparison(result, args.compare.out)
        print(format_comparison(result))
        print(f"wrote {args.compare.out}/compare_masks.json and {png}")
        return 0
