"""Leak-free splits: content hashes, stratified splits that keep every copy of an image in one split, per-class caps
and split fingerprints.

Duplicates are found by hashing the *encoded* image: the bytes embedded in the dataset, or else the file at the
image's path. That catches the byte-identical copies known in the brain MRI set, costs a file read per image instead
of a decode, and needs no choice of colour mode. The same picture encoded twice differently is not caught, and
neither are near-duplicates such as LC25000's augmented copies.
"""

from __future__ import annotations

import hashlib
import time
from collections import Counter, defaultdict
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
from datasets import ClassLabel, Dataset, DatasetDict, Image

SPLITS = ("train", "validation", "test")


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
    class_names = class_label(dataset).names
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


def class_label(dataset: Dataset) -> ClassLabel:
    """The `label` column's `ClassLabel` (its class names), or a clear error for data not loaded by hf-lcrypt."""
    label = dataset.features.get("label")
    if not isinstance(label, ClassLabel):
        raise ValueError(
            f"Expected a 'label' column of type ClassLabel, got {label!r}; load data with load_image_dataset."
        )
    return label
