"""`hf-wagle sign DIR --key KEY`."""

from __future__ import annotations

from .common import Command
from .plugins import register_command


@register_command("sign")
class Sign(Command):
    """Sign the files of a saved folder that `push` would publish (weights, configs, tokenizer, mask, record, card)
    with the OpenSSF model-signing library, offline: an elliptic-curve private key, or a key with its certificate and
    chain. `hf-wagle verify DIR --public-key PUB` (or --certificate-chain) then fails on any changed, added or
    removed file, a re-sealed record included. Needs `pip install 'hf-wagle[sign]'`."""

    help = "sign a saved folder (OpenSSF model-signing; offline keys or certificates)"

    def add_arguments(self, parser) -> None:
        parser.add_argument("directory", help="folder written by WagleTrainer.save_model or hf-wagle export")
        parser.add_argument("--key", required=True, help="elliptic-curve private key (PEM)")
        parser.add_argument("--password", help="the private key's password, if it has one")
        parser.add_argument("--certificate", help="signing certificate (PEM) for --key; with --certificate-chain")
        parser.add_argument("--certificate-chain", "--certificate_chain", nargs="*", default=(), metavar="PEM",
                            help="certificates from the signing certificate's issuer up to the root")
        parser.add_argument("--signature", help="where to write the signature (default DIR/model.sig)")

    def run(self, args) -> int:
        from ..signing import sign_folder

        path = sign_folder(args.directory, args.key, password=args.password, certificate=args.certificate,
                           certificate_chain=args.certificate_chain, signature=args.signature)
        print(f"signed {args.directory}: {path}")
        return 0
