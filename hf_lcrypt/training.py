"""Train and evaluate a keyed image classifier with the `transformers` Trainer (`scripts/train.py`, `hf-lcrypt train`).

Two modes:
- `encrypted`: the model only ever sees images encrypted with the key. A ViT starts from the folded copy of its
  initialisation (random, or a plain checkpoint given by `--from-plain`), so the key is in its weights from step 0;
  a model that cannot absorb a key (a CNN preset) simply learns on the ciphertext.
- `fold`: a plain ViT trains on plain images; then the key is folded into its weights, which changes no prediction:
  the run checks that the keyed model on encrypted test images reproduces the plain model on plain ones.

Augmentation acts on plain images, before encryption (shifts and flips do not commute with block scrambling).
Encryption happens in the `LCryptImageProcessor`, batched and on the fly, inside the datasets transform. The same
script runs data-parallel under `accelerate launch` (see docs/training.md).
"""

from __future__ import annotations

import argparse
import itertools
import json
import logging
import os
import platform
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field, fields
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
import torch
import transformers
import yaml
from PIL import Image
from transformers import (
    AutoConfig,
    EarlyStoppingCallback,
    PreTrainedModel,
    Trainer,
    TrainerCallback,
    TrainingArguments,
    ViTForImageClassification,
    set_seed,
)
from transformers.image_processing_base import ImageProcessingMixin
from transformers.trainer_utils import get_last_checkpoint

from .attacks.suite import (
    AttackEvalCallback,
    AttackSuite,
    load_plain_images,
    predict_logits,
    sample_indices,
    write_attack_report,
)
from .cipher import ALL_STEPS
from .configuration_lcrypt import LCryptViTConfig
from .data import content_hashes, label_maps, load_image_dataset, split_fingerprints
from .distillation import DISTILLATION_TYPES, TEACHER_INPUTS, DistillationTrainer, load_teacher
from .evaluation import compute_classification_metrics, make_compute_metrics, plot_confusion_matrix
from .image_processing_lcrypt import LCryptImageProcessor
from .keys import KEY_ENV_VAR, LCryptKey
from .modeling_lcrypt import LCryptViTForImageClassification
from .presets import MODEL_PRESETS, PATCH_EMBEDDINGS, ModelSpec
from .weight_averaging import WeightAverage, averaged_entries

logger = logging.getLogger(__name__)

MODES = ("encrypted", "fold", "plain")
# Normalisation of models trained from scratch. With mean = std = 0.5 the fold map of the key is a pure signed
# permutation (no bias offset), which is what makes encrypted training track plain training (docs/training.md).
HALF = (0.5, 0.5, 0.5)


def default_block_size(image_size: int) -> int:
    """The largest block side up to 16 that divides the image and leaves at least 7 blocks per side."""
    return max(b for b in range(1, 17) if image_size % b == 0 and image_size // b >= 7)


# -- configuration ------------------------------------------------------------------------------------------------
_CASTS = {"float": float, "int": int, "int | None": int}


@dataclass
class TrainConfig:
    """Every setting of a run; `--config FILE.yaml` sets any of them by name, flags override the file."""

    data: str = "default"
    mode: str = "encrypted"
    key_file: str | None = None
    model: str = "micro"
    patch_embedding: str = "linear"
    from_plain: str | None = None
    image_size: int | None = None
    block_size: int | None = None
    cipher_steps: list[str] = field(default_factory=lambda: list(ALL_STEPS))
    epochs: float = 30.0
    max_steps: int | None = None
    batch_size: int = 32
    lr: float = 5e-4
    weight_decay: float = 0.05
    warmup: float = 0.1
    seed: int = 0
    split_seed: int = 0
    label_smoothing: float = 0.0
    mixup: float = 0.0
    teacher: str | None = None
    distill_alpha: float = 0.5
    distillation: str = "hard"
    distill_temperature: float = 1.0
    dropout: float = 0.0
    ema_decay: float | None = None
    augment: bool = True
    augment_orientation: bool = False
    tta: bool = False
    max_per_class: int | None = None
    early_stopping_patience: int | None = None
    metric: str = "accuracy"
    eval_steps: int | None = None
    logging_steps: int = 10
    num_proc: int = 0
    attack_max_images: int = 256
    save_total_limit: int | None = 2
    bf16: bool = False
    report_to: str = "none"
    output_dir: str = "outputs/lcrypt-vit"
    resume: bool | str = False

    def __post_init__(self) -> None:
        for item in fields(self):  # YAML reads 1e-3 as a string, and a number given for a float as an int
            cast = _CASTS.get(str(item.type))
            value = getattr(self, item.name)
            if cast is not None and value is not None:
                setattr(self, item.name, cast(value))
        if self.mode not in MODES:
            raise ValueError(f"mode must be one of {list(MODES)}, got {self.mode!r}.")
        if self.mode == "plain":
            self.cipher_steps = []
        if self.from_plain is None and self.model not in MODEL_PRESETS:
            raise ValueError(f"Unknown model preset {self.model!r}; choose from {sorted(MODEL_PRESETS)}.")
        if self.patch_embedding not in PATCH_EMBEDDINGS:
            raise ValueError(f"patch_embedding must be one of {list(PATCH_EMBEDDINGS)}, got {self.patch_embedding!r}.")
        if self.patch_embedding != "linear" and (self.from_plain is not None or not MODEL_PRESETS[self.model].foldable):
            raise ValueError(
                f"--patch-embedding {self.patch_embedding} applies to the ViT presets trained from scratch, not to "
                f"{self.from_plain or repr(self.model)}; leave it out or pick a ViT preset such as micro."
            )
        if self.distillation not in DISTILLATION_TYPES:
            raise ValueError(f"distillation must be one of {list(DISTILLATION_TYPES)}, got {self.distillation!r}.")
        if self.ema_decay is not None and not 0.0 < self.ema_decay < 1.0:
            raise ValueError(f"--ema-decay must lie strictly between 0 and 1 (e.g. 0.999), got {self.ema_decay}.")
        if self.tta and not self.augment:
            raise ValueError("--tta averages over the flips (and rotations) of --augment; it needs --augment.")
        unknown = sorted(set(self.cipher_steps) - set(ALL_STEPS))
        if unknown:
            raise ValueError(f"Unknown cipher step(s) {unknown}; choose from {list(ALL_STEPS)}.")

    @property
    def key_path(self) -> Path:
        """The key file; by default next to (not inside) the output folder, so that uploading the folder is safe."""
        return Path(self.key_file) if self.key_file else Path(f"{self.output_dir.rstrip('/')}.key")

    def public_dict(self) -> dict[str, Any]:
        """The settings without local secrets' locations, for metrics.json."""
        return {k: v for k, v in asdict(self).items() if k != "key_file"}


_DEFAULTS = TrainConfig()


def add_arguments(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """Add the training flags to `parser`. Unset flags stay absent from the namespace, so YAML values survive."""

    def add(flag: str, help: str, **kwargs: Any) -> None:
        name = flag.lstrip("-").replace("-", "_")
        default = getattr(_DEFAULTS, name, None)
        if default is not None:
            help += f" (default: {' '.join(default) if isinstance(default, list) else default})"
        parser.add_argument(flag, help=help, default=argparse.SUPPRESS, **kwargs)

    add("--config", "YAML file of settings named like the flags (e.g. `epochs: 5`); flags override it", metavar="YAML")
    add("--data", "image folder, MedMNIST .npz, Hub dataset id, or 'default' (the embedded BreastMNIST)")
    add(
        "--mode",
        "encrypted: train on encrypted images; fold: train plain, then fold the key in; plain: the baseline without "
        "encryption (the same pipeline with an identity cipher, so no access control)",
        choices=MODES,
    )
    add("--key-file", "secret key file; created (mode 0600) if absent (default: <output-dir>.key)", metavar="PATH")
    # No `choices`: presets registered after the parser is built (e.g. by hf_lcrypt.baselines) are checked by
    # TrainConfig instead.
    presets = "; ".join(f"{name}: {preset.description}" for name, preset in MODEL_PRESETS.items())
    add("--model", f"preset trained from scratch ({presets})")
    add(
        "--patch-embedding",
        "linear: the ViT's patch embedding; mlp: a two-layer MLP on each whole patch, which the key folds into as "
        "well (ViT presets only)",
        choices=PATCH_EMBEDDINGS,
    )
    add(
        "--from-plain",
        "plain ViTForImageClassification (Hub id or folder) to start from, or a plain checkpoint of a fold run",
        metavar="ID_OR_DIR",
    )
    add("--image-size", "side images are resized to (default: 32, or the --from-plain model's)", type=int)
    add(
        "--block-size",
        "cipher block side = ViT patch size (default: largest <= 16 leaving >= 7 blocks a side)",
        type=int,
    )
    add("--cipher-steps", "cipher steps to apply", nargs="+", choices=ALL_STEPS, metavar="STEP")
    add("--epochs", "training epochs", type=float)
    add("--max-steps", "optimiser steps; overrides --epochs", type=int)
    add("--batch-size", "images per device and step", type=int)
    add("--lr", "peak learning rate (AdamW, cosine decay)", type=float)
    add("--weight-decay", "AdamW weight decay", type=float)
    add("--warmup", "linear warm-up: a fraction of the steps if < 1, else a number of steps", type=float)
    add("--seed", "seed of initialisation, shuffling and augmentation", type=int)
    add(
        "--split-seed",
        "seed of the train/validation/test split (when the data has none) and of --max-per-class; kept apart from "
        "--seed so that runs of several seeds, and their teacher, share one held-out test split",
        type=int,
    )
    add("--label-smoothing", "label smoothing factor", type=float)
    add(
        "--mixup",
        "mixup's Beta(alpha, alpha) parameter, e.g. 0.2 (0: off); works on ciphertext (docs/training.md)",
        type=float,
    )
    add(
        "--teacher",
        "model folder of a finished run (e.g. a CNN trained on plain images) whose predictions the model learns "
        "from as well as the labels; it sees its own view of each augmented image (docs/training.md)",
        metavar="DIR",
    )
    add("--distill-alpha", "weight of the teacher's term in the loss (the labels get 1 - alpha)", type=float)
    add(
        "--distillation",
        "hard: learn the teacher's predicted class (DeiT); soft: its distribution",
        choices=DISTILLATION_TYPES,
    )
    add("--distill-temperature", "temperature of soft distillation", type=float)
    add("--dropout", "dropout of preset ViTs (keep 0 for encrypted training to track plain training)", type=float)
    add(
        "--ema-decay",
        "keep an exponential moving average of the weights with this decay (e.g. 0.999; default: off); it becomes "
        "the final model, scored next to the best checkpoint (docs/training.md)",
        type=float,
    )
    add(
        "--augment",
        "random shifts and horizontal flips of the plain training images",
        action=argparse.BooleanOptionalAction,
    )
    add(
        "--augment-orientation",
        "also rotate the plain training images by a random multiple of 90 degrees (with the flips: all 8 orientations "
        "of the square), for images with no up or down such as histology slides; not for MRI",
        action=argparse.BooleanOptionalAction,
    )
    add(
        "--tta",
        "also report test metrics averaged over the orientations --augment draws from (the flip; with "
        "--augment-orientation all 8), each view made from the plain image by the key holder, then encrypted",
        action=argparse.BooleanOptionalAction,
    )
    add("--max-per-class", "keep at most this many images of each class in each split (quick runs)", type=int)
    add("--early-stopping-patience", "stop after this many evaluations without improvement (default: off)", type=int)
    add("--metric", "validation metric that picks the best checkpoint and drives early stopping")
    add("--eval-steps", "evaluate (and save a checkpoint) every N steps instead of every epoch", type=int)
    add("--logging-steps", "log the training loss every N steps", type=int)
    add("--num-proc", "dataloader worker processes that load, augment and encrypt images", type=int)
    add("--attack-max-images", "images the attack evaluation uses per split", type=int)
    add("--save-total-limit", "checkpoints kept: the best one and the most recent", type=int)
    add("--bf16", "bfloat16 mixed precision (GPUs that support it)", action="store_true")
    add("--report-to", "experiment trackers for the Trainer, e.g. tensorboard, wandb")
    add("--output-dir", "checkpoints, logs and the final model folder <output-dir>/model")
    add(
        "--resume",
        "resume from the last checkpoint in --output-dir, or from CHECKPOINT",
        nargs="?",
        const=True,
        metavar="CHECKPOINT",
    )
    return parser


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        description="Train and evaluate a keyed image classifier (hf-lcrypt). See docs/training.md."
    )
    return add_arguments(parser)


def config_from_namespace(namespace: argparse.Namespace) -> TrainConfig:
    """Defaults, then the `--config` YAML file, then the flags given on the command line."""
    names = {f.name for f in fields(TrainConfig)}
    values: dict[str, Any] = {}
    config_file = getattr(namespace, "config", None)
    if config_file:
        loaded = yaml.safe_load(Path(config_file).read_text()) or {}
        if not isinstance(loaded, dict):
            raise ValueError(f"{config_file} must hold a mapping of settings, got {type(loaded).__name__}.")
        values = {str(k).replace("-", "_"): v for k, v in loaded.items()}
        unknown = sorted(set(values) - names)
        if unknown:
            raise ValueError(f"Unknown setting(s) {unknown} in {config_file}; known: {sorted(names)}.")
    values.update({k: v for k, v in vars(namespace).items() if k in names})
    return TrainConfig(**values)


def parse_config(argv: Sequence[str] | None = None) -> TrainConfig:
    return config_from_namespace(build_parser().parse_args(argv))


# -- data ---------------------------------------------------------------------------------------------------------
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

    def __call__(self, image: Image.Image) -> Image.Image:
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
        return Image.fromarray(np.ascontiguousarray(pixels))

    def orientations(self) -> list[Callable[[torch.Tensor], torch.Tensor]]:
        """The orientations this augmentation draws from, as maps of (N,C,H,W) batches: the views test-time
        augmentation averages over (before encryption, like the augmentation itself); the identity comes first."""
        flips = (False, True) if self.flip else (False,)
        turns = range(4) if self.rotate90 else range(1)
        return [partial(_orient, flip=flip, turns=k) for flip in flips for k in turns]


def _orient(images: torch.Tensor, flip: bool, turns: int) -> torch.Tensor:
    return (images.flip(-1) if flip else images).rot90(turns, dims=(-2, -1))


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
        return mixed | {"labels": mix(torch.nn.functional.one_hot(labels, self.num_classes).float())}


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
    ):
        self.processor = processor
        self.augment = augment
        self.teacher = teacher
        self.mixup = mixup

    def __call__(self, batch: dict[str, list]) -> dict[str, torch.Tensor]:
        images = batch["image"] if self.augment is None else [self.augment(image) for image in batch["image"]]
        outputs = {
            "pixel_values": self.processor(images, return_tensors="pt")["pixel_values"],
            "labels": torch.as_tensor(batch["label"], dtype=torch.long),
        }
        if self.teacher is not None:
            outputs[TEACHER_INPUTS] = self.teacher(images, return_tensors="pt")["pixel_values"]
        return outputs if self.mixup is None else self.mixup(outputs)

    def __getstate__(self) -> dict[str, Any]:
        processors = {"processor": self.processor, "teacher": self.teacher}
        return {"augment": self.augment, "mixup": self.mixup} | {n: p and p.to_dict() for n, p in processors.items()}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.processor = LCryptImageProcessor.from_dict(state["processor"])
        self.teacher = state["teacher"] and LCryptImageProcessor.from_dict(state["teacher"])
        self.augment, self.mixup = state["augment"], state["mixup"]


def cross_split_duplicates(hashes: dict[str, list[str]]) -> dict[str, int]:
    """Byte-identical images shared by two splits (from each split's `content_hashes`): leaks that inflate validation
    and test scores."""
    sets = {name: set(digests) for name, digests in hashes.items()}
    return {f"{a}/{b}": len(sets[a] & sets[b]) for a, b in itertools.combinations(sets, 2)}


# -- models and keys ----------------------------------------------------------------------------------------------
@dataclass
class Setup:
    """The model to train and the geometry and normalisation it implies."""

    model: PreTrainedModel
    foldable: bool
    image_size: int
    block_size: int
    image_mean: list[float]
    image_std: list[float]


def secret_init_seed(key: LCryptKey, seed: int) -> int:
    """Seed of a from-scratch model's initialisation, derived from the key and `--seed`.

    A keyed model folded from an initialisation anyone can regenerate (a public seed) gives its key away by matching
    weights, even after training (docs/security.md); a key-derived seed keeps runs reproducible for the key holder.
    """
    return int.from_bytes(key.stream("model-init", f"seed={seed}", 4), "big")


def load_or_create_key(path: Path) -> LCryptKey:
    """Load the key file, or create it (mode 0600) when absent. Only the key id is ever logged."""
    if path.is_file():
        key = LCryptKey.load(path)
        logger.info("Loaded key %s from %s", key.key_id, path)
        return key
    path.parent.mkdir(parents=True, exist_ok=True)
    key = LCryptKey.generate()
    key.save(path)
    logger.warning("Created a new key %s in %s (mode 0600): keep it secret and backed up.", key.key_id, path)
    return key


def build_setup(config: TrainConfig, id2label: dict[int, str], label2id: dict[str, int]) -> Setup:
    """A preset built from scratch, or the `--from-plain` checkpoint with a new classification head."""
    if config.from_plain is None:
        image_size = config.image_size or 32
        block_size = config.block_size or default_block_size(image_size)
        preset = MODEL_PRESETS[config.model]
        spec = ModelSpec(image_size, block_size, id2label, label2id, config.dropout, config.patch_embedding)
        model = preset.build(spec)
        if config.patch_embedding == "mlp" and getattr(model.config, "patch_embedding_mlp_size", None) is None:
            raise ValueError(
                f"Preset {config.model!r} ignores --patch-embedding mlp (its build function does not read "
                "ModelSpec.patch_embedding); build it with vit_preset, or leave the flag out."
            )
        return Setup(model, preset.foldable, image_size, block_size, list(HALF), list(HALF))

    source = config.from_plain
    source_config = AutoConfig.from_pretrained(source)
    unbound = isinstance(source_config, LCryptViTConfig)  # e.g. a fold run's plain checkpoint with MLP patches
    if unbound and source_config.key_id is not None:
        raise ValueError(f"{source} is already keyed; --from-plain takes a plain ViT (use rekey to change keys).")
    model = (LCryptViTForImageClassification if unbound else ViTForImageClassification).from_pretrained(
        source, num_labels=len(id2label), id2label=id2label, label2id=label2id, ignore_mismatched_sizes=True
    )
    image_size, patch = model.config.image_size, model.config.patch_size
    for flag, wanted, actual in (
        ("--image-size", config.image_size, image_size),
        ("--block-size", config.block_size, patch),
    ):
        if wanted is not None and wanted != actual:
            raise ValueError(f"{flag} {wanted} differs from the --from-plain model's {actual}; leave it out.")
    try:
        processor_dict, _ = ImageProcessingMixin.get_image_processor_dict(source)
        mean, std = processor_dict["image_mean"], processor_dict["image_std"]
    except (OSError, KeyError):
        logger.warning(
            "%s has no processor config with image_mean/image_std; normalising with mean = std = 0.5.", source
        )
        mean, std = HALF, HALF
    channels = model.config.num_channels
    return Setup(model, True, image_size, patch, list(mean)[:channels], list(std)[:channels])


def check_teacher_split(teacher_dir: Path, config: TrainConfig, fingerprints: dict[str, str]) -> None:
    """Refuse a teacher whose run split the data differently: it would have trained on this run's test images and
    leak them into the student through its predictions. Its validation and test splits must hold this run's images
    (`split_fingerprints`, so another path to the same data passes and other data does not); teachers saved before
    fingerprints are checked by their split settings, teachers without a `metrics.json` not at all."""
    metrics_file = teacher_dir / "metrics.json"
    if not metrics_file.is_file():
        logger.warning("--teacher %s has no metrics.json; cannot check that it used the same data split.", teacher_dir)
        return
    teacher_metrics = json.loads(metrics_file.read_text())
    known = teacher_metrics.get("data", {}).get("split_fingerprints")
    if known is not None:
        for split in ("validation", "test"):
            if known.get(split) != fingerprints[split]:
                raise ValueError(
                    f"--teacher {teacher_dir} was trained on other data or another split: its {split} split holds "
                    f"other images than this run's, so the teacher may have seen this run's test images. Train it "
                    "on the same data with the same --split-seed and --max-per-class."
                )
        return
    theirs = teacher_metrics.get("config", {})
    split_seed = theirs.get("split_seed", theirs.get("seed", 0))  # runs before --split-seed split with --seed
    if (split_seed, theirs.get("max_per_class")) != (config.split_seed, config.max_per_class):
        raise ValueError(
            f"--teacher {teacher_dir} was trained on the split of --split-seed {split_seed} and --max-per-class "
            f"{theirs.get('max_per_class')}, this run uses {config.split_seed} and {config.max_per_class}: the "
            "teacher may have seen this run's test images. Use the same --split-seed and --max-per-class."
        )


def _resume_checkpoint(config: TrainConfig, key: LCryptKey) -> str | None:
    """The checkpoint to resume from, refusing one whose weights are folded with another key."""
    if not config.resume:
        return None
    output_dir = Path(config.output_dir)
    checkpoint = config.resume if isinstance(config.resume, str) else None
    if checkpoint is None and output_dir.is_dir():
        checkpoint = get_last_checkpoint(str(output_dir))
    if checkpoint is None:
        raise ValueError(f"--resume: no checkpoint-* folder in {output_dir} to resume from.")
    saved = json.loads((Path(checkpoint) / "config.json").read_text()).get("key_id")
    if saved is not None and saved != key.key_id:
        raise ValueError(f"{checkpoint} is folded with key {saved}, not with the key file's {key.key_id}.")
    return checkpoint


def training_arguments(config: TrainConfig) -> TrainingArguments:
    strategy = (
        {
            "eval_strategy": "steps",
            "save_strategy": "steps",
            "eval_steps": config.eval_steps,
            "save_steps": config.eval_steps,
        }
        if config.eval_steps
        else {"eval_strategy": "epoch", "save_strategy": "epoch"}
    )
    # Several processes but no CUDA (e.g. `accelerate launch --multi_gpu` on CPUs): accelerate sets up data
    # parallelism over gloo only when told to use the CPU; otherwise every process would train alone.
    cpu_parallel = not torch.cuda.is_available() and int(os.environ.get("WORLD_SIZE", "1")) > 1
    return TrainingArguments(
        output_dir=config.output_dir,
        use_cpu=cpu_parallel,
        num_train_epochs=config.epochs,
        max_steps=config.max_steps or -1,
        per_device_train_batch_size=config.batch_size,
        per_device_eval_batch_size=config.batch_size,
        learning_rate=config.lr,
        weight_decay=config.weight_decay,
        warmup_steps=config.warmup,
        lr_scheduler_type="cosine",
        label_smoothing_factor=config.label_smoothing,
        seed=config.seed,
        logging_steps=config.logging_steps,
        save_total_limit=config.save_total_limit,
        load_best_model_at_end=True,
        metric_for_best_model=config.metric,
        dataloader_num_workers=config.num_proc,
        dataloader_pin_memory=torch.cuda.is_available(),
        remove_unused_columns=False,  # the transform needs the raw `image` column
        ddp_find_unused_parameters=False,  # every parameter of the classifiers takes part in the loss
        bf16=config.bf16,
        report_to=config.report_to,
        disable_tqdm=False,
        **strategy,
    )


def hardware_info(args: TrainingArguments) -> dict[str, Any]:
    info: dict[str, Any] = {
        "device": str(args.device),
        "world_size": args.world_size,
        "mixed_precision": args.mixed_precision,
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "platform": platform.platform(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "transformers": transformers.__version__,
    }
    if torch.cuda.is_available():
        info["gpus"] = [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())]
    return info


def write_rank_file(args: TrainingArguments, output_dir: Path, global_step: int) -> None:
    """`<output_dir>/ranks/rank-<i>.json`: evidence that process i took part in a multi-process run."""
    rank_file = output_dir / "ranks" / f"rank-{args.process_index}.json"
    rank_file.parent.mkdir(parents=True, exist_ok=True)
    info = {
        "rank": args.process_index,
        "local_rank": args.local_process_index,
        "world_size": args.world_size,
        "device": str(args.device),
        "host": platform.node(),
        "global_step": global_step,
    }
    rank_file.write_text(json.dumps(info) + "\n")


def check_fold(
    plain: PreTrainedModel,
    images: torch.Tensor,
    keyed_logits: torch.Tensor,
    image_mean: Sequence[float],
    image_std: Sequence[float],
    batch_size: int,
) -> dict[str, Any]:
    """Compare the plain model on plain `images` with the keyed model's logits on the same images encrypted."""
    plain_logits = predict_logits(plain, images, image_mean, image_std, batch_size=batch_size)
    same = int((plain_logits.argmax(-1) == keyed_logits.argmax(-1)).sum())
    check = {
        "num_images": len(images),
        "identical_predictions": same,
        "all_identical": same == len(images),
        "max_abs_logit_diff": float((plain_logits - keyed_logits).abs().max()),
    }
    logger.info(
        "Fold check: the keyed model on encrypted test images predicts as the plain model on plain ones for %d/%d "
        "images (max |logit difference| %.2e)",
        same,
        len(images),
        check["max_abs_logit_diff"],
    )
    return check


def check_score_metric(metric: str, id2label: dict[int, str]) -> None:
    """Fail before training, not after it, when `score_weight_average` could not score by `metric`."""
    n = len(id2label)
    known = compute_classification_metrics(np.eye(n), np.arange(n), id2label)
    if metric.removeprefix("eval_") not in known:
        raise ValueError(
            f"--ema-decay compares the weight average with the best checkpoint by --metric, which must then be a "
            f"classification score, one of {sorted(known)}; got {metric!r}."
        )


def score_weight_average(
    model: PreTrainedModel,
    averager: WeightAverage,
    splits: dict[str, tuple[torch.Tensor, torch.Tensor]],
    predict: Callable[[PreTrainedModel, torch.Tensor], torch.Tensor],
    id2label: dict[int, str],
    metric: str,
) -> dict[str, Any]:
    """Score the best checkpoint (the model as training left it) and the weight average on each split, then leave the
    average in `model`: asked for, it is the final model. The scores are for comparison, and the test ones are the fair
    ones: the checkpoint was picked for its validation score, the best of many, which flatters it on validation."""
    candidates = {
        "best_checkpoint": {name: value.clone() for name, value in averaged_entries(model).items()},
        "weight_average": averager.average,
    }
    score = metric.removeprefix("eval_")
    scores: dict[str, dict[str, float]] = {}
    for name, weights in candidates.items():
        model.load_state_dict(weights, strict=False)
        scores[name] = {
            split: compute_classification_metrics(predict(model, images).numpy(), labels.numpy(), id2label)[score]
            for split, (images, labels) in splits.items()
        }
    logger.info("Weight average (decay %s) against the best checkpoint, %s: %s", averager.decay, metric, scores)
    return {"decay": averager.decay, "metric": metric, "scores": scores}


# -- the run ------------------------------------------------------------------------------------------------------
@dataclass
class TrainResult:
    """What a run produced: the final metrics (as in metrics.json) and where its files are."""

    metrics: dict[str, Any]
    paths: dict[str, Path]
    log_history: list[dict[str, Any]]


def run(config: TrainConfig) -> TrainResult:
    """Train, evaluate on the test split, attack, and write the Hub-ready folder `<output_dir>/model`."""
    start = time.perf_counter()
    args = training_arguments(config)
    is_main = args.process_index == 0
    output_dir = Path(config.output_dir)
    model_dir = output_dir / "model"

    # One process creates the key; the others wait and read it (on every node: share the file, see the docs).
    with args.main_process_first(local=False, desc="key file"):
        key = load_or_create_key(config.key_path)
    resumed_from = _resume_checkpoint(config, key)
    if config.num_proc > 0:
        os.environ[KEY_ENV_VAR] = str(config.key_path.resolve())  # for DataLoader workers started by spawn
    with args.main_process_first(desc="dataset loading"):
        dataset, split_report = load_image_dataset(
            config.data, seed=config.split_seed, max_per_class=config.max_per_class, return_report=True
        )
        hashes = {name: content_hashes(split) for name, split in dataset.items()}
        duplicates = (
            {"source": "split_by_content", **split_report.to_dict()}
            if split_report is not None
            else {"source": "given splits", "cross_split_overlap": cross_split_duplicates(hashes)}
        )
        fingerprints = split_fingerprints(hashes)
    logger.info("Data %s: %s; duplicates: %s", config.data, {s: len(d) for s, d in dataset.items()}, duplicates)
    id2label, label2id = label_maps(dataset)
    if config.ema_decay is not None:
        check_score_metric(config.metric, id2label)

    set_seed(secret_init_seed(key, config.seed))
    setup = build_setup(config, id2label, label2id)
    set_seed(config.seed)
    if config.mode == "fold" and not setup.foldable:
        raise ValueError(f"--mode fold needs a ViT; the {config.model!r} preset trains in --mode encrypted or plain.")
    fold = partial(
        LCryptViTForImageClassification.from_plain,
        key=key,
        image_mean=setup.image_mean,
        image_std=setup.image_std,
        steps=config.cipher_steps,
    )
    on_ciphertext = config.mode != "fold"  # "plain" is "encrypted" with an identity cipher
    model = fold(setup.model) if on_ciphertext and setup.foldable else setup.model
    # The Trainer of transformers 5.24 reloads checkpoints (--resume, best model) with a plain load_state_dict, which
    # does not undo the legacy renaming that save_pretrained applies to ViT weights, and so silently loads nothing
    # (transformers#48805). An empty conversion list makes checkpoints keep the model's own parameter names.
    model._weight_conversions = []
    geometry = {
        "image_size": setup.image_size,
        "block_size": setup.block_size,
        "cipher_steps": list(config.cipher_steps),
        "image_mean": setup.image_mean,
        "image_std": setup.image_std,
    }
    keyed_processor = LCryptImageProcessor(**geometry, key=key)
    # In fold mode the model trains on plain images: the same resizing and normalisation, no encryption.
    processor = keyed_processor if on_ciphertext else LCryptImageProcessor(**geometry, do_encrypt=False)
    augment = Augment(rotate90=config.augment_orientation) if config.augment else None
    teacher, teacher_processor = (None, None)
    if config.teacher:
        teacher, teacher_processor = load_teacher(config.teacher, key, id2label)  # other classes: a clearer error
        check_teacher_split(Path(config.teacher), config, fingerprints)
    mixup = Mixup(config.mixup, len(id2label)) if config.mixup > 0 else None
    train_set = dataset["train"].with_transform(ImageTransform(processor, augment, teacher_processor, mixup))
    eval_set = dataset["validation"].with_transform(ImageTransform(processor))

    cipher = keyed_processor.cipher(setup.image_size, setup.image_size)
    validation_images, validation_labels = load_plain_images(
        dataset["validation"], keyed_processor, config.attack_max_images, config.seed
    )
    attack_callback = AttackEvalCallback(
        AttackSuite(
            validation_images,
            validation_labels,
            cipher,
            setup.image_mean,
            setup.image_std,
            batch_size=config.batch_size,
            seed=config.seed,
        ),
        prepare_model=fold if config.mode == "fold" else None,
    )
    callbacks: list[TrainerCallback] = [attack_callback]
    averager = WeightAverage(config.ema_decay, resumed_from) if config.ema_decay is not None else None
    if averager is not None:
        callbacks.append(averager)
    if config.early_stopping_patience:
        callbacks.append(EarlyStoppingCallback(early_stopping_patience=config.early_stopping_patience))
    trainer_kwargs: dict[str, Any] = dict(
        model=model,
        args=args,
        train_dataset=train_set,
        eval_dataset=eval_set,
        processing_class=processor,
        compute_metrics=make_compute_metrics(id2label),
        callbacks=callbacks,
    )
    if teacher is None and mixup is None:
        trainer = Trainer(**trainer_kwargs)
    else:
        trainer = DistillationTrainer(
            **trainer_kwargs,
            teacher=teacher,
            alpha=config.distill_alpha,
            kind=config.distillation,
            temperature=config.distill_temperature,
            label_smoothing=config.label_smoothing,
        )
    n_params = sum(p.numel() for p in model.parameters())
    logger.info(
        "Mode %s, key %s, %s (%.2fM parameters), images %dx%d in blocks of %d, world size %d",
        config.mode,
        key.key_id,
        config.from_plain or f"preset {config.model!r}",
        n_params / 1e6,
        setup.image_size,
        setup.image_size,
        setup.block_size,
        args.world_size,
    )

    train_seconds = 0.0
    if config.epochs > 0 or (config.max_steps or 0) > 0:
        train_output = trainer.train(resume_from_checkpoint=resumed_from)
        train_seconds = train_output.metrics["train_runtime"]
    if args.world_size > 1:
        write_rank_file(args, output_dir, trainer.state.global_step)

    # Final evaluation on the test split, every process alike (sharded models need all of them for a forward).
    trained = trainer.model
    eval_start = time.perf_counter()
    test_images, test_labels = load_plain_images(dataset["test"], keyed_processor)
    weight_average = None
    if averager is not None:
        splits = {
            "validation": load_plain_images(dataset["validation"], keyed_processor),
            "test": (test_images, test_labels),
        }
        encrypt = cipher.encrypt if on_ciphertext else (lambda images: images)
        weight_average = score_weight_average(
            trained,
            averager,
            splits,
            partial(
                predict_logits,
                image_mean=setup.image_mean,
                image_std=setup.image_std,
                transform=encrypt,
                batch_size=config.batch_size,
            ),
            id2label,
            config.metric,
        )
    keyed = fold(trained) if config.mode == "fold" else trained
    test_logits = predict_logits(
        keyed, test_images, setup.image_mean, setup.image_std, cipher.encrypt, config.batch_size
    )
    test_metrics = compute_classification_metrics(test_logits.numpy(), test_labels.numpy(), id2label)
    tta_metrics = None
    if config.tta and augment is not None:
        views = augment.orientations()
        probabilities = test_logits.softmax(-1)  # views[0] is the identity
        for view in views[1:]:
            logits = predict_logits(
                keyed, view(test_images), setup.image_mean, setup.image_std, cipher.encrypt, config.batch_size
            )
            probabilities += logits.softmax(-1)
        probabilities /= len(views)
        # log-probabilities are logits whose softmax is the averaged distribution
        tta_metrics = compute_classification_metrics(probabilities.log().numpy(), test_labels.numpy(), id2label)
        tta_metrics["views"] = len(views)
    fold_check = (
        check_fold(trained, test_images, test_logits, setup.image_mean, setup.image_std, config.batch_size)
        if config.mode == "fold"
        else None
    )
    eval_seconds = time.perf_counter() - eval_start
    attack_start = time.perf_counter()
    subset = sample_indices(len(test_labels), config.attack_max_images, config.seed)
    test_suite = AttackSuite(
        test_images[subset],
        test_labels[subset],
        cipher,
        setup.image_mean,
        setup.image_std,
        batch_size=config.batch_size,
        seed=config.seed,
        split="test",
    )
    attack_results = test_suite.run(keyed)
    attack_seconds = time.perf_counter() - attack_start

    if on_ciphertext:
        vars(trained).pop("_weight_conversions", None)  # the final folder in the standard layout, as in fold mode
        trainer.save_model(str(model_dir))  # every process: gathers sharded weights; writes model and processor
    paths: dict[str, Path] = {"model_folder": model_dir, "metrics": model_dir / "metrics.json"}
    metrics: dict[str, Any] = {}
    if is_main:
        if config.mode == "fold":
            keyed.save_pretrained(model_dir)
            LCryptImageProcessor.for_model(keyed).save_pretrained(model_dir)
        (model_dir / "training_args.bin").unlink(missing_ok=True)  # a pickle save_model adds; not for the Hub
        paths.update(write_attack_report(test_suite, attack_results, model_dir, history=attack_callback.history))
        paths["confusion_matrix"] = plot_confusion_matrix(
            test_labels.numpy(),
            test_logits.argmax(-1).numpy(),
            [id2label[i] for i in sorted(id2label)],
            model_dir / "confusion_matrix.png",
            title=f"Test set ({len(test_labels)} images), keyed model",
        )
        metrics = {
            "mode": config.mode,
            "key_id": key.key_id,
            "dataset": config.data,
            "base_model": config.from_plain,
            "folded_from_public": config.from_plain is not None and not Path(config.from_plain).exists(),
            "model": {
                "preset": None if config.from_plain else config.model,
                "patch_embedding": config.patch_embedding,
                "parameters": n_params,
                "image_size": setup.image_size,
                "block_size": setup.block_size,
                "cipher_steps": list(config.cipher_steps),
            },
            "test": {**test_metrics, "num_images": len(test_labels)},
            "per_class_f1": {name: test_metrics[f"f1_{name}"] for name in id2label.values()},
            "test_tta": tta_metrics,
            "weight_average": weight_average,
            "fold_check": fold_check,
            "best_validation": {
                "metric": config.metric,
                "value": trainer.state.best_metric,
                "checkpoint": Path(trainer.state.best_model_checkpoint or "").name or None,
            },
            "data": {
                "splits": {s: len(d) for s, d in dataset.items()},
                "classes": list(id2label.values()),
                "duplicates": duplicates,
                "split_fingerprints": fingerprints,
            },
            "training": {
                "global_step": trainer.state.global_step,
                "epoch": trainer.state.epoch,
                "resumed_from": Path(resumed_from).name if resumed_from else None,
            },
            "timings": {
                "train_seconds": train_seconds,
                "test_eval_seconds": eval_seconds,
                "attack_eval_seconds": attack_seconds,
                "total_seconds": time.perf_counter() - start,
            },
            "hardware": hardware_info(args),
            "config": config.public_dict(),
            "attack_report": "attack_report.json",
        }
        paths["metrics"].write_text(json.dumps(metrics, indent=2, default=str) + "\n")
        paths["log_history"] = output_dir / "log_history.json"
        paths["log_history"].write_text(json.dumps(trainer.state.log_history, indent=2) + "\n")
    trainer.accelerator.wait_for_everyone()
    return TrainResult(metrics, paths, trainer.state.log_history)


def run_from_namespace(args: argparse.Namespace) -> int:
    """Run with parsed flags (`scripts/train.py`, `hf-lcrypt train`) and print where the results are."""
    config = config_from_namespace(args)
    if int(os.environ.get("RANK", "0")) == 0:
        logging.basicConfig(format="%(asctime)s %(levelname)s %(name)s: %(message)s", level=logging.INFO)
    result = run(config)
    if result.metrics:
        test = result.metrics["test"]
        kind = "encrypted" if result.metrics["model"]["cipher_steps"] else "plain"
        print(
            f"\nTest accuracy {test['accuracy']:.4f}, macro F1 {test['f1']:.4f}, AUROC {test['roc_auc']:.4f} "
            f"on {test['num_images']} {kind} test images (key {result.metrics['key_id']})."
        )
        if tta := result.metrics["test_tta"]:
            print(
                f"Averaged over {tta['views']} orientations: accuracy {tta['accuracy']:.4f}, macro F1 {tta['f1']:.4f}."
            )
        for name, path in result.paths.items():
            print(f"  {name.replace('_', ' '):>22}: {path}")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    return run_from_namespace(build_parser().parse_args(argv))
