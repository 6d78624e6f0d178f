"""The `hf-lcrypt` command line.

Each subcommand is one `add_*` function that registers its parser with `sub.add_parser(...)` and sets a handler
with `set_defaults(handler=...)`; a handler takes the parsed arguments and returns an exit status. To add a
command, write both and call the `add_*` function from `build_parser`. Handlers raise `CLIError` (or the
ValueError/OSError of the library) for problems the user can fix; `main` prints those as one line, without a
traceback. The secret key is never printed or logged: only its public key id is.
"""

from __future__ import annotations

import argparse
import getpass
import os
import sys
import textwrap
from collections.abc import Callable, Sequence

from tqdm.auto import tqdm

from . import __version__
from .cipher import ALL_STEPS, BlockCipher
from .image_io import LOSSY_SUFFIXES, image_shape, plan_jobs, read_rgb, write_png
from .keys import KEY_ENV_VAR, LCryptKey

EPILOG = f"""\
examples:
  hf-lcrypt keygen secret.key                        # new random key; prints its public key id
  hf-lcrypt keygen secret.key --passphrase           # key from a passphrase (asked for, never an argument)
  hf-lcrypt encrypt --key-file secret.key --block-size 16 --image-size 224 photos/ encrypted/
  hf-lcrypt decrypt --key-file secret.key --block-size 16 encrypted/ decrypted/
  hf-lcrypt encrypt --key-file secret.key --block-size 16 --image-size 256x192 scan.jpg scan.enc.png
  hf-lcrypt encrypt --key-file secret.key --block-size 16 --steps block_scramble,pixel_shuffle scans/ out/

The key file can also be named by the {KEY_ENV_VAR} environment variable. Run `hf-lcrypt COMMAND --help` for the
options of a command, and see docs/key-spec.md for what the cipher does.
"""


class CLIError(Exception):
    """A problem the user can fix; printed without a traceback."""


def wrap(text: str) -> str:
    """Wrap a description by hand: the parsers keep the examples' line breaks, so argparse does not wrap it."""
    return textwrap.fill(text, width=100)


def add_key_file_argument(parser: argparse.ArgumentParser, help_text: str) -> None:
    """`--key-file K`, required unless the environment variable names a key file."""
    parser.add_argument(
        "--key-file",
        metavar="K",
        default=os.environ.get(KEY_ENV_VAR),
        required=KEY_ENV_VAR not in os.environ,
        help=f"{help_text} (default: ${KEY_ENV_VAR})",
    )


def positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be a positive integer, got {value}")
    return value


# -- keygen ------------------------------------------------------------------------------------------------------------
def add_keygen(sub: argparse._SubParsersAction) -> None:
    parser = sub.add_parser(
        "keygen",
        help="create a secret key file",
        description="Write a new 256-bit secret key to PATH (mode 0600) and print its public key id. Keep the file "
        "secret and backed up: without it, encrypted images cannot be decrypted, and with it, anyone can.",
    )
    parser.add_argument("path", metavar="PATH", help="key file to create")
    parser.add_argument(
        "--passphrase",
        action="store_true",
        help="derive the key from a passphrase (scrypt) instead of drawing a random one; the phrase is asked for "
        "on the terminal, or read from the first line of standard input when that is not a terminal",
    )
    parser.add_argument("--force", action="store_true", help="replace an existing key file")
    parser.set_defaults(handler=run_keygen)


def run_keygen(args: argparse.Namespace) -> int:
    key = LCryptKey.from_passphrase(read_passphrase()) if args.passphrase else LCryptKey.generate()
    key.save(args.path, overwrite=args.force)
    print(f"hf-lcrypt keygen: wrote {args.path} (mode 0600); keep it secret and backed up.", file=sys.stderr)
    print(key.key_id)
    return 0


def read_passphrase() -> str:
    """From the terminal (asked twice) or from stdin's first line; never from the command line, where it would be
    visible to other users and kept in shell history."""
    if not sys.stdin.isatty():
        return sys.stdin.readline().rstrip("\r\n")
    phrase = getpass.getpass("Passphrase: ")
    if phrase != getpass.getpass("Passphrase again: "):
        raise CLIError("the two passphrases differ.")
    return phrase


# -- encrypt / decrypt -------------------------------------------------------------------------------------------------
def cipher_options() -> argparse.ArgumentParser:
    """Options shared by encrypt and decrypt (an argparse parent parser)."""
    parser = argparse.ArgumentParser(add_help=False)
    parser.add_argument("src", metavar="SRC", help="an image, or a folder searched recursively for PNG/JPEG images")
    parser.add_argument("dst", metavar="DST", help="output .png file, or folder (the layout under SRC is kept)")
    add_key_file_argument(parser, "secret key file from `hf-lcrypt keygen`")
    parser.add_argument(
        "--block-size", metavar="M", type=positive_int, required=True, help="block side in pixels; the ViT's patch size"
    )
    parser.add_argument(
        "--image-size",
        metavar="S|HxW",
        type=image_size,
        help="e.g. 224 or 256x192. encrypt resizes every image to it; decrypt only checks it, since a resized "
        "ciphertext cannot be decrypted. Without it every image must already have sides divisible by M",
    )
    parser.add_argument(
        "--steps",
        metavar="STEP[,STEP...]",
        type=steps,
        default=ALL_STEPS,
        help=f"comma-separated cipher steps, from {','.join(ALL_STEPS)} (default: all); decrypt needs the same "
        "steps as encrypt",
    )
    parser.add_argument("--force", action="store_true", help="overwrite existing output files")
    return parser


def add_encrypt_decrypt(sub: argparse._SubParsersAction) -> None:
    common = cipher_options()
    for name, inverse, summary in (
        ("encrypt", False, "Encrypt images block by block with a secret key"),
        ("decrypt", True, "Decrypt images encrypted by `hf-lcrypt encrypt` with the same key and options"),
    ):
        parser = sub.add_parser(
            name,
            parents=[common],
            help=summary.lower(),
            description=wrap(
                f"{summary}. Images are read as RGB; outputs are lossless PNGs (JPEG would destroy the ciphertext, "
                "see docs/lossless.md), each written completely or not at all."
            ),
            epilog=EPILOG,
            formatter_class=argparse.RawDescriptionHelpFormatter,
        )
        parser.set_defaults(handler=run_cipher, inverse=inverse)


def image_size(text: str) -> tuple[int, int]:
    """'224' -> (224, 224); '256x192' -> (256, 192): one token, so that SRC and DST can follow it."""
    try:
        sides = tuple(int(side) for side in text.lower().split("x"))
    except ValueError:
        sides = ()
    if len(sides) not in (1, 2) or min(sides) < 1:
        raise argparse.ArgumentTypeError(f"expected S or HxW with positive sizes, e.g. 224 or 256x192; got {text!r}")
    return sides[0], sides[-1]


def steps(text: str) -> tuple[str, ...]:
    names = tuple(name.strip().replace("-", "_") for name in text.split(","))
    unknown = [name for name in names if name not in ALL_STEPS]
    if unknown:
        raise argparse.ArgumentTypeError(f"unknown step(s) {', '.join(unknown)}; choose from {', '.join(ALL_STEPS)}")
    return names


def run_cipher(args: argparse.Namespace) -> int:
    key = LCryptKey.load(args.key_file)
    size = args.image_size
    resize = None if args.inverse else size
    jobs = plan_jobs(args.src, args.dst, overwrite=args.force)
    if args.inverse:
        lossy = [job.source for job in jobs if job.source.suffix.lower() in LOSSY_SUFFIXES]
        if lossy:
            print(
                f"hf-lcrypt: warning: {len(lossy)} input(s), e.g. {lossy[0]}, are JPEG: a re-compressed ciphertext "
                "cannot be decrypted exactly (see docs/lossless.md).",
                file=sys.stderr,
            )
    # Every image must fit a cipher before the first output is written, so that a bad size stops nothing half-way.
    ciphers: dict[tuple[int, int], BlockCipher] = {}
    for job in jobs:
        shape = resize or image_shape(job.source)
        if size is not None and shape != size:
            raise CLIError(
                f"{job.source} is {shape[0]}x{shape[1]}, not the --image-size {size[0]}x{size[1]}; a resized "
                "ciphertext cannot be decrypted."
            )
        if shape not in ciphers:
            if shape[0] % args.block_size or shape[1] % args.block_size:
                hint = "pick multiples" if size else f"pass --image-size with multiples of {args.block_size}"
                raise CLIError(
                    f"{job.source} would be {shape[0]}x{shape[1]}, which the block size {args.block_size} does not "
                    f"divide; {hint} (e.g. --image-size {max(1, round(shape[0] / args.block_size)) * args.block_size})."
                )
            ciphers[shape] = BlockCipher(key, shape, args.block_size, 3, args.steps)

    action = "decrypt" if args.inverse else "encrypt"
    for job in tqdm(jobs, desc=action, unit="img", file=sys.stderr):
        pixels = read_rgb(job.source, resize)
        cipher = ciphers[pixels.shape[:2]]
        write_png(cipher.decrypt(pixels) if args.inverse else cipher.encrypt(pixels), job.target, args.force)
    print(f"{action}ed {len(jobs)} image(s) with key {key.key_id} into {args.dst}", file=sys.stderr)
    return 0


# -- commands implemented by the library's modules ---------------------------------------------------------------------
def add_library_command(
    sub: argparse._SubParsersAction,
    name: str,
    summary: str,
    description: str,
    add_arguments: Callable[[argparse.ArgumentParser], object],
    handler: Callable[[argparse.Namespace], int],
) -> None:
    """A subcommand whose options and handler live in the module that does the work."""
    parser = sub.add_parser(name, help=summary, description=wrap(description))
    add_arguments(parser)
    parser.set_defaults(handler=handler)


def add_publish(sub: argparse._SubParsersAction) -> None:
    from .publishing import add_publish_arguments, run_publish

    add_library_command(
        sub,
        "publish",
        "check a trained keyed model and upload it to the Hugging Face Hub",
        "Build the model repository from MODEL_DIR (weights, config, remote code, processor, model card, metrics "
        "and plots), check it (a fresh process with transformers alone reproduces the logits, the card's "
        "metadata reads back, no file holds the key) and upload it; with --dry-run, only write and check it.",
        add_publish_arguments,
        run_publish,
    )


def add_train(sub: argparse._SubParsersAction) -> None:
    # Its flags (hf-lcrypt's and every transformers TrainingArguments flag) belong to the HfArgumentParser of
    # hf_lcrypt.training, which also prints `hf-lcrypt train --help`: this parser passes everything through.
    parser = sub.add_parser(
        "train",
        help="train and evaluate a keyed image classifier (`hf-lcrypt train --help` for its flags)",
        add_help=False,
        prefix_chars="+",
    )
    parser.add_argument("train_args", nargs=argparse.REMAINDER)
    parser.set_defaults(handler=run_train)


def run_train(args: argparse.Namespace) -> int:
    """`hf-lcrypt train [CONFIG] [--flag VALUE ...]`, the same as `python scripts/train.py`."""
    from .training import main as train_main

    return train_main(args.train_args)


def add_attack(sub: argparse._SubParsersAction) -> None:
    from .attack_report import add_attack_arguments, run_attack

    add_library_command(
        sub,
        "attack",
        "run the attack suite on a keyed model (or the cipher alone) and write a report",
        "Attack a keyed model and its key on images of --data: robustness to corrupted ciphertext, adversarial "
        "examples (white-box and transferred), int8 weight bit flips (random and searched), key recovery from "
        "the weights, access control, and the cipher attacks (jigsaw, known plaintext, metrics). Writes "
        "report.json, report.md and PNG figures into --out; see docs/security.md.",
        add_attack_arguments,
        run_attack,
    )


# -- entry point -------------------------------------------------------------------------------------------------------
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
    add_publish(sub)
    add_train(sub)
    add_attack(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the CLI; returns the exit status (0 on success, 1 for a user-fixable error, 2 for bad usage)."""
    args = build_parser().parse_args(argv)
    try:
        return args.handler(args)
    except (CLIError, ValueError, OSError) as err:
        print(f"hf-lcrypt {args.command}: error: {err}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
