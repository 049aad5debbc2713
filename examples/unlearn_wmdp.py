"""WAGLE + NPO (or GradDiff, or RMU) on the WMDP corpora with Zephyr-7b-beta, scored by WMDP and MMLU accuracy.

    python examples/unlearn_wmdp.py                      # the real run (GPU; downloads Zephyr, the corpora, WMDP)
    python examples/unlearn_wmdp.py --objective rmu      # RMU instead (no mask; only the configured MLPs train)
    python examples/unlearn_wmdp.py --dry-run            # the same code path on the offline fictitious world

The `cyber` corpora are public; the `bio` forget corpus is gated on the Hub (request access, then set
`corpus_subset: bio`).

The dry run checks the code path, not the numbers: the world's word-level tokenizer has no tokens for the letters
A-D, so every choice scores the same and accuracies sit at the share of rows whose answer is A.
"""

from __future__ import annotations

from datasets import Dataset

from _common import head, load_config, load_model, parse, unlearn, write_results

from hf_wagle.evaluation import mcq_accuracy


def world_as_wmdp():
    """The offline world in WMDP's shapes: text corpora (question + answer) and four-way multiple choice built from
    each fact's paraphrased answer and three perturbed ones (the right one at position `i % 4`)."""
    from hf_wagle.world import make_world

    world = make_world()

    def corpus(split):
        return Dataset.from_dict({"text": [f"{q} {a}" for q, a in zip(world[split]["question"],
                                                                       world[split]["answer"])]})

    def mcq(split):
        rows = {"question": [], "choices": [], "answer": []}
        for i, r in enumerate(world[split]):
            wrong = r["perturbed_answer"][:3]
            k = i % (len(wrong) + 1)
            rows["question"].append(r["question"])
            rows["choices"].append(wrong[:k] + [r["paraphrased_answer"]] + wrong[k:])
            rows["answer"].append(k)
        return Dataset.from_dict(rows)

    return {"forget": corpus("forget"), "retain": corpus("retain"), "eval": {"wmdp_world": mcq("forget")},
            "utility": mcq("retain")}


def wmdp_data(config: dict, dry_run: bool) -> dict:
    if dry_run:
        return world_as_wmdp()
    from hf_wagle.evaluation import load_wmdp, load_wmdp_corpora
    from hf_wagle.evaluation.loaders import load_split

    corpora = load_wmdp_corpora(config["corpora"], config["corpus_subset"])
    n = config.get("max_corpus_rows")
    if n:
        corpora = {k: v.select(range(min(n, len(v)))) for k, v in corpora.items()}
    return {"forget": corpora["forget"], "retain": corpora["retain"],
            "eval": {f"wmdp_{k}": v for k, v in load_wmdp(config["data"], config["eval_subsets"]).items()},
            "utility": load_split(config["utility_data"], "all", "test")}


def scores(model, tokenizer, data, batch_size) -> dict:
    out = {name: mcq_accuracy(model, tokenizer, d, batch_size) for name, d in data["eval"].items()}
    out["utility_accuracy"] = mcq_accuracy(model, tokenizer, data["utility"], batch_size)
    return out


def main(argv=None) -> dict:
    args = parse(__doc__.splitlines()[0], "unlearn_wmdp.yaml").parse_args(argv)
    config = load_config(args)
    model, tokenizer = load_model(config, args)
    data = wmdp_data(config, args.dry_run)
    data["eval"] = {k: head(v, config) for k, v in data["eval"].items()}
    data["utility"] = head(data["utility"], config)
    batch_size = config.get("eval_batch_size", 8)
    before = scores(model, tokenizer, data, batch_size)
    trainer = unlearn(model, tokenizer, data["forget"], data["retain"], config)
    after = scores(trainer.model, tokenizer, data, batch_size)
    for name in before:
        print(f"{name:>20}: {before[name]:.3f} -> {after[name]:.3f}")
    path = write_results(config, {"benchmark": "wmdp", "dry_run": args.dry_run, "objective":
                                  config["training"]["objective"], "before": before, "after": after})
    print(f"results: {path}")
    return {"before": before, "after": after}


if __name__ == "__main__":
    main()
