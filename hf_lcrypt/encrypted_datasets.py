"""Encrypted datasets that a trainer without the key can train on (docs/private-training.md).

The data owner (plain images and the key) turns a labelled image source into an encrypted Hugging Face dataset:
content-hash splits first, then `augment_copies` augmented views of every training image (shifts and flips do not
commute with the cipher, so they must come before it), then encryption, parquet with embedded PNG bytes, `lcrypt.json`
(the cipher's public description) and a dataset card. The trainer (no key) reads `lcrypt.json`, checks it against every
image's own `hf-lcrypt` PNG chunk, and trains on the ciphertexts as they are.
"""

from __future__ import annotations

import hashlib
import io
import json
import logging
import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from datasets import Dataset, DatasetDict, Features, Image, concatenate_datasets
from PIL import Image as PILImage

from . import png_metadata
from .cipher import BlockCipher
from .data import EMBEDDED_DATASETS, Augment, _Encryptor, encrypt_dataset, load_image_dataset
from .keys import check_key_id

logger = logging.getLogger(__name__)

LCRYPT_JSON = "lcrypt.json"


class EncryptedDatasetError(ValueError):
    """An encrypted dataset that is inconsistent, or settings that do not fit it (printed as one line)."""


_RESAMPLE = PILImage.Resampling.BILINEAR  # as the processor and encrypt_dataset resize


@dataclass(frozen=True)
class EncryptedSource:
    """What `lcrypt.json` says about an encrypted dataset: the cipher's public description, never the key."""

    key_id: str
    image_size: tuple[int, int]
    block_size: int
    channels: int
    steps: list[str]
    dataset_info: dict[str, Any] | None = None

    @classmethod
    def from_dict(cls, values: dict[str, Any], source: str) -> EncryptedSource:
        try:
            return cls(
                key_id=str(values["key_id"]),
                image_size=tuple(int(s) for s in values["image_size"]),
                block_size=int(values["block_size"]),
                channels=int(values.get("channels", 3)),
                steps=list(values["steps"]),
                dataset_info=values.get("dataset"),
            )
        except (KeyError, TypeError, ValueError) as err:
            raise ValueError(
                f"{source}'s {LCRYPT_JSON} is damaged ({err!r}); ask the data owner for a new copy."
            ) from err

    def describe(self) -> dict[str, Any]:
        """In `BlockCipher.describe()`'s form."""
        return {
            "key_id": self.key_id,
            "image_size": list(self.image_size),
            "block_size": self.block_size,
            "channels": self.channels,
            "steps": list(self.steps),
        }


def read_encrypted_source(source: str | os.PathLike) -> EncryptedSource | None:
    """The `lcrypt.json` of a local folder or a Hub dataset repository, or None for a source without one (plain
    images). Reads one small file: no image is loaded."""
    name = os.fspath(source)
    path = Path(name).expanduser()
    if name in EMBEDDED_DATASETS or path.suffix == ".npz":
        return None
    if path.exists():
        file = path / LCRYPT_JSON
        return EncryptedSource.from_dict(json.loads(file.read_text()), name) if file.is_file() else None
    if path.is_absolute() or name.startswith("."):
        return None  # a missing local path: the loader says so
    from huggingface_hub import hf_hub_download
    from huggingface_hub.errors import EntryNotFoundError, HfHubHTTPError, LocalEntryNotFoundError

    try:
        file = hf_hub_download(name, LCRYPT_JSON, repo_type="dataset")
    except (EntryNotFoundError, LocalEntryNotFoundError, HfHubHTTPError, ValueError):
        return None
    return EncryptedSource.from_dict(json.loads(Path(file).read_text()), name)


def image_params(dataset: Dataset, limit: int | None = None) -> Iterator[dict[str, Any] | None]:
    """The `hf-lcrypt` chunk of each image (None where it has none), read from the encoded bytes without decoding the
    pixels; the first `limit` images only, if given."""
    if limit is not None:
        dataset = dataset.select(range(min(limit, len(dataset))))
    raw = dataset.select_columns(["image"]).cast_column("image", Image(decode=False)).with_format("arrow")
    for table in raw.iter(batch_size=1000):
        column = table.column("image").combine_chunks()
        for data, path in zip(column.field("bytes").to_pylist(), column.field("path").to_pylist(), strict=True):
            with PILImage.open(io.BytesIO(data) if data is not None else path) as image:
                yield png_metadata.decode(image.info, path or "an image")


def check_image_metadata(dataset: DatasetDict, source: EncryptedSource, name: str) -> int:
    """Every image's own chunk must agree with `lcrypt.json` (key_id, geometry, steps): one key for every split and
    image. Returns the number of images that carry a chunk (all of them for a dataset made by hf-lcrypt)."""
    expected = png_metadata.cipher_params(source.describe())
    checked = 0
    for split, images in dataset.items():
        for index, params in enumerate(image_params(images)):
            if params is None:
                continue
            check_key_id(
                str(params.get("key_id")),
                source.key_id,
                f"{name}: the key of image {index} of split {split!r}",
                f"{LCRYPT_JSON} names",
                "One dataset must hold one key's ciphertexts: ask the data owner to rebuild it with one key.",
                error=EncryptedDatasetError,
            )
            differ = png_metadata.mismatches(params, expected)
            if differ:
                raise EncryptedDatasetError(
                    f"{name}: image {index} of split {split!r} was encrypted with {', '.join(differ)} against "
                    f"{LCRYPT_JSON}; the dataset is inconsistent. Ask the data owner to rebuild it."
                )
            checked += 1
    if checked == 0:
        logger.warning("%s: no image carries hf-lcrypt's PNG chunk; trusting %s alone.", name, LCRYPT_JSON)
    return checked


def refuse_encrypted(source: str | os.PathLike, dataset: DatasetDict, sample: int = 16) -> None:
    """Refuse to encrypt images that already are ciphertexts (a dataset with `lcrypt.json`, or images that carry the
    chunk): encrypting twice makes a dataset that no key holder can use with either key alone."""
    described = read_encrypted_source(source)
    found = described and described.key_id
    for split in dataset.values():
        found = found or next((p.get("key_id") for p in image_params(split, sample) if p is not None), None)
    if found:
        raise EncryptedDatasetError(
            f"{os.fspath(source)} is already encrypted (key_id {found}); train on it as it is, or pass "
            "--allow-encrypted (allow_encrypted=True) to encrypt the ciphertexts a second time."
        )


def augmentation_text(copies: int, orientation: bool) -> str | None:
    """The card's line on how the training views were made."""
    if copies == 0:
        return None
    turns = ", rotations by multiples of 90 degrees" if orientation else ""
    return (
        f"{copies} views of every training image, each a random shift (up to 8 % of a side, edges mirrored) and "
        f"horizontal flip{turns} of the image resized to the encrypted size, made before encryption; validation and "
        "test hold one unaugmented view of each image"
    )


class _AugmentThenEncrypt:
    """The batch function of one augmented copy: augment (plain, at the encrypted size), then encrypt."""

    def __init__(self, encryptor: _Encryptor, augment: Augment):
        self.encryptor, self.augment = encryptor, augment

    def __call__(self, images: list[PILImage.Image]) -> dict[str, list[dict[str, bytes | None]]]:
        return self.encryptor([self.augment(image) for image in images])


def augmented_train(
    train: Dataset, cipher: BlockCipher, copies: int, augment: Augment, seed: int = 0, batch_size: int = 64
) -> Dataset:
    """`copies` encrypted views of every image of `train`, each augmented (plain) with its own draw. The images are
    resized once to the cipher's size; the draws come from torch's RNG seeded with `seed` and the copy's number."""
    size = (cipher.width, cipher.height)
    encryptor = _Encryptor(cipher, _RESAMPLE)
    base = encryptor.fingerprint(train)
    resized = train.map(
        lambda images: {"image": [im.convert("RGB").resize(size, _RESAMPLE) for im in images]},
        batched=True,
        batch_size=batch_size,
        input_columns="image",
        new_fingerprint=hashlib.blake2b(f"{base}/resize".encode(), digest_size=16).hexdigest(),
        desc="Resizing",
    )
    views = []
    for copy in range(copies):
        torch.manual_seed(seed * 1_000_003 + copy)
        spec = json.dumps([base, "augment", repr(augment), seed, copy])
        views.append(
            resized.map(
                _AugmentThenEncrypt(encryptor, augment),
                batched=True,
                batch_size=batch_size,
                input_columns="image",
                features=Features({**train.features, "image": Image()}),
                new_fingerprint=hashlib.blake2b(spec.encode(), digest_size=16).hexdigest(),
                desc=f"Augmented view {copy + 1}/{copies}, encrypted with key {cipher.key_id}",
            )
        )
    return concatenate_datasets(views)


def build_encrypted_dataset(
    source: str | os.PathLike,
    cipher: BlockCipher,
    augment_copies: int = 0,
    augment_orientation: bool = False,
    split_seed: int = 0,
    seed: int = 0,
    max_per_class: int | None = None,
    allow_encrypted: bool = False,
) -> tuple[DatasetDict, dict[str, Any]]:
    """The data owner's encrypted dataset of `source` (an image folder, a MedMNIST `.npz`, a Hub dataset): splits by
    content hash (`load_image_dataset`) before any augmentation, so no two views of one image straddle splits; then
    `augment_copies` augmented encrypted views of every training image (0: one plain view), and one view of each
    validation and test image. Returns the dataset and its `dataset_info` for `lcrypt.json` and the card."""
    if augment_copies < 0:
        raise ValueError(f"augment_copies must be 0 or more, got {augment_copies}.")
    plain = load_image_dataset(source, seed=split_seed, max_per_class=max_per_class)
    if not allow_encrypted:
        refuse_encrypted(source, plain)
    once = DatasetDict({name: split for name, split in plain.items() if not (augment_copies and name == "train")})
    encrypted = encrypt_dataset(once, cipher)
    if augment_copies:
        augment = Augment(rotate90=augment_orientation)
        train = augmented_train(plain["train"], cipher, augment_copies, augment, seed)
        encrypted = DatasetDict({"train": train, **encrypted})
    info = {
        "split_seed": split_seed,
        "augment_copies": augment_copies,
        "augment_orientation": augment_orientation,
        "augmentation": augmentation_text(augment_copies, augment_orientation),
        "seed": seed,
        "source_images": {name: len(split) for name, split in plain.items()},
    }
    return encrypted, info
