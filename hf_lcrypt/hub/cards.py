"""Model, dataset and Space cards: Hub metadata (a model-index from metrics.json and the attack report) and a body
on loading, key handling, intended use, limitations and security, filled from the templates in hub_cards/ (installed
as `hf_lcrypt.hub.templates`). A card names the key only by its public key_id."""

from __future__ import annotations

import importlib.metadata
import json
import math
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import TYPE_CHECKING, Any

from huggingface_hub import (
    DatasetCard,
    DatasetCardData,
    EvalResult,
    ModelCard,
    ModelCardData,
    SpaceCard,
    SpaceCardData,
)

from .. import DOCS_URL, PROJECT_URL
from ..attacks.record import AttackReport
from ..cipher import BlockCipher, size_pair

# `datasets` is imported by the dataset functions only: the CLI builds its parser from this module on every command.
if TYPE_CHECKING:
    from datasets import DatasetDict


DEFAULT_LICENSE = "apache-2.0"
TAGS = ["hf-lcrypt", "privacy", "medical-imaging", "image-encryption", "vision-transformer"]
SPACE_MAX_MEGAPIXELS = 20
SPACE_MAX_MEGABYTES = 10
SPACE_EXAMPLES_NOTE = (
    "The examples in `examples/`, if any, are images of the served model's own dataset, chosen when the Space was "
    "built (`scripts/build_space.py --examples DIR`); without them the page offers none. They are shown for "
    "demonstration only, not for diagnosis."
)
# Standard metrics for the model-index, in the card's order: (metric id, display name).
_MAIN_METRICS = (
    ("accuracy", "Accuracy"),
    ("f1", "F1 (macro)"),
    ("precision", "Precision (macro)"),
    ("recall", "Recall (macro)"),
    ("roc_auc", "AUROC (macro, one-vs-rest)"),
)
_SPLIT_PREFIXES = ("test", "eval", "validation", "val")
_MAX_OTHER_ROWS = 30
_HUB_ID = re.compile(r"[A-Za-z0-9][\w.-]*/[\w.-]+")
# Names the training pipeline accepts for the dataset shipped with the package (image_datasets.EMBEDDED_DATASETS).
_EMBEDDED_DATASETS = {"default": "breastmnist", "breastmnist": "breastmnist"}
# Folder names that say little on their own: a local dataset path is shown with its parent ("brain-mri/train").
_GENERIC_FOLDERS = {"train", "test", "val", "validation", "data", "images"}


# -- metrics -> model-index ---------------------------------------------------------------------------------------
def _flatten(data: Any, prefix: str = "") -> dict[str, float]:
    """Numeric leaves of nested dicts as {"a_b_c": value}; booleans and non-finite numbers are left out."""
    out: dict[str, float] = {}
    if isinstance(data, Mapping):
        for key, value in data.items():
            out.update(_flatten(value, f"{prefix}_{key}" if prefix else str(key)))
    elif isinstance(data, int | float) and not isinstance(data, bool) and math.isfinite(data):
        out[prefix] = float(data)
    return out


def _pretty(name: str) -> str:
    return re.sub(r"[_/]+", " ", name).strip()


def _read_json(path: Path) -> dict[str, Any]:
    if not path.is_file():
        return {}
    data = json.loads(path.read_text())
    if not isinstance(data, dict):
        raise ValueError(f"{path} must hold a JSON object, got {type(data).__name__}.")
    return data


@dataclass
class RunResults:
    """A run's numbers sorted for the card: the reported split, its standard metrics and the attack results."""

    split: str | None
    main: list[tuple[str, str, float]]  # (metric id, display name, value)
    attack: list[tuple[str, float]]  # (condition, accuracy): clean, wrong_key, plain, noise_0.05...
    other: list[tuple[str, float]]  # the attack report's detailed results


def sort_results(metrics: Mapping[str, Any], attack_report: AttackReport | None = None) -> RunResults:
    """Sort metrics.json and the attack report for the card.

    metrics.json may be nested as the training pipeline writes it (`{"test": {"accuracy": ...}}`) or flat
    (`test_accuracy`, `eval_f1`, ...); the first split among test/eval/validation/val that has a standard metric is
    reported (unprefixed names count as a last resort). The access-control and robustness rows are the report's
    `accuracy` by condition; its detailed attack results are listed as they are.
    """
    flat = _flatten(metrics)
    split, main = None, []
    for prefix in (*_SPLIT_PREFIXES, ""):
        names = {mid: f"{prefix}_{mid}" if prefix else mid for mid, _ in _MAIN_METRICS}
        main = [(mid, title, flat[names[mid]]) for mid, title in _MAIN_METRICS if names[mid] in flat]
        if main:
            split = prefix or None
            break
    if attack_report is None:
        return RunResults(split, main, [], [])
    other = _flatten({"majority_class_accuracy": attack_report.majority_class_accuracy, **attack_report.attacks})
    return RunResults(split, main, attack_report.ordered_accuracies(), sorted(other.items())[:_MAX_OTHER_ROWS])


def _hub_names(value: Any) -> tuple[str | None, str | None]:
    """(Hub id or None, display name) for a run's `dataset` or `base_model`, which may also be a local path or the
    name of the dataset shipped with hf-lcrypt; only an owner/name that is not a local path counts as a Hub id."""
    if not isinstance(value, str) or not value:
        return None, None
    if value in _EMBEDDED_DATASETS:
        return None, _EMBEDDED_DATASETS[value]
    if _HUB_ID.fullmatch(value) and not Path(value).exists():
        return value, value
    path = Path(value)
    if path.name in _GENERIC_FOLDERS and path.parent.name:
        return None, f"{path.parent.name}/{path.name}"
    return None, path.name or value


def dataset_title(value: Any) -> str | None:
    """How a run's `dataset` (Hub id, local path or the shipped dataset's name) is named to readers."""
    return _hub_names(value)[1]


def is_folded_from_public(model_dir: str | os.PathLike, flag: bool = False) -> bool:
    """Whether the weights are a public checkpoint with a key folded in (flag, or metrics.json/config.json say so)."""
    model_dir = Path(model_dir)
    recorded = (_read_json(model_dir / name).get("folded_from_public") for name in ("metrics.json", "config.json"))
    return bool(flag) or any(bool(value) for value in recorded)


def _library_version() -> str:
    try:
        return importlib.metadata.version("hf-lcrypt")
    except importlib.metadata.PackageNotFoundError:
        return "(development version)"


def _template(name: str) -> str:
    """Path of a card template: hub_cards/ in the source tree, installed as the package `hf_lcrypt.hub.templates`."""
    return str(resources.files("hf_lcrypt.hub.templates") / name)


def _geometry(config: Mapping[str, Any]) -> tuple[int, int]:
    size = config.get("image_size", 224)
    return size_pair(size)


# -- cards --------------------------------------------------------------------------------------------------------
def build_model_card(
    model_dir: str | os.PathLike,
    repo_id: str,
    *,
    license: str = DEFAULT_LICENSE,
    dataset: str | None = None,
    base_model: str | None = None,
    folded_from_public: bool = False,
) -> ModelCard:
    """The model card for a keyed model folder: Hub metadata, a model-index from metrics.json/attack_report.json, and
    a body on loading, key handling, intended use, limitations and security. It names the key only by `key_id`."""
    model_dir = Path(model_dir)
    config = _read_json(model_dir / "config.json")
    metrics = _read_json(model_dir / "metrics.json")
    report_path = model_dir / AttackReport.FILENAME
    report = AttackReport.read(report_path) if report_path.is_file() else None
    results = sort_results(metrics, report)
    hub_dataset, dataset_title = _hub_names(dataset or metrics.get("dataset"))
    base_model, _ = _hub_names(base_model or metrics.get("base_model"))
    model_name = repo_id.split("/")[-1]

    common = {
        "task_type": "image-classification",
        "task_name": "Image Classification",
        "dataset_type": hub_dataset or dataset_title or "custom",
        "dataset_name": dataset_title or "custom",
        "dataset_split": results.split,
    }
    eval_results = [
        EvalResult(**common, metric_type=mid, metric_name=title, metric_value=round(value, 4))
        for mid, title, value in results.main
    ] + [
        EvalResult(
            **common, metric_type="accuracy", metric_name=f"Accuracy ({_pretty(name)})", metric_value=round(value, 4)
        )
        for name, value in results.attack
    ]
    height, width = _geometry(config)
    weights_only = _read_json(model_dir / "weights_only_attack.json") or None
    gate = (weights_only or {}).get("gate")
    card_data = ModelCardData(
        library_name="transformers",
        pipeline_tag="image-classification",
        license=license,
        tags=[*TAGS, "custom_code"],
        datasets=[hub_dataset] if hub_dataset else None,
        metrics=[mid for mid, _, _ in results.main] or None,
        base_model=base_model,
        model_name=model_name,
        eval_results=eval_results or None,
        hf_lcrypt={
            "key_id": config.get("key_id"),
            "image_size": [height, width],
            "block_size": config.get("block_size"),
            "cipher_steps": config.get("cipher_steps"),
            "folded_from_public": bool(folded_from_public),
            **({"weights_leak_allowed": gate["leaks"]} if gate and gate.get("measured", True) else {}),
            **({"weights_leak_measured": False} if gate and not gate.get("measured", True) else {}),
        },
    )
    id2label = config.get("id2label") or {}
    classes = [id2label[k] for k in sorted(id2label, key=int)]
    extra = sorted(p.name for p in model_dir.iterdir() if p.suffix in {".json", ".md", ".png", ".svg", ".jpg", ".csv"})
    extra = [name for name in extra if name not in {"config.json", "preprocessor_config.json", "README.md"}]
    return ModelCard.from_template(
        card_data,
        template_path=_template("model_card.md"),
        title=model_name,
        repo_id=repo_id,
        project_url=PROJECT_URL,
        docs_url=DOCS_URL,
        key_id=config.get("key_id"),
        image_size=f"{height}x{width}",
        block_size=config.get("block_size"),
        patch_mlp=config.get("patch_embedding_mlp_size"),
        cipher_steps=", ".join(f"`{s}`" for s in config.get("cipher_steps") or []),
        classes=", ".join(f"`{c}`" for c in classes[:20])
        + (f" and {len(classes) - 20} more" if len(classes) > 20 else ""),
        base_model=base_model,
        dataset=dataset_title,
        folded_from_public=folded_from_public,
        mode=metrics.get("mode"),
        trained_without_key=bool(metrics.get("trained_without_key")),
        split=results.split or "evaluation",
        attack_images=report.num_images if report else None,
        attack_split=report.split if report else "",
        main_metrics=[{"name": title, "value": f"{value:.4f}"} for _, title, value in results.main],
        attack_metrics=[{"name": _pretty(name), "value": f"{value:.4f}"} for name, value in results.attack],
        other_measurements=[{"name": _pretty(name), "value": f"{value:.6g}"} for name, value in results.other],
        library_version=_library_version(),
        extra_files=", ".join(f"`{name}`" for name in extra),
        weights_only=weights_only,
    )


def build_export_card(
    export_dir: str | os.PathLike,
    repo_id: str,
    *,
    license: str = DEFAULT_LICENSE,
    base_model: str | None = None,
    folded_from_public: bool = False,
) -> ModelCard:
    """The card of a standard (`vit`) or ONNX export (`hf_lcrypt.export`): for encrypted inputs only, which client
    encrypts them, and the public cipher facts of its config's `lcrypt` entry. It names the key only by `key_id`."""
    config = _read_json(Path(export_dir) / "config.json")
    meta = config.get("lcrypt") or {}
    onnx_file = meta.get("onnx_file")
    height, width = meta.get("image_size", _geometry(config))
    id2label = config.get("id2label") or {}
    classes = [id2label[k] for k in sorted(id2label, key=int)]
    card_data = ModelCardData(
        library_name="onnx" if onnx_file else "transformers",
        pipeline_tag="image-classification",
        license=license,
        tags=[*TAGS, "encrypted-inputs", "onnx" if onnx_file else "vit"],
        base_model=base_model,
        model_name=repo_id.split("/")[-1],
        hf_lcrypt={
            **{k: meta.get(k) for k in ("key_id", "image_size", "block_size", "cipher_steps")},
            "folded_from_public": bool(folded_from_public),
        },
    )
    return ModelCard.from_template(
        card_data,
        template_path=_template("export_card.md"),
        title=repo_id.split("/")[-1],
        repo_id=repo_id,
        format="onnx" if onnx_file else "vit",
        onnx_file=onnx_file,
        project_url=PROJECT_URL,
        docs_url=DOCS_URL,
        key_id=meta.get("key_id"),
        image_size=f"{height}x{width}",
        block_size=meta.get("block_size"),
        cipher_steps=", ".join(f"`{s}`" for s in meta.get("cipher_steps") or []),
        mean=[round(v, 6) for v in meta.get("folded_image_mean") or []],
        std=[round(v, 6) for v in meta.get("folded_image_std") or []],
        classes=", ".join(f"`{c}`" for c in classes[:20])
        + (f" and {len(classes) - 20} more" if len(classes) > 20 else ""),
        folded_from_public=folded_from_public,
        library_version=_library_version(),
        weights_only=_read_json(Path(export_dir) / "weights_only_attack.json") or None,
    )


def _class_names(dataset: DatasetDict) -> list[str]:
    from datasets import ClassLabel

    first = next(iter(dataset.values()))
    label = first.features.get("label")
    return list(label.names) if isinstance(label, ClassLabel) else []


def _size_category(n: int) -> str:
    for limit, name in ((1_000, "n<1K"), (10_000, "1K<n<10K"), (100_000, "10K<n<100K"), (1_000_000, "100K<n<1M")):
        if n < limit:
            return name
    return "1M<n<10M"


def build_dataset_card(
    dataset: DatasetDict,
    repo_id: str,
    cipher: BlockCipher,
    *,
    license: str | None = None,
    source: str | None = None,
    pretty_name: str | None = None,
    licence_note: str | None = None,
    augmentation: str | None = None,
) -> DatasetCard:
    """The dataset card of an encrypted dataset: metadata with one parquet config per split, and a body on use, the
    key (by `key_id` only) and the cipher's limits. `licence_note` carries the source data's attribution;
    `augmentation` says how the training split's extra views were made (before encryption)."""
    hub_source, source_title = _hub_names(source)
    classes = _class_names(dataset)
    card_data = DatasetCardData(
        license=license,
        task_categories=["image-classification"],
        tags=TAGS,
        pretty_name=pretty_name or repo_id.split("/")[-1],
        size_categories=[_size_category(sum(len(split) for split in dataset.values()))],
        source_datasets=[hub_source] if hub_source else None,
        configs=[
            {
                "config_name": "default",
                "data_files": [{"split": name, "path": f"data/{name}-*.parquet"} for name in dataset],
            }
        ],
        hf_lcrypt=cipher.describe(),
    )
    return DatasetCard.from_template(
        card_data,
        template_path=_template("dataset_card.md"),
        title=pretty_name or repo_id.split("/")[-1],
        repo_id=repo_id,
        project_url=PROJECT_URL,
        docs_url=DOCS_URL,
        key_id=cipher.key_id,
        image_size=f"{cipher.height}x{cipher.width}",
        image_size_tuple=f"({cipher.height}, {cipher.width})",
        block_size=cipher.block_size,
        cipher_steps=", ".join(f"`{s}`" for s in cipher.steps),
        splits=", ".join(f"`{name}` ({len(split)})" for name, split in dataset.items()),
        classes=", ".join(f"`{c}`" for c in classes),
        source=f"[`{hub_source}`](https://huggingface.co/datasets/{hub_source})" if hub_source else source_title,
        licence_note=licence_note,
        augmentation=augmentation,
    )


def build_space_card(model_id: str | None = None) -> SpaceCard:
    """The README of the demo Space (`space/README.md`): Space front matter pinned to the installed gradio."""
    card_data = SpaceCardData(
        title="hf-lcrypt: keyed image encryption",
        emoji="🔐",
        colorFrom="indigo",
        colorTo="gray",
        sdk="gradio",
        sdk_version=importlib.metadata.version("gradio"),
        python_version="3.11",
        app_file="app.py",
        pinned=False,
        license=DEFAULT_LICENSE,
        models=[model_id] if model_id else None,
        tags=TAGS,
        short_description="Classify encrypted images with a keyed ViT",
    )
    return SpaceCard.from_template(
        card_data,
        template_path=_template("space_card.md"),
        title="hf-lcrypt: classify images you cannot see",
        project_url=PROJECT_URL,
        docs_url=DOCS_URL,
        max_megapixels=SPACE_MAX_MEGAPIXELS,
        max_megabytes=SPACE_MAX_MEGABYTES,
        examples_note=SPACE_EXAMPLES_NOTE,
    )
