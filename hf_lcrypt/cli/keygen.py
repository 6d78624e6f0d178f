"""`hf-lcrypt keygen`: a new secret key file, random or from a passphrase."""

from __future__ import annotations

import argparse
import getpass
import sys
from pathlib import Path

from ..keys import MIN_PASSPHRASE_CHARS
from .options import CLIError, add_command, one_line_warnings


def add_keygen(sub: argparse._SubParsersAction) -> None:
    parser = add_command(
        sub,
        "keygen",
        run_keygen,
        "create a secret key file",
        "Write a new 256-bit secret key to PATH (mode 0600) and print its public key id. Keep the file secret and "
        "backed up: without it, encrypted images cannot be decrypted, and with it, anyone can.",
    )
    parser.add_argument("path", metavar="PATH", help="key file to create")
    parser.add_argument(
        "--passphrase",
        action="store_true",
        help="derive the key from a passphrase (scrypt) instead of drawing a random one; the phrase is asked for "
        "on the terminal, or read from the first line of standard input when that is not a terminal",
    )
    parser.add_argument(
        "--allow-short-passphrase",
        action="store_true",
        help=f"accept a passphrase under {MIN_PASSPHRASE_CHARS} characters (refused otherwise: anyone can try short "
        "phrases quickly)",
    )
    parser.add_argument("--force", action="store_true", help="replace an existing key file")


def run_keygen(args: argparse.Namespace) -> int:
    from ..keys import LCryptKey

    path = Path(args.path)
    if path.is_dir():
        raise CLIError(f"{path} is a folder; name the key file to create, e.g. {path / 'secret.key'}.")
    if path.exists() and not args.force:
        raise CLIError(
            f"{path} exists; refusing to overwrite a key (pass --force to replace it: images encrypted with the old "
            "key then cannot be decrypted without a backup of it)."
        )
    with one_line_warnings("keygen"):
        if args.passphrase:
            key = LCryptKey.from_passphrase(read_passphrase(), allow_short=args.allow_short_passphrase)
        else:
            key = LCryptKey.generate()
    key.save(path, overwrite=args.force)
    print(f"hf-lcrypt keygen: wrote {args.path} (mode 0600); keep it secret and backed up.", file=sys.stderr)
    print(key.key_id)
    return 0


def read_passphrase() -> str:
    """From the terminal (asked twice) or from stdin's first line; never from the command line, where it would be
    visible to other users and kept in shell history."""
    if not sys.stdin.isatty():
        line = sys.stdin.buffer.readline() if hasattr(sys.stdin, "buffer") else sys.stdin.readline().encode()
        try:
            return line.decode("utf-8").rstrip("\r\n")
        except UnicodeDecodeError:
            raise CLIError(
                "the passphrase on standard input is not UTF-8 text; pipe it as UTF-8 (e.g. through iconv -t UTF-8), "
                "since the key is derived from its UTF-8 bytes."
            ) from None
    phrase = getpass.getpass("Passphrase: ")
    if phrase != getpass.getpass("Passphrase again: "):
        raise CLIError("the two passphrases differ.")
    return phrase
