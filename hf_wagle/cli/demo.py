"""`hf-wagle demo`."""

from __future__ import annotations

from .common import Command
from .plugins import register_command


@register_command("demo")
class Demo(Command):
    """Unlearn end to end and print what changed: a fictitious world memorised by a small model (seconds, no
    downloads), or (--model smollm2) real knowledge of a pretrained model."""

    help = ("unlearn end to end and print what changed: a fictitious world memorised by a small model, or (--model "
            "smollm2) real knowledge of a pretrained model")

    def add_arguments(self, parser) -> None:
        parser.add_argument("--model", default="world", choices=("world", "smollm2"),
                            help="world: a small Llama trained from scratch on a fictitious world (seconds); smollm2: "
                                 "the pretrained SmolLM2-135M-Instruct forgets chemical element symbols")
        parser.add_argument("--output-dir", help="where the adapters go (default: wagle_demo or wagle_demo_smollm2)")
        parser.add_argument("--steps", type=int,
                            help="optimizer steps per unlearning run (default: 30 world, 12 smollm2)")
        parser.add_argument("--mask-ratio", type=float,
                            help="fraction of weights that may change (default: 0.8 world, 0.5 smollm2)")
        parser.add_argument("--full", action="store_true", help="full-parameter unlearning instead of masked LoRA")

    def run(self, args) -> int:
        from ..demo import run_demo, run_real_demo
        from ..masking.config import MaskConfig

        if args.steps is not None and args.steps < 1:
            raise ValueError(f"--steps must be >= 1, got {args.steps}")
        if args.mask_ratio is not None:
            MaskConfig(ratio=args.mask_ratio)  # checks it
        options = {k: v for k, v in (("steps", args.steps), ("mask_ratio", args.mask_ratio)) if v is not None}
        if args.model == "smollm2":
            if args.full:
                raise ValueError("--full applies to the world demo; the SmolLM2 demo ships a masked LoRA adapter")
            run_real_demo(output_dir=args.output_dir or "wagle_demo_smollm2", **options)
        else:
            run_demo(output_dir=args.output_dir or "wagle_demo", lora=not args.full, **options)
        return 0
