"""WAGLE + NPO (or GradDiff, or RMU) on the WMDP corpora with Zephyr-7b-beta, scored by WMDP and MMLU accuracy.

    python examples/unlearn_wmdp.py                      # the real run (GPU; downloads Zephyr, the corpora, WMDP)
    python examples/unlearn_wmdp.py --objective rmu      # RMU instead (no mask; only the configured MLPs train)
    python examples/unlearn_wmdp.py --dry-run            # the same code path on SmolLM2-135M, real facts, CPU

The `cyber` corpora are public; the `bio` forget corpus is gated on the Hub (request access, then set
`corpus_subset: bio`).

The dry run forgets chemical element symbols (the shipped real-knowledge scenario, as text corpora) and scores its
multiple-choice questions in the cloze style (`mcq_style: cloze`): a 135M model answers WMDP's letter format at
chance.
"""

from __future__ import annotations

from datasets import Dataset

from hf_wagle.evaluation import mcq_accuracy

from _common import head, load_config, load_model, parse, scenario, unlearn, write_results


def scenario_as_wmdp():
    """The real-knowledge scenario in WMDP's shapes: text corpora (question + answer) to forget and keep, its
    forget multiple-choice questions as the hazard test and its retain ones as the utility test."""
    data = scenario()

    def corpus(split):
        return Dataset.from_dict({"text": [f"{q} {a}" for q, a in zip(data[split]["question"], data[split]["answer"])]})

    return {"forget": corpus("forget"), "retain": corpus("retain"), "eval": {"wmdp_elements": data["forget_mcq"]},
            "utility": data["retain_mcq"]}


def wmdp_data(config: dict, dry_run: bool) -> dict:
    if dry_run:
        return scenario_as_wmdp()
    from hf_wagle.evaluation import load_wmdp, load_wmdp_corpora
    from hf_wagle.evaluation.loaders import load_split

    corpora = load_wmdp_corpora(config["corpora"], config["corpus_subset"])
    n = config.get("max_corpus_rows")
    if n:
        corpora = {k: v.select(range(min(n, len(v)))) for k, v in corpora.items()}
    return {"forget": corpora["forget"], "retain": corpora["retain"],
            "eval": {f"wmdp_{k}": v for k, v in load_wmdp(config["data"], config["eval_subsets"]).items()},
            "utility": load_split(config["utility_data"], "all", "test")}


def scores(model, tokenizer, data, batch_size, style) -> dict:
    out = {name: mcq_accuracy(model, tokenizer, d, batch_size, style=style) for name, d in data["eval"].items()}
    out["utility_accuracy"] = mcq_accuracy(model, tokenizer, data["utility"], batch_size, style=style)
    return out


def main(argv=None) -> dict:
    args = parse(__doc__.splitlines()[0], "unlearn_wmdp.yaml").parse_args(argv)
    config = load_config(args)
    model, tokenizer = load_model(config, args)
    data = wmdp_data(config, args.dry_run)
    data["eval"] = {k: head(v, config) for k, v in data["eval"].items()}
    data["utility"] = head(data["utility"], config)
    batch_size = config.get("eval_batch_size", 8)
    style = config.get("mcq_style", "letter")
    before = scores(model, tokenizer, data, batch_size, style)
    trainer = unlearn(model, tokenizer, data["forget"], data["retain"], config)
    after = scores(trainer.model, tokenizer, data, batch_size, style)
    for name in before:
        print(f"{name:>20}: {before[name]:.3f} -> {after[name]:.3f}")
    path = write_results(config, {"benchmark": "wmdp", "dry_run": args.dry_run, "objective":
                                  config["training"]["objective"], "before": before, "after": after})
    print(f"results: {path}")
    return {"before": before, "after": after}


if __name__ == "__main__":
    main()
