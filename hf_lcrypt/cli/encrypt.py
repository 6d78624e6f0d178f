"""`hf-lcrypt encrypt` and `decrypt`: images and folders, block by block, with a secret key (`folder_run` runs them)."""

from __future__ import annotations

import argparse

from .. import DOCS_URL
from ..keys import ALL_STEPS
from .options import (
    EPILOG,
    add_command,
    add_key_file_argument,
    image_size,
    medical_options,
    one_line_warnings,
    positive_int,
    steps,
)

# Measured by scripts/bench_memory.py (docs/reliability.md).
MEMORY_BOUND = (
    "about 6x the decoded size of the largest image, plus about 0.4 GB (2.5 GB in all for a 12000x12000 RGB image)."
)


def cipher_options() -> argparse.ArgumentParser:
    """Options shared by encrypt and decrypt (an argparse parent parser)."""
    parser = argparse.ArgumentParser(add_help=False)
    parser.add_argument(
        "src",
        metavar="SRC",
        help="an image, or a folder searched recursively for PNG/JPEG images (encrypt: also DICOM and NIfTI)",
    )
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
    parser.add_argument(
        "--num-proc",
        metavar="N",
        type=positive_int,
        help="images transformed by N processes at once (default: all cores); outputs are the same for any N",
    )
    return parser


def add_encrypt_decrypt(sub: argparse._SubParsersAction) -> None:
    common, medical = cipher_options(), medical_options()
    for name, inverse, summary in (
        ("encrypt", False, "Encrypt images block by block with a secret key"),
        ("decrypt", True, "Decrypt images encrypted by `hf-lcrypt encrypt` with the same key and options"),
    ):
        parser = add_command(
            sub,
            name,
            run_cipher,
            summary.lower(),
            f"{summary}. 8-bit images are read as RGB, 16-bit greyscale PNGs keep their 16 bits; DICOM files (found "
            "by content) give one image per frame and NIfTI volumes one per slice; outputs are lossless PNGs (JPEG "
            f"would destroy the ciphertext: {DOCS_URL}/lossless.md), each written completely or not at all, and every "
            "input is checked before the first is written. Each ciphertext carries its public parameters (key_id, "
            "geometry, steps; never the key), so decrypting with another key, block size or steps is refused. "
            f"Memory: {MEMORY_BOUND}",
            parents=[common] if inverse else [common, medical],
            epilog=EPILOG,
        )
        parser.set_defaults(inverse=inverse)


def run_cipher(args: argparse.Namespace) -> int:
    from .folder_run import CipherRun, default_processes

    args.num_proc = args.num_proc or default_processes()
    action = "decrypt" if args.inverse else "encrypt"
    with one_line_warnings(action):
        return CipherRun(args).run()
