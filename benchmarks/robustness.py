"""Does the mask make forgetting last? SmolLM2-135M-Instruct and the element-symbols scenario.

Each spec runs `hf-wagle unlearn` with examples/unlearn_smollm2.yaml (masked LoRA r=16, NPO, lr 1e-3, up to 12
steps, stopping once forget_answered <= 0.25 and heldout_answered >= 0.75x hold, so forgetting is matched by the
targets), then `hf-wagle audit`: recovery of the forget answer probability after NF4 and INT8 quantisation of the
merged model, after serving the adapter over an NF4 base, after relearning (10 steps at lr 1e-4 on 10 forget facts,
scored on the other 10) and after the same steps on retain facts, and in the chat format.

    python benchmarks/robustness.py --out benchmarks/results/robustness --seeds 2

Writes `robustness.json` (every run's results and audit) and prints a Markdown table: mean and, over seeds, range.
"""

import argparse
import json
import tempfile
from pathlib import Path

from hf_wagle.cli import main as hf_wagle
from hf_wagle.real_model import smollm2_path

from _common import cell

SPECS = {"dense": ["--mask_method", "none"], "grin 0.5": ["--mask_method", "grin", "--mask_ratio", "0.5"],
         "grin 0.1": ["--mask_method", "grin", "--mask_ratio", "0.1"],
         "wagle 0.5": ["--mask_method", "wagle", "--mask_ratio", "0.5"]}
COLUMNS = ("nf4", "int8", "nf4_adapter", "relearn", "relearn_retain", "prompt")


def run(work: Path, seeds: int, specs: list[str]) -> dict:
    model = str(smollm2_path())
    config = Path(__file__).resolve().parents[1] / "examples" / "unlearn_smollm2.yaml"
    results = {}
    for spec in specs:
        for seed in range(seeds):
            folder = work / f"{spec.replace(' ', '_')}_seed{seed}"
            status = hf_wagle(["unlearn", "--config", str(config), "--model_name_or_path", model, "--output_dir",
                               str(folder), "--seed", str(seed), *SPECS[spec]])
            unlearned = json.loads((folder / "unlearn_results.json").read_text())
            hf_wagle(["audit", str(folder), "--base", model, "--forget", "scenario:element_symbols/forget",
                      "--retain", "scenario:element_symbols/retain", "--relearn-steps", "10", "--relearn-lr", "1e-4",
                      "--out", str(folder / "audit.json")])
            audit = json.loads((folder / "audit.json").read_text())
            results[f"{spec} seed {seed}"] = {"spec": spec, "seed": seed, "targets_met": status == 0,
                                              "steps": unlearned["steps"],
                                              "after": unlearned["evaluation"]["after"], "audit": audit}
    return results


def table(results: dict) -> str:
    rows = ["| spec | steps | forget answered after | " + " | ".join(f"recovery: {c}" for c in COLUMNS) + " |",
            "|---|---|---|" + "---|" * len(COLUMNS)]
    for spec in dict.fromkeys(r["spec"] for r in results.values()):
        mine = [r for r in results.values() if r["spec"] == spec]

        recoveries = [cell([(r["audit"]["recovery"].get(c) or {}).get("recovery") for r in mine]) for c in COLUMNS]
        rows.append(f"| {spec} | {cell([r['steps'] for r in mine])} | "
                    f"{cell([r['after']['forget_answered'] for r in mine])} | " + " | ".join(recoveries) + " |")
    return "\n".join(rows)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="benchmarks/results/robustness")
    parser.add_argument("--seeds", type=int, default=2)
    parser.add_argument("--specs", default=",".join(SPECS), help=f"comma-separated, of {', '.join(SPECS)}")
    parser.add_argument("--work", help="folder for the runs' adapters (default: a temporary folder)")
    args = parser.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    work = Path(args.work or tempfile.mkdtemp(prefix="robustness-"))
    results = run(work, args.seeds, [s.strip() for s in args.specs.split(",")])
    (out / "robustness.json").write_text(json.dumps(results, indent=2))
    print(table(results))
