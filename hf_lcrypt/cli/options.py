"""What several commands share: argument types, parent parsers, the key-file option, one-line errors and warnings."""

from __future__ import annotations

import argparse
import contextlib
import os
import sys
import textwrap
import warnings
from collections.abc import Callable, Iterator
from typing import Any

from .. import DOCS_URL
from ..keys import ALL_STEPS, KEY_ENV_VAR

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
    return textwrap.fill(text, width=100, break_on_hyphens=False)


def add_command(
    sub: argparse._SubParsersAction,
    name: str,
    handler: Callable[[argparse.Namespace], int],
    summary: str,
    description: str,
    **kwargs: Any,
) -> argparse.ArgumentParser:
    """Register command `name`: `summary` in the list of commands, `description` (wrapped here, so that an epilog
    keeps its line breaks) atop its --help, `handler` to run it; `kwargs` go to `add_parser` (parents, epilog)."""
    parser = sub.add_parser(
        name,
        help=summary,
        description=wrap(description),
        formatter_class=argparse.RawDescriptionHelpFormatter,
        **kwargs,
    )
    parser.set_defaults(handler=handler)
    return parser


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


def medical_options() -> argparse.ArgumentParser:
    """How encrypt reads DICOM files and NIfTI volumes (the `[medical]` extra); an argparse parent parser."""
    parser = argparse.ArgumentParser(add_help=False)
    group = parser.add_argument_group("DICOM and NIfTI (pip install 'hf-lcrypt[medical]')")
    group.add_argument(
        "--window",
        metavar="W",
        type=window,
        default="file",
        help="intensity window to 8 bits, after the modality LUT (e.g. CT to Hounsfield units): file (the file's "
        "first VOI window or LUT, else its full range; file:2 for its second), full (each image's range), "
        "CENTRE,WIDTH (e.g. 40,80), or a preset: brain, subdural, stroke, soft-tissue, mediastinum, liver, lung, "
        "bone. MONOCHROME1 is inverted; colour is read as RGB (default: file)",
    )
    group.add_argument(
        "--keep-bits",
        action="store_true",
        help="keep the exact stored values as 16-bit greyscale instead of windowing (signed images are offset to "
        "unsigned, and the ciphertext records the offset); greyscale with at most 16 bits stored only",
    )
    group.add_argument(
        "--axis",
        choices=("axial", "coronal", "sagittal"),
        default="axial",
        help="NIfTI volumes give one image per slice along this axis (default: axial)",
    )
    return parser


def window(text: str) -> str | tuple[float, float]:
    from ..medical_io import parse_window

    try:
        return parse_window(text)
    except ValueError as err:
        raise argparse.ArgumentTypeError(str(err)) from None


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
