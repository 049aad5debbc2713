"""`hf-wagle verify DIR [--base MODEL]`."""

from __future__ import annotations

from .common import Command
from .plugins import register_command


@register_command("verify")
class Verify(Command):
    """Check that an output folder changes nothing outside its mask: every tensor of the adapter (or, with --base,
    of the full model) against wagle_mask.safetensors. Exit status 0 when confined, 1 when not."""

    help = "audit an adapter or model folder against its wagle_mask.safetensors"

    def add_arguments(self, parser) -> None:
        parser.add_argument("directory", help="folder written by WagleTrainer.save_model")
        parser.add_argument("--base", help="base model (folder or Hub id); needed for full-model folders")
        parser.add_argument("--json", action="store_true", help="print the report as JSON")

    def run(self, args) -> int:
        import json

        from ..verify import verify

        report = verify(args.directory, base=args.base)
        if args.json:
            print(json.dumps(report, indent=2, default=str))
        else:
            print(f"{report['directory']} ({report['kind']}): {report['tensors_checked']} tensors checked, "
                  f"{report['changed_inside_mask']} weights changed inside the mask, "
                  f"{report['changed_outside_mask']} outside; mask ratio {report['mask_ratio']:.4f}")
            for problem in report["problems"]:
                print(f"  FAIL {problem}")
            print("confined to its mask: " + ("yes" if report["confined"] else "NO"))
        return 0 if report["confined"] else 1
