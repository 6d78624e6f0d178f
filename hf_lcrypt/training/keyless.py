"""A run on an encrypted dataset (one with `lcrypt.json`, docs/private-training.md): the trainer holds no key and no
plain image. The geometry comes from the dataset; what needs plain images or the key is refused with the reason; a
key file is accepted only if it is the dataset's key, and then never encrypts anything."""

from __future__ import annotations

import logging
from pathlib import Path

from ..encrypted_datasets import LCRYPT_JSON, EncryptedDatasetError, EncryptedSource
from ..keys import LCryptKey, check_key_id
from .arguments import RunArguments

logger = logging.getLogger(__name__)

PLAIN_AUGMENTATION = (
    "shifts, flips and rotations of plain images, which do not commute with the cipher; the data owner makes such "
    "views before encryption (hf-lcrypt encrypt-dataset --augment-copies N). On ciphertexts use --mixup, "
    "--block_cutmix, --block_erasing, --contrast or --pixel_noise"
)


def prepare_ciphertext_run(args: RunArguments, source: EncryptedSource) -> LCryptKey | None:
    """Check the settings against the encrypted dataset and take its geometry (into `args`). Returns the key only when
    `--key_file` names one, which must be the dataset's; nothing else (no environment variable) is consulted."""
    data, cipher, model = args.data, args.cipher, args.model
    name = data.data
    if cipher.mode != "encrypted":
        raise EncryptedDatasetError(
            f"--mode {cipher.mode} trains on plain images, and {name} holds ciphertexts (it has {LCRYPT_JSON}); "
            "train with --mode encrypted (the default)."
        )
    plain_only = {
        "--augment": data.augment and "augment" in args.given,
        "--augment_orientation": data.augment_orientation,
        "--tta": data.tta,
    }
    for flag, asked in plain_only.items():
        if asked:
            raise EncryptedDatasetError(f"{flag} needs {PLAIN_AUGMENTATION}.")
    data.augment = False  # the default on plain images; here there are none
    if args.distillation.teacher:
        raise EncryptedDatasetError(
            "--teacher: hf-lcrypt's teachers see the plain view of each training image, and this run has only "
            f"ciphertexts ({name}); leave it out."
        )
    if args.attack.attack_weights_only:
        raise EncryptedDatasetError(
            "--attack_weights_only scores a key guessed from the weights against the true key, which this run does "
            "not have; the key holder runs `hf-lcrypt attack --model MODEL --key-file KEY --weights-only ...`."
        )
    if model.from_plain is not None:
        raise EncryptedDatasetError(
            "--from_plain folds a plain checkpoint with the key, which this run does not have; train a preset from a "
            "fresh initialisation (--model), or ask the key holder to fold the checkpoint."
        )
    height, width = source.image_size
    if height != width:
        raise EncryptedDatasetError(f"{name} holds {height}x{width} images; hf-lcrypt's presets take square images.")
    for flag, given, actual in (
        ("--image_size", data.image_size, height),
        ("--block_size", cipher.block_size, source.block_size),
    ):
        if given is not None and given != actual:
            raise EncryptedDatasetError(
                f"{flag} {given} differs from {name}'s {actual} ({LCRYPT_JSON}); leave {flag} out."
            )
    if "cipher_steps" in args.given and sorted(cipher.cipher_steps) != sorted(source.steps):
        raise EncryptedDatasetError(
            f"--cipher_steps {cipher.cipher_steps} differ from {name}'s {source.steps} ({LCRYPT_JSON}); leave it out."
        )
    data.image_size, cipher.block_size, cipher.cipher_steps = height, source.block_size, list(source.steps)
    if not cipher.key_file:
        if args.training.push_to_hub and not args.attack.allow_leaky_weights:
            raise EncryptedDatasetError(
                "--push_to_hub without the key: what the weights alone give away of the key is measured only with it. "
                "Train without --push_to_hub, have the key holder run `hf-lcrypt attack --model OUTPUT_DIR/model "
                "--key-file KEY --data PLAIN_IMAGES`, then `hf-lcrypt publish OUTPUT_DIR/model`; or add "
                "--allow_leaky_weights to publish now with a card that says the leakage was not measured."
            )
        logger.info("Training on ciphertexts of key %s without the key (%s)", source.key_id, name)
        return None
    path = Path(cipher.key_file)
    if not path.is_file():
        raise EncryptedDatasetError(
            f"--key_file {path} does not exist; on an encrypted dataset a key file is never created. Leave --key_file "
            "out to train without the key."
        )
    key = LCryptKey.load(path)
    check_key_id(
        key.key_id,
        source.key_id,
        f"The key file {path}",
        f"{name} was encrypted with",
        "Use that dataset's key file, or leave --key_file out to train without the key.",
        error=EncryptedDatasetError,
    )
    logger.info("Training on ciphertexts of key %s with its key file; nothing is encrypted again", key.key_id)
    return key
