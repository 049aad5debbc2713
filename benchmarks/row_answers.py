"""Which facts go, row by row: an example config run for a few steps, then every row of the named sets answered
greedily by the base and by the unlearned model, with each answer's probability. SmolLM2-135M-Instruct.

    python benchmarks/row_answers.py --config examples/unlearn_work_authors.yaml --scenario work_authors \
        --steps 6 --out benchmarks/results/selectivity/rows_authors_step6.json

Writes the JSON (per set and row: the question, answered and probability before and after, and the first words of
each answer) and prints one line per row. The answers shown are of the scenario's own public facts.
"""

import argparse
import json
import tempfile
from pathlib import Path

from hf_wagle.cli import main as hf_wagle
from hf_wagle.real_model import load_scenario, smollm2_path


def greedy_answers(model, tokenizer, data, template: str) -> list[str]:
    """Greedy answers to `data`'s questions, as `answered` reads them (the same generation window)."""
    from hf_wagle.data import prompt_ids
    from hf_wagle.evaluation.measure import _max_new_tokens
    from hf_wagle.evaluation.scoring import greedy_generate

    return greedy_generate(model, tokenizer, [prompt_ids(tokenizer, template, q) for q in data["question"]],
                           _max_new_tokens(tokenizer, data["answer"]), 32)


def rows(model, tokenizer, data, template: str) -> list[dict]:
    from hf_wagle.evaluation.answers import answer_metrics
    from hf_wagle.evaluation.measure import answer_keys, contains_answer

    texts = greedy_answers(model, tokenizer, data, template)
    probability = answer_metrics(model, tokenizer, data, template)["probability"]
    return [{"question": q, "answered": contains_answer(t, k), "probability": p, "answer": " ".join(t.split()[:12])}
            for q, k, t, p in zip(data["question"], answer_keys(data), texts, probability)]


def main(argv=None) -> dict:
    from hf_wagle.cli.audit import _models

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", required=True)
    parser.add_argument("--scenario", required=True)
    parser.add_argument("--steps", type=int, default=6)
    parser.add_argument("--sets", default="forget,neighbour,entity")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", required=True)
    parser.add_argument("--own_retain_answers", action="store_true", help="train on the retain questions with the "
                        "base model's own greedy answers in place of the file's (its own phrasing kept, frames "
                        "included)")
    args = parser.parse_args(argv)
    model = str(smollm2_path())
    work = Path(tempfile.mkdtemp(prefix="row-answers-"))
    folder = work / "run"
    scenario = load_scenario(args.scenario)
    template = scenario["info"]["prompt_template"]
    extra = []
    if args.own_retain_answers:
        from hf_wagle.real_model import load_smollm2

        retain = scenario["retain"]
        own = greedy_answers(*load_smollm2(), retain, template)
        (work / "retain.jsonl").write_text("".join(  # each answer's first line, at most 24 words
            json.dumps({"question": q, "answer": " ".join(a.split("\n")[0].split()[:24])}) + "\n"
            for q, a in zip(retain["question"], own)))
        extra = ["--retain_file", str(work / "retain.jsonl")]
    hf_wagle(["unlearn", "--config", args.config, "--model_name_or_path", model, "--output_dir", str(folder),
              "--max_steps", str(args.steps), "--seed", str(args.seed), "--target_eval_steps", str(args.steps),
              *extra])
    # one evaluation after the start, at the last step: the model kept is that step's, targets met or not
    base, unlearned, tokenizer = _models(folder, model)
    out = {"config": args.config, "steps": args.steps, "seed": args.seed,
           "own_retain_answers": args.own_retain_answers, "sets": {}}
    for name in args.sets.split(","):
        before, after = rows(base, tokenizer, scenario[name], template), rows(unlearned, tokenizer, scenario[name],
                                                                               template)
        out["sets"][name] = [{"question": b["question"], "before": b, "after": a} for b, a in zip(before, after)]
        for b, a in zip(before, after):
            print(f"{name:10s} {int(b['answered'])}->{int(a['answered'])}  p {b['probability']:.3f}->"
                  f"{a['probability']:.3f}  {b['question']} | {b['answer']} | {a['answer']}")
    Path(args.out).write_text(json.dumps(out, indent=2))
    return out


if __name__ == "__main__":
    main()
