"""The `hf-lcrypt` command line.

One module per command (`keygen`, `encrypt` for encrypt and decrypt, `encrypt_dataset`, `publish`, `export`, `train`,
`attack`, `classify`, `verify_page`), each with an `add_*` function that registers its parser (`options.add_command`)
and a `run_*` handler that takes the parsed arguments and returns an exit status. To add a command, write both and
call the `add_*` function from `build_parser`. Handlers raise `CLIError` (or the ValueError/OSError of the library)
for problems the user can fix; `main` prints those as one line, without a traceback. The secret key is never printed
or logged: only its public key id is. `options` holds what several commands share; `folder_run`, `image_io` and
`client` are the library that only the command line uses (folder runs of encrypt/decrypt, image files, classify).

Only argparse is imported at start; each handler imports the library (torch, transformers) when it runs, so that
`--help` and `keygen` start fast.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from .. import __version__
from ..keys import KEY_ENV_VAR
from ..signals import describe, exit_status, stop_on_sigterm
from .attack import add_attack
from .classify import add_classify
from .encrypt import add_encrypt_decrypt
from .encrypt_dataset import add_encrypt_dataset
from .export import add_export
from .keygen import add_keygen
from .options import EPILOG, CLIError, wrap
from .publish import add_publish
from .train import add_train
from .verify_page import add_verify_page


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="hf-lcrypt",
        description=wrap(
            "Keyed block-wise image encryption for Vision Transformers: create keys, encrypt or decrypt folders of "
            "images, train keyed classifiers on them, attack them, and publish them to the Hugging Face Hub."
        ),
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    add_keygen(sub)
    add_encrypt_decrypt(sub)
    add_encrypt_dataset(sub)
    add_publish(sub)
    add_export(sub)
    add_train(sub)
    add_attack(sub)
    add_classify(sub)
    add_verify_page(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the CLI; returns the exit status (0 on success, 1 for a user-fixable error, 2 for bad usage)."""
    parser = build_parser()
    args = parser.parse_args(argv)
    needs_key_file = getattr(args, "needs_key_file", False)
    if (needs_key_file(args) if callable(needs_key_file) else needs_key_file) and not args.key_file:
        parser.error(f"{args.command} needs a key: pass --key-file K, or set {KEY_ENV_VAR} to the key file's path")
    try:
        with stop_on_sigterm():
            return args.handler(args)
    except (CLIError, ValueError, OSError) as err:
        print(f"hf-lcrypt {args.command}: error: {err}", file=sys.stderr)
        return 1
    except KeyboardInterrupt as err:
        print(f"hf-lcrypt {args.command}: {describe(err)}.", file=sys.stderr)
        return exit_status(err)
