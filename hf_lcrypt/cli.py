"""The `hf-lcrypt` command line.

Each subcommand is one `add_*` function that registers its parser with `sub.add_parser(...)` and sets a handler
with `set_defaults(handler=...)`; a handler takes the parsed arguments and returns an exit status. To add a
command, write both and call the `add_*` function from `build_parser`. Handlers raise `CLIError` (or the
ValueError/OSError of the library) for problems the user can fix; `main` prints those as one line, without a
traceback. The secret key is never printed or logged: only its public key id is.

Only argparse lives here; each handler imports the library (torch, transformers) when it runs, so that `--help` and
`keygen` start fast.
"""

from __future__ import annotations

import argparse
import contextlib
import getpass
import os
import shlex
import sys
import tempfile
import textwrap
import warnings
from collections.abc import Iterator, Sequence
from pathlib import Path

from . import DOCS_URL, __version__
from .attacks import ATTACK_NAMES, CIPHER_ATTACKS
from .keys import ALL_STEPS, KEY_ENV_VAR, MIN_PASSPHRASE_CHARS
from .signals import describe, exit_status, stop_on_sigterm

# Measured by scripts/bench_memory.py (docs/reliability.md).
MEMORY_BOUND = (
    "about 6x the decoded size of the largest image, plus about 0.4 GB (2.5 GB in all for a 12000x12000 RGB image)."
)

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
    from .keys import LCryptKey

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


# -- encrypt / decrypt -------------------------------------------------------------------------------------------------
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
    from .medical_io import parse_window

    try:
        return parse_window(text)
    except ValueError as err:
        raise argparse.ArgumentTypeError(str(err)) from None


def add_encrypt_decrypt(sub: argparse._SubParsersAction) -> None:
    common, medical = cipher_options(), medical_options()
    for name, inverse, summary in (
        ("encrypt", False, "Encrypt images block by block with a secret key"),
        ("decrypt", True, "Decrypt images encrypted by `hf-lcrypt encrypt` with the same key and options"),
    ):
        parser = sub.add_parser(
            name,
            parents=[common] if inverse else [common, medical],
            help=summary.lower(),
            description=wrap(
                f"{summary}. 8-bit images are read as RGB, 16-bit greyscale PNGs keep their 16 bits; DICOM files "
                "(found by content) give one image per frame and NIfTI volumes one per slice; outputs are "
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
    from .folder_run import CipherRun, default_processes

    args.num_proc = args.num_proc or default_processes()
    action = "decrypt" if args.inverse else "encrypt"
    with one_line_warnings(action):
        return CipherRun(args).run()


# -- encrypt-dataset ---------------------------------------------------------------------------------------------------
def add_encrypt_dataset(sub: argparse._SubParsersAction) -> None:
    parser = sub.add_parser(
        "encrypt-dataset",
        help="data owner: build an encrypted Hugging Face dataset that someone without the key can train on",
        description=wrap(
            "Turn labelled images (a folder with one sub-folder per class, a MedMNIST .npz, or a Hub dataset) into an "
            "encrypted Hugging Face dataset in DST: train/validation/test split by content hash (no image in two "
            "splits), optionally N augmented views of every training image made before encryption, parquet with "
            "embedded lossless PNGs that each carry the cipher's public parameters, lcrypt.json (key_id, geometry, "
            "steps; never the key) and a dataset card. The folder is checked (reloads identically, the card reads "
            "back, no file holds the key) before it is moved into place; --push-to-hub uploads it. A trainer runs "
            f"`python scripts/train.py --data DST` without the key: {DOCS_URL}/private-training.md"
        ),
    )
    parser.add_argument("src", metavar="SRC", help="image folder (one sub-folder per class), .npz file or Hub dataset")
    parser.add_argument("dst", metavar="DST", help="new (or empty) output folder")
    add_key_file_argument(parser, "secret key file from `hf-lcrypt keygen`")
    parser.add_argument("--image-size", metavar="S", type=positive_int, required=True, help="side images resize to")
    parser.add_argument(
        "--block-size", metavar="M", type=positive_int, required=True, help="block side in pixels; the ViT's patch size"
    )
    parser.add_argument(
        "--steps", metavar="STEP[,STEP...]", type=steps, default=ALL_STEPS, help="cipher steps (default: all)"
    )
    parser.add_argument(
        "--augment-copies",
        metavar="N",
        type=int,
        default=0,
        help="write N augmented views of every training image (random shift up to 8 %% and horizontal flip, as "
        "training on plain images uses), instead of one plain view; validation and test keep one view (default: 0)",
    )
    parser.add_argument(
        "--augment-orientation", action="store_true", help="views also rotate by multiples of 90 degrees (histology)"
    )
    parser.add_argument("--split-seed", type=int, default=0, help="seed of the content-hash split (default: 0)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the augmentation draws (default: 0)")
    parser.add_argument("--max-per-class", metavar="N", type=positive_int, help="at most N images a class and split")
    parser.add_argument(
        "--allow-encrypted",
        action="store_true",
        help="encrypt SRC even if it already holds hf-lcrypt ciphertexts (refused by default)",
    )
    parser.add_argument("--push-to-hub", metavar="REPO", help="also upload the checked folder as this Hub dataset")
    parser.add_argument("--private", action="store_true", help="create the Hub dataset as private")
    parser.add_argument("--license", help="licence of the dataset, for the card (e.g. cc-by-4.0)")
    parser.set_defaults(handler=run_encrypt_dataset)


def run_encrypt_dataset(args: argparse.Namespace) -> int:
    from .cipher import BlockCipher
    from .encrypted_datasets import build_encrypted_dataset
    from .hub.publish import push_encrypted_dataset, upload_dataset_folder
    from .keys import LCryptKey

    if args.augment_copies < 0:
        raise CLIError(f"--augment-copies must be 0 or more, got {args.augment_copies}.")
    if args.private and not args.push_to_hub:
        raise CLIError("--private applies to --push-to-hub REPO; add it, or leave --private out.")
    key = LCryptKey.load(args.key_file)
    cipher = BlockCipher(key, args.image_size, args.block_size, steps=args.steps)
    dataset, info = build_encrypted_dataset(
        args.src,
        cipher,
        augment_copies=args.augment_copies,
        augment_orientation=args.augment_orientation,
        split_seed=args.split_seed,
        seed=args.seed,
        max_per_class=args.max_per_class,
        allow_encrypted=args.allow_encrypted,
    )
    repo_id = args.push_to_hub or Path(args.dst).name
    result = push_encrypted_dataset(
        dataset, repo_id, cipher, dry_run_dir=args.dst, license=args.license, source=args.src, dataset_info=info
    )
    sizes = ", ".join(f"{name} {len(split)}" for name, split in dataset.items())
    print(f"Encrypted dataset (key {key.key_id}; {sizes} images) checked and written to {result.folder}")
    if args.push_to_hub:
        print(f"Uploaded to {upload_dataset_folder(args.dst, args.push_to_hub, key.key_id, args.private)}")
    return 0


# -- publish -----------------------------------------------------------------------------------------------------------
def add_publish(sub: argparse._SubParsersAction) -> None:
    parser = sub.add_parser(
        "publish",
        help="check a trained keyed model and upload it to the Hugging Face Hub",
        description=wrap(
            "Build the model repository from MODEL_DIR (weights, config, remote code, processor, model card, metrics "
            "and plots), check it (a fresh process with transformers alone reproduces the logits, the card's "
            "metadata reads back, no file holds the key) and upload it; with --dry-run, only write and check it."
        ),
    )
    parser.add_argument(
        "model_dir",
        metavar="MODEL_DIR",
        type=Path,
        help="folder of the trained keyed model (config, weights, processor)",
    )
    parser.add_argument("--repo-id", required=True, help="Hub repository, e.g. user/keyed-vit")
    add_key_file_argument(
        parser,
        "key the model is folded with, used only for the checks (a trainer who never held it leaves it out: the "
        "weights check then reads the key holder's weights_only_attack.json)",
    )
    parser.set_defaults(needs_key_file=trained_with_the_key)
    parser.add_argument(
        "--dry-run", type=Path, metavar="OUT_DIR", help="write and check the repository here, upload nothing"
    )
    parser.add_argument("--private", action="store_true", help="create the repository as private")
    parser.add_argument(
        "--folded-from-public",
        action="store_true",
        help="the weights are a public checkpoint with a key folded in (the key is then recoverable; warns)",
    )
    parser.add_argument(
        "--allow-leaky-weights",
        action="store_true",
        help="publish even if the weights alone give the key's flips or pixel layout away above chance (measured "
        "from weights_only_attack.json, or now with the key), or, without the key and that file, unmeasured; the "
        "card then says so",
    )
    parser.add_argument("--license", default="apache-2.0", help="licence for the card (default: apache-2.0)")
    parser.add_argument("--dataset", help="Hub id or name of the training data, for the card")
    parser.add_argument("--base-model", help="Hub id of the plain model the keyed one was made from, for the card")
    parser.add_argument(
        "--format",
        choices=("keyed", "vit"),
        default="keyed",
        help="keyed (default): the model with its remote code; vit: its standard export (hf-lcrypt export), checked "
        "by a fresh process that loads it without remote code and must give the same logits",
    )
    parser.set_defaults(handler=run_publish)


def trained_with_the_key(args: argparse.Namespace) -> bool:
    """Publishing needs the key (for the secret scan and the weights check) unless the model's metrics.json says it
    was trained on ciphertexts by someone who never held it."""
    import json

    try:
        return not json.loads((args.model_dir / "metrics.json").read_text()).get("trained_without_key")
    except (OSError, ValueError, AttributeError):
        return True


def run_publish(args: argparse.Namespace) -> int:
    import warnings

    from .hub.checks import SecretLeakError
    from .hub.publish import PublicCheckpointWarning, publish_model
    from .keys import LCryptKey

    warnings.simplefilter("always", PublicCheckpointWarning)
    try:
        result = publish_model(
            args.model_dir,
            args.repo_id,
            LCryptKey.load(args.key_file) if args.key_file else None,
            dry_run_dir=args.dry_run,
            private=args.private,
            folded_from_public=args.folded_from_public,
            license=args.license,
            dataset=args.dataset,
            base_model=args.base_model,
            format=args.format,
            allow_leaky_weights=args.allow_leaky_weights,
        )
    except (SecretLeakError, RuntimeError) as err:
        raise CLIError(str(err)) from err
    print(f"Checked {len(result.files)} files: {', '.join(result.files)}")
    if result.skipped:
        print(f"Left out: {', '.join(result.skipped)}")
    print(f"Fresh-process logits match (max difference {result.max_logit_diff:.2g}); no secret in any file.")
    scores, gate = result.weights_only, result.weights_only["gate"]
    if not gate.get("measured", True):
        print("Weights alone: NOT measured (trained without the key), published as allowed; the card says so")
    else:
        print(
            f"Weights alone: {scores['flips_right']:.2f} of the flips (chance {scores['chance_flips_right']:.2f}), "
            f"pixel neighbours {scores['pixel_neighbours_kept']:.2f} (chance "
            f"{scores['chance_pixel_neighbours_kept']:.2f}); "
            + (f"ABOVE CHANCE ({', '.join(gate['leaks'])}), published as allowed" if gate["leaks"] else "at chance")
        )
    print(f"Dry run: the repository is in {result.folder}" if result.url is None else f"Uploaded to {result.url}")
    return 0


# -- export ------------------------------------------------------------------------------------------------------------
def add_export(sub: argparse._SubParsersAction) -> None:
    parser = sub.add_parser(
        "export",
        help="write a keyed model as a plain ViT checkpoint or ONNX graph, for servers without remote code",
        description=wrap(
            "Write the keyed model in MODEL_DIR to OUT (new or empty) in a form any server runs: --format vit, a plain "
            "`model_type: vit` checkpoint (safetensors, a ViTImageProcessor config that only rescales and normalises "
            "ciphertexts of the model's size, a model card) that AutoModelForImageClassification loads without "
            "trust_remote_code on transformers 4.x and 5.x; --format onnx, model.onnx with a dynamic batch size, "
            "checked with ONNX Runtime (needs hf-lcrypt[onnx]). Either gives the keyed model's logits on encrypted "
            "inputs and holds no key; the key holder's client still encrypts (hf-lcrypt classify). A model with an "
            "MLP patch embedding exports to ONNX only."
        ),
    )
    parser.add_argument("model_dir", metavar="MODEL_DIR", type=Path, help="folder of a keyed model")
    parser.add_argument("out", metavar="OUT", type=Path, help="new or empty folder for the export")
    parser.add_argument("--format", choices=("vit", "onnx"), default="vit", help="vit (default) or onnx")
    parser.add_argument("--repo-id", help="Hub repository the card's examples name (default: your-name/OUT)")
    parser.set_defaults(handler=run_export)


def run_export(args: argparse.Namespace) -> int:
    from .export import export_model

    out = export_model(args.model_dir, args.out, args.format, repo_id=args.repo_id)
    print(f"hf-lcrypt export: wrote {args.format} export to {out}: {', '.join(sorted(p.name for p in out.iterdir()))}")
    return 0


# -- train -------------------------------------------------------------------------------------------------------------
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


# -- attack ------------------------------------------------------------------------------------------------------------
def add_attack(sub: argparse._SubParsersAction) -> None:
    parser = sub.add_parser(
        "attack",
        help="run the attack suite on a keyed model (or the cipher alone) and write a report",
        description=wrap(
            "Attack a keyed model and its key on images of --data: robustness to corrupted ciphertext, adversarial "
            "examples (white-box and transferred), int8 weight bit flips (random and searched), key recovery from "
            "the weights, access control, and the cipher attacks (jigsaw, known plaintext, metrics). Writes "
            f"attack_report.json, attack_report.md and PNG figures into --out; see {DOCS_URL}/security.md."
        ),
    )
    parser.add_argument("--data", metavar="DIR", required=True, help="image folder, one sub-folder per class")
    add_key_file_argument(parser, "the key holder's secret key file")
    parser.add_argument(
        "--out",
        metavar="DIR",
        help="folder for the report and figures (optional for a model trained without the key, whose own report "
        "this command completes)",
    )
    parser.add_argument(
        "--model",
        metavar="DIR",
        help="keyed model folder (needed by every attack but the cipher ones). For a model trained without the key, "
        "the checks its report leaves to the key holder (wrong key, plain input, weights only) run by default and "
        "complete the folder's attack_report.json and weights_only_attack.json, which its card and publish read",
    )
    parser.add_argument(
        "--plain-model",
        metavar="DIR",
        help="plain ViT the attacker knows, for transfer and weight attacks (default: the keyed model unfolded "
        "with the key, i.e. the checkpoint it was folded from)",
    )
    parser.add_argument(
        "--attacks",
        metavar="NAME[,NAME...]",
        type=attack_names,
        help=f"comma-separated, run in this order: {','.join(ATTACK_NAMES)} (default: all; without --model: "
        f"{','.join(CIPHER_ATTACKS)})",
    )
    parser.add_argument(
        "--weights-only",
        action="store_true",
        help="run only the attack that guesses the key from the keyed model's weights alone (no image, not the "
        "checkpoint they came from; the key and the images only score it) = --attacks weights-only. With "
        "--plain-model, a plain model the attacker trained on similar images guides the jigsaws. Also writes "
        "weights_only_attack.json into --out (into the model folder itself for a model trained without the key); "
        "in the model folder, the model card quotes it and the publish gate reads it",
    )
    parser.add_argument(
        "--adaptive",
        action="store_true",
        help="with --weights-only: the attacker who knows the key-hiding initialisation, with stronger searches "
        "(every correlation for the flips, scipy's quadratic-assignment solver from many starts for the layouts; "
        "seconds to minutes more) = --attacks weights-only-adaptive",
    )
    parser.add_argument(
        "--max-images", metavar="N", type=positive_int, default=128, help="images sampled (default 128)"
    )
    parser.add_argument("--split", default="test", help="split of --data, carved by content hash (default: test)")
    parser.add_argument("--image-size", metavar="S|HxW", type=image_size, help="cipher geometry without --model")
    parser.add_argument("--block-size", metavar="M", type=positive_int, help="block side without --model")
    parser.add_argument(
        "--steps", metavar="STEP[,STEP...]", type=steps, default=ALL_STEPS, help="cipher steps without --model"
    )
    parser.add_argument("--batch-size", metavar="B", type=positive_int, default=64, help="images per forward pass")
    parser.add_argument("--seed", type=int, default=0, help="seed of the split, the image sample and the attacks")
    parser.set_defaults(handler=run_attack)


def attack_names(text: str) -> tuple[str, ...]:
    names = tuple(name.strip() for name in text.split(",") if name.strip())
    unknown = [name for name in names if name not in ATTACK_NAMES]
    if unknown or not names:
        raise argparse.ArgumentTypeError(
            f"unknown attack(s) {', '.join(unknown)}; choose from {', '.join(ATTACK_NAMES)}"
        )
    return names


def run_attack(args: argparse.Namespace) -> int:
    from .attacks.key_holder import complete_report, default_attacks, pending_conditions
    from .attacks.record import AttackReport
    from .attacks.report import load_sample, run_report
    from .keys import LCryptKey

    pending = pending_conditions(args.model) if args.model else {}
    if args.out is None and not pending:
        raise CLIError("--out is needed: name the folder for the report and figures.")
    key = LCryptKey.load(args.key_file)
    if args.weights_only and args.attacks not in (None, ("weights-only",)):
        raise CLIError("--weights-only runs one attack; leave out --attacks, or name weights-only there instead.")
    if args.adaptive and not args.weights_only:
        raise CLIError("--adaptive strengthens --weights-only; add --weights-only, or name weights-only-adaptive.")
    weights_only = ("weights-only-adaptive" if args.adaptive else "weights-only",)
    default = default_attacks(args.model) if pending else ATTACK_NAMES if args.model else CIPHER_ATTACKS
    attacks = weights_only if args.weights_only else args.attacks or default
    sample, sources = load_sample(
        args.data,
        key,
        args.model,
        args.plain_model,
        args.image_size,
        args.block_size,
        args.steps,
        args.split,
        args.max_images,
        args.seed,
    )
    sample.batch_size = args.batch_size
    with contextlib.ExitStack() as stack:
        out = args.out or stack.enter_context(tempfile.TemporaryDirectory(prefix="hf-lcrypt-attack-"))
        paths = run_report(sample, attacks, out, sources, command=attack_command(args, attacks))
        report = AttackReport.read(paths["json"])
        done = complete_report(args.model, report.attacks, report.sources) if pending else []
    where = paths["md"] if args.out else ", ".join(str(p) for p in done)
    print(f"attacked key {key.key_id} with {', '.join(attacks)} on {len(sample.images)} images: {where}")
    if done:
        left = pending_conditions(args.model)
        print(f"completed {args.model}'s report" + (f"; still for the key holder: {', '.join(left)}" if left else ""))
    return 0


def attack_command(args: argparse.Namespace, attacks: Sequence[str]) -> str:
    """The command line that reproduces an attack report (the key file's path only, never its content)."""
    words = ["hf-lcrypt", "attack", "--data", args.data, "--key-file", args.key_file]
    words += ["--out", args.out] if args.out else []
    for flag in ("model", "plain_model", "image_size", "block_size", "split", "max_images", "seed"):
        value = getattr(args, flag)
        if value is not None:
            text = "x".join(map(str, value)) if isinstance(value, tuple) else str(value)
            words += [f"--{flag.replace('_', '-')}", text]
    if args.model is None:
        words += ["--steps", ",".join(args.steps)]
    return shlex.join([*words, "--attacks", ",".join(attacks)])


# -- classify ----------------------------------------------------------------------------------------------------------
def add_classify(sub: argparse._SubParsersAction) -> None:
    parser = sub.add_parser(
        "classify",
        help="classify images: encrypted here, sent as ciphertext to a model server (or run locally)",
        description=wrap(
            "Classify images with a keyed model while the plain images and the key stay on this machine: each image "
            "is resized and encrypted here, exactly as the model's processor does, and only the encrypted PNG is "
            "sent to the app at --url (space/app.py, locally or on the Hub), which returns the classes. With --model "
            "DIR, the keyed model runs on this machine instead. Prints one line per image, or JSON with --json."
        ),
        epilog=textwrap.dedent(
            """\
            examples:
              hf-lcrypt classify --url http://127.0.0.1:7860/ --key-file hospital.key scans/
              hf-lcrypt classify --url user/space-name --key-file hospital.key scan1.png scan2.jpg --json
              hf-lcrypt classify --model outputs/run/model --key-file outputs/run.key scans/ --top 3
            """
        ),
        formatter_class=argparse.RawDescriptionHelpFormatter,
        parents=[medical_options()],
    )
    where = parser.add_mutually_exclusive_group(required=True)
    where.add_argument("--url", help="address of a running hf-lcrypt app (or a Space id): gets ciphertext only")
    where.add_argument("--model", metavar="DIR", help="a keyed model folder to run on this machine instead")
    add_key_file_argument(parser, "key file the model is folded with; never sent anywhere")
    parser.add_argument(
        "images", nargs="+", metavar="IMAGES", help="image files (also DICOM and NIfTI), or folders of images"
    )
    parser.add_argument("--json", action="store_true", help="print the predictions as JSON")
    parser.add_argument("--top", type=positive_int, default=1, help="classes per image in the table (default: 1)")
    parser.set_defaults(handler=run_classify)


def run_classify(args: argparse.Namespace) -> int:
    import json

    from .client import LocalClassifier, RemoteClassifier, expand_images, format_table
    from .keys import LCryptKey
    from .medical_io import MedicalOptions

    key = LCryptKey.load(args.key_file)
    images = expand_images(args.images, MedicalOptions(args.window, args.keep_bits, args.axis))
    classifier = RemoteClassifier(args.url, key) if args.url else LocalClassifier(args.model, key)
    predictions = classifier.classify(images, progress=True)
    if args.json:
        print(json.dumps([p.to_dict() for p in predictions], indent=2))
    else:
        print(format_table(predictions, args.top))
    failed = [p for p in predictions if p.error is not None]
    if failed:
        print(f"hf-lcrypt classify: {len(failed)} of {len(predictions)} image(s) could not be read:", file=sys.stderr)
        for prediction in failed:
            print(f"  {prediction.image}: {prediction.error}", file=sys.stderr)
        return 1
    return 0


# -- verify-page -------------------------------------------------------------------------------------------------------
def add_verify_page(sub: argparse._SubParsersAction) -> None:
    parser = sub.add_parser(
        "verify-page",
        help="check that a Space's page pins the published hashes of its scripts, and serves those files",
        description=wrap(
            "Fetch the page of an hf-lcrypt app (space/app.py) and compare the Subresource Integrity hashes it "
            "declares for its modules and stylesheet, and the hashes of the files it serves, with those published "
            "in this package. A browser refuses a file that differs from the declared hash; this checks that the "
            "declared hashes are this version's. It cannot show that the server sends every visitor the same page: "
            "for real data, encrypt on your own machine with hf-lcrypt classify --url."
        ),
    )
    parser.add_argument("url", help="address of the app, e.g. http://127.0.0.1:7860/ or https://user-space.hf.space/")
    parser.set_defaults(handler=run_verify_page)


def run_verify_page(args: argparse.Namespace) -> int:
    from .page_integrity import check_page

    checks = check_page(args.url)
    for check in checks:
        if check.ok:
            print(f"ok        {check.name}  {check.published}")
        else:
            problem = "not pinned" if check.declared is None else "DIFFERS"
            print(
                f"{problem:<9} {check.name}  published {check.published}, page {check.declared}, served {check.served}"
            )
    bad = sum(not c.ok for c in checks)
    if bad:
        raise CLIError(f"{bad} of {len(checks)} files are not the published ones: do not trust this page with a key.")
    print(f"All {len(checks)} files pinned and served as published (hf-lcrypt {__version__}).")
    return 0


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


if __name__ == "__main__":
    sys.exit(main())
