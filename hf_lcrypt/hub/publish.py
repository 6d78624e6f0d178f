"""Publishing to the Hugging Face Hub: keyed models and encrypted datasets, with their cards, checked before upload.

Every upload is first written to a local folder that is exactly what the repository will hold (its card from
`cards`), and checked there (`checks`): a fresh Python process without hf-lcrypt loads the model from it with
`trust_remote_code` and reproduces the logits, the card's metadata reads back unchanged, and no file contains the
secret key in any common encoding. A dry run stops after these checks; the folder is moved into place only when
every check passed.
"""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
import tempfile
import warnings
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from huggingface_hub import (
    HfApi,
)

from ..cipher import BlockCipher
from ..keys import LCryptKey, check_key_id
from .cards import (
    DEFAULT_LICENSE,
    _read_json,
    build_dataset_card,
    build_export_card,
    build_model_card,
    is_folded_from_public,
)
from .checks import (
    WEIGHTS_ONLY_FILE,
    check_card_round_trip,
    check_no_secrets,
    check_remote_load,
    check_standard_load,
    check_weights_keep_the_key,
)

# `datasets` is imported by the dataset functions only: the CLI builds its parser from this module on every command.
if TYPE_CHECKING:
    from datasets import DatasetDict

logger = logging.getLogger(__name__)


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
    weights_only: dict | None = None  # what the weights alone give away, and the gate's verdict (`gate`)


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


def _standard_export_in_place(folder: Path, key: LCryptKey | None) -> tuple[list[str], list[str], float]:
    """Replace the staged keyed model in `folder` by its standard `vit` export (keeping the weights gate's file) and
    check it in a fresh process without remote code; returns the files, those removed, and the largest logit
    difference (0)."""
    from ..export import export_vit, load_keyed

    keyed = load_keyed(folder)
    with tempfile.TemporaryDirectory(dir=folder.parent) as tmp:
        export = export_vit(keyed, Path(tmp) / "vit")
        removed = sorted(p.name for p in folder.iterdir() if p.name != WEIGHTS_ONLY_FILE)
        for name in removed:
            (folder / name).unlink()
        for path in export.iterdir():
            shutil.move(path, folder / path.name)
    diff = check_standard_load(folder, keyed, key)["max_logit_diff"]
    files = sorted(p.name for p in folder.iterdir())
    return files, [name for name in removed if name not in files], diff


def _upload(folder: Path, repo_id: str, repo_type: str, private: bool, message: str) -> str:
    """Create (or reuse) the repository and upload the folder; HfApi reads the endpoint and token as usual."""
    api = HfApi()
    repo_url = api.create_repo(repo_id=repo_id, repo_type=repo_type, private=private, exist_ok=True)
    api.upload_folder(repo_id=repo_id, repo_type=repo_type, folder_path=str(folder), commit_message=message)
    return str(repo_url)


def publish_model(
    model_dir: str | os.PathLike,
    repo_id: str,
    key: LCryptKey | str | bytes | os.PathLike | None,
    *,
    dry_run_dir: str | os.PathLike | None = None,
    private: bool = False,
    folded_from_public: bool = False,
    license: str = DEFAULT_LICENSE,
    dataset: str | None = None,
    base_model: str | None = None,
    allow_leaky_weights: bool = False,
    format: str = "keyed",
) -> PublishResult:
    """Build, check and (unless `dry_run_dir` is given) upload a keyed model repository.

    The key is used only for the checks (what the weights alone give away of it, the logits comparison and the
    secret scan) and must be the one the model is folded with. Weights that give the key's flips or pixel layout
    away are refused unless `allow_leaky_weights`, which the card then records (`check_weights_keep_the_key`).
    `key=None` is for a trainer who never held it (a model trained on an encrypted dataset): the weights check then
    reads the key holder's `weights_only_attack.json` in the folder, the logits are compared on ciphertexts, and no
    secret can have reached the folder. With `dry_run_dir`, the repository folder is written there and nothing is
    uploaded. `format="vit"` publishes the standard export instead (`hf_lcrypt.export`), with the same weights gate,
    checked by a fresh process that loads it without remote code and without hf-lcrypt and must give the keyed
    model's logits exactly.
    """
    if format not in ("keyed", "vit"):
        raise ValueError(f"Unknown publish format {format!r}; choose keyed (the remote-code model) or vit.")
    model_dir = Path(model_dir)
    key = None if key is None else LCryptKey.coerce(key)
    key_id = _read_json(model_dir / "config.json").get("key_id")
    if key is not None:
        check_key_id(
            key.key_id, key_id, "The key", f"{model_dir} is folded with", "Publish it with the key it was folded with."
        )
    key_id = key.key_id if key is not None else key_id
    folded = is_folded_from_public(model_dir, folded_from_public)
    with _staging(dry_run_dir) as folder:
        folder.mkdir(parents=True, exist_ok=True)
        files, skipped = stage_model_folder(model_dir, folder)
        weights_only = check_weights_keep_the_key(folder, key, allow_leak=allow_leaky_weights)
        files = sorted({*files, WEIGHTS_ONLY_FILE})
        if format == "vit":
            files, removed, diff = _standard_export_in_place(folder, key)
            skipped = sorted({*skipped, *removed})
            card = build_export_card(folder, repo_id, license=license, base_model=base_model, folded_from_public=folded)
        else:
            card = build_model_card(
                folder, repo_id, license=license, dataset=dataset, base_model=base_model, folded_from_public=folded
            )
        card.save(folder / "README.md")
        files.append("README.md")
        check_card_round_trip(folder / "README.md", card)
        if key is not None:
            check_no_secrets(folder, key)
        if format == "keyed":
            diff = check_remote_load(folder, key)
        result = PublishResult(
            folder=Path(dry_run_dir or folder),
            repo_id=repo_id,
            files=sorted(files),
            skipped=skipped,
            max_logit_diff=diff,
            weights_only=weights_only,
        )
        if folded:
            warnings.warn(
                f"{model_dir} was folded from a public checkpoint: anyone can recover the key (key_id {key_id}) "
                "by comparing the weights with that checkpoint. Publish only models fine-tuned on private data, or "
                "treat this key as public.",
                PublicCheckpointWarning,
                stacklevel=2,
            )
        if dry_run_dir is None:
            result.url = _upload(folder, repo_id, "model", private, f"Upload keyed model (key_id {key_id})")
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
    dataset_info: dict[str, Any] | None = None,
) -> PublishResult:
    """Write an encrypted `DatasetDict` as parquet with embedded PNG bytes plus its card, check it, and upload it.

    The images must already be encrypted with `cipher` (`encrypted_datasets.encrypt_dataset`); the cipher supplies
    the public description in lcrypt.json and the card, and its key is used only to scan the files for the secret.
    `dataset_info` (how it was made: split seed, augmentation copies) goes into lcrypt.json and the card.
    """
    from ..encrypted_datasets import save_encrypted

    with _staging(dry_run_dir) as folder:
        folder.mkdir(parents=True, exist_ok=True)
        save_encrypted(dataset, folder, cipher=cipher, dataset_info=dataset_info)
        card = build_dataset_card(
            dataset,
            repo_id,
            cipher,
            license=license,
            source=source,
            pretty_name=pretty_name,
            licence_note=licence_note,
            augmentation=(dataset_info or {}).get("augmentation"),
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


def upload_dataset_folder(folder: str | os.PathLike, repo_id: str, key_id: str, private: bool = False) -> str:
    """Upload a folder that `push_encrypted_dataset(..., dry_run_dir=folder)` wrote and checked, as it is."""
    return _upload(Path(folder), repo_id, "dataset", private, f"Upload encrypted dataset (key_id {key_id})")
