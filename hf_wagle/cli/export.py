"""`hf-wagle export RUN --base MODEL --format shira|lora --out DIR`."""

from __future__ import annotations

from .common import Command, check_model
from .plugins import register_command


@register_command("export")
class Export(Command):
    """Turn a saved full-parameter run into a stock-PEFT adapter of a registered format (`hf_wagle.formats`):
    SHiRA (exact) or LoRA (truncated SVD, with its error); with --scales, one adapter per scale (a staged
    roll-out). Each adapter is verified against its mask; exit status 0 when all are confined."""

    help = ("turn a saved full-parameter run into a stock-PEFT adapter: SHiRA (exact) or LoRA (truncated SVD, with "
            "its error)")

    def add_arguments(self, parser) -> None:
        from ..formats import export_formats

        parser.add_argument("run", help="folder a full-parameter WagleTrainer run saved (model + "
                                        "wagle_mask.safetensors)")
        parser.add_argument("--base", required=True, help="the model the run started from: folder or Hub id")
        parser.add_argument("--format", default="shira", choices=export_formats(), help="adapter type")
        parser.add_argument("--rank", type=int, help="LoRA rank (format lora)")
        parser.add_argument("--scales", help="comma-separated scales of the change, one adapter each in "
                                              "OUT/scale_<s> (a staged roll-out), e.g. 0.25,0.5,1")
        parser.add_argument("--out", required=True,
                            help="folder for the adapter, its mask, export_report.json and card")
        parser.add_argument("--strict", action="store_true",
                            help="refuse a run whose changes include weights an adapter cannot hold (norms, biases, "
                                 "embeddings, tied weights) instead of leaving them out and listing them")

    def run(self, args) -> int:
        from pathlib import Path

        import torch
        from transformers import AutoModelForCausalLM

        from ..export import check_export_options, export_adapter
        from ..formats import get_format
        from ..hub import write_export_card
        from ..io import check_destination, check_output_folder
        from ..mask import WeightMask
        from ..record import read_record
        from ..verify import verify
        from .common import escape

        run_dir = Path(args.run)
        if not (run_dir / "model.safetensors").exists() and not (run_dir / "model.safetensors.index.json").exists():
            raise ValueError(f"{args.run}: no model.safetensors; export takes a folder a full-parameter run saved (a "
                             "LoRA run is already an adapter)")
        mask = WeightMask.load(run_dir)
        check_model(args.base, "--base")
        check_destination(args.out, {"the run being exported": run_dir, "the base model": args.base})
        check_output_folder(args.out, how=None)
        try:
            scales = [float(x) for x in args.scales.split(",")] if args.scales else None
        except ValueError:
            raise ValueError(f"--scales {args.scales}: expected numbers separated by commas, e.g. 0.25,0.5,1") from None
        fmt = get_format(args.format)
        missing = [f"--{option}" for option in fmt.needs if getattr(args, option) is None]
        if missing:
            raise ValueError(f"--format {args.format} needs {' '.join(missing)}")
        scales = check_export_options(args.format, args.rank, scales)
        trained = AutoModelForCausalLM.from_pretrained(run_dir)
        base = AutoModelForCausalLM.from_pretrained(args.base, dtype=next(trained.parameters()).dtype)
        with torch.no_grad():
            report = export_adapter(trained, base, mask, args.out, format=args.format, rank=args.rank, scales=scales,
                                    base_name=args.base, write_card=write_export_card, record=read_record(run_dir),
                                    strict=args.strict)
        print(f"exported {report['changed_weights']} changed weights in {len(report['layers'])} layers as "
              f"{args.format} r={report['rank']}")
        print(f"  {fmt.fidelity(report)}")
        if report["dropped"]:
            worst = max(report["dropped"].items(), key=lambda kv: kv[1]["relative_change"])
            print(f"  NOT held: {report['dropped_weights']} changed weights in {len(report['dropped'])} tensors an "
                  f"adapter cannot hold (largest relative change {worst[1]['relative_change']:.3g} in "
                  f"{escape(worst[0])}); base + adapter differs from the run there (export_report.json lists each; "
                  "--strict refuses)")
        confined = True
        for folder in report["folders"]:
            verdict = verify(folder)
            confined &= verdict["confined"]
            print(f"  {folder}: confined to its mask: {'yes' if verdict['confined'] else 'NO'}")
        return 0 if confined else 1
