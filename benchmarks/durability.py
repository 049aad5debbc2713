"""Does the forgetting survive relearning, with and without each option that should make it last? SmolLM2-135M-Instruct
and the fact-level country_languages scenario.

Each recipe runs `hf-wagle unlearn --config examples/unlearn_country_languages.yaml` (masked LoRA, NPO with key tokens
and the KL retain term) for 12 steps, scored at steps 0, 6 and 12 (the fact-level targets keep the best of those),
plus its own options, then `hf-wagle audit` with the default relearning attack (3 epochs over the attacker's half of
the forget rows, at least 10 AdamW steps, lr 1e-4; scored on the other half) and the same attack on the neighbour
facts (other countries' languages: related data that is not the forget set; given as the audit's `--retain`, so
reported as `relearn_retain`), no quantisation; then the same attack stopped after 1, 2, 3 and 5 steps
(`relearning_curve`), since the whole attack gives every fact back on every recipe. Per run: the targets, the
evaluation kept, the recovery fractions with their row-bootstrap intervals, the L2 distance from the base, the
relearning curve and the seconds the unlearning took (in the JSON only: on a shared machine they are not a cost;
`benchmarks/step_cost.py --perturbation` measures that). With `--protocols wmdp,muse`, also the audit's published
attack protocols (`hf-wagle audit --protocol`), each on the same held-back half.

With `--matched` the recipes are compared at the same forgetting: each run stops at the first evaluation (every 2
steps, at most 24) where it answers at most 2 of the 10 forget questions, as the example's NPO does at step 6, and the
neighbour and held-out facts are reported, not held to a floor. The relearning curve then has every step of the
attack, summarised as the share of the removed facts given back, averaged over the attack's 10 steps
(`given_back`), and each recipe is set against NPO on the same seeds (`versus`): the goal is at most half of NPO's
given back with held-out answered at least 0.95 of NPO's.

    python benchmarks/durability.py --out benchmarks/results/durability --seeds 0
    python benchmarks/durability.py --out benchmarks/results/durability --seeds 1,2 --recipes "npo,npo + sam 0.1" --add
    python benchmarks/durability.py --out benchmarks/results/durability --matched --recipes "npo,npo dense" --add

Writes `durability.json` (`durability_matched.json`) and prints Markdown tables: mean over seeds and, in brackets,
the range.
"""

import argparse
import json
import tempfile
import time
from pathlib import Path

from hf_wagle.cli import main as hf_wagle
from hf_wagle.real_model import smollm2_path

from _common import cell

SCENARIO = "scenario:country_languages"
# 12 steps, scored at 0, 6 and 12: the example's recipe forgets within them on every seed, and fewer evaluations
# keep a run to a few minutes on 2 CPU cores
STEPS = ["--max_steps", "12", "--target_eval_steps", "6"]
EXAMPLE = Path(__file__).resolve().parents[1] / "examples" / "unlearn_country_languages.yaml"
# `--matched`: every recipe stops at the first evaluation (every 2 steps, at most 24) where it answers at most 2 of the
# 10 forget questions, as the example's NPO does at step 6 on every seed: recipes compared at the same forgetting, the
# neighbour and held-out facts left free (no utility floor) and reported
MATCHED, MATCHED_MAX_STEPS = "forget_answered <= 0.2", 24
# On this adapter at the start, the forget NLL at theta + eps falls by 2% for sam_rho 0.01 (the published value, for
# full-parameter 7B runs), 18% for 0.1 and 43% for 1.0: the radius that matters is the model's and the adapter's own
RECIPES = {"npo": [],
           "grad_diff": ["--objective", "grad_diff", "--retain_loss", "nll", "--retain_weight", "1"],
           "grad_diff lr 1e-3": ["--objective", "grad_diff", "--retain_loss", "nll", "--retain_weight", "1",
                                 "--learning_rate", "1e-3"],
           "npo dense": ["--mask_method", "dense"],
           "npo + sam 0.1": ["--forget_perturbation", "sam", "--sam_rho", "0.1"],
           "npo + sam 1": ["--forget_perturbation", "sam", "--sam_rho", "1.0"],
           "npo + smooth 0.001": ["--forget_perturbation", "smooth", "--smooth_sigma", "0.001"],
           "npo + disruption": ["--disruption_masking", "true"],
           "npo + disruption lr 1e-3": ["--disruption_masking", "true", "--learning_rate", "1e-3"],
           "npo nll retain": ["--retain_loss", "nll", "--retain_weight", "1"],
           "npo nll retain + disruption": ["--retain_loss", "nll", "--retain_weight", "1", "--disruption_masking",
                                            "true"],
           "npo + gnp 0.02": ["--forget_perturbation", "gnp", "--sam_rho", "0.1", "--gnp_gamma", "0.02"],
           "npo + averaging from 6": ["--weight_averaging_start", "6"],
           "npo + averaging from 2": ["--weight_averaging_start", "2"],
           "npo + layered 2": ["--forget_folds", "2"],
           "npo + layered 2: attack the last fold": ["--forget_folds", "2"],
           "npo + layered 2: attack the first fold": ["--forget_folds", "2"]}
# Layered unlearning's folds are the forget rows in their order: rows 0-4 and 5-9, so the audit's halves (it scores
# the even rows and relearns on the odd ones) hold rows of both folds, as for an attacker who does not know them. The
# other two recipes put the folds on the audit's halves: the scored rows first (unlearned in stage 1, the attacker
# relearns the fold of stage 2), or the attacked rows first.
FOLD_ORDER = {"npo + layered 2: attack the last fold": (0, 1), "npo + layered 2: attack the first fold": (1, 0)}


def forget_file(recipe: str, work: Path) -> list[str]:
    """`--forget_file` of the forget rows reordered as `FOLD_ORDER` says (even rows first for `(0, 1)`), else none."""
    if recipe not in FOLD_ORDER:
        return []
    from hf_wagle.real_model import load_scenario

    forget = load_scenario("country_languages")["forget"]
    rows = [i for parity in FOLD_ORDER[recipe] for i in range(parity, len(forget), 2)]
    path = work / f"forget_{'_'.join(map(str, FOLD_ORDER[recipe]))}.jsonl"
    forget.select(rows).to_json(str(path))
    return ["--forget_file", str(path)]


def matched_config(work: Path) -> Path:
    """The example's config stopping at `MATCHED` forgetting (see `MATCHED`), written into `work`."""
    import yaml

    config = yaml.safe_load(EXAMPLE.read_text())
    config.update(max_steps=MATCHED_MAX_STEPS, target_eval_steps=2, targets=[MATCHED], utility_floor=None)
    path = work / "matched.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


def run(work: Path, seeds: list[int], recipes: list[str], path: Path, protocols: tuple[str, ...] = (),
        matched: bool = False) -> dict:
    """Each recipe and seed not yet measured in `work` (a folder's `benchmark_run.json`, `audit.json`,
    `audit_<protocol>.json` and `relearning_curve.json` are read back, so an interrupted benchmark goes on where it
    stopped); `path` is rewritten after every run. `matched`: each run stops at `MATCHED` forgetting instead of
    running `STEPS`."""
    model = str(smollm2_path())
    config, steps = (matched_config(work), []) if matched else (EXAMPLE, STEPS)
    results = json.loads(path.read_text()) if path.exists() else {}
    for recipe in recipes:
        for seed in seeds:
            folder = work / f"{recipe.replace(' ', '_')}{'_matched' if matched else ''}_seed{seed}"
            done = folder / "benchmark_run.json"
            if not done.exists():
                start = time.perf_counter()
                status = hf_wagle(["unlearn", "--config", str(config), "--model_name_or_path", model, "--output_dir",
                                   str(folder), "--seed", str(seed), *steps, *RECIPES[recipe],
                                   *forget_file(recipe, work)])
                seconds = time.perf_counter() - start
                done.write_text(json.dumps({"targets_met": status == 0, "unlearn_seconds": seconds}))
            if not (folder / "audit.json").exists():
                hf_wagle(["audit", str(folder), "--base", model, "--forget", f"{SCENARIO}/forget", "--retain",
                          f"{SCENARIO}/neighbour", "--schemes", "", "--out", str(folder / "audit.json")])
            for protocol in protocols:
                if not (folder / f"audit_{protocol}.json").exists():
                    hf_wagle(["audit", str(folder), "--base", model, "--forget", f"{SCENARIO}/forget", "--schemes",
                              "", "--protocol", protocol, "--out", str(folder / f"audit_{protocol}.json")])
            unlearned = json.loads((folder / "unlearn_results.json").read_text())
            results[f"{recipe} seed {seed}"] = {"recipe": recipe, "seed": seed, **json.loads(done.read_text()),
                                                "steps": unlearned["steps"],
                                                "kept_step": unlearned["evaluation"]["targets"]["step"],
                                                "after": unlearned["evaluation"]["after"],
                                                "audit": json.loads((folder / "audit.json").read_text()),
                                                "protocols": {p.stem.removeprefix("audit_"): json.loads(p.read_text())
                                                              for p in sorted(folder.glob("audit_*.json"))},
                                                "relearning_curve": relearning_curve(folder, model)}
            path.write_text(json.dumps(results, indent=2))
    return results


CURVE_STEPS = (1, 2, 3, 5)  # the table's columns; the curve holds every step of the attack
ATTACK_STEPS = 10  # the audit's default attack on these 5 rows: 3 epochs, at least 10 steps


def relearning_curve(folder: Path, model: str, steps: int = ATTACK_STEPS) -> dict:
    """How fast the audit's relearning attack gives the facts back: the held-back half's `answered` and mean answer
    probability after each of the attack's steps (the same rows, order, rate and seed as `hf-wagle audit`, scored as
    the attack goes; 0: before the attack). The whole attack restores every fact on every recipe measured, so it
    cannot tell recipes apart; its first steps can. Folders measured before the curve held every step keep steps 1,
    2, 3 and 5, and not the original's score ("original")."""
    from hf_wagle.cli.audit import _models
    from hf_wagle.evaluation.measure import measure
    from hf_wagle.experiments.robustness import relearned_model, relearning_halves
    from hf_wagle.options import DEFAULT_PROMPT_TEMPLATE
    from hf_wagle.real_model import load_scenario

    path = folder / "relearning_curve.json"
    if not path.exists():
        original, unlearned, tokenizer = _models(folder, model)
        forget = load_scenario("country_languages")["forget"]
        held, attack = relearning_halves(forget)
        curve = {}

        def score(k, relearned):
            scores = measure(relearned, tokenizer, {"held": held}, DEFAULT_PROMPT_TEMPLATE, answers=True)
            curve[str(k)] = {"answered": scores["held_answered"], "probability": scores["held_probability"]}

        score("original", original)
        score(0, unlearned.eval())
        relearned_model(unlearned, tokenizer, attack, steps, 1e-4, 8, on_step=score)
        path.write_text(json.dumps(curve, indent=2))
    return json.loads(path.read_text())


def given_back(run: dict) -> float | None:
    """The share of what unlearning removed that the relearning attack gives back, averaged over its steps:
    `mean over k = 1..10 of clip((a_k - a_0) / (a_orig - a_0), 0, 1)`, `a_k` the held-back half's answered share
    after k steps, `a_orig` the original model's on the same rows. 0: no held-back fact answered again at any step;
    1: all of them from the first step. None where the curve lacks a step or nothing was removed."""
    curve = run.get("relearning_curve") or {}
    original = curve.get("original", {}).get("answered")
    if original is None or any(str(k) not in curve for k in range(ATTACK_STEPS + 1)):
        return None
    a0 = curve["0"]["answered"]
    if not original > a0:
        return None
    return sum(min(max((curve[str(k)]["answered"] - a0) / (original - a0), 0.0), 1.0)
               for k in range(1, ATTACK_STEPS + 1)) / ATTACK_STEPS


def table(results: dict) -> str:
    columns = {"targets met": lambda r: float(r["targets_met"]), "steps": lambda r: r["steps"],
               "kept step": lambda r: r.get("kept_step"),
               "forget answered": lambda r: r["after"].get("forget_answered"),
               "neighbour answered": lambda r: r["after"].get("neighbour_answered"),
               "heldout answered": heldout_answered,
               "recovery: relearn forget": relearn_recovery,
               "recovery: relearn neighbours": lambda r: r["audit"]["recovery"]["relearn_retain"]["recovery"],
               "held-back answered": lambda r: r["audit"]["answered"]["unlearned_held_back"],
               "answered after relearn forget": lambda r: r["audit"]["answered"]["relearn"],
               "answered after relearn neighbours": lambda r: r["audit"]["answered"]["relearn_retain"],
               "L2 from base": lambda r: (r["audit"].get("distance") or {}).get("l2"),
               **{f"held-back answered after {k} relearning steps":
                  (lambda r, k=k: (r.get("relearning_curve") or {}).get(str(k), {}).get("answered"))
                  for k in CURVE_STEPS},
               "given back over the attack": given_back}
    for protocol in sorted({p for r in results.values() for p in r.get("protocols", {})}):
        columns[f"answered after relearn forget, {protocol}"] = (
            lambda r, p=protocol: r.get("protocols", {}).get(p, {}).get("answered", {}).get("relearn"))
        columns[f"recovery: relearn forget, {protocol}"] = (
            lambda r, p=protocol: (r.get("protocols", {}).get(p, {}).get("recovery", {}).get("relearn") or {})
            .get("recovery"))
    rows = ["| recipe | " + " | ".join(columns) + " |", "|---|" + "---|" * len(columns)]
    for recipe in dict.fromkeys(r["recipe"] for r in results.values()):
        mine = [r for r in results.values() if r["recipe"] == recipe]
        rows.append(f"| {recipe} | " + " | ".join(cell([f(r) for r in mine]) for f in columns.values()) + " |")
    return "\n".join(rows)


def relearn_recovery(run: dict) -> float | None:
    """The audit's recovery of the held-back half's answer probability after its whole relearning attack."""
    return run["audit"]["recovery"]["relearn"]["recovery"]


def heldout_answered(run: dict) -> float | None:
    return run["after"].get("heldout_answered")


def versus(results: dict, baseline: str = "npo", matched: bool = False) -> str:
    """Each recipe against `baseline` on the same seeds, as ratios of the means (in brackets the range of the
    per-seed ratios): `given_back`, the audit's probability recovery and held-out answered; and the goal, at most
    half the baseline's relearning (on both measures) with held-out answered at least 0.95 of its. `matched`: only
    the seeds on which both runs reached the matched forgetting; a recipe that reached it on none is left out."""
    measures = {"given back": given_back, "probability recovery": relearn_recovery,
                "held-out answered": heldout_answered}

    def by_seed(recipe, f):
        return {r["seed"]: f(r) for r in results.values() if r["recipe"] == recipe and f(r) is not None
                and (r["targets_met"] or not matched)}

    rows = ["| recipe | seeds | " + " | ".join(f"{m} / {baseline}'s" for m in measures) + " | goal met |",
            "|---|---|" + "---|" * len(measures) + "---|"]
    for recipe in dict.fromkeys(r["recipe"] for r in results.values()):
        pairs = {m: (by_seed(recipe, f), by_seed(baseline, f)) for m, f in measures.items()}
        seeds = sorted(set.intersection(*(set(a) & {s for s, v in b.items() if v} for a, b in pairs.values())))
        if recipe == baseline or not seeds:
            continue
        ratios, cells = {}, []
        for m, (mine, base) in pairs.items():
            ratios[m] = sum(mine[s] for s in seeds) / sum(base[s] for s in seeds)
            per_seed = [mine[s] / base[s] for s in seeds]
            cells.append(f"{ratios[m]:.3g}" + (f" ({min(per_seed):.3g} to {max(per_seed):.3g})"
                                              if len(seeds) > 1 else ""))
        met = ratios["given back"] <= 0.5 and ratios["probability recovery"] <= 0.5 \
            and ratios["held-out answered"] >= 0.95
        rows.append(f"| {recipe} | {len(seeds)} | " + " | ".join(cells) + f" | {'yes' if met else 'no'} |")
    return "\n".join(rows)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="benchmarks/results/durability")
    parser.add_argument("--seeds", default="0,1,2", help="comma-separated seeds")
    parser.add_argument("--recipes", default=",".join(RECIPES), help=f"comma-separated, of {', '.join(RECIPES)}")
    parser.add_argument("--protocols", default="", help="comma-separated published attack protocols to audit each "
                        "run with as well (wmdp, muse)")
    parser.add_argument("--add", action="store_true", help="keep the runs already in durability.json")
    parser.add_argument("--work", help="folder for the runs' adapters (default: a temporary folder); runs already "
                        "in it are read back, not run again")
    parser.add_argument("--matched", action="store_true", help=f"stop each run at the same forgetting ({MATCHED}, "
                        f"scored every 2 steps, at most {MATCHED_MAX_STEPS}) in place of 12 steps; results in "
                        "durability_matched.json")
    parser.add_argument("--table", action="store_true", help="only print the table of the runs in --out")
    args = parser.parse_args()
    out = Path(args.out)
    path = out / ("durability_matched.json" if args.matched else "durability.json")
    if not args.table:
        out.mkdir(parents=True, exist_ok=True)
        work = Path(args.work or tempfile.mkdtemp(prefix="durability-"))
        work.mkdir(parents=True, exist_ok=True)
        if path.exists() and not args.add:
            path.unlink()
        run(work, [int(s) for s in args.seeds.split(",")], [s.strip() for s in args.recipes.split(",")], path,
            tuple(p.strip() for p in args.protocols.split(",") if p.strip()), args.matched)
    results = json.loads(path.read_text())
    print(table(results), versus(results, matched=args.matched), sep="\n\n")
