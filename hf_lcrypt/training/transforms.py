"""The datasets transform of a training run: plain images, augmented, through the (encrypting) processor, then mixup."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch

from ..image_processing_lcrypt import LCryptImageProcessor
from ..plain_augment import Augment

# The batch key of the teacher's view of each training image (`ImageTransform` writes it, the distillation reads it).
TEACHER_INPUTS = "teacher_pixel_values"


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
