"""Publishing to the Hugging Face Hub: keyed models and encrypted datasets, with their cards, checked before upload.

Every upload is first written to a local folder that is exactly what the repository will hold, and checked there: a
fresh Python process without hf-lcrypt loads the model from it with `trust_remote_code` and reproduces the logits
(so the repository works for people who only have `transformers`), the card's metadata reads back unchanged, and no
file contains the secret key in any common encoding. A dry run stops after these checks.
"""

from __future__ import annotations

import base64
import contextlib
import importlib.metadata
import json
import logging
import math
import os
import re
import shutil
import subprocess
import sys
import tempfile
import textwrap
import warnings
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from huggingface_hub import (
    DatasetCard,
    DatasetCardData,
    EvalResult,
    HfApi,
    ModelCard,
    ModelCardData,
    SpaceCard,
    SpaceCardData,
)
from huggingface_hub.repocard import RepoCard
from PIL import Image

from .. import DOCS_URL, PROJECT_URL
from ..attacks.record import AttackReport
from ..cipher import BlockCipher, size_pair
from ..image_processing_lcrypt import LCryptImageProcessor
from ..keys import KEY_ENV_VAR, LCryptKey
from ..modeling_lcrypt import LCryptViTForImageClassification

# `datasets` is imported by the dataset functions only: the CLI builds its parser from this module on every command.
if TYPE_CHECKING:
    from datasets import DatasetDict

logger = logging.getLogger(__name__)

DEFAULT_LICENSE = "apache-2.0"
TAGS = ["hf-lcrypt", "privacy", "medical-imaging", "image-encryption", "vision-transformer"]
SPACE_MAX_MEGAPIXELS = 20
SPACE_MAX_MEGABYTES = 10
SPACE_EXAMPLES_NOTE = (
    "The examples in `examples/` are three brain MRI slices from the Brain Tumor MRI Dataset (M. Nickparvar, built "
    "from the Figshare set of Cheng et al., SARTAJ and Br35H), listed as CC0 (public domain) on its host, "
    "downscaled to 128x128 greyscale PNG: a glioma (`Tr-glTr_0000.jpg`), a pituitary tumour (`Tr-piTr_0000.jpg`) and "
    "a scan without tumour (`Tr-noTr_0000.jpg`). They are shown for demonstration only, not for diagnosis."
)

# What a model repository may hold. Everything else in a training folder (checkpoints, optimiser states, pickled
# training arguments, key files) stays behind.
_MODEL_FILES = (
    "config.json",
    "preprocessor_config.json",
    "model.safetensors.index.json",
    "metrics.json",
    "weights_only_attack.json",  # `hf-lcrypt attack --weights-only`'s scores, quoted in the card's security section
)
_MODEL_PATTERNS = (
    "*.safetensors",
    "*.py",
    "attack_report.json",
    "attack_report.md",
    "*.png",
    "*.svg",
    "*.jpg",
    "*.csv",
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
# Names the training pipeline accepts for the dataset shipped with the package (hf_lcrypt.data.EMBEDDED_DATASETS).
_EMBEDDED_DATASETS = {"default": "breastmnist", "breastmnist": "breastmnist"}
# Folder names that say little on their own: a local dataset path is shown with its parent ("brain-mri/train").
_GENERIC_FOLDERS = {"train", "test", "val", "validation", "data", "images"}


class SecretLeakError(RuntimeError):
    """A file that was about to be published contains the secret key."""


class PublicCheckpointWarning(UserWarning):
    """The weights were folded from a public checkpoint, so the key can be read off them."""


@dataclass
class PublishResult:
    """What was (or, in a dry run, would be) uploaded, and what the checks measured."""

    folder: Path | None  # the checked repository folder; None after an upload, which removes it
    repo_id: str
    files: list[str]
    skipped: list[str] = field(default_factory=list)
    max_logit_diff: float | None = None
    url: str | None = None


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
    """Path of a card template: hub_cards/ in the source tree, installed as the package `hf_lcrypt.hub.cards`."""
    return str(resources.files("hf_lcrypt.hub.cards") / name)


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
        split=results.split or "evaluation",
        attack_images=report.num_images if report else None,
        attack_split=report.split if report else "",
        main_metrics=[{"name": title, "value": f"{value:.4f}"} for _, title, value in results.main],
        attack_metrics=[{"name": _pretty(name), "value": f"{value:.4f}"} for name, value in results.attack],
        other_measurements=[{"name": _pretty(name), "value": f"{value:.6g}"} for name, value in results.other],
        library_version=_library_version(),
        extra_files=", ".join(f"`{name}`" for name in extra),
        weights_only=_read_json(model_dir / "weights_only_attack.json") or None,
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
) -> DatasetCard:
    """The dataset card of an encrypted dataset: metadata with one parquet config per split, and a body on use, the
    key (by `key_id` only) and the cipher's limits. `licence_note` carries the source data's attribution."""
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


def check_card_round_trip(path: Path, card: RepoCard) -> None:
    """The saved card's metadata must read back as written (YAML can silently change types or drop entries)."""
    loaded = type(card).load(path)
    if loaded.data.to_dict() != card.data.to_dict():
        raise ValueError(f"The metadata of {path} does not read back as written; check the values passed to the card.")


# -- secret scan --------------------------------------------------------------------------------------------------
def secret_patterns(key: LCryptKey) -> dict[str, bytes]:
    """The encodings of the key a careless file might contain: raw, hex (matched case-insensitively), base64."""
    raw = key.to_bytes()
    return {
        "raw bytes": raw,
        "hex": key.to_hex().encode(),
        "base64": base64.b64encode(raw).rstrip(b"="),
        "url-safe base64": base64.urlsafe_b64encode(raw).rstrip(b"="),
    }


def find_secrets(folder: str | os.PathLike, key: LCryptKey, chunk_size: int = 8 << 20) -> list[tuple[Path, str]]:
    """Every (file, encoding) under `folder` whose name or content holds the key; files are read in chunks."""
    patterns = secret_patterns(key)
    overlap = max(len(p) for p in patterns.values()) - 1
    hits: list[tuple[Path, str]] = []
    for path in sorted(Path(folder).rglob("*")):
        if not path.is_file():
            continue
        found: set[str] = {name for name, p in patterns.items() if name != "raw bytes" and p in path.name.encode()}
        with path.open("rb") as f:
            tail = b""
            while chunk := f.read(chunk_size):
                window = tail + chunk
                lowered = window.lower()
                for name, pattern in patterns.items():
                    if (lowered if name == "hex" else window).find(pattern) >= 0:
                        found.add(name)
                tail = window[-overlap:]
        hits.extend((path, name) for name in sorted(found))
    return hits


def check_no_secrets(folder: str | os.PathLike, key: LCryptKey) -> None:
    """Refuse to go on if any file in `folder` holds the key."""
    hits = find_secrets(folder, key)
    if hits:
        listing = "; ".join(f"{path.relative_to(folder)} ({encoding})" for path, encoding in hits)
        raise SecretLeakError(
            f"Refusing to publish: the secret key (key_id {key.key_id}) is in {listing}. Remove it from the source "
            "folder, and treat the key as exposed if that folder was ever shared."
        )


# -- model folder -------------------------------------------------------------------------------------------------
def _check_new_folder(folder: Path) -> None:
    if folder.exists() and (not folder.is_dir() or any(folder.iterdir())):
        raise FileExistsError(f"{folder} exists and is not an empty folder; choose a new or empty output folder.")


@contextlib.contextmanager
def _staging(dry_run_dir: str | os.PathLike | None) -> Iterator[Path]:
    """A temporary folder to build and check the repository in. For a dry run it is a hidden sibling of the dry-run
    folder, moved into place only when every check passed, so a failure leaves nothing behind and a retry can start
    over; otherwise it is removed afterwards."""
    if dry_run_dir is None:
        with tempfile.TemporaryDirectory(prefix="hf-lcrypt-publish-") as tmp:
            yield Path(tmp) / "repo"
        return
    folder = Path(dry_run_dir)
    _check_new_folder(folder)  # before any work
    folder.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{folder.name}.partial-", dir=folder.parent))
    try:
        yield staging
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)  # also a copy of the secret, if a check found one
        raise
    staging.replace(folder)  # also over an empty folder of that name


def stage_model_folder(model_dir: str | os.PathLike, folder: str | os.PathLike) -> tuple[list[str], list[str]]:
    """Copy what a keyed model repository holds (top-level files of `model_dir`) into `folder`; returns the copied and
    the skipped names.

    Checks that the folder is a keyed hf-lcrypt model with its processor config and the remote code its `auto_map`
    names, so that `trust_remote_code` can load it.
    """
    model_dir, folder = Path(model_dir), Path(folder)
    config = _read_json(model_dir / "config.json")
    if config.get("model_type") != "lcrypt-vit":
        raise ValueError(
            f"{model_dir} does not hold an hf-lcrypt keyed model (config.json with model_type lcrypt-vit)."
        )
    if not config.get("key_id"):
        raise ValueError(f"{model_dir}/config.json has no key_id: fold a key into the model before publishing it.")
    processor = _read_json(model_dir / "preprocessor_config.json")
    if not processor:
        raise ValueError(
            f"{model_dir} has no preprocessor_config.json; save one with "
            "LCryptImageProcessor.for_model(model).save_pretrained(folder)."
        )
    wanted = {p for name in _MODEL_FILES if (p := model_dir / name).is_file()}
    wanted |= {p for pattern in _MODEL_PATTERNS for p in model_dir.glob(pattern) if p.is_file()}
    if not any(p.suffix == ".safetensors" for p in wanted):
        raise ValueError(f"{model_dir} has no .safetensors weights; save the model with save_pretrained.")
    modules = {ref.split(".")[0] for ref in {**config.get("auto_map", {}), **processor.get("auto_map", {})}.values()}
    missing = sorted(f"{m}.py" for m in modules if not (model_dir / f"{m}.py").is_file())
    if missing:
        raise ValueError(f"{model_dir} lacks the remote code {missing} named by its auto_map; re-save the model.")
    for source in wanted:
        shutil.copy2(source, folder / source.name)
    skipped = sorted(
        p.relative_to(model_dir).as_posix() for p in model_dir.rglob("*") if p.is_file() and p not in wanted
    )
    return sorted(p.name for p in wanted), skipped


_REMOTE_CHECK = textwrap.dedent(
    """
    import json, sys
    sys.modules["hf_lcrypt"] = None  # only transformers and the repository's own code
    import numpy as np, torch
    from PIL import Image
    from transformers import AutoImageProcessor, AutoModelForImageClassification

    folder, images_path = sys.argv[1], sys.argv[2]
    images = [Image.fromarray(a) for a in np.load(images_path)]
    processor = AutoImageProcessor.from_pretrained(folder, trust_remote_code=True)  # key: the environment's key file
    model = AutoModelForImageClassification.from_pretrained(folder, trust_remote_code=True).eval()
    with torch.no_grad():
        logits = model(**processor(images, return_tensors="pt")).logits
    print(json.dumps({"model_class": type(model).__name__, "processor_class": type(processor).__name__,
                      "module": type(model).__module__, "logits": logits.tolist()}))
    """
)


def check_remote_load(
    folder: str | os.PathLike, key: LCryptKey, num_images: int = 3, seed: int = 0, atol: float = 1e-4
) -> float:
    """Load `folder` in a fresh process where hf_lcrypt cannot be imported and compare its logits on a few seeded
    random images with this process's; returns the largest difference.

    The key reaches the child through a 0600 key file named by HF_LCRYPT_KEY_FILE, never through its command line.
    """
    folder = Path(folder).resolve()
    model = LCryptViTForImageClassification.from_pretrained(folder).eval()
    processor = LCryptImageProcessor.from_pretrained(folder, key=key)
    height, width = _geometry(model.config.to_dict())
    rng = np.random.default_rng(seed)
    images = rng.integers(0, 256, (num_images, height + 5, width + 7, 3), dtype=np.uint8)  # exercises the resize
    with torch.no_grad():
        local = model(**processor([Image.fromarray(a) for a in images], return_tensors="pt")).logits
    with tempfile.TemporaryDirectory(prefix="hf-lcrypt-check-") as tmp:
        tmp_path = Path(tmp)
        np.save(tmp_path / "images.npy", images)
        key_file = key.save(tmp_path / "check.key")
        env = {name: value for name, value in os.environ.items() if not name.startswith("HF_LCRYPT_")}
        env.update(
            {
                KEY_ENV_VAR: str(key_file),
                "HF_HOME": str(tmp_path / "hf-home"),
                "HF_HUB_OFFLINE": "1",
                "PYTHONPATH": "",
                "TRANSFORMERS_VERBOSITY": "error",
            }
        )
        run = subprocess.run(
            [sys.executable, "-c", _REMOTE_CHECK, str(folder), str(tmp_path / "images.npy")],
            capture_output=True,
            text=True,
            env=env,
            cwd=tmp_path,
            timeout=600,
        )
    if run.returncode != 0:
        raise RuntimeError(
            f"The repository folder {folder} does not load with transformers alone (trust_remote_code):\n"
            f"{run.stderr[-3000:]}"
        )
    remote = json.loads(run.stdout.strip().splitlines()[-1])
    if remote["model_class"] != type(model).__name__ or remote["module"].startswith("hf_lcrypt"):
        raise RuntimeError(f"The fresh process loaded {remote['module']}.{remote['model_class']}, not the remote code.")
    remote_logits = torch.tensor(remote["logits"])
    if remote_logits.shape != local.shape:
        raise RuntimeError(f"Remote logits have shape {tuple(remote_logits.shape)}, expected {tuple(local.shape)}.")
    diff = float((remote_logits - local).abs().max())
    if diff > atol:
        raise RuntimeError(
            f"The model loaded from {folder} by transformers alone gives different logits (max difference {diff:.3g})."
        )
    return diff


def _upload(folder: Path, repo_id: str, repo_type: str, private: bool, message: str) -> str:
    """Create (or reuse) the repository and upload the folder; HfApi reads the endpoint and token as usual."""
    api = HfApi()
    repo_url = api.create_repo(repo_id=repo_id, repo_type=repo_type, private=private, exist_ok=True)
    api.upload_folder(repo_id=repo_id, repo_type=repo_type, folder_path=str(folder), commit_message=message)
    return str(repo_url)


def publish_model(
    model_dir: str | os.PathLike,
    repo_id: str,
    key: LCryptKey | str | bytes | os.PathLike,
    *,
    dry_run_dir: str | os.PathLike | None = None,
    private: bool = False,
    folded_from_public: bool = False,
    license: str = DEFAULT_LICENSE,
    dataset: str | None = None,
    base_model: str | None = None,
) -> PublishResult:
    """Build, check and (unless `dry_run_dir` is given) upload a keyed model repository.

    The key is used only for the checks (the logits comparison and the secret scan) and must be the one the model is
    folded with. With `dry_run_dir`, the repository folder is written there and nothing is uploaded.
    """
    model_dir = Path(model_dir)
    key = LCryptKey.coerce(key)
    key_id = _read_json(model_dir / "config.json").get("key_id")
    if key_id is not None and key.key_id != key_id:
        raise ValueError(f"The key (key_id {key.key_id}) is not the one {model_dir} is folded with (key_id {key_id}).")
    folded = is_folded_from_public(model_dir, folded_from_public)
    with _staging(dry_run_dir) as folder:
        folder.mkdir(parents=True, exist_ok=True)
        files, skipped = stage_model_folder(model_dir, folder)
        card = build_model_card(
            folder, repo_id, license=license, dataset=dataset, base_model=base_model, folded_from_public=folded
        )
        card.save(folder / "README.md")
        files.append("README.md")
        check_card_round_trip(folder / "README.md", card)
        check_no_secrets(folder, key)
        diff = check_remote_load(folder, key)
        result = PublishResult(
            folder=Path(dry_run_dir or folder),
            repo_id=repo_id,
            files=sorted(files),
            skipped=skipped,
            max_logit_diff=diff,
        )
        if folded:
            warnings.warn(
                f"{model_dir} was folded from a public checkpoint: anyone can recover the key (key_id {key.key_id}) "
                "by comparing the weights with that checkpoint. Publish only models fine-tuned on private data, or "
                "treat this key as public.",
                PublicCheckpointWarning,
                stacklevel=2,
            )
        if dry_run_dir is None:
            result.url = _upload(folder, repo_id, "model", private, f"Upload keyed model (key_id {key.key_id})")
            result.folder = None
    return result


# -- encrypted datasets -------------------------------------------------------------------------------------------
def _check_dataset_reload(folder: Path, dataset: DatasetDict) -> None:
    """The folder, read the way the Hub serves it (README configs over parquet), must give back identical rows."""
    from datasets import Image as ImageFeature
    from datasets import load_dataset

    with tempfile.TemporaryDirectory(prefix="hf-lcrypt-reload-") as cache:
        reloaded = load_dataset(str(folder), cache_dir=cache)
        if sorted(reloaded) != sorted(dataset):
            raise RuntimeError(f"{folder} reloads with splits {sorted(reloaded)}, expected {sorted(dataset)}.")
        for name, split in dataset.items():
            again = reloaded[name]
            if len(again) != len(split) or set(again.column_names) != set(split.column_names):
                raise RuntimeError(f"Split {name!r} of {folder} does not reload with the same rows and columns.")
            images = {c for c, feature in split.features.items() if isinstance(feature, ImageFeature)}
            for index, (row, back) in enumerate(zip(split, again, strict=True)):
                for column, value in row.items():
                    same = (
                        np.array_equal(np.asarray(value), np.asarray(back[column]))
                        if column in images
                        else value == back[column]
                    )
                    if not same:
                        raise RuntimeError(f"Row {index} of split {name!r}, column {column!r}, changed on reload.")


def push_encrypted_dataset(
    dataset: DatasetDict,
    repo_id: str,
    cipher: BlockCipher,
    *,
    dry_run_dir: str | os.PathLike | None = None,
    private: bool = False,
    license: str | None = None,
    source: str | None = None,
    pretty_name: str | None = None,
    licence_note: str | None = None,
) -> PublishResult:
    """Write an encrypted `DatasetDict` as parquet with embedded PNG bytes plus its card, check it, and upload it.

    The images must already be encrypted with `cipher` (`hf_lcrypt.data.encrypt_dataset`); the cipher supplies the
    public description in lcrypt.json and the card, and its key is used only to scan the files for the secret.
    """
    from ..data import save_encrypted

    with _staging(dry_run_dir) as folder:
        folder.mkdir(parents=True, exist_ok=True)
        save_encrypted(dataset, folder, cipher=cipher)
        card = build_dataset_card(
            dataset,
            repo_id,
            cipher,
            license=license,
            source=source,
            pretty_name=pretty_name,
            licence_note=licence_note,
        )
        card.save(folder / "README.md")
        check_card_round_trip(folder / "README.md", card)
        check_no_secrets(folder, cipher.key)
        _check_dataset_reload(folder, dataset)
        files = sorted(p.relative_to(folder).as_posix() for p in folder.rglob("*") if p.is_file())
        result = PublishResult(folder=Path(dry_run_dir or folder), repo_id=repo_id, files=files)
        if dry_run_dir is None:
            result.url = _upload(
                folder, repo_id, "dataset", private, f"Upload encrypted dataset (key_id {cipher.key_id})"
            )
            result.folder = None
    return result


# -- command line -------------------------------------------------------------------------------------------------
__all__ = [
    "PublicCheckpointWarning",
    "PublishResult",
    "SecretLeakError",
    "build_dataset_card",
    "build_model_card",
    "build_space_card",
    "check_no_secrets",
    "check_remote_load",
    "find_secrets",
    "publish_model",
    "push_encrypted_dataset",
    "sort_results",
]
