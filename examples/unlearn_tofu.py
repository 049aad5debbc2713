"""WAGLE + NPO on TOFU forget10 (Llama-2-7b-chat fine-tuned on TOFU), with the authors' hyperparameters.

    python examples/unlearn_tofu.py                    # the real run (GPU, downloads the model and TOFU)
    python examples/unlearn_tofu.py --dry-run          # the same code path on SmolLM2-135M, real facts, CPU

Reports the TOFU table before and after unlearning (forget quality needs `retain_results`: the results.json of
`hf-wagle evaluate --benchmark tofu` on the retain90 model).
"""

from __future__ import annotations

import json

from hf_wagle.evaluation import format_tofu_report, tofu_report

from _common import head, load_config, load_model, parse, scenario, unlearn, write_results


def tofu_data(config: dict, dry_run: bool) -> dict:
    """forget/retain training QA and the evaluation splits. Dry run: the real-knowledge scenario, with its held-out
    facts in the place of TOFU's world facts (knowledge the model had before, never trained on)."""
    if dry_run:
        data = scenario()
        return {"forget": data["forget"], "retain": data["retain"],
                "eval": {"forget": data["forget"], "retain": data["retain"], "world_facts": data["holdout"]}}
    from hf_wagle.evaluation import load_tofu

    tofu = load_tofu(config["data"], config["forget_split"])
    return {"forget": tofu["forget"], "retain": tofu["retain"],
            "eval": {"forget": tofu["forget_eval"], "retain": tofu["retain_eval"],
                     "real_authors": tofu["real_authors"], "world_facts": tofu["world_facts"]}}


def main(argv=None) -> dict:
    args = parse(__doc__.splitlines()[0], "unlearn_tofu.yaml").parse_args(argv)
    config = load_config(args)
    retain_trs = None
    if config.get("retain_results"):
        with open(config["retain_results"]) as f:
            runs = json.load(f)["runs"]
        retain_trs = runs.get("after", runs.get("before"))["report"]["forget_truth_ratios"]
    model, tokenizer = load_model(config, args)
    data = tofu_data(config, args.dry_run)
    data["eval"] = {k: head(v, config) for k, v in data["eval"].items()}
    evaluation = dict(prompt_template=config["training"]["prompt_template"], retain_model_truth_ratios=retain_trs,
                      max_new_tokens=config.get("max_new_tokens", 200), batch_size=config.get("eval_batch_size", 16))
    before = tofu_report(model, tokenizer, **data["eval"], **evaluation)
    trainer = unlearn(model, tokenizer, data["forget"], data["retain"], config)
    after = tofu_report(trainer.model, tokenizer, **data["eval"], **evaluation)
    print("before unlearning\n" + format_tofu_report(before) + "\n\nafter unlearning\n" + format_tofu_report(after))
    path = write_results(config, {"benchmark": "tofu", "dry_run": args.dry_run,
                                  "runs": {"before": {"report": before}, "after": {"report": after}}})
    print(f"results: {path}")
    return {"before": before, "after": after}


if __name__ == "__main__":
    main()
