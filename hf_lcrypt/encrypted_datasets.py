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
import math
import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from datasets import Dataset, DatasetDict, Features, Image, concatenate_datasets
from datasets.table import embed_table_storage
from PIL import Image as PILImage
from PIL import PngImagePlugin

from . import png_metadata
from .cipher import BlockCipher, size_pair
from .image_datasets import EMBEDDED_DATASETS, load_image_dataset
from .keys import check_key_id
from .plain_augment import Augment

logger = logging.getLogger(__name__)

LCRYPT_JSON = "lcrypt.json"


class EncryptedDatasetError(ValueError):
    """An encrypted dataset that is inconsistent, or settings that do not fit it (printed as one line)."""


_RESAMPLE = PILImage.Resampling.BILINEAR  # as the processor and encrypt_dataset resize
_ENCRYPT_TAG = "hf_lcrypt.encrypt_dataset/2"  # part of the cache fingerprint: bump when the encrypted output changes


def _png(array: np.ndarray, params: dict[str, Any] | None = None) -> bytes:
    """Uncompressed PNG: deflate shrinks encrypted images by about 10% but takes 2.5 times as long as storing them.
    `params` go into the `hf-lcrypt` text chunk (png_metadata), which the processor and the trainer check."""
    buffer = io.BytesIO()
    pnginfo = None
    if params is not None:
        pnginfo = PngImagePlugin.PngInfo()
        pnginfo.add_text(png_metadata.CHUNK_KEY, png_metadata.encode(params))
    PILImage.fromarray(array).save(buffer, format="PNG", compress_level=0, pnginfo=pnginfo)
    return buffer.getvalue()


def dataset_fingerprint(dataset: Dataset) -> str:
    """datasets' own fingerprint of a dataset (its content and every transform applied), which names its cache files.

    datasets has no public accessor for it (only the private `_fingerprint`); this is the one place that reads it, and
    tests/test_data.py fails if a release renames it or stops changing it with the content."""
    return dataset._fingerprint


class _Encryptor:
    """The batch function of `encrypt_dataset`: RGB, resize, encrypt, back to PIL.

    `num_proc` workers need it pickled, but LCryptKey refuses pickling so that a key never lands in a saved object:
    the state carries the raw secret only over the pipe to datasets' worker processes. `map` always gets an explicit
    fingerprint built from the public key id, so datasets never hashes this object into a cache file name.
    """

    def __init__(self, cipher: BlockCipher, resample: int):
        self.cipher = cipher
        self.resample = int(resample)
        self.params = png_metadata.cipher_params(cipher.describe())

    def fingerprint(self, dataset: Dataset) -> str:
        spec = json.dumps([_ENCRYPT_TAG, dataset_fingerprint(dataset), self.cipher.describe(), self.resample])
        return hashlib.blake2b(spec.encode(), digest_size=16).hexdigest()

    def __call__(self, images: list[PILImage.Image]) -> dict[str, list[dict[str, bytes | None]]]:
        size = (self.cipher.width, self.cipher.height)
        batch = np.stack([np.asarray(im.convert("RGB").resize(size, self.resample)) for im in images])
        return {"image": [{"bytes": _png(array, self.params), "path": None} for array in self.cipher.encrypt(batch)]}

    def __getstate__(self) -> dict[str, Any]:
        return {"secret": self.cipher.key.to_bytes(), "config": self.cipher.describe(), "resample": self.resample}

    def __setstate__(self, state: dict[str, Any]) -> None:
        config = state["config"]
        self.cipher = BlockCipher(
            state["secret"],
            image_size=tuple(config["image_size"]),
            block_size=config["block_size"],
            channels=config["channels"],
            steps=config["steps"],
        )
        self.resample = state["resample"]
        self.params = png_metadata.cipher_params(self.cipher.describe())


def encrypt_dataset(
    dataset: DatasetDict | Dataset,
    cipher: BlockCipher,
    image_size: int | tuple[int, int] | None = None,
    num_proc: int | None = None,
    batch_size: int = 64,
    resample: PILImage.Resampling = PILImage.Resampling.BILINEAR,
) -> DatasetDict | Dataset:
    """Encrypt every image once, ahead of training: convert to RGB, resize to `image_size` (default: the cipher's),
    encrypt as uint8. Labels are kept; images stay lossless PNG, since one changed value breaks decryption.

    Augment before this, never after: flips and crops do not commute with block scrambling.
    """
    size = size_pair(image_size) if image_size else ()
    if size and size != (cipher.height, cipher.width):
        raise ValueError(f"image_size {size} differs from the cipher's {(cipher.height, cipher.width)}.")
    if cipher.channels != 3:
        raise ValueError(f"encrypt_dataset makes RGB images; build the cipher with channels=3, not {cipher.channels}.")
    encryptor = _Encryptor(cipher, resample)

    def encrypt(split: Dataset) -> Dataset:
        return split.map(
            encryptor,
            batched=True,
            batch_size=batch_size,
            input_columns="image",
            num_proc=num_proc,
            features=Features({**split.features, "image": Image()}),
            new_fingerprint=encryptor.fingerprint(split),
            desc=f"Encrypting with key {cipher.key_id}",
        )

    if isinstance(dataset, Dataset):
        return encrypt(dataset)
    return DatasetDict({name: encrypt(split) for name, split in dataset.items()})


def save_encrypted(
    dataset: DatasetDict | Dataset,
    path: str | os.PathLike,
    cipher: BlockCipher | None = None,
    max_shard_size: int = 500 * 2**20,
    overwrite: bool = False,
    dataset_info: dict[str, Any] | None = None,
) -> Path:
    """Write `path/data/<split>-<i>-of-<n>.parquet` with every image's bytes embedded (no file paths), so the folder can
    be moved or uploaded (`huggingface_hub.upload_folder`) and read back by `load_image_dataset(path)`.

    With `cipher`, also writes its public description (key id and geometry, never the secret) to `path/lcrypt.json`,
    so whoever trains on the data can check they hold the matching key, or train without it
    (docs/private-training.md); `dataset_info` (e.g. how the training images were augmented) goes there too.
    """
    path = Path(path)
    data_dir = path / "data"
    existing = sorted(data_dir.glob("*.parquet"))
    if existing and not overwrite:
        raise FileExistsError(f"{data_dir} already holds parquet files; pass overwrite=True to replace them.")
    for old in existing:
        old.unlink()
    data_dir.mkdir(parents=True, exist_ok=True)
    dataset_dict = DatasetDict({"train": dataset}) if isinstance(dataset, Dataset) else dataset
    for split, ds in dataset_dict.items():
        # The backing Arrow table's size, pro rata for a subset (a select() keeps the whole table behind an index).
        nbytes = ds.data.nbytes * len(ds) / max(1, ds.data.num_rows)
        num_shards = max(1, min(len(ds), math.ceil(nbytes / max_shard_size)))
        for index in range(num_shards):
            shard = ds.shard(num_shards, index, contiguous=True).with_format("arrow")
            shard = shard.map(embed_table_storage, batched=True, keep_in_memory=True, desc=f"Embedding {split} images")
            shard.to_parquet(str(data_dir / f"{split}-{index:05d}-of-{num_shards:05d}.parquet"))
    if cipher is not None:
        description = {**cipher.describe(), **({"dataset": dataset_info} if dataset_info else {})}
        (path / "lcrypt.json").write_text(json.dumps(description, indent=2) + "\n")
    return path


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
