"""Signatures over a saved folder, with the OpenSSF `model-signing` library (`pip install hf-wagle[sign]`), offline.

A self-computed seal (`hf_wagle.record`) detects edits made without recomputing its digests, but anyone can recompute
SHA-256: a folder rewritten and re-sealed passes `verify`. A signature made with a private key the publisher holds
closes that gap: `verify_signature` fails on any changed, added or removed file of the signed set, a re-sealed record
included, unless the forger also holds the key.

What is signed: every file of the folder that `push` publishes (`hf_wagle.io.PUBLISHED`: weights, configs,
tokenizer, mask, record, card), as `model-signing` hashes a folder; files that are never published (checkpoints,
`training_args.bin`, logs) and the signature itself are left out. Keys: an elliptic-curve private key (PEM), checked
with its public key; or a private key with its signing certificate and chain, checked against the chain.
"""

from __future__ import annotations

import fnmatch
from pathlib import Path

from .io import PUBLISHED, NotConfined

SIGNATURE_FILE = "model.sig"


def _library():
    try:
        from model_signing import hashing, signing, verifying
    except ImportError as e:
        raise ImportError(f"signing needs the model-signing library: pip install 'hf-wagle[sign]' ({e})") from None
    return hashing, signing, verifying


def _hashing_config(hashing, folder: Path, signature: Path):
    """Hash what `push` publishes: every file of `folder` but the unpublished ones and the signature."""
    ignored = [p for p in folder.iterdir() if not any(fnmatch.fnmatchcase(p.name, pat) for pat in PUBLISHED)]
    return hashing.Config().set_ignored_paths(paths=[*ignored, signature], ignore_git_paths=True)


def sign_folder(folder, private_key, *, password: str | None = None, certificate=None, certificate_chain=(),
                signature=None) -> Path:
    """Sign `folder` (module docstring) with `private_key` (an elliptic-curve key in PEM; with `certificate`, the
    signing certificate and its `certificate_chain`). The signature goes to `signature` (default
    `folder/model.sig`); returns its path."""
    hashing, signing, _ = _library()
    folder = Path(folder).resolve()  # the library compares ignored paths with the files it finds, absolutely
    if not folder.is_dir():
        raise ValueError(f"cannot sign {folder}: not a folder")
    signature = Path(signature).resolve() if signature is not None else folder / SIGNATURE_FILE
    config = signing.Config()
    if certificate is not None:
        config = config.use_certificate_signer(private_key=private_key, signing_certificate=certificate,
                                               certificate_chain=list(certificate_chain))
    else:
        config = config.use_elliptic_key_signer(private_key=private_key, password=password)
    config.set_hashing_config(_hashing_config(hashing, folder, signature)).sign(folder, signature)
    return signature


def verify_signature(folder, signature=None, *, public_key=None, certificate_chain=None) -> Path:
    """Check `folder` against its signature (default `folder/model.sig`) with `public_key` (PEM) or
    `certificate_chain` (PEM files). Raises `NotConfined` (exit 1) when any signed file was changed, added or removed,
    or the signature is not by that key; ValueError (exit 2) when there is no signature or no key to check it with.
    Returns the signature's path."""
    hashing, _, verifying = _library()
    folder = Path(folder).resolve()
    signature = Path(signature).resolve() if signature is not None else folder / SIGNATURE_FILE
    if not signature.is_file():
        raise ValueError(f"{folder} is not signed (no {signature}); sign it with `hf-wagle sign {folder} --key KEY`")
    if (public_key is None) == (certificate_chain is None):
        raise ValueError("checking a signature needs exactly one of a public key (--public-key) or a certificate "
                         "chain (--certificate-chain)")
    config = verifying.Config()
    config = config.use_elliptic_key_verifier(public_key=public_key) if public_key is not None else \
        config.use_certificate_verifier(certificate_chain=list(certificate_chain))
    try:
        config.set_hashing_config(_hashing_config(hashing, folder, signature)).verify(folder, signature)
    except Exception as e:  # the library raises ValueError and its own errors alike
        raise NotConfined(f"the signature {signature} does not hold for {folder}: {str(e).splitlines()[0]}") from None
    return signature
