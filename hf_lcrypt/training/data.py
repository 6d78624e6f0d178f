"""A training run's data: the loaded splits and what metrics.json reports about them (duplicates, fingerprints)."""

from __future__ import annotations

import itertools
import logging
from dataclasses import dataclass
from typing import Any

from datasets import DatasetDict

from ..image_datasets import label_maps, load_image_dataset
from ..splits import content_hashes, split_fingerprints

logger = logging.getLogger(__name__)


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
