"""`hf-wagle evaluate`."""

from __future__ import annotations

from .common import Command, check_model
from .plugins import register_command


@register_command("evaluate")
class Evaluate(Command):
    """Score a model (and, with --adapter, the model before and after it) on a registered benchmark
    (`hf_wagle.evaluation.register_benchmark`), write the numbers to a JSON file and a forget-vs-utility PNG next
    to it."""

    help = "score a model (before/after an adapter) on a benchmark: TOFU, WMDP, MUSE, offline or a plugin's"

    def add_arguments(self, parser) -> None:
        from ..evaluation.benchmarks import BENCHMARKS
        from ..options import DEFAULT_PROMPT_TEMPLATE

        parser.add_argument("--model", required=True, help="base model: Hub id or local folder")
        parser.add_argument("--adapter", help="PEFT adapter folder; evaluates the model before and after it")
        parser.add_argument("--benchmark", required=True, choices=tuple(BENCHMARKS),
                            help="; ".join(f"{name}: {spec.description}" if spec.description else name
                                           for name, spec in BENCHMARKS.items()).replace("%", "%%"))
        parser.add_argument("--data", help="benchmark data: Hub name or local folder in the same layout (default: "
                                           "the benchmark's Hub data set)")
        parser.add_argument("--split", default="forget10", help="TOFU forget split")
        parser.add_argument("--retain-results", help="results.json of the retain-only model, for TOFU forget quality")
        parser.add_argument("--utility-data", help="WMDP: MMLU data (Hub name or folder) for the utility axis")
        parser.add_argument("--limit", type=int, help="use only the first N rows of each split (quick checks)")
        parser.add_argument("--batch-size", type=int, default=16, help="examples per evaluation batch")
        parser.add_argument("--max-new-tokens", type=int, help="generation length (default: the benchmark's)")
        parser.add_argument("--prompt-template", default=DEFAULT_PROMPT_TEMPLATE,
                            help="QA prompt with {question}, or 'chat' for the tokenizer's chat template (default: "
                                 "%(default)r)")
        parser.add_argument("--mcq-style", default="letter", choices=("letter", "cloze"),
                            help="wmdp: score the answer letter (the benchmark's format) or each choice's text "
                                 "(cloze, as lm-eval scores small models)")
        parser.add_argument("--out", default="results.json", help="results file")
        parser.add_argument("--audit-by", metavar="NAME",
                            help="with --adapter: append this evaluation to the adapter's unlearning_record.json as a "
                                 "dated audit by NAME (the original entries stay sealed)")
        parser.add_argument("--plot", help="PNG path (default: the results path with .png)")

    def run(self, args) -> int:
        import json
        from pathlib import Path

        from transformers import AutoModelForCausalLM, AutoTokenizer

        from ..evaluation.benchmarks import plot_forget_vs_utility, run_benchmark
        from ..modeling import base_named_parameters, peft_wrapping
        from ..record import RECORD_FILE, append_audit, base_matches, read_record

        retain_trs = None
        if args.retain_results:
            try:
                runs = json.loads(Path(args.retain_results).read_text())["runs"]
                retain_trs = runs.get("after", runs.get("before"))["report"]["forget_truth_ratios"]
            except (json.JSONDecodeError, KeyError, TypeError) as e:
                raise ValueError(f"--retain-results {args.retain_results}: not a results.json of `hf-wagle evaluate "
                                 f"--benchmark tofu` ({type(e).__name__}: {e})") from None
        check_model(args.model)
        if args.adapter and not Path(args.adapter, "adapter_config.json").exists():
            raise ValueError(f"--adapter {args.adapter}: no adapter_config.json there")
        if args.audit_by and not (args.adapter and Path(args.adapter, RECORD_FILE).exists()):
            raise ValueError(f"--audit-by needs --adapter with an {RECORD_FILE} to append to")
        tokenizer = AutoTokenizer.from_pretrained(args.model)
        model = AutoModelForCausalLM.from_pretrained(args.model)
        kwargs = dict(data=args.data, forget_split=args.split, retain_model_truth_ratios=retain_trs,
                      utility_data=args.utility_data, limit=args.limit, batch_size=args.batch_size,
                      max_new_tokens=args.max_new_tokens, prompt_template=args.prompt_template,
                      mcq_style=args.mcq_style)
        same_base = base_matches(read_record(args.adapter), base_named_parameters(model)) if args.adapter else None
        if same_base is False:
            print(f"WARNING {args.model} is not the base the adapter's run started from (its weights differ from the "
                  "digest in the adapter's record): these scores do not describe the model that run measured")
        runs = {"before": run_benchmark(args.benchmark, model, tokenizer, **kwargs).to_dict()}
        if args.adapter:
            from peft import PeftModel

            with peft_wrapping():
                adapted = PeftModel.from_pretrained(model, args.adapter)
            runs["after"] = run_benchmark(args.benchmark, adapted, tokenizer, **kwargs).to_dict()
        out = Path(args.out)
        out.parent.mkdir(parents=True, exist_ok=True)
        result = {"benchmark": args.benchmark, "model": args.model, "adapter": args.adapter, "data": args.data,
                  "runs": runs}
        out.write_text(json.dumps(result, indent=2))
        if args.audit_by:
            from ..hub.names import public_name

            entry = append_audit(args.adapter, {
                "by": args.audit_by, "benchmark": args.benchmark, "data": public_name(args.data) if args.data else None,
                "limit": args.limit, "base_model": public_name(args.model), "base_matches_record": same_base,
                "summary": {name: r["summary"] for name, r in runs.items()}})
            print(f"appended audit {entry['digest'][:12]}... to {Path(args.adapter, RECORD_FILE)}")
        png = Path(args.plot) if args.plot else out.with_suffix(".png")
        plot_forget_vs_utility(runs, str(png), title=args.benchmark)
        for name, r in runs.items():
            s = r["summary"]
            utility = "n/a" if s["utility"] is None else f"{s['utility']:.4g}"
            print(f"{name}: {s['forget_label']} {s['forget']:.4g}, {s['utility_label']} {utility}")
        print(f"wrote {out} and {png}")
        return 0
