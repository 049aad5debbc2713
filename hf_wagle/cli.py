"""`hf-wagle` command line."""

from __future__ import annotations

import argparse
import sys


def _demo(a) -> int:
    from .demo import run_demo

    run_demo(output_dir=a.output_dir, steps=a.steps, mask_ratio=a.mask_ratio, lora=not a.full)
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="hf-wagle", description="WAGLE unlearning for Hugging Face models")
    sub = parser.add_subparsers(dest="command", required=True)
    demo = sub.add_parser("demo", help="memorise a fictitious world, unlearn part of it, print the table")
    demo.add_argument("--output-dir", default="wagle_demo", help="where the adapters go (default: %(default)s)")
    demo.add_argument("--steps", type=int, default=30, help="optimizer steps per unlearning run")
    demo.add_argument("--mask-ratio", type=float, default=0.8, help="fraction of weights that may change")
    demo.add_argument("--full", action="store_true", help="full-parameter unlearning instead of masked LoRA")
    demo.set_defaults(func=_demo)
    return parser


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
