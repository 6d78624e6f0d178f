"""Labelled image datasets: loading (image folders, MedMNIST files, the Hub), leak-free splits, pre-encryption.

Every loader returns a `DatasetDict` with `train`/`validation`/`test` splits and two columns: `image` (decoded to
PIL) and `label` (a `ClassLabel` with class names).

Duplicates are found by hashing the *encoded* image: the bytes embedded in the dataset, or else the file at the
image's path. That catches the byte-identical copies known in the brain MRI set, costs a file read per image instead
of a decode, and needs no choice of colour mode. The same picture encoded twice differently is not caught, and
neither are near-duplicates such as LC25000's augmented copies.
"""

from __future__ import annotations

import hashlib
import io
import itertools
import json
import logging
import math
import os
import time
from collections import Counter, defaultdict
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from importlib import resources
from pathlib import Path
from typing import IO, Any, Literal, overload

import datasets
import numpy as np
import torch
from datasets import ClassLabel, Dataset, DatasetDict, Features, Image
from datasets.table import embed_table_storage
from PIL import Image as PILImage
from PIL import PngImagePlugin

from . import medical_io, png_metadata
from .cipher import BlockCipher, size_pair
from .image_processing_lcrypt import LCryptImageProcessor

logger = logging.getLogger(__name__)

SPLITS = ("train", "validation", "test")
DEFAULT_DATASET = "breastmnist"
# Names that load a dataset shipped in hf_lcrypt/assets (see the README there for licence and citation).
EMBEDDED_DATASETS = {"default": "breastmnist.npz", "breastmnist": "breastmnist.npz"}
# Class names of MedMNIST files, by file stem; MedMNIST .npz files store only the ids.
MEDMNIST_CLASS_NAMES = {
    "breastmnist": ("malignant", "normal_or_benign"),
    "pneumoniamnist": ("normal", "pneumonia"),
}
_NPZ_SPLITS = {"train": "train", "val": "validation", "test": "test"}
_SPLIT_ALIASES = {"val": "validation", "valid": "validation", "dev": "validation", "eval": "validation"}
# The batch key of the teacher's view of each training image (`ImageTransform` writes it, the distillation reads it).
TEACHER_INPUTS = "teacher_pixel_values"
_ENCRYPT_TAG = "hf_lcrypt.encrypt_dataset/2"  # part of the cache fingerprint: bump when the encrypted output changes


@dataclass
class SplitReport:
    """What `split_by_content` found and did: duplicate counts and the size of every class in every split."""

    num_images: int
    duplicate_groups: int  # distinct images that occur more than once
    duplicate_files: int  # copies beyond the first of each such image
    conflicting_groups: int  # duplicate groups whose copies carry different labels
    split_sizes: dict[str, dict[str, int]]  # split -> class name -> number of images
    seconds: float

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def __str__(self) -> str:
        sizes = "; ".join(
            f"{split} {sum(counts.values())} ({', '.join(f'{name} {n}' for name, n in counts.items())})"
            for split, counts in self.split_sizes.items()
        )
        return (
            f"{self.num_images} images, {self.duplicate_files} byte-identical duplicate files in "
            f"{self.duplicate_groups} groups ({self.conflicting_groups} with conflicting labels), each group kept in "
            f"one split; {sizes}; hashed and split in {self.seconds:.1f} s."
        )


# -- loading -------------------------------------------------------------------------------------------------------
@overload
def load_image_dataset(
    source: str | os.PathLike = ...,
    *,
    class_names: Sequence[str] | None = ...,
    val_fraction: float = ...,
    test_fraction: float = ...,
    seed: int = ...,
    max_per_class: int | None = ...,
    image_column: str | None = ...,
    label_column: str | None = ...,
    cache_dir: str | os.PathLike | None = ...,
    return_report: Literal[False] = ...,
) -> DatasetDict: ...


@overload
def load_image_dataset(
    source: str | os.PathLike = ...,
    *,
    class_names: Sequence[str] | None = ...,
    val_fraction: float = ...,
    test_fraction: float = ...,
    seed: int = ...,
    max_per_class: int | None = ...,
    image_column: str | None = ...,
    label_column: str | None = ...,
    cache_dir: str | os.PathLike | None = ...,
    return_report: Literal[True],
) -> tuple[DatasetDict, SplitReport | None]: ...


def load_image_dataset(
    source: str | os.PathLike = "default",
    *,
    class_names: Sequence[str] | None = None,
    val_fraction: float = 0.1,
    test_fraction: float = 0.1,
    seed: int = 0,
    max_per_class: int | None = None,
    image_column: str | None = None,
    label_column: str | None = None,
    cache_dir: str | os.PathLike | None = None,
    return_report: bool = False,
) -> DatasetDict | tuple[DatasetDict, SplitReport | None]:
    """Load a labelled image dataset as train/validation/test with `image` and `label` (named `ClassLabel`) columns.

    `source` is one of:
    - `"default"` or `"breastmnist"`: BreastMNIST, shipped with the package (official splits);
    - a MedMNIST-style `.npz` file (official splits; class names from `class_names`, else `MEDMNIST_CLASS_NAMES`
      by file stem, else the ids);
    - a folder: images in one sub-folder per class (optionally under `train/`, `test/`... split folders), a dataset
      written by `save_to_disk`, or parquet files laid out like a Hub dataset (as `save_encrypted` writes them);
    - a Hub dataset id, read with `datasets.load_dataset`.

    Missing validation/test splits are carved out of `train` with `split_by_content` (stratified, duplicates kept
    together) using `val_fraction`/`test_fraction` and `seed`. `max_per_class` then keeps at most that many images of
    each class in each split, for quick runs. `image_column`/`label_column` name the columns when the source does not
    use `image`/`label` and has several candidates. With `return_report=True`, also returns the `SplitReport` (None
    when the source had all three splits).
    """
    dataset_dict = _standardise(_load_source(source, class_names, cache_dir), image_column, label_column, class_names)
    if "train" not in dataset_dict:
        raise ValueError(f"{source} has the splits {list(dataset_dict)}; hf-lcrypt needs at least a 'train' split.")
    report = None
    if "validation" not in dataset_dict or "test" not in dataset_dict:
        carved, report = split_by_content(
            dataset_dict["train"],
            val_fraction=0.0 if "validation" in dataset_dict else val_fraction,
            test_fraction=0.0 if "test" in dataset_dict else test_fraction,
            seed=seed,
        )
        dataset_dict = DatasetDict({**dataset_dict, **carved})
        logger.info("Split %s by content: %s", source, report)
    order = [s for s in SPLITS if s in dataset_dict] + [s for s in dataset_dict if s not in SPLITS]
    dataset_dict = DatasetDict({s: dataset_dict[s] for s in order})
    if max_per_class is not None:
        dataset_dict = DatasetDict({s: subsample_per_class(ds, max_per_class, seed) for s, ds in dataset_dict.items()})
    return (dataset_dict, report) if return_report else dataset_dict


def label_maps(dataset: Dataset | DatasetDict) -> tuple[dict[int, str], dict[str, int]]:
    """`(id2label, label2id)` from the `label` ClassLabel, as a transformers model config wants them."""
    first = next(iter(dataset.values())) if isinstance(dataset, DatasetDict) else dataset
    names = _class_label(first).names
    return dict(enumerate(names)), {name: i for i, name in enumerate(names)}


def _load_source(
    source: str | os.PathLike, class_names: Sequence[str] | None, cache_dir: str | os.PathLike | None
) -> DatasetDict:
    name = os.fspath(source)
    cache = None if cache_dir is None else os.fspath(cache_dir)
    if name in EMBEDDED_DATASETS:
        with resources.files(__package__).joinpath("assets", EMBEDDED_DATASETS[name]).open("rb") as file:
            return _load_npz(file, class_names or MEDMNIST_CLASS_NAMES[DEFAULT_DATASET])
    path = Path(name).expanduser()
    if path.suffix == ".npz":
        if not path.is_file():
            raise FileNotFoundError(f"No MedMNIST file at {path}.")
        return _load_npz(path, class_names or MEDMNIST_CLASS_NAMES.get(path.stem.lower()))
    if path.is_dir() and ((path / "dataset_dict.json").is_file() or (path / "state.json").is_file()):
        loaded = datasets.load_from_disk(str(path))
    elif path.is_dir() and medical_io.holds_medical(path):  # DICOM/NIfTI, which imagefolder does not read
        loaded = medical_io.image_folder(path)
    elif path.is_dir() and not any(path.rglob("*.parquet")):
        loaded = datasets.load_dataset("imagefolder", data_dir=str(path), cache_dir=cache)
    elif path.is_dir():  # parquet files laid out like a Hub dataset repository (as save_encrypted writes them)
        loaded = _load_parquet_folder(path, cache)
    elif not path.exists() and (path.is_absolute() or name.startswith(".") or name.count("/") > 1):  # no Hub id
        raise FileNotFoundError(f"No dataset at {path}: give an image folder, a .npz file or a Hub dataset id.")
    else:  # a Hub dataset id
        try:
            loaded = datasets.load_dataset(name, cache_dir=cache)
        except ConnectionError as err:  # a mistyped relative folder reads like a Hub id too: say both
            if path.exists():
                raise
            raise FileNotFoundError(
                f"No folder {path} here ({Path.cwd()}), and the Hub could not be reached to look for a dataset "
                f"{name!r} ({err}); check the path, or the dataset id and the connection."
            ) from None
    return loaded if isinstance(loaded, DatasetDict) else DatasetDict({"train": loaded})


def _load_parquet_folder(path: Path, cache: str | None) -> DatasetDict:
    """The parquet files of a local folder, split by their names as on the Hub, resolved to files first: by folder,
    datasets caches them under the folder's name and card config alone, so a second folder of the same name (another
    encrypted dataset, another key) would silently load the first one's rows."""
    from datasets.data_files import DataFilesDict, get_data_patterns

    files = DataFilesDict.from_patterns(get_data_patterns(str(path)), base_path=str(path))
    return datasets.load_dataset("parquet", data_files={split: list(f) for split, f in files.items()}, cache_dir=cache)


def _load_npz(file: str | os.PathLike | IO[bytes], class_names: Sequence[str] | None) -> DatasetDict:
    """MedMNIST layout: `<split>_images` (N,H,W) or (N,H,W,C) uint8 and `<split>_labels` (N,) or (N,1)."""
    with np.load(file) as arrays:
        wanted = [f"{key}_{kind}" for key in _NPZ_SPLITS for kind in ("images", "labels")]
        missing = [k for k in wanted if k not in arrays.files]
        if missing:
            raise ValueError(f"Not a MedMNIST file: it lacks {missing} (it has {arrays.files}).")
        images = {split: arrays[f"{key}_images"] for key, split in _NPZ_SPLITS.items()}
        labels = {split: arrays[f"{key}_labels"] for key, split in _NPZ_SPLITS.items()}
    for split, values in labels.items():
        if values.ndim > 2 or (values.ndim == 2 and values.shape[1] != 1):
            raise ValueError(f"{split} labels have shape {values.shape}; hf-lcrypt handles single-label (N,) or (N,1).")
        labels[split] = values.reshape(-1).astype(np.int64)
    num_classes = max(int(v.max()) for v in labels.values()) + 1
    names = list(class_names) if class_names is not None else [str(i) for i in range(num_classes)]
    if len(names) < num_classes:
        raise ValueError(f"The labels go up to {num_classes - 1} but only {len(names)} class names were given.")
    features = Features({"image": Image(), "label": ClassLabel(names=names)})
    return DatasetDict(
        {
            split: Dataset.from_dict({"image": list(images[split]), "label": labels[split]}, features=features)
            for split in images
        }
    )


def _find_column(features: Features, preferred: Sequence[str], kind: type) -> str:
    for name in preferred:
        if name in features:
            return name
    matches = [name for name, feature in features.items() if isinstance(feature, kind)]
    if not matches and kind is ClassLabel and list(features) == ["image"]:  # what imagefolder gives one class
        raise ValueError(
            "The images have no labels: an image folder needs one sub-folder per class, and at least two (this one has "
            "one class folder, or images at its top)."
        )
    if len(matches) != 1:
        raise ValueError(
            f"Cannot tell which column holds the {preferred[0]}s among {list(features)}; pass {preferred[0]}_column=..."
        )
    return matches[0]


def _standardise(
    dataset_dict: DatasetDict,
    image_column: str | None,
    label_column: str | None,
    class_names: Sequence[str] | None,
) -> DatasetDict:
    """Rename splits and columns to train/validation/test and image/label, and make `label` a named ClassLabel."""
    dataset_dict = DatasetDict({_SPLIT_ALIASES.get(name, name): ds for name, ds in dataset_dict.items()})
    features = next(iter(dataset_dict.values())).features
    image_column = image_column or _find_column(features, ("image", "img"), Image)
    label_column = label_column or _find_column(features, ("label", "labels"), ClassLabel)
    dataset_dict = dataset_dict.select_columns([image_column, label_column])
    renames = {old: new for old, new in ((image_column, "image"), (label_column, "label")) if old != new}
    if renames:
        dataset_dict = dataset_dict.rename_columns(renames)
    features = next(iter(dataset_dict.values())).features
    if features["image"] != Image():
        dataset_dict = dataset_dict.cast_column("image", Image())
    label = features["label"]
    if isinstance(label, ClassLabel) and (class_names is None or list(class_names) == label.names):
        return dataset_dict
    if isinstance(label, ClassLabel) and len(class_names) != label.num_classes:
        raise ValueError(f"The dataset has {label.num_classes} classes {label.names}, but {len(class_names)} names.")
    if class_names is None:  # plain values: one class per distinct value over all splits, so ids agree between splits
        values = sorted(set().union(*(ds.unique("label") for ds in dataset_dict.values())))
        if all(isinstance(v, int | np.integer) for v in values):
            class_names = [str(i) for i in range(max(values) + 1)]
        else:
            class_names = [str(v) for v in values]
    return dataset_dict.cast_column("label", ClassLabel(names=list(class_names)))


def _class_label(dataset: Dataset) -> ClassLabel:
    label = dataset.features.get("label")
    if not isinstance(label, ClassLabel):
        raise ValueError(
            f"Expected a 'label' column of type ClassLabel, got {label!r}; load data with load_image_dataset."
        )
    return label


# -- split hygiene -------------------------------------------------------------------------------------------------
def content_hashes(dataset: Dataset, image_column: str = "image") -> list[str]:
    """BLAKE2b-128 (hex) of each row's encoded image: its embedded bytes, else the file at its path. Decodes nothing."""
    raw = dataset.select_columns([image_column]).cast_column(image_column, Image(decode=False)).with_format("arrow")
    hashes = []
    for table in raw.iter(batch_size=1000):
        column = table.column(image_column).combine_chunks()
        for data, path in zip(column.field("bytes").to_pylist(), column.field("path").to_pylist(), strict=True):
            encoded = Path(path).read_bytes() if data is None else data
            hashes.append(hashlib.blake2b(encoded, digest_size=16).hexdigest())
    return hashes


def split_fingerprints(hashes: dict[str, list[str]]) -> dict[str, str]:
    """One BLAKE2b-128 per split over its sorted `content_hashes`: equal when two runs' splits hold the same images,
    whatever path or order they were read in, and naming no image (a teacher's `metrics.json` can be shared)."""
    return {
        name: hashlib.blake2b("\n".join(sorted(digests)).encode(), digest_size=16).hexdigest()
        for name, digests in hashes.items()
    }


def split_by_content(
    dataset: Dataset, val_fraction: float = 0.1, test_fraction: float = 0.1, seed: int = 0
) -> tuple[DatasetDict, SplitReport]:
    """Stratified train/validation/test splits in which all copies of an image land in the same split.

    A random split that ignores duplicates puts copies of training images into validation and test and inflates the
    scores. Here rows are grouped by `content_hashes`; each group goes, whole, to the split furthest below its target
    size for the group's class (its most common label, the first copy's on a tie). Groups are visited in a seeded
    random order, so each class's split sizes end within one group of their targets. Splits of fraction 0 are left out.
    """
    if val_fraction < 0 or test_fraction < 0 or val_fraction + test_fraction >= 1:
        raise ValueError(
            f"val_fraction ({val_fraction}) and test_fraction ({test_fraction}) must be >= 0 and sum to less than 1."
        )
    start = time.perf_counter()
    class_names = _class_label(dataset).names
    labels = np.asarray(dataset["label"], dtype=np.int64)
    by_content: dict[str, list[int]] = defaultdict(list)
    for index, digest in enumerate(content_hashes(dataset)):
        by_content[digest].append(index)
    groups = list(by_content.values())
    group_labels = np.array([Counter(labels[g].tolist()).most_common(1)[0][0] for g in groups], dtype=np.int64)

    fractions = {"train": 1.0 - val_fraction - test_fraction, "validation": val_fraction, "test": test_fraction}
    names = [s for s in SPLITS if fractions[s] > 0]
    chosen: dict[str, list[int]] = {s: [] for s in names}
    rng = np.random.default_rng(seed)
    for cls in np.unique(group_labels):
        members = [groups[i] for i in np.flatnonzero(group_labels == cls)]
        total = sum(len(g) for g in members)
        filled = dict.fromkeys(names, 0)
        for k in rng.permutation(len(members)):
            split = max(names, key=lambda s: fractions[s] * total - filled[s])
            filled[split] += len(members[k])
            chosen[split].extend(members[k])

    result = DatasetDict({s: dataset.select(sorted(chosen[s])) for s in names})
    sizes = {
        s: dict(zip(class_names, np.bincount(labels[chosen[s]], minlength=len(class_names)).tolist(), strict=True))
        for s in names
    }
    copies = [g for g in groups if len(g) > 1]
    report = SplitReport(
        num_images=len(labels),
        duplicate_groups=len(copies),
        duplicate_files=sum(len(g) - 1 for g in copies),
        conflicting_groups=sum(len(set(labels[g].tolist())) > 1 for g in copies),
        split_sizes=sizes,
        seconds=time.perf_counter() - start,
    )
    return result, report


def subsample_per_class(dataset: Dataset, max_per_class: int, seed: int = 0) -> Dataset:
    """At most `max_per_class` rows of each class, picked by a seeded shuffle (the same rows every run), in order."""
    if max_per_class < 1:
        raise ValueError(f"max_per_class must be at least 1, got {max_per_class}.")
    labels = np.asarray(dataset["label"], dtype=np.int64)
    order = np.random.default_rng(seed).permutation(len(labels))
    rank = np.empty(len(labels), dtype=np.int64)  # position of each shuffled row among the rows of its class
    for cls in np.unique(labels):
        in_class = labels[order] == cls
        rank[in_class] = np.arange(in_class.sum())
    return dataset.select(np.sort(order[rank < max_per_class]))


# -- encryption ----------------------------------------------------------------------------------------------------
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


# -- a training run's data -----------------------------------------------------------------------------------------
def cross_split_duplicates(hashes: dict[str, list[str]]) -> dict[str, int]:
    """Byte-identical images shared by two splits (from each split's `content_hashes`): leaks that inflate validation
    and test scores."""
    sets = {name: set(digests) for name, digests in hashes.items()}
    return {f"{a}/{b}": len(sets[a] & sets[b]) for a, b in itertools.combinations(sets, 2)}


@dataclass
class DataSummary:
    """What a training run's data was, for metrics.json: split sizes, classes, the duplicate report and one
    fingerprint per split (`split_fingerprints`, which names no image)."""

    splits: dict[str, int]
    classes: list[str]
    duplicates: dict[str, Any]
    split_fingerprints: dict[str, str]


def load_training_data(
    source: str, split_seed: int = 0, max_per_class: int | None = None
) -> tuple[DatasetDict, DataSummary]:
    """`load_image_dataset` plus the checks a training run reports: duplicates (within a source split by content,
    across splits for a source with its own) and the split fingerprints a `--teacher` is checked against."""
    dataset, split_report = load_image_dataset(source, seed=split_seed, max_per_class=max_per_class, return_report=True)
    hashes = {name: content_hashes(split) for name, split in dataset.items()}
    duplicates = (
        {"source": "split_by_content", **split_report.to_dict()}
        if split_report is not None
        else {"source": "given splits", "cross_split_overlap": cross_split_duplicates(hashes)}
    )
    summary = DataSummary(
        splits={name: len(split) for name, split in dataset.items()},
        classes=list(label_maps(dataset)[0].values()),
        duplicates=duplicates,
        split_fingerprints=split_fingerprints(hashes),
    )
    logger.info("Data %s: %s; duplicates: %s", source, summary.splits, duplicates)
    for name, split in dataset.items():
        missing = sorted(set(summary.classes) - {summary.classes[label] for label in split["label"]})
        if missing and name != "train":
            logger.warning(
                "Class(es) %s have no image in the %s split (too few images to split three ways): their scores there "
                "are undefined, written as null in metrics.json. Add images of them, or merge or drop the class.",
                missing,
                name,
            )
    return dataset, summary


# -- training transforms: augmentation of plain images, encryption on the fly, mixup -------------------------------
@dataclass(frozen=True)
class Augment:
    """Random translation (by up to `max_shift` of each side, mirroring the edges in), horizontal flip and, with
    `rotate90`, rotation by a random multiple of 90 degrees (meant for square images: a quarter turn swaps height
    and width) of a plain image, at its own resolution; the processor resizes afterwards. Draws from torch's RNG,
    which the Trainer seeds (and the DataLoader per worker).

    Small shifts rather than random resized crops: on BreastMNIST's 28x28 images crops of 70-100 % of the area left
    a small ViT underfitting (test accuracy 0.74 against 0.80 with shifts).
    """

    max_shift: float = 0.08
    flip: bool = True
    rotate90: bool = False

    def __call__(self, image: PILImage.Image) -> PILImage.Image:
        pixels = np.asarray(image.convert("RGB"))
        height, width = pixels.shape[:2]
        pad_y, pad_x = round(self.max_shift * height), round(self.max_shift * width)
        if pad_y or pad_x:
            padded = np.pad(pixels, ((pad_y, pad_y), (pad_x, pad_x), (0, 0)), mode="reflect")
            top, left = int(torch.randint(0, 2 * pad_y + 1, ())), int(torch.randint(0, 2 * pad_x + 1, ()))
            pixels = padded[top : top + height, left : left + width]
        if self.flip and float(torch.rand(())) < 0.5:
            pixels = pixels[:, ::-1]
        if self.rotate90:
            pixels = np.rot90(pixels, int(torch.randint(0, 4, ())))
        return PILImage.fromarray(np.ascontiguousarray(pixels))

    def orientations(self) -> list[Orientation]:
        """The orientations this augmentation draws from: the views test-time augmentation averages over (of the
        plain image, before encryption, like the augmentation itself); the identity comes first."""
        flips = (False, True) if self.flip else (False,)
        turns = range(4) if self.rotate90 else range(1)
        return [Orientation(flip, k) for flip in flips for k in turns]


@dataclass(frozen=True)
class Orientation:
    """One of `Augment`'s orientations, fixed: a plain image mirrored (`flip`), then turned by `turns` quarter turns;
    an `ImageTransform` augmentation that makes one test-time augmentation view."""

    flip: bool = False
    turns: int = 0

    def __call__(self, image: PILImage.Image) -> PILImage.Image:
        pixels = np.asarray(image.convert("RGB"))
        pixels = np.rot90(pixels[:, ::-1] if self.flip else pixels, self.turns)
        return PILImage.fromarray(np.ascontiguousarray(pixels))


@dataclass(frozen=True)
class Mixup:
    """Mixup (Zhang et al. 2018): each image of a batch is blended with another one of the batch, with a weight drawn
    from Beta(alpha, alpha), and so are their labels (as class probabilities) and the teacher's views.

    It acts on the processed pixel values, i.e. after encryption: the cipher is the same affine map of the pixels for
    every image (a permutation, and x -> -x on flipped pixels once normalised with mean = std = 0.5, or an affine
    flip otherwise), and affine maps commute with weighted averages whose weights sum to 1. So mixing ciphertexts is
    exactly encrypting the mixed plain images, unlike shifts and flips, which must come before encryption.
    """

    alpha: float
    num_classes: int

    def __call__(self, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        labels = batch["labels"]
        weights = torch.distributions.Beta(self.alpha, self.alpha).sample((len(labels),))
        partner = torch.randperm(len(labels))

        def mix(values: torch.Tensor) -> torch.Tensor:
            w = weights.view(-1, *([1] * (values.dim() - 1))).to(values.dtype)
            return w * values + (1 - w) * values[partner]

        mixed = {name: mix(values) for name, values in batch.items() if name != "labels"}
        targets = labels if labels.is_floating_point() else torch.nn.functional.one_hot(labels, self.num_classes)
        return mixed | {"labels": mix(targets.float())}  # labels already soft after a block CutMix


class ImageTransform:
    """The datasets transform: a batch of plain PIL images (augmented first, if asked) through the processor, which
    encrypts unless built with `do_encrypt=False`; with a `teacher` processor, also the teacher's view of the same
    augmented images (`teacher_pixel_values`, for distillation); then mixup, if asked.

    Pickled (for datasets' fingerprint and spawned DataLoader workers) without the secret: a worker that unpickles it
    finds the key through the HF_LCRYPT_KEY_FILE environment variable, which `run` sets.
    """

    def __init__(
        self,
        processor: LCryptImageProcessor,
        augment: Augment | None = None,
        teacher: LCryptImageProcessor | None = None,
        mixup: Mixup | None = None,
        batch_augment: Callable[[dict[str, torch.Tensor]], dict[str, torch.Tensor]] | None = None,
    ):
        self.processor = processor
        self.augment = augment
        self.teacher = teacher
        self.mixup = mixup
        self.batch_augment = batch_augment  # on the processed (encrypted) batch, before mixup

    def __call__(self, batch: dict[str, list]) -> dict[str, torch.Tensor]:
        images = batch["image"] if self.augment is None else [self.augment(image) for image in batch["image"]]
        outputs = {
            "pixel_values": self.processor(images, return_tensors="pt")["pixel_values"],
            "labels": torch.as_tensor(batch["label"], dtype=torch.long),
        }
        if self.teacher is not None:
            outputs[TEACHER_INPUTS] = self.teacher(images, return_tensors="pt")["pixel_values"]
        if self.batch_augment is not None:
            outputs = self.batch_augment(outputs)
        return outputs if self.mixup is None else self.mixup(outputs)

    def __getstate__(self) -> dict[str, Any]:
        processors = {"processor": self.processor, "teacher": self.teacher}
        unchanged = {"augment": self.augment, "mixup": self.mixup, "batch_augment": self.batch_augment}
        return unchanged | {n: p and p.to_dict() for n, p in processors.items()}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.processor = LCryptImageProcessor.from_dict(state["processor"])
        self.teacher = state["teacher"] and LCryptImageProcessor.from_dict(state["teacher"])
        self.augment, self.mixup, self.batch_augment = state["augment"], state["mixup"], state.get("batch_augment")
