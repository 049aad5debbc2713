"""`hf-wagle push DIR REPO_ID`."""

from __future__ import annotations

from .common import Command
from .plugins import register_command


@register_command("push")
class Push(Command):
    """Audit a saved folder against its mask, then upload it with its card (local paths removed)."""

    help = "verify a saved adapter/model folder and upload it to the Hub"

    def add_arguments(self, parser) -> None:
        parser.add_argument("directory", help="folder written by WagleTrainer.save_model")
        parser.add_argument("repo_id", help="Hub repository, e.g. my-org/my-model-unlearned")
        parser.add_argument("--private", action="store_true", help="create the repository as private")
        parser.add_argument("--base", help="base model, needed to verify a full-model folder")
        parser.add_argument("--dry-run", action="store_true",
                            help="verify and list what would be uploaded (local paths removed), without contacting "
                                 "the Hub")
        parser.add_argument("--allow-unmet-targets", action="store_true",
                            help="publish a run whose record says it did not meet its targets")
        parser.add_argument("--allow-no-record", action="store_true",
                            help="publish a folder that holds no unlearning_record.json (nothing then ties it to a "
                                 "run)")
        parser.add_argument("--sign", metavar="KEY", help="sign the staged copy it uploads with this elliptic-curve "
                                                         "private key (PEM); the signature (model.sig) is uploaded")
        parser.add_argument("--require-signature", action="store_true",
                            help="refuse a folder that does not carry a valid signature by --public-key")
        parser.add_argument("--public-key", "--public_key", metavar="PEM",
                            help="the signer's public key, for --require-signature")

    def run(self, args) -> int:
        from ..hub import push_to_hub

        if args.require_signature and not args.public_key:
            raise ValueError("--require-signature needs the signer's --public-key")
        info = push_to_hub(args.directory, args.repo_id, private=args.private or None, base=args.base,
                           dry_run=args.dry_run, allow_unmet_targets=args.allow_unmet_targets, sign_key=args.sign,
                           require_signature=args.public_key if args.require_signature else None,
                           allow_no_record=args.allow_no_record)
        if args.dry_run:
            print(f"{args.directory} passed its checks; would upload to {args.repo_id}: "
                  f"{', '.join(info['files'])}")
            for item in info["left_out"]:
                print(f"  not uploaded: {item}")
            return 0
        print(f"pushed {args.directory} to {getattr(info, 'commit_url', None) or args.repo_id}")
        return 0
