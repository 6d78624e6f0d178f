"""Labelled image datasets, loaded from image folders, MedMNIST files or the Hub.

Every loader returns a `DatasetDict` with `train`/`validation`/`test` splits and two columns: `image` (decoded to
PIL) and `label` (a `ClassLabel` with class names).

Sources without validation or test split are split by content (`splits.split_by_content`).
"""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from importlib import resources
from pathlib import Path
from typing import IO, Literal, overload

import datasets
import numpy as np
from datasets import ClassLabel, Dataset, DatasetDict, Features, Image

from . import medical_io
from .splits import SPLITS, SplitReport, class_label, split_by_content, subsample_per_class

logger = logging.getLogger(__name__)

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
    names = class_label(first).names
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
