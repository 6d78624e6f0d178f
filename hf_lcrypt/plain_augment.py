"""Augmentation of plain images, before encryption: shifts, flips and quarter turns do not commute with the cipher.

Training applies it on the fly to the images it encrypts; `hf-lcrypt encrypt-dataset --augment-copies` to the views
the data owner encrypts ahead of training. Augmentations that do commute with the cipher are in `ciphertext_augment`.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from PIL import Image as PILImage


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
