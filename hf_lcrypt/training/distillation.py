"""Knowledge distillation from a teacher run by the key holder (`--teacher DIR`).

ViTs trained from scratch on a few thousand images lag behind CNNs (docs/results.md). The key holder can train a
CNN on its plain images and let it teach the keyed ViT: for every augmented training image the teacher sees its own
view (plain, or encrypted if the teacher was trained on ciphertext; its saved processor decides) and the student sees
the encrypted view. The student stays a plain ViT with one classification head, so the key still folds into it
exactly (DeiT's hard-label distillation through the class token, without the extra distillation token).

The teacher only ever runs inside the key holder's training job; it is not part of the published model.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from transformers import AutoModelForImageClassification, PreTrainedModel, Trainer

from ..image_processing_lcrypt import LCryptImageProcessor
from ..keys import LCryptKey
from .transforms import TEACHER_INPUTS

logger = logging.getLogger(__name__)

DISTILLATION_TYPES = ("hard", "soft")


def check_teacher(folder: Path, id2label: dict[int, str]) -> None:
    """A finished run's model folder that knows the student's classes under the same ids (its config alone)."""
    config_file = folder / "config.json"
    if not config_file.is_file():
        raise ValueError(
            f"--teacher {folder}: no config.json there; give the `model` folder of a finished run "
            "(e.g. outputs/teacher/model)."
        )
    theirs = {int(i): name for i, name in json.loads(config_file.read_text()).get("id2label", {}).items()}
    if theirs != id2label:
        raise ValueError(
            f"--teacher {folder} predicts classes {theirs}, but the data has {id2label}; train it on the same data."
        )


def load_teacher(
    path: str | Path, key: LCryptKey, id2label: dict[int, str]
) -> tuple[PreTrainedModel, LCryptImageProcessor]:
    """The teacher model of a finished `scripts/train.py` run (`<output_dir>/model`) and its processor, keyed with
    `key` when the teacher was trained on ciphertext.

    The teacher must know the student's classes under the same ids, or its labels would teach the wrong classes.
    """
    folder = Path(path)
    check_teacher(folder, id2label)
    teacher = AutoModelForImageClassification.from_pretrained(folder).eval()
    processor = LCryptImageProcessor.from_pretrained(folder, key=key)
    for parameter in teacher.parameters():
        parameter.requires_grad_(False)
    return teacher, processor


def distillation_loss(
    logits: torch.Tensor,
    labels: torch.Tensor,
    teacher_logits: torch.Tensor | None = None,
    alpha: float = 0.5,
    kind: str = "hard",
    temperature: float = 1.0,
    label_smoothing: float = 0.0,
) -> torch.Tensor:
    """(1 - alpha) * cross-entropy with the labels + alpha * agreement with the teacher (only the first term without
    a teacher). `labels` are class ids, or class probabilities (mixup).

    `hard`: cross-entropy with the teacher's predicted class (DeiT); `soft`: KL divergence from the teacher's
    distribution at `temperature`, scaled by temperature^2 (Hinton et al.) so its gradients keep their size.
    """
    supervised = F.cross_entropy(logits, labels, label_smoothing=label_smoothing)
    if teacher_logits is None:
        return supervised
    if kind == "hard":
        taught = F.cross_entropy(logits, teacher_logits.argmax(-1))
    elif kind == "soft":
        taught = F.kl_div(
            F.log_softmax(logits / temperature, -1),
            F.log_softmax(teacher_logits / temperature, -1),
            reduction="batchmean",
            log_target=True,
        ) * (temperature**2)
    else:
        raise ValueError(f"distillation must be one of {list(DISTILLATION_TYPES)}, got {kind!r}.")
    return (1 - alpha) * supervised + alpha * taught


class DistillationTrainer(Trainer):
    """A `Trainer` whose training loss takes soft labels (mixup) and, with a `teacher`, mixes the labels with the
    frozen teacher's predictions.

    Training batches carry the teacher's view of each image as `teacher_pixel_values`; evaluation batches have
    neither soft labels nor a teacher's view, and are scored as usual.
    """

    def __init__(
        self,
        *args: Any,
        teacher: PreTrainedModel | None = None,
        alpha: float = 0.5,
        kind: str = "hard",
        temperature: float = 1.0,
        label_smoothing: float = 0.0,
        **kwargs: Any,
    ):
        if kind not in DISTILLATION_TYPES:
            raise ValueError(f"distillation must be one of {list(DISTILLATION_TYPES)}, got {kind!r}.")
        if not 0.0 <= alpha <= 1.0:
            raise ValueError(f"The distillation weight must be in [0, 1], got {alpha}.")
        super().__init__(*args, **kwargs)
        self.model_accepts_loss_kwargs = False  # the loss below is a batch mean, not a sum over counted items
        self.teacher = None if teacher is None else teacher.to(self.args.device).eval()
        self.alpha, self.kind, self.temperature, self.label_smoothing = alpha, kind, temperature, label_smoothing

    def compute_loss(
        self,
        model: torch.nn.Module,
        inputs: dict[str, torch.Tensor],
        return_outputs: bool = False,
        num_items_in_batch: torch.Tensor | None = None,
    ) -> torch.Tensor | tuple[torch.Tensor, Any]:
        if not model.training:
            return super().compute_loss(model, inputs, return_outputs, num_items_in_batch)
        teacher_inputs = inputs.pop(TEACHER_INPUTS, None)
        labels = inputs.pop("labels")
        outputs = model(**inputs)
        teacher_logits = None
        if self.teacher is not None:
            if teacher_inputs is None:
                raise ValueError(
                    f"A training batch has no {TEACHER_INPUTS}: give the dataset's ImageTransform the teacher's "
                    "processor."
                )
            with torch.no_grad():
                teacher_logits = self.teacher(pixel_values=teacher_inputs).logits.float()
        loss = distillation_loss(
            outputs.logits.float(),
            labels,
            teacher_logits,
            self.alpha,
            self.kind,
            self.temperature,
            self.label_smoothing,
        )
        return (loss, outputs) if return_outputs else loss


def check_teacher_split(
    teacher_dir: Path, split_seed: int, max_per_class: int | None, fingerprints: dict[str, str]
) -> None:
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
                    "on the same data with the same --split_seed and --max_per_class."
                )
        return
    theirs = teacher_metrics.get("config", {})
    their_seed = theirs.get("split_seed", theirs.get("seed", 0))  # runs before --split-seed split with --seed
    if (their_seed, theirs.get("max_per_class")) != (split_seed, max_per_class):
        raise ValueError(
            f"--teacher {teacher_dir} was trained on the split of --split_seed {their_seed} and --max_per_class "
            f"{theirs.get('max_per_class')}, this run uses {split_seed} and {max_per_class}: the teacher may have "
            "seen this run's test images. Use the same --split_seed and --max_per_class."
        )
