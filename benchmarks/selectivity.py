"""Is only what was asked forgotten? SmolLM2-135M-Instruct on the shipped fact-level scenario, per recipe.

Each recipe is `hf-wagle unlearn` with examples/unlearn_country_languages.yaml (the language of 10 countries to forget;
`neighbour`: 8 other countries' languages, `entity`: capitals and currencies of the 10, `heldout`: other knowledge)
and the recipe's overrides, on every seed, evaluated every 3 steps for 18 steps (`stop_at_targets: false`) with the
fact-level targets (`forget_answered <= 0.25`, `neighbour_answered >= 0.8x`, `entity_answered >= 0.8x`,
`heldout_answered >= 0.9x`). The kept evaluation is the best one meeting them, else the closest (as every run keeps).

    python benchmarks/selectivity.py --out benchmarks/results/selectivity --seeds 3
    python benchmarks/selectivity.py --out benchmarks/results/selectivity --seeds 3 --add \
        --recipes "wagle, key tokens, mask retain: same relation"

Writes `selectivity.json` (each run's evaluations and kept point) and `selectivity.png` (every evaluation of every
run: forget answered against neighbour answered, the kept points marked), and prints a Markdown table: per recipe,
the kept point's answered shares, mean and 95% interval over seeds, and on how many seeds every target held.
"""

import argparse
import json
import tempfile
from pathlib import Path

from hf_wagle.cli import main as hf_wagle
from hf_wagle.experiments.compare import ci95
from hf_wagle.real_model import smollm2_path

CONFIG = Path(__file__).resolve().parents[1] / "examples" / "unlearn_country_languages.yaml"
PLAIN = ["--retain_loss", "nll", "--retain_weight", "1"]
RECIPES = {  # name: overrides of the example config (whose own recipe is the KL one)
    "grin, answer tokens": ["--forget_tokens", "answer", *PLAIN],
    "grin, key tokens": PLAIN,
    "grin, key tokens, KL retain x5": [],
    "wagle, key tokens": ["--mask_method", "wagle", *PLAIN],
    "dense, key tokens": ["--mask_method", "none", *PLAIN],
    # the attribution's retain term on the retain rows of the forgotten relation alone (other countries' languages)
    "wagle, key tokens, mask retain: same relation": ["--mask_method", "wagle", *PLAIN, "--mask_retain_file",
                                                      "{same_relation}"],
}
SETS = ("forget", "neighbour", "entity", "heldout")
STEPS = 18  # forgetting is complete well before on every recipe tried


def same_relation_file(work: Path) -> Path:
    """The scenario's retain rows about the relation the forget set asks about (a country's language), as JSON lines."""
    from hf_wagle.real_model import load_scenario

    retain = load_scenario("country_languages")["retain"]
    path = work / "retain_same_relation.jsonl"
    retain.filter(lambda row: row["question"].startswith("What language")).to_json(str(path))
    return path


def run(work: Path, seeds: int, recipes: list[str], save, out: dict | None = None) -> dict:
    """Every recipe on seed 0, then on seed 1, ...; `save(results)` after each run (`out`: results to add to)."""
    model = str(smollm2_path())
    files = {"same_relation": str(same_relation_file(work))}
    out = dict(out or {})
    for seed in range(seeds):
        for recipe in recipes:
            folder = work / f"{recipe.replace(' ', '_').replace(',', '')}_seed{seed}"
            status = hf_wagle(["unlearn", "--config", str(CONFIG), "--model_name_or_path", model, "--output_dir",
                               str(folder), "--seed", str(seed), "--stop_at_targets", "false", "--max_steps",
                               str(STEPS), *(arg.format(**files) for arg in RECIPES[recipe])])
            results = json.loads((folder / "unlearn_results.json").read_text())
            targets = results["evaluation"]["targets"]
            kept = next(h for h in results["history"] if h["step"] == targets["step"])
            out[f"{recipe} seed {seed}"] = {"recipe": recipe, "seed": seed, "met": status == 0 and targets["met"],
                                            "kept": kept, "history": results["history"]}
            save(out)
    return out


def table(results: dict, recipes: list[str]) -> str:
    rows = ["| recipe | targets met | kept step | " + " | ".join(f"{s} answered" for s in SETS) + " |",
            "|---|---|---|" + "---|" * len(SETS)]
    for recipe in recipes:
        runs = [r for r in results.values() if r["recipe"] == recipe]
        cells = []
        for s in SETS:
            mean, half = ci95([r["kept"][f"{s}_answered"] for r in runs])
            cells.append(f"{mean:.2f} +- {half:.2f}" if half == half else f"{mean:.2f}")
        steps = ", ".join(str(r["kept"]["step"]) for r in runs)
        rows.append(f"| {recipe} | {sum(r['met'] for r in runs)} of {len(runs)} | {steps} | " + " | ".join(cells)
                    + " |")
    start = next(iter(results.values()))["history"][0]
    rows.append("| before unlearning | | 0 | " + " | ".join(f"{start[f'{s}_answered']:.2f}" for s in SETS) + " |")
    return "\n".join(rows)


def plot(results: dict, recipes: list[str], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.5, 4.5))
    for i, recipe in enumerate(recipes):
        color = f"C{i}"
        for r in (r for r in results.values() if r["recipe"] == recipe):
            points = [(h["forget_answered"], h["neighbour_answered"]) for h in r["history"][1:]]
            ax.scatter(*zip(*points), s=12, alpha=0.35, color=color)
            ax.scatter(r["kept"]["forget_answered"], r["kept"]["neighbour_answered"], s=60, marker="*", color=color,
                       label=recipe if r["seed"] == 0 else None)
    ax.axvline(0.25, ls="--", color="grey")
    ax.axhline(0.8, ls="--", color="grey")
    ax.set_xlabel("forget answered (lower is better)")
    ax.set_ylabel("neighbour answered (higher is better)")
    ax.set_title("country_languages on SmolLM2-135M: every evaluation; stars: kept")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", required=True)
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--recipes", default=";".join(RECIPES), help="names of RECIPES, separated by ';'")
    parser.add_argument("--add", action="store_true", help="keep the runs already in selectivity.json")
    args = parser.parse_args()
    recipes = [r.strip() for r in args.recipes.split(";") if r.strip()]
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    path = out / "selectivity.json"
    before = json.loads(path.read_text()) if args.add and path.exists() else {}
    with tempfile.TemporaryDirectory(prefix="hf_wagle_selectivity_") as work:  # the adapters are not kept
        results = run(Path(work), args.seeds, recipes, lambda r: path.write_text(json.dumps(r, indent=2)), before)
    recipes = list(dict.fromkeys(r["recipe"] for r in results.values()))
    plot(results, recipes, out / "selectivity.png")
    print(table(results, recipes))


if __name__ == "__main__":
    main()
