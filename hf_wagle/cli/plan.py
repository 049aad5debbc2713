"""`hf-wagle plan --config run.yaml --out DIR`: short trials over mask methods and ratios (and, when asked, learning
rates, objectives, retain terms and retain data) on the user's own data, then the config that meets the run's targets,
written as a YAML `hf-wagle unlearn --config` takes, and which of those levers decided."""

from __future__ import annotations

import re
from dataclasses import dataclass, field

from .common import Command, load_data
from .compare_masks import check_out, comparison_arguments, given_values, run_comparison, write_comparison
from .plugins import register_command


@dataclass
class PlanArguments:
    """The grid `hf-wagle plan` tries."""

    ratios: str = field(default="0.1,0.5", metadata={"help": "comma-separated mask ratios tried for every method"})
    learning_rates: str | None = field(default=None, metadata={
        "help": "comma-separated learning rates, each tried with every method and ratio (default: the config's)"})
    objectives: str | None = field(default=None, metadata={
        "help": "comma-separated objectives (npo, me, po, ...), each tried with every other setting (default: the "
                "config's)"})
    retain_terms: str | None = field(default=None, metadata={
        "help": "comma-separated retain terms as loss:weight ('nll:1,kl:5'), each tried with every other setting "
                "(default: the config's retain_loss and retain_weight)"})
    retain_files: str | None = field(default=None, metadata={
        "help": "comma-separated retain data files (as retain_file: a path, a Hub dataset id or scenario:NAME/SET), "
                "each tried with every other setting: which retain rows keep the neighbours (default: the config's "
                "retain_file), each read with the config's retain_config and retain_split. Needs a heldout set "
                "(or retain_holdout 0), so every setting is judged on the same held-out rows"})
    match: str = field(default="forget", metadata={
        "choices": ["forget", "targets"],
        "help": "where each trial is judged: 'forget', the point where the config's forget target is first met "
                "(every setting at the same forgetting; the targets must hold there and at the whole step after); "
                "'targets', the first evaluation (every --eval_every steps) at or after it where every target holds, "
                "as hf-wagle unlearn stops (a setting that forgets through a collapse of utility and recovers within "
                "--max_steps counts)"})

    def __post_init__(self):
        if self.match not in ("forget", "targets"):
            raise ValueError(f"match is 'forget' or 'targets', got {self.match!r}")


def plan_recipes(plan: PlanArguments) -> list[dict]:
    """Every combination of the levers `plan` was given besides masks (learning rate, objective, retain term, retain
    data), as `WagleConfig` and `retain_file` values: `[{}]` when none was given. Checked before any trial."""
    import itertools

    from ..objectives import get_objective

    def split(text):
        return [v.strip() for v in (text or "").split(",") if v.strip()]

    def retain_term(term):
        loss, sep, weight = term.partition(":")
        try:
            if not sep or loss not in ("nll", "kl"):
                raise ValueError
            return {"retain_loss": loss, "retain_weight": float(weight)}
        except ValueError:
            raise ValueError(f"--retain_terms: {term!r} is not loss:weight with loss nll or kl and a number "
                             "(e.g. 'kl:5')") from None

    levers = []
    for given, parse in ((plan.learning_rates, lambda v: {"learning_rate": float(v)}),
                         (plan.objectives, lambda v: {"objective": get_objective(v).name}),
                         (plan.retain_terms, retain_term),
                         (plan.retain_files, lambda v: {"retain_file": v})):
        values = [parse(v) for v in split(given)]
        if len({tuple(v.items()) for v in values}) != len(values):
            raise ValueError(f"a plan lever lists a value twice: {given!r}")
        if values:
            levers.append(values)
    recipes = [{k: v for part in combo for k, v in part.items()} for combo in itertools.product(*levers)]
    names = [recipe_name(r) for r in recipes]
    if len(set(names)) != len(names):
        raise ValueError(f"two plan settings would share the folder {max(names, key=names.count)!r}; give values "
                         "that differ in it (retain files with different names, learning rates that differ in 6 "
                         "significant digits)")
    return recipes


def check_retain_files(paths: list[str], script, retain_holdout: float) -> None:
    """Before any trial: every `--retain_files` entry loads (with the config's `retain_config` and `retain_split`) as
    data training accepts, and shares no question (or text) with the forget data or an evaluation set; and the
    settings are judged on one held-out set (a `heldout` evaluation set, or `retain_holdout` 0)."""
    from ..data import dataset_shape
    from .common import read_eval_sets

    others = {"forget": load_data(script.forget_file, "forget_file", script.forget_config, script.forget_split),
              **read_eval_sets(script)}
    if "heldout" not in others and retain_holdout > 0:
        raise ValueError("--retain_files: without a heldout set each retain file would hold out rows of its own as "
                         "held-out utility, and the settings could not be compared; set heldout_file in the config "
                         "(or retain_holdout: 0 with other evaluation sets)")

    def rows(data) -> set:
        column = next((c for c in ("question", "text") if c in data.column_names), None)
        return set(data[column]) if column else set()

    for path in dict.fromkeys(paths):
        data = load_data(path, "retain_files", script.retain_config, script.retain_split)
        dataset_shape(data, f"--retain_files {path}")
        for name, other in others.items():
            shared = rows(data) & rows(other)
            if shared:
                must = "forget" if name == "forget" else "be judged on"
                raise ValueError(f"--retain_files {path} shares {len(shared)} question(s) with the {name} data: a "
                                 f"setting would train on rows it must {must}; remove them from the file")


def recipe_name(recipe: dict) -> str:
    """A recipe's folder name: `lr_0.001`, `objective_me`, `retain_kl_5`, `retain_data_<file stem>`, joined by '-';
    '' for none."""
    parts = []
    if "learning_rate" in recipe:
        parts.append(f"lr_{recipe['learning_rate']:g}")
    if "objective" in recipe:
        parts.append(f"objective_{recipe['objective']}")
    if "retain_loss" in recipe:
        parts.append(f"retain_{recipe['retain_loss']}_{recipe['retain_weight']:g}")
    if "retain_file" in recipe:  # a file's name without its extension; a scenario's name and set
        given = recipe["retain_file"].rstrip("/")
        stem = given.removeprefix("scenario:") if given.startswith("scenario:") else given.rsplit("/", 1)[-1]
        parts.append("retain_data_" + re.sub(r"[^\w.]+", "_", re.sub(r"\.(jsonl?|csv|parquet)$", "", stem)))
    return "-".join(parts)


def deciding_levers(rows: list[dict]) -> dict:
    """For each lever tried at more than one value (the mask spec, learning rate, objective, retain term, retain
    data), how many of its settings met every target at each value; `decided`: the levers at some of whose values
    nothing met them while others did (changing that lever alone can make or break the plan)."""
    keys = {"mask": lambda r: r["spec"], "learning_rate": lambda r: r.get("learning_rate"),
            "objective": lambda r: r.get("objective"),
            "retain": lambda r: f"{r['retain_loss']}:{r['retain_weight']:g}" if r.get("retain_loss") else None,
            "retain_data": lambda r: r.get("retain_file")}
    out = {}
    for lever, key in keys.items():
        values = {}
        for r in rows:
            met, tried = values.get(str(key(r)), (0, 0))
            values[str(key(r))] = (met + r["feasible"], tried + 1)
        if len(values) > 1:
            out[lever] = {v: {"met": m, "tried": t} for v, (m, t) in values.items()}
    decided = [lever for lever, values in out.items()
               if any(v["met"] for v in values.values()) and not all(v["met"] for v in values.values())]
    return {"levers": out, "decided": decided}


def plan_specs(methods: str, ratios: str) -> list[str]:
    """`dense` once, every other method once per ratio (`wagle:ratio=0.1`, ...)."""
    from ..experiments.compare import DENSE, parse_specs

    values = [float(r) for r in ratios.split(",") if r.strip()]
    specs = []
    for spec in parse_specs(methods):
        if spec == DENSE:
            specs.append(spec)
        else:
            specs += [f"{spec}{',' if ':' in spec else ':'}ratio={r:g}" for r in values]
    return specs


def choose(result: dict, targets: list) -> tuple[str | None, list[dict]]:
    """Per spec, whether every target holds at its matched point on every seed (and at the whole step after it; the
    target the trials were matched on is taken as met at the matched point, which lies within the comparison's
    tolerance of it by construction, and must hold strictly at the step after; a target on a set the comparison did
    not score fails; matched on the targets (`--match targets`), at the evaluation where they all held, alone);
    the chosen spec: of those that do, the ones whose mean held-out utility lies within the best one's 95% interval,
    and of these the one that lets the fewest weights change. None when none is feasible, or when several are and
    one seed gives no interval to tell their utilities apart (the comparison names no winner then either)."""
    from ..evaluation.targets import check

    base, rows = result["base"], []
    settings = result.get("settings", {})
    at_targets = settings.get("matched_where") == "targets"  # where every target held: no step after to check
    matched_on = {(settings.get("target_metric"), settings.get("forget_target"), True),
                  (settings.get("target_metric"), settings.get("forget_bound"), False)}
    for spec, entry in result["summary"].items():
        mine = [r for r in result["runs"] if r["method"] == spec]
        problems = []
        for run in mine:
            m = run["matched"]
            if m is None or not m["within_tolerance"]:
                problems.append(f"seed {run['seed']}: " + ("no evaluation where every target holds" if at_targets
                                                           else "no matched point"))
                continue
            after = run["curve"][-1]
            for t in targets:
                points = [("matched point", m)] + ([] if at_targets else [(f"step {after['step']}", after)])
                for where, point in points:
                    if where == "matched point" and (t.metric, t.value, t.relative) in matched_on:
                        continue
                    if t.metric not in point or t.metric not in base:
                        if where == "matched point":  # the step after scores fewer sets; the matched point all
                            problems.append(f"seed {run['seed']}: {t} is not measured (no {t.set} set scored)")
                        continue
                    if not check([t], point, base)[0]["holds"]:
                        problems.append(f"seed {run['seed']}: {t} fails at the {where} ({point[t.metric]:.4g})")
        utility = entry.get("matched_utility") or {}
        rows.append({"spec": spec, "feasible": not problems, "problems": problems[:3],
                     "utility": utility.get("mean"), "utility_ci95": utility.get("ci95_half_width"),
                     "changeable_fraction": entry["changeable_fraction"],
                     "step": (entry.get("matched_step") or {}).get("mean")})
    chosen = pick(rows)
    return (chosen["spec"] if chosen else None), rows


def pick(rows: list[dict]) -> dict | None:
    """Of the feasible rows (`choose`), those whose mean held-out utility lies within the best one's 95% interval, and
    of these the one that lets the fewest weights change; None when none is feasible, or when several are and one
    gives no interval."""
    feasible = [r for r in rows if r["feasible"]]
    if not feasible:
        return None
    if len(feasible) > 1 and any(r["utility_ci95"] is None for r in feasible):
        return None
    best = max(feasible, key=lambda r: r["utility"])
    floor = best["utility"] - (best["utility_ci95"] or 0.0)
    level = [r for r in feasible if r["utility"] + (r["utility_ci95"] or 0.0) >= floor]
    return min(level, key=lambda r: (r["changeable_fraction"], -r["utility"]))


def with_durability(row: dict, recoveries: list[float | None], limit: float) -> dict:
    """`row` with `relearn_recovery` (the mean over seeds of the audit's relearning recovery of each seed's model at
    its matched point; None when a seed's is undefined) and, where a seed's recovery is undefined or above `limit`,
    no longer feasible: the `relearn_recovery <= limit` target must hold on every seed, as the others must."""
    problems = [f"seed {seed}: relearn_recovery "
                + ("undefined (nothing removed on the held-back rows)" if r is None else f"{r:.3g} > {limit:g}")
                for seed, r in enumerate(recoveries) if r is None or r > limit]
    mean = None if None in recoveries else sum(recoveries) / len(recoveries)
    return {**row, "relearn_recovery": mean, "feasible": row["feasible"] and not problems,
            "problems": [*row["problems"], *problems][:3]}


def relearn_recoveries(runs, spec: str, seeds: int, base: str, forget, training) -> list[float | None]:
    """The relearning recovery (`hf-wagle audit`'s default attack, on the run's own tokens and prompt) of each seed's
    model that the comparison kept at its matched point under `runs`."""
    from pathlib import Path

    from ..experiments.compare import run_folder
    from ..experiments.robustness import audit
    from .audit import _models

    out, loaded = [], None
    for seed in range(seeds):  # the base loaded once: each seed's adapter is merged into a copy of it
        original, unlearned, tokenizer = _models(Path(runs) / run_folder(spec, seed), base, loaded)
        loaded = original, tokenizer
        report = audit(original, unlearned, tokenizer, forget, schemes=(), relearn_only=True, answers=False,
                       prompt_template=training.prompt_template, seed=seed, tokens=training.forget_tokens,
                       batch_size=training.per_device_eval_batch_size)
        out.append(report["recovery"]["relearn"]["recovery"])
    return out


def plan_config(given: dict, spec: str, result: dict, step: float) -> dict:
    """The unlearn YAML: the user's keys, the chosen mask, the compared recipe, a budget of twice the steps the trials
    needed (the run stops once its targets hold) and the seed and split the trials used."""
    import math

    from ..experiments.compare import spec_options

    options = spec_options(spec)
    config = {k: v for k, v in given.items() if not k.startswith("mask_") and k not in ("mu", "plugins")}
    training = result["settings"]["training"]
    for key in ("learning_rate", "lr_scheduler_type", "objective"):
        if key in training:
            config[key] = getattr(training[key], "value", training[key])
    config.update({k: v for k, v in options.items() if v is not None})
    config["mask_method"] = options["mask_method"]
    config.update(max_steps=max(2, 2 * math.ceil(step)), target_eval_steps=1, stop_at_targets=True, seed=0)
    return config


@register_command("plan")
class Plan(Command):
    """Try every mask method of `--methods` at every ratio of `--ratios` (and dense), at each of `--learning_rates`,
    on your data with the recipe of your unlearn config, find which meet the config's `targets` (or its
    `forget_kind`'s) at their matched point (the config's forget target), and write `plan.yaml`: the config that
    meets them with the fewest weights changed among those keeping the most held-out utility. `--objectives`,
    `--retain_terms` and `--retain_files` add those levers. With a `relearn_recovery <= v` target, every setting that
    meets the others is attacked at its matched point as `hf-wagle audit` does (its model kept for that alone), and
    must hold it on every seed."""

    help = "try mask methods and ratios against an unlearn config's targets; write the config that meets them"

    def arguments(self) -> dict[str, type]:
        return {**comparison_arguments(), "plan": PlanArguments}

    def run(self, args) -> int:
        import json
        import shutil
        from pathlib import Path

        import yaml

        from ..evaluation.targets import parse_targets, recovery_limit, run_targets
        from ..experiments.compare import format_comparison

        if args.plan.learning_rates and args.compare.calibrate_steps:
            raise ValueError("--learning_rates and --calibrate_steps both set the learning rate; give one")
        recipes = plan_recipes(args.plan)
        from ..config import WagleConfig

        for recipe in recipes:  # every recipe checked before the first trial
            WagleConfig(**{**given_values(args.training), **{k: v for k, v in recipe.items() if k != "retain_file"}})
        if args.plan.retain_files:
            check_retain_files([r["retain_file"] for r in recipes], args.script, args.training.retain_holdout)
        from .common import read_eval_sets

        names = ["forget", *read_eval_sets(args.script)]
        names += ["heldout"] if "heldout" not in names and args.training.retain_holdout > 0 else []
        targets = parse_targets(run_targets(args.training.targets, args.training.forget_kind, names))
        limit = recovery_limit(args.training.targets)
        forget, drop_kept = None, limit is not None and not args.compare.keep
        if limit is not None:  # each setting that meets the other targets is attacked at its matched point
            args.compare.keep = True
            forget = load_data(args.script.forget_file, "forget_file", args.script.forget_config,
                               args.script.forget_split)
            if len(forget) < 2:
                raise ValueError("relearn_recovery: the relearning attack holds half of the forget rows back, so it "
                                 "needs at least 2")
        forget_targets = [t for t in targets if t.set == "forget" and not t.floor]
        if not forget_targets:
            raise ValueError("plan needs the config's targets (or forget_kind's) to include a forget target such as "
                             "'forget_answered <= 0.25' or 'forget_probability <= 0.2x' (the point the trials are "
                             "matched at)")
        check_out(args.compare.out)
        first = sorted(forget_targets, key=lambda t: t.measure == "probability")[0]  # answers before probability
        args.compare.target_metric = first.metric
        if first.relative:
            args.compare.forget_target = first.value
        else:
            args.compare.forget_bound = first.value
        specs = plan_specs(args.compare.methods, args.plan.ratios)
        out, rows, results, pngs = Path(args.compare.out), [], [], []
        for i, recipe in enumerate(recipes):
            for key, value in recipe.items():
                setattr(args.script if key == "retain_file" else args.training, key, value)
            if len(recipes) > 1 or recipe:
                args.compare.out = str(out / recipe_name(recipe))
                print(f"-- {recipe_name(recipe)} ({i + 1} of {len(recipes)}; the runs below count this recipe's)")
            results.append(run_comparison(args, methods=specs,
                                          targets=targets if args.plan.match == "targets" else None))
            pngs.append(write_comparison(results[-1], args.compare.out))
            print(format_comparison(results[-1]))
            ran = results[-1]["settings"]["training"]  # the learning rate calibrated, where --calibrate_steps ran
            lever = {"learning_rate": ran.get("learning_rate", args.training.learning_rate),
                     "objective": args.training.objective,
                     "retain_loss": args.training.retain_loss, "retain_weight": args.training.retain_weight,
                     "retain_file": args.script.retain_file}
            tried = [{**row, **lever, "recipe": i} for row in choose(results[-1], targets)[1]]
            if limit is not None:
                runs = Path(args.compare.out) / "runs"
                tried = [with_durability(row, relearn_recoveries(
                    runs, row["spec"], args.compare.seeds, args.script.model_name_or_path, forget, args.training),
                    limit) if row["feasible"] else row for row in tried]
                if drop_kept:  # the models were kept for the attack alone
                    shutil.rmtree(runs)
            rows += tried
        args.compare.out = str(out)
        best = pick(rows)
        chosen = best["spec"] if best else None
        levers = deciding_levers(rows)
        (out / "plan.json").write_text(json.dumps({"targets": [str(t) for t in targets], "chosen": chosen,
                                                   "learning_rate": best["learning_rate"] if best else None,
                                                   "recipe": recipes[best["recipe"]] if best else None,
                                                   "candidates": rows, **levers}, indent=2))
        for r in rows:
            recovered = (f"relearn_recovery {r['relearn_recovery']:.3g}; " if r.get("relearn_recovery") is not None
                         else "")
            print(f"  {r['spec']:<28} lr {r['learning_rate']:<8g} {r['objective']:<8} "
                  f"{r['retain_loss']}:{r['retain_weight']:<4g} "
                  f"{r['retain_file'] + ' ' if args.plan.retain_files else ''}{recovered}"
                  f"{'meets the targets' if r['feasible'] else 'fails: ' + '; '.join(r['problems'])}"
                  f"; {100 * r['changeable_fraction']:.1f}% of weights may change")
        for lever, values in levers["levers"].items():
            print(f"  {lever}: " + ", ".join(f"{v} met every target in {c['met']} of {c['tried']} settings"
                                            for v, c in values.items())
                  + (" (this lever decided)" if lever in levers["decided"] else ""))
        if chosen is None and sum(r["feasible"] for r in rows) > 1:
            print("several settings meet every target, but one seed gives no interval to tell their held-out utility "
                  "apart: no setting is chosen; run again with --seeds 2 or more")
            return 3
        if chosen is None:
            print("no tried setting meets every target at its matched point: loosen the targets, try other ratios, "
                  "methods, --learning_rates, --objectives, --retain_terms or --retain_files, or change the recipe "
                  "(forget_tokens, retain data)")
            return 3
        result, png = results[best["recipe"]], pngs[best["recipe"]]
        given = {**given_values(args.script), **given_values(args.training)}
        config = {"output_dir": args.training.output_dir, **plan_config(given, chosen, result, best["step"]),
                  **{k: best[k] for k in ("learning_rate", "objective", "retain_loss", "retain_weight",
                                          "retain_file")}}
        header = (f"# written by hf-wagle plan: {chosen} met every target ({'; '.join(map(str, targets))}) at its "
                  f"matched point\n# on every seed, keeping the most held-out utility with the fewest weights "
                  f"changed; see compare_masks.json\n")
        (out / "plan.yaml").write_text(header + yaml.safe_dump(config, sort_keys=False))
        print(f"chosen: {chosen} at lr {best['learning_rate']:g}, {best['objective']}, retain "
              f"{best['retain_loss']}:{best['retain_weight']:g}"
              f"{' on ' + best['retain_file'] if args.plan.retain_files else ''}; wrote {out / 'plan.yaml'} "
              f"(run it: hf-wagle unlearn --config {out / 'plan.yaml'}), {out / 'plan.json'} and {png}")
        return 0
