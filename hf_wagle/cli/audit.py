"""`hf-wagle audit RUN --base MODEL --forget FILE`."""

from __future__ import annotations

from .common import Command, check_model, load_data
from .plugins import register_command


@register_command("audit")
class Audit(Command):
    """Does the forgetting last? Score a saved run (adapter or full model) against its base after 4-bit NF4 and 8-bit
    quantisation as bitsandbytes stores the weights (an adapter also unmerged over an NF4 base), after relearning on
    half of the forget rows (with --related, on related rows such as neighbour facts; with --retain, on retain rows:
    the control), in the other prompt format and, where the data has `paraphrased_question`, rephrased; each as a
    recovery fraction with a 95% interval (`hf_wagle.experiments.robustness`); with the distance from the base and
    the straight path between them. The result is appended to the run's unlearning_record.json as a dated audit (its
    sealed entries untouched) and to its card. `--max-recovery` states limits the audit must meet (exit status 3
    when one is broken, as `unlearn` does for unmet targets)."""

    help = "robustness audit of a saved run: quantisation (NF4, INT8) and relearning, as recovery fractions"

    def add_arguments(self, parser) -> None:
        from ..experiments import RELEARN_PROTOCOLS

        parser.add_argument("directory", help="folder written by WagleTrainer.save_model (adapter or full model)")
        parser.add_argument("--base", required=True, help="the model before unlearning (folder or Hub id)")
        parser.add_argument("--forget", required=True, metavar="FILE",
                            help="forget QA data (file, saved folder or scenario:NAME/forget)")
        parser.add_argument("--retain", metavar="FILE", help="retain QA data: retain scores and the relearning control")
        parser.add_argument("--related", metavar="FILE",
                            help="related QA data that is not forget data (neighbour facts, paraphrases): relearning "
                                 "on it, scored on the forget rows (relearn_related)")
        parser.add_argument("--forget-tokens", choices=("answer", "key"),
                            help="score each whole answer, or its key tokens alone (`answer_key`, else derived) as "
                                 "forget_tokens='key' unlearns them (default: the run's forget_tokens, from its "
                                 "record, else answer)")
        parser.add_argument("--retain-model", metavar="MODEL",
                            help="a model never trained on the forget rows (e.g. TOFU's retain model), attacked as "
                                 "the run is: open-unlearning's relearning robustness R against it")
        parser.add_argument("--schemes", default="nf4,int8", help="quantisation schemes to apply (nf4, int8; "
                                                                  "empty: none)")
        parser.add_argument("--protocol", default="default", choices=list(RELEARN_PROTOCOLS),
                            help="the relearning attack: " + "; ".join(f"{name}: {p.source}"
                                                                       for name, p in RELEARN_PROTOCOLS.items()))
        parser.add_argument("--relearn-steps", type=int, default=None,
                            help="AdamW steps of relearning, in place of the protocol's (0: none)")
        parser.add_argument("--relearn-lr", type=float, default=None,
                            help="relearning learning rate, in place of the protocol's")
        parser.add_argument("--batch-size", type=int, default=8, help="rows per batch, scoring and relearning")
        parser.add_argument("--prompt-template", help="QA prompt with {question} (default: the run's, from its "
                                                      "record, else 'Question: {question}\\nAnswer:')")
        parser.add_argument("--max-recovery", metavar="NAME=VALUE,...",
                            help="limits the audit must meet, e.g. relearn=0.3,nf4=0.1 (of nf4, int8, nf4_adapter, "
                                 "relearn, relearn_related, relearn_retain, prompt, paraphrase); exit status 3 "
                                 "when one is broken")
        parser.add_argument("--by", metavar="NAME", help="who ran the audit, stored with it")
        parser.add_argument("--out", help="also write the report to this JSON file")

    def run(self, args) -> int:
        import json
        from pathlib import Path

        from ..experiments.robustness import SCHEMES, audit, exceeded, format_audit, parse_limits
        from ..hub.names import public_name
        from ..record import append_audit, read_record

        folder = Path(args.directory)
        if not folder.is_dir():
            raise ValueError(f"{folder}: no such folder")
        check_model(args.base, "--base")
        schemes = tuple(s.strip() for s in args.schemes.split(",") if s.strip())
        unknown = [s for s in schemes if s not in SCHEMES]
        if unknown:
            raise ValueError(f"--schemes {args.schemes}: unknown {unknown}; choose from {', '.join(SCHEMES)}")
        limits = parse_limits(args.max_recovery)
        if args.batch_size < 1:
            raise ValueError(f"--batch-size must be >= 1, got {args.batch_size}")
        if args.relearn_steps is not None and args.relearn_steps < 0:
            raise ValueError(f"--relearn-steps must be >= 0, got {args.relearn_steps}")
        forget = load_data(args.forget, "forget")
        retain = load_data(args.retain, "retain") if args.retain else None
        related = load_data(args.related, "related") if args.related else None
        record = read_record(folder)
        settings = (record or {}).get("settings") or {}
        template = args.prompt_template or settings.get("prompt_template")
        tokens = args.forget_tokens or settings.get("forget_tokens") or "answer"
        warnings = _audit_warnings(record, args.base, forget, retain)
        for warning in warnings:
            print(f"WARNING {warning}")
        if args.retain_model:
            check_model(args.retain_model, "--retain-model")
            if args.relearn_steps == 0:
                raise ValueError("--retain-model is attacked as the run is, for the relearning robustness R; "
                                 "--relearn-steps 0 runs no attack: drop one of them")
            from transformers import AutoConfig

            if AutoConfig.from_pretrained(args.retain_model).vocab_size != AutoConfig.from_pretrained(
                    args.base).vocab_size:
                raise ValueError(f"--retain-model {args.retain_model}: its vocabulary differs from the base's; it "
                                 "must be the same architecture and tokenizer, trained without the forget rows")
        original, unlearned, tokenizer = _models(folder, args.base)
        retain_model = None
        if args.retain_model:
            import torch
            from transformers import AutoModelForCausalLM

            retain_model = AutoModelForCausalLM.from_pretrained(args.retain_model, dtype=torch.float32).eval()
        adapter = (folder / "adapter_config.json").exists() and "nf4" in schemes
        report = audit(original, unlearned, tokenizer, forget, retain, schemes, args.relearn_steps, args.relearn_lr,
                       args.batch_size, template, adapter=adapter, progress=print, related=related,
                       protocol=args.protocol, retain_model=retain_model, tokens=tokens)
        if limits:
            report["limits"] = {"max_recovery": limits, "broken": exceeded(report, limits)}
        text = format_audit(report)
        print(text)
        if args.out:
            Path(args.out).write_text(json.dumps(report, indent=2))
        if record is not None:
            entry = append_audit(folder, {"kind": "robustness", "by": args.by, "base_model": public_name(args.base),
                                          "warnings": warnings, **report})
            card = folder / "README.md"
            if card.exists():
                card.write_text(card.read_text().rstrip("\n") + f"\n\n## Robustness audit ({entry['when']})\n\n"
                                + "```\n" + text + "\n```\n")
            print(f"appended audit {entry['digest'][:12]}... to {folder / 'unlearning_record.json'}")
        else:
            print(f"{folder} holds no unlearning_record.json: the audit is stored nowhere but --out")
        return 3 if limits and report["limits"]["broken"] else 0


def _audit_warnings(record, base, forget, retain) -> list[str]:
    """What makes this audit's numbers describe something other than the run: a base whose weights are not the ones
    the record's run started from, retain rows that are forget rows (the control then relearns the forget set)."""
    from ..io import MODEL_STEM, local_or_download, tensors_in_name_order
    from ..record import base_matches

    out = []
    if record is not None and base_matches(record, tensors_in_name_order(local_or_download(base), MODEL_STEM),
                                           in_name_order=True) is False:
        out.append(f"{base} is not the base the record's run started from (its weights differ from the recorded "
                   "digest): the recovery measured here is of another model plus this change")
    if retain is not None:
        def rows(data):
            return {tuple(sorted((k, str(v)) for k, v in row.items())) for row in data}

        shared = len(rows(forget) & rows(retain))
        if shared:
            out.append(f"{shared} retain rows are also forget rows: the retain control relearns forget data, and "
                       "retain scores include forgotten facts")
    return out


def _models(folder, base, loaded: tuple | None = None):
    """`(original, unlearned, tokenizer)`: the base, and the run's model (an adapter merged into a copy of it).
    `loaded`: the `(original, tokenizer)` of an earlier call with the same base, not loaded again (left unchanged)."""
    import copy

    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    original, tokenizer = loaded or (  # float32: the change kept exactly
        AutoModelForCausalLM.from_pretrained(base, dtype=torch.float32).eval(), AutoTokenizer.from_pretrained(base))
    if (folder / "adapter_config.json").exists():
        from peft import PeftModel

        from ..modeling import peft_wrapping

        with peft_wrapping():
            unlearned = PeftModel.from_pretrained(copy.deepcopy(original), str(folder)).merge_and_unload()
    else:
        unlearned = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32)
    return original, unlearned.eval(), tokenizer
