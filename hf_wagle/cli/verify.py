"""`hf-wagle verify DIR [--base MODEL]`."""

from __future__ import annotations

from .common import Command, escape
from .plugins import register_command


@register_command("verify")
class Verify(Command):
    """Check that an output folder changes nothing outside its mask: every tensor of the adapter (or, with --base,
    of the full model) against wagle_mask.safetensors; and that its unlearning_record.json matches the folder (and,
    with --forget/--retain, the data). Exit status 0 when all holds, 1 when not, 2 when it cannot be checked."""

    help = "audit an adapter or model folder against its wagle_mask.safetensors"

    def add_arguments(self, parser) -> None:
        parser.add_argument("directory", help="folder written by WagleTrainer.save_model")
        parser.add_argument("--base", help="base model (folder or Hub id); needed for full-model folders")
        parser.add_argument("--json", action="store_true", help="print the report as JSON")
        parser.add_argument("--forget", metavar="FILE", help="check that this is the forget data the record names")
        parser.add_argument("--retain", metavar="FILE", help="check that this is the retain data the record names "
                                                             "(the rows it held out are held out again)")
        parser.add_argument("--signature", help="check the folder's signature (default DIR/model.sig when "
                                                "--public-key or --certificate-chain is given)")
        parser.add_argument("--public-key", "--public_key", metavar="PEM",
                            help="the signer's public key: the folder must carry a valid signature by it")
        parser.add_argument("--certificate-chain", "--certificate_chain", nargs="+", metavar="PEM",
                            help="certificate chain the signature's certificate must lead to")

    def run(self, args) -> int:
        import json

        from ..record import check_data
        from ..verify import verify

        signed = None
        if args.signature or args.public_key or args.certificate_chain:
            from ..signing import verify_signature

            signed = verify_signature(args.directory, args.signature, public_key=args.public_key,
                                      certificate_chain=args.certificate_chain)
        report = verify(args.directory, base=args.base)
        record = report["record"]
        data_problems = [problem for split in ("forget", "retain") if getattr(args, split)
                         for problem in [check_data(args.directory, split, getattr(args, split))] if problem]
        if record is not None:
            record["problems"] += data_problems
        elif data_problems:
            raise ValueError(data_problems[0])
        consistent = record is None or not record["problems"]
        if args.json:
            print(json.dumps(report, indent=2, default=str))
        else:
            print(f"{report['directory']} ({report['kind']}): {report['tensors_checked']} tensors checked, "
                  f"{report['changed_inside_mask']} weights changed inside the mask, "
                  f"{report['changed_outside_mask']} outside; mask ratio {report['mask_ratio']:.4f}")
            for problem in report["problems"]:
                print(f"  FAIL {escape(problem)}")
            print("confined to its mask: " + ("yes" if report["confined"] else "NO"))
            if record is not None:
                for problem in record["problems"]:
                    print(f"  FAIL {escape(problem)}")
                checked = " and ".join(s for s in ("forget", "retain") if getattr(args, s))
                print(f"unlearning_record.json digest {record['digest']}: "
                      + ("matches this folder" + (f" and the {checked} data" if checked else "") if consistent
                         else "does NOT match"))
                for i, audit in enumerate(record["audits"]):
                    print(f"  audit {i}: {escape(str(audit['kind']))} by {escape(str(audit['by']))}, {audit['when']}")
                if record["audits"] and consistent:
                    print(f"  {len(record['audits'])} audit(s), chained to this record and to each other")
            if record is None:
                print("no unlearning_record.json: nothing ties this folder to a run (its base, data, settings and "
                      "files are unchecked)")
            print(f"signature {signed}: valid; every published file is as signed" if signed else
                  "not signature-checked: the record's digests are self-computed, so they detect edits but not a "
                  "folder rewritten and re-sealed, nor audits removed from the end; pass --public-key to check a "
                  "signature (hf-wagle sign)")
        return 0 if report["confined"] and consistent else 1
