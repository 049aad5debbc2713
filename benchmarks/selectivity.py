"""Is only what was asked forgotten? SmolLM2-135M-Instruct on the shipped scenarios, per recipe.

Each recipe is `hf-wagle unlearn` with the scenario's example config and the recipe's overrides, on every seed,
evaluated every 3 steps (`stop_at_targets: false`) with the targets of the scenario's kind. The kept evaluation is
the best one meeting them, else the closest (as every run keeps).

- `country_languages`, fact-level (examples/unlearn_country_languages.yaml): the language of 10 countries to forget;
  `neighbour`: 8 other countries' languages, `entity`: capitals and currencies of the 10, `heldout`: other knowledge.
  Targets `forget_answered <= 0.25`, `neighbour_answered >= 0.8x`, `entity_answered >= 0.8x`,
  `heldout_answered >= 0.9x`; 18 steps.
- `work_authors`, fact-level (examples/unlearn_work_authors.yaml): who wrote 8 works to forget; `neighbour`: who
  wrote 6 other works, `entity`: 3 other facts about the 8 authors, `heldout`: other knowledge. The same targets and
  steps.
- `element_symbols`, topic-level (examples/unlearn_smollm2.yaml): the symbols of 20 elements to forget; `topic`: 8
  more symbols never trained on, which must go too; `heldout`: other knowledge. Targets `forget_answered <= 0.25`,
  `topic_answered <= 0.25`, `heldout_answered >= 0.9x` (the kind's, not the example's looser 0.75x); 12 steps.

    python benchmarks/selectivity.py --out benchmarks/results/selectivity --seeds 3
    python benchmarks/selectivity.py --out benchmarks/results/selectivity --seeds 3 --add \
        --recipes "wagle, key tokens, mask retain: same relation"
    python benchmarks/selectivity.py --scenario element_symbols --out benchmarks/results/selectivity --seeds 3
    python benchmarks/selectivity.py --scenario work_authors --out benchmarks/results/selectivity --seeds 3
    python benchmarks/selectivity.py --out benchmarks/results/selectivity --mask-overlap

Writes `<file>.json` (each run's evaluations and kept point; `selectivity` for country_languages,
`selectivity_authors` for work_authors, `selectivity_topic` for element_symbols) and `<file>.png` (every evaluation
of every run: the forgetting measure against the keeping one, the kept points marked), and prints a Markdown table:
per recipe, the kept point's answered shares, mean and 95% interval over seeds, and on how many seeds every target
held.
"""

import argparse
import json
import re
import tempfile
from dataclasses import dataclass
from pathlib import Path

from hf_wagle.cli import main as hf_wagle
from hf_wagle.evaluation.targets import KINDS
from hf_wagle.experiments.compare import ci95
from hf_wagle.real_model import smollm2_path

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"
PLAIN = ["--retain_loss", "nll", "--retain_weight", "1"]
KL5 = ["--retain_loss", "kl", "--retain_weight", "5"]


@dataclass(frozen=True)
class Scenario:
    config: Path
    file: str  # results: <out>/<file>.json and .png
    sets: tuple[str, ...]
    axes: tuple[str, str]  # plotted: (a set to forget, a set to keep)
    steps: int  # forgetting is complete well before on every recipe tried
    recipes: dict  # name: overrides of the example config
    targets: tuple[str, ...] = ()  # overrides of the config's targets (none: the config's)


SCENARIOS = {
    "country_languages": Scenario(
        EXAMPLES / "unlearn_country_languages.yaml", "selectivity", ("forget", "neighbour", "entity", "heldout"),
        ("forget", "neighbour"), 18, {  # the example's own recipe is the KL one
            "grin, answer tokens": ["--forget_tokens", "answer", *PLAIN],
            "grin, key tokens": PLAIN,
            "grin, key tokens, KL retain x5": [],
            "wagle, key tokens": ["--mask_method", "wagle", *PLAIN],
            "dense, key tokens": ["--mask_method", "none", *PLAIN],
            # the attribution's retain term on the retain rows of the forgotten relation alone
            "wagle, key tokens, mask retain: same relation": ["--mask_method", "wagle", *PLAIN, "--mask_retain_file",
                                                              "{same_relation}"],
            # schedule: warm up over the first evaluation, then decay, instead of a constant rate
            "grin, key tokens, KL retain x5, warmup 3 + cosine": ["--lr_scheduler_type", "cosine",
                                                                  "--warmup_steps", "3"],
            # the retain term: stronger, or on the forgotten relation's retain rows alone
            "grin, key tokens, KL retain x20": ["--retain_weight", "20"],
            "grin, key tokens, KL retain x5 on the same relation": ["--retain_file", "{same_relation}"],
            # more local objectives: maximum entropy on the key tokens; a refusal as the answer
            "grin, key tokens, max entropy, KL retain x5": ["--objective", "me", "--learning_rate", "1e-3"],
            "grin, refusal (po), KL retain x5": ["--objective", "po", "--learning_rate", "1e-3"],
            # another forget row's fact as the answer: only the key changes
            "grin, alternative answers (alt), KL retain x5": ["--objective", "alt"],
            # representation misdirection at layer 7 on the positions that predict the key; c about 2.5x the median
            # activation norm there (120), the retain term its own activation matching
            "grin, RMU on the key": ["--objective", "rmu", "--no_use_peft", "--learning_rate", "3e-3",
                                     "--rmu_steering_coeff", "300", "--rmu_alpha", "100"],
            # the same on the country's tokens in the question (its representation where the question names it),
            # the retain term on every token of the retain rows (none of which names a forgotten country: their
            # other facts, the entity set, are kept by nothing the run trains on)
            "grin, RMU on the subject": ["--objective", "rmu", "--no_use_peft", "--learning_rate", "3e-3",
                                         "--rmu_steering_coeff", "300", "--rmu_alpha", "100", "--rmu_positions",
                                         "subject", "--forget_file", "{subjects}"],
        }),
    "work_authors": Scenario(
        EXAMPLES / "unlearn_work_authors.yaml", "selectivity_authors", ("forget", "neighbour", "entity", "heldout"),
        ("forget", "neighbour"), 18, {  # the example's own recipe is the first; the masks compared with it
            "grin, key tokens, KL retain x5": [],
            "wagle, key tokens, KL retain x5": ["--mask_method", "wagle"],
            "dense, key tokens, KL retain x5": ["--mask_method", "none"],
            # the two neighbours that go first ask about a poem and a play; the retain rows name novels' authors
            "grin, key tokens, KL retain x5, retain + plays and poems": ["--retain_file", "{plays_and_poems}"],
            # the levers measured on country_languages: a stronger retain term; a bounded, more local objective
            "grin, key tokens, KL retain x20": ["--retain_weight", "20"],
            "grin, key tokens, max entropy, KL retain x5": ["--objective", "me", "--learning_rate", "1e-3"],
        }),
    "element_symbols": Scenario(
        EXAMPLES / "unlearn_smollm2.yaml", "selectivity_topic", ("forget", "topic", "heldout"), ("topic", "heldout"),
        12, {  # the example's own recipe is the first
            "wagle, NPO": [],
            "dense, NPO": ["--mask_method", "none"],
            "wagle, NPO, KL retain x5": KL5,
            "wagle, max entropy, KL retain x5": ["--objective", "me", *KL5],
            # schedule: a third of the rate for twice the steps, against the collapse transient at 1e-3
            "wagle, NPO, lr 3e-4, 24 steps": ["--learning_rate", "3e-4", "--max_steps", "24"],
        }, tuple(t for t in KINDS["topic"]["targets"] if not t.startswith("neighbour"))),  # it has no neighbour set
}


def same_relation_file(work: Path) -> Path:
    """The scenario's retain rows about the relation the forget set asks about (a country's language), as JSON lines."""
    from hf_wagle.real_model import load_scenario

    retain = load_scenario("country_languages")["retain"]
    path = work / "retain_same_relation.jsonl"
    retain.filter(lambda row: row["question"].startswith("What language")).to_json(str(path))
    return path


def subjects_file(work: Path) -> Path:
    """country_languages' forget rows with a `subject` column: the country the question names ("... in France?")."""
    from hf_wagle.real_model import load_scenario

    forget = load_scenario("country_languages")["forget"]
    path = work / "forget_subjects.jsonl"
    forget.map(lambda row: {"subject": re.fullmatch(r"What language do people speak in (.+)\?", row["question"])[1]}
               ).to_json(str(path))
    return path


# Who wrote a play or a poem: the 4 that SmolLM2 names in its greedy answer (work_authors' template) of 34 tried,
# none by an author of the forget or neighbour set (benchmarks/row_answers.py's `rows` screened them).
PLAYS_AND_POEMS = [("the play Oedipus Rex", "Oedipus Rex", "Sophocles", "Sophocles"),
                   ("the play Antigone", "Antigone", "Sophocles", "Sophocles"),
                   ("the poem The Road Not Taken", "The Road Not Taken", "Robert Frost", "Frost"),
                   ("the poem The Aeneid", "The Aeneid", "Virgil", "Virgil")]


def plays_and_poems_file(work: Path) -> Path:
    """work_authors' retain rows and `PLAYS_AND_POEMS`, as JSON lines."""
    from datasets import Dataset, concatenate_datasets

    from hf_wagle.real_model import load_scenario

    retain = load_scenario("work_authors")["retain"]
    extra = Dataset.from_list([{"question": f"Who wrote {written}?", "answer": f"{title} was written by {author}.",
                                "answer_key": key} for written, title, author, key in PLAYS_AND_POEMS])
    path = work / "retain_plays_and_poems.jsonl"
    concatenate_datasets([retain.select_columns(extra.column_names), extra]).to_json(str(path))
    return path


def mask_retain_overlap(work: Path) -> dict:
    """How far attributing against the forgotten relation's retain rows alone (`mask_retain_file`) moves WAGLE's
    mask: `hf-wagle attribute` (wagle, ratio 0.5, key tokens) with the scenario's retain rows, then with the
    same-relation ones; Jaccard |A & B| / |A | B| over the decoder's linear weights, of the element masks and of
    the row x column masks LoRA holds of them (`project_rows_columns`)."""
    from hf_wagle.mask import WeightMask, project_rows_columns

    model, folders = str(smollm2_path()), {}
    for name, retain in (("retain", "scenario:country_languages/retain"), ("same_relation", same_relation_file(work))):
        folders[name] = work / f"mask_{name}"
        hf_wagle(["attribute", "--model", model, "--forget", "scenario:country_languages/forget", "--retain",
                  str(retain), "--method", "wagle", "--ratio", "0.5", "--forget_tokens", "key",
                  "--out", str(folders[name])])
    a, b = (WeightMask.load(folders[n]) for n in ("retain", "same_relation"))
    counts = {"element": [0, 0], "lora": [0, 0]}
    for name in (n for n in a.names() if n.startswith("model.layers.") and n.endswith("proj.weight")):
        pairs = {"element": (a[name], b[name])}
        (ra, ca), (rb, cb) = project_rows_columns(a[name]), project_rows_columns(b[name])
        pairs["lora"] = (ra[:, None] & ca[None, :], rb[:, None] & cb[None, :])
        for kind, (x, y) in pairs.items():
            counts[kind][0] += int((x & y).sum())
            counts[kind][1] += int((x | y).sum())
    return {f"{kind}_jaccard": both / either for kind, (both, either) in counts.items()}


def run(scenario: Scenario, work: Path, seeds: int, recipes: list[str], save, out: dict | None = None) -> dict:
    """Every recipe on seed 0, then on seed 1, ...; `save(results)` after each run (`out`: results to add to; a run
    already in it is not run again)."""
    model = str(smollm2_path())
    override = ["--targets", *scenario.targets] if scenario.targets else []
    files = {"same_relation": str(same_relation_file(work)), "plays_and_poems": str(plays_and_poems_file(work)),
             "subjects": str(subjects_file(work))}
    out = dict(out or {})
    for seed in range(seeds):
        for recipe in recipes:
            if f"{recipe} seed {seed}" in out:
                continue
            folder = work / f"{recipe.replace(' ', '_').replace(',', '')}_seed{seed}"
            status = hf_wagle(["unlearn", "--config", str(scenario.config), "--model_name_or_path", model,
                               "--output_dir", str(folder), "--seed", str(seed), "--stop_at_targets", "false",
                               "--max_steps", str(scenario.steps), "--target_eval_steps", "3", *override,
                               *(arg.format(**files) for arg in scenario.recipes[recipe])])
            results = json.loads((folder / "unlearn_results.json").read_text())
            targets = results["evaluation"]["targets"]
            kept = next(h for h in results["history"] if h["step"] == targets["step"])
            out[f"{recipe} seed {seed}"] = {"recipe": recipe, "seed": seed, "met": status == 0 and targets["met"],
                                            "kept": kept, "history": results["history"]}
            save(out)
    return out


def table(results: dict, recipes: list[str], sets: tuple[str, ...]) -> str:
    rows = ["| recipe | targets met | kept step | " + " | ".join(f"{s} answered" for s in sets) + " |",
            "|---|---|---|" + "---|" * len(sets)]
    for recipe in recipes:
        runs = [r for r in results.values() if r["recipe"] == recipe]
        cells = []
        for s in sets:
            mean, half = ci95([r["kept"][f"{s}_answered"] for r in runs])
            cells.append(f"{mean:.2f} +- {half:.2f}" if half == half else f"{mean:.2f}")
        steps = ", ".join(str(r["kept"]["step"]) for r in runs)
        rows.append(f"| {recipe} | {sum(r['met'] for r in runs)} of {len(runs)} | {steps} | " + " | ".join(cells)
                    + " |")
    start = next(iter(results.values()))["history"][0]
    rows.append("| before unlearning | | 0 | " + " | ".join(f"{start[f'{s}_answered']:.2f}" for s in sets) + " |")
    return "\n".join(rows)


def plot(results: dict, recipes: list[str], scenario: Scenario, name: str, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    x, y = (f"{s}_answered" for s in scenario.axes)
    fig, ax = plt.subplots(figsize=(6.5, 4.5))
    for i, recipe in enumerate(recipes):
        color = plt.cm.tab20((2 * i) % 20 + (i // 10) % 2)  # ten strong colours, then ten light ones
        for r in (r for r in results.values() if r["recipe"] == recipe):
            points = [(h[x], h[y]) for h in r["history"][1:]]
            ax.scatter(*zip(*points), s=12, alpha=0.35, color=color)
            ax.scatter(r["kept"][x], r["kept"][y], s=60, marker="*", color=color,
                       label=recipe if r["seed"] == 0 else None)
    ax.axvline(0.25, ls="--", color="grey")
    start = next(iter(results.values()))["history"][0][y]  # the targets are multiples of the start
    ax.axhline((0.8 if scenario.axes[1] == "neighbour" else 0.9) * start, ls="--", color="grey")
    ax.set_xlabel(f"{scenario.axes[0]} answered (lower is better)")
    ax.set_ylabel(f"{scenario.axes[1]} answered (higher is better)")
    ax.set_title(f"{name} on SmolLM2-135M: every evaluation; stars: kept")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--scenario", choices=SCENARIOS, default="country_languages")
    parser.add_argument("--out", required=True)
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--recipes", help="names of the scenario's recipes, separated by ';' (default: all)")
    parser.add_argument("--add", action="store_true", help="keep the runs already in the scenario's results file "
                        "and run only the missing ones")
    parser.add_argument("--mask-overlap", action="store_true", help="only measure how far mask_retain_file moves "
                        "WAGLE's mask on country_languages (writes <out>/mask_retain_overlap.json)")
    args = parser.parse_args()
    if args.mask_overlap:
        Path(args.out).mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryDirectory(prefix="hf_wagle_overlap_") as work:
            overlap = mask_retain_overlap(Path(work))
        (Path(args.out) / "mask_retain_overlap.json").write_text(json.dumps(overlap, indent=2))
        print(overlap)
        return
    scenario = SCENARIOS[args.scenario]
    recipes = [r.strip() for r in (args.recipes or ";".join(scenario.recipes)).split(";") if r.strip()]
    unknown = [r for r in recipes if r not in scenario.recipes]
    if unknown:
        parser.error(f"unknown recipes {unknown}; {args.scenario} has: {'; '.join(scenario.recipes)}")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    path = out / f"{scenario.file}.json"
    before = json.loads(path.read_text()) if args.add and path.exists() else {}
    with tempfile.TemporaryDirectory(prefix="hf_wagle_selectivity_") as work:  # the adapters are not kept
        results = run(scenario, Path(work), args.seeds, recipes, lambda r: path.write_text(json.dumps(r, indent=2)),
                      before)
    recipes = list(dict.fromkeys(r["recipe"] for r in results.values()))
    plot(results, recipes, scenario, args.scenario, out / f"{scenario.file}.png")
    print(table(results, recipes, scenario.sets))


if __name__ == "__main__":
    main()
