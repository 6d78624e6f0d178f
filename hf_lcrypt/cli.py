"""The `hf-lcrypt` command line.

Each subcommand is one `add_*` function that registers its parser with `sub.add_parser(...)` and sets a handler
with `set_defaults(handler=...)`; a handler takes the parsed arguments and returns an exit status. To add a
command, write both and call the `add_*` function from `build_parser`. Handlers raise `CLIError` (or the
ValueError/OSError of the library) for problems the user can fix; `main` prints those as one line, without a
traceback. The secret key is never printed or logged: only its public key id is.
"""

from __future__ import annotations

import argparse
import contextlib
import getpass
import os
import sys
import textwrap
import warnings
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

from tqdm.auto import tqdm

from . import __version__
from .cipher import ALL_STEPS, BlockCipher
from .image_io import LOSSY_SUFFIXES, READ_ERRORS, ImageInfo, Job, inspect_image, plan_jobs, read_pixels, write_png
from .keys import KEY_ENV_VAR, MIN_PASSPHRASE_CHARS, LCryptKey
from .png_metadata import cipher_params, mismatches

# Measured by scripts/benchmark_memory.py (docs/reliability.md).
MEMORY_BOUND = (
    "about 6x the decoded size of the largest image, plus about 0.4 GB (2.5 GB in all for a 12000x12000 RGB image)."
)
DOCS_URL = "https://github.com/hf-lcrypt/hf-lcrypt/blob/main/docs"  # [project.urls] Homepage; a wheel has no docs/

EPILOG = f"""\
examples:
  hf-lcrypt keygen secret.key                        # new random key; prints its public key id
  hf-lcrypt keygen secret.key --passphrase           # key from a passphrase (asked for, never an argument)
  hf-lcrypt encrypt --key-file secret.key --block-size 16 --image-size 224 photos/ encrypted/
  hf-lcrypt decrypt --key-file secret.key --block-size 16 encrypted/ decrypted/
  hf-lcrypt encrypt --key-file secret.key --block-size 16 --image-size 256x192 scan.jpg scan.enc.png
  hf-lcrypt encrypt --key-file secret.key --block-size 16 --steps block_scramble,pixel_shuffle scans/ out/

The key file can also be named by the {KEY_ENV_VAR} environment variable. Run `hf-lcrypt COMMAND --help` for the
options of a command. What the cipher does: {DOCS_URL}/key-spec.md
What each bad input gets (errors, --resume, --skip-errors, 16-bit images): {DOCS_URL}/reliability.md
"""


class CLIError(Exception):
    """A problem the user can fix; printed without a traceback."""


def wrap(text: str) -> str:
    """Wrap a description by hand: the parsers keep the examples' line breaks, so argparse does not wrap it."""
    return textwrap.fill(text, width=100)


def add_key_file_argument(parser: argparse.ArgumentParser, help_text: str) -> None:
    """`--key-file K`, needed unless the environment variable names a key file (`main` checks that one is given)."""
    parser.add_argument(
        "--key-file",
        metavar="K",
        default=os.environ.get(KEY_ENV_VAR),
        help=f"{help_text}; needed unless ${KEY_ENV_VAR} names one",
    )
    parser.set_defaults(needs_key_file=True)


@contextlib.contextmanager
def one_line_warnings(command: str) -> Iterator[None]:
    """Print the library's warnings (world-readable key file, ciphertexts without parameters) as one plain line."""

    def show(message, category, filename, lineno, file=None, line=None) -> None:
        print(f"hf-lcrypt {command}: warning: {message}", file=sys.stderr)

    with warnings.catch_warnings():
        warnings.simplefilter("default")
        warnings.showwarning = show
        yield


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
    parser.add_argument(
        "--allow-short-passphrase",
        action="store_true",
        help=f"accept a passphrase under {MIN_PASSPHRASE_CHARS} characters (refused otherwise: anyone can try short "
        "phrases quickly)",
    )
    parser.add_argument("--force", action="store_true", help="replace an existing key file")
    parser.set_defaults(handler=run_keygen)


def run_keygen(args: argparse.Namespace) -> int:
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
    parser.add_argument(
        "--to-8bit",
        action="store_true",
        help="read 16-bit greyscale PNGs as 8-bit RGB, windowed linearly from each image's darkest to its brightest "
        "value (default: keep all 16 bits, as a 16-bit greyscale PNG)",
    )
    runs = parser.add_mutually_exclusive_group()
    runs.add_argument("--force", action="store_true", help="overwrite existing output files")
    runs.add_argument(
        "--resume",
        action="store_true",
        help="keep existing outputs that are complete and match these options, redo the rest (e.g. after Ctrl-C)",
    )
    parser.add_argument(
        "--skip-errors",
        action="store_true",
        help="go on past unreadable images and list them at the end (exit status 1 if any failed)",
    )
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
                f"{summary}. 8-bit images are read as RGB, 16-bit greyscale PNGs keep their 16 bits; outputs are "
                f"lossless PNGs (JPEG would destroy the ciphertext: {DOCS_URL}/lossless.md), each written completely "
                "or not at all, and every input is checked before the first is written. Each ciphertext carries its "
                "public parameters (key_id, geometry, steps; never the key), so decrypting with another key, block "
                f"size or steps is refused. Memory: {MEMORY_BOUND}"
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
    repeated = sorted({name for name in names if names.count(name) > 1})
    if repeated:
        raise argparse.ArgumentTypeError(f"step(s) {', '.join(repeated)} named twice; name each step once")
    return names


def run_cipher(args: argparse.Namespace) -> int:
    action = "decrypt" if args.inverse else "encrypt"
    with one_line_warnings(action):
        return CipherRun(args).run()


class CipherRun:
    """One `encrypt`/`decrypt` over files: everything is checked before the first output is written, then each image
    is read, transformed and written atomically; --skip-errors and --resume decide what a bad or done file does."""

    def __init__(self, args: argparse.Namespace):
        self.args = args
        self.action = "decrypt" if args.inverse else "encrypt"
        self.key = LCryptKey.load(args.key_file)
        self.resize = None if args.inverse else args.image_size
        self.jobs = plan_jobs(args.src, args.dst, overwrite=args.force, resume=args.resume)
        self.failures: list[tuple[Job, str]] = []
        self.ciphers: dict[tuple[int, int, int], BlockCipher] = {}
        self.infos: dict[Job, ImageInfo] = {}
        self.written = 0

    def run(self) -> int:
        args = self.args
        if args.inverse:
            lossy = [job.source for job in self.jobs if job.source.suffix.lower() in LOSSY_SUFFIXES]
            if lossy:
                warnings.warn(
                    f"{len(lossy)} input(s), e.g. {lossy[0]}, are JPEG: a re-compressed ciphertext cannot be decrypted "
                    f"exactly ({DOCS_URL}/lossless.md).",
                    stacklevel=1,
                )
        todo = [job for job in self.jobs if self.check(job)]
        unmarked = [job.source for job in todo if self.infos[job].params is None] if args.inverse else []
        if unmarked:
            warnings.warn(
                f"{len(unmarked)} input(s), e.g. {unmarked[0]}, carry no hf-lcrypt parameters (encrypted by an older "
                "version or by hand): a wrong key, block size or steps cannot be detected there and would give noise.",
                stacklevel=1,
            )
        done = [job for job in todo if args.resume and self.is_done(job)]
        todo = [job for job in todo if job not in done]
        try:
            for job in tqdm(todo, desc=self.action, unit="img", file=sys.stderr):
                self.written += self.transform(job)
        except KeyboardInterrupt:
            print(
                f"hf-lcrypt {self.action}: interrupted; {self.written} of {len(todo)} image(s) written, each "
                "complete (no partial files). Run the same command with --resume to do the rest.",
                file=sys.stderr,
            )
            return 130
        kept = f" ({len(done)} complete output(s) kept)" if done else ""
        print(
            f"{self.action}ed {self.written} image(s) with key {self.key.key_id} into {args.dst}{kept}", file=sys.stderr
        )
        if self.failures:
            print(f"hf-lcrypt {self.action}: {len(self.failures)} image(s) failed and were skipped:", file=sys.stderr)
            for job, message in self.failures:
                print(f"  {job.source}: {message}", file=sys.stderr)
            return 1
        return 0

    def fail(self, job: Job, message: str) -> bool:
        """With --skip-errors, note the failure and go on (False); otherwise stop with the file's name and the way
        on (outputs written so far are complete)."""
        if not self.args.skip_errors:
            written = (
                f"; the {self.written} output(s) written are complete: rerun with --resume" if self.written else ""
            )
            raise CLIError(f"{job.source}: {message}{written}. Pass --skip-errors to go on past such files.")
        self.failures.append((job, message))
        return False

    def check(self, job: Job) -> bool:
        """Whether `job` can run: readable, of a size the block size divides, and (decrypt) made with these options."""
        args, size = self.args, self.args.image_size
        try:
            info = inspect_image(job.source)
        except READ_ERRORS as err:
            return self.fail(job, f"cannot be read ({err}); fix or remove it")
        self.infos[job] = info
        shape = self.resize or (info.height, info.width)
        if size is not None and shape != size:
            return self.fail(
                job,
                f"is {shape[0]}x{shape[1]}, not the --image-size {size[0]}x{size[1]} (a resized ciphertext cannot be "
                "decrypted)",
            )
        if shape[0] % args.block_size or shape[1] % args.block_size:
            hint = "pick multiples" if size else f"pass --image-size with multiples of {args.block_size}"
            return self.fail(
                job,
                f"would be {shape[0]}x{shape[1]}, which the block size {args.block_size} does not divide ({hint}, "
                f"e.g. --image-size {max(1, round(shape[0] / args.block_size)) * args.block_size})",
            )
        if args.inverse and info.params is not None:
            expected = cipher_params(self.cipher(shape, self.channels(info)).describe(), info.bits)
            differ = mismatches(info.params, expected)
            if differ:
                found = info.params
                return self.fail(
                    job,
                    f"was encrypted with {', '.join(differ)}, so decrypting it with these options would give noise "
                    f"(use the key file with key_id {found.get('key_id')} and --block-size {found.get('block_size')} "
                    f"--steps {','.join(found.get('steps', []))})",
                )
        return True

    def channels(self, info: ImageInfo) -> int:
        return 1 if info.bits == 16 and not self.args.to_8bit else 3

    def cipher(self, shape: tuple[int, int], channels: int) -> BlockCipher:
        if (*shape, channels) not in self.ciphers:
            self.ciphers[(*shape, channels)] = BlockCipher(
                self.key, shape, self.args.block_size, channels, self.args.steps
            )
        return self.ciphers[(*shape, channels)]

    def is_done(self, job: Job) -> bool:
        """--resume: an existing output counts as done if it reads to the end and matches (encrypt: its parameters)."""
        if not job.target.exists():
            return False
        try:
            info = inspect_image(job.target)
        except READ_ERRORS:
            return False
        source = self.infos[job]
        shape = self.resize or (source.height, source.width)
        if (info.height, info.width) != shape:
            return False
        if self.args.inverse:
            return info.params is None and info.bits == (8 if self.args.to_8bit else source.bits)
        channels = self.channels(source)
        expected = cipher_params(self.cipher(shape, channels).describe(), 16 if channels == 1 else 8)
        return info.params is not None and not mismatches(info.params, expected)

    def transform(self, job: Job) -> bool:
        try:
            pixels = read_pixels(job.source, self.resize, keep_16_bit=not self.args.to_8bit)
        except READ_ERRORS as err:
            return self.fail(job, f"cannot be read ({err}); fix or remove it")
        cipher = self.cipher(pixels.shape[:2], pixels.shape[2])
        overwrite = self.args.force or self.args.resume
        if self.args.inverse:
            write_png(cipher.decrypt(pixels), job.target, overwrite)
        else:
            params = cipher_params(cipher.describe(), bits=pixels.dtype.itemsize * 8)
            write_png(cipher.encrypt(pixels), job.target, overwrite, params)
        return True


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
    from .training import add_arguments, run_from_namespace

    add_library_command(
        sub,
        "train",
        "train and evaluate a keyed image classifier",
        "Train a classifier on encrypted images (--mode encrypted), or a plain ViT that gets the key folded in "
        "afterwards (--mode fold), or the unencrypted baseline (--mode plain); evaluate it on the test split and "
        "under attacks, and write a Hub-ready folder OUTPUT_DIR/model. The same as `python scripts/train.py`; see "
        "docs/training.md.",
        add_arguments,
        run_from_namespace,
    )


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
    parser = build_parser()
    args = parser.parse_args(argv)
    if getattr(args, "needs_key_file", False) and not args.key_file:
        parser.error(f"{args.command} needs a key: pass --key-file K, or set {KEY_ENV_VAR} to the key file's path")
    try:
        return args.handler(args)
    except (CLIError, ValueError, OSError) as err:
        print(f"hf-lcrypt {args.command}: error: {err}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print(f"hf-lcrypt {args.command}: interrupted.", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
