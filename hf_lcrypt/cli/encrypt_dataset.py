"""`hf-lcrypt encrypt-dataset`: the data owner builds an encrypted dataset that a trainer without the key can use."""

from __future__ import annotations

import argparse
from pathlib import Path

from .. import DOCS_URL
from ..keys import ALL_STEPS
from .options import CLIError, add_command, add_key_file_argument, positive_int, steps


def add_encrypt_dataset(sub: argparse._SubParsersAction) -> None:
    parser = add_command(
        sub,
        "encrypt-dataset",
        run_encrypt_dataset,
        "data owner: build an encrypted Hugging Face dataset that someone without the key can train on",
        "Turn labelled images (a folder with one sub-folder per class, a MedMNIST .npz, or a Hub dataset) into an "
        "encrypted Hugging Face dataset in DST: train/validation/test split by content hash (no image in two "
        "splits), optionally N augmented views of every training image made before encryption, parquet with "
        "embedded lossless PNGs that each carry the cipher's public parameters, lcrypt.json (key_id, geometry, "
        "steps; never the key) and a dataset card. The folder is checked (reloads identically, the card reads "
        "back, no file holds the key) before it is moved into place; --push-to-hub uploads it. A trainer runs "
        f"`python scripts/train.py --data DST` without the key: {DOCS_URL}/private-training.md",
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


def run_encrypt_dataset(args: argparse.Namespace) -> int:
    from ..cipher import BlockCipher
    from ..encrypted_datasets import build_encrypted_dataset
    from ..hub.publish import push_encrypted_dataset, upload_dataset_folder
    from ..keys import LCryptKey

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
